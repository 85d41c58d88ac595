#include <endian.h>
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ext.h"
#include "guard.h"

struct word_args {
	uint32_t *w;
	uint32_t v;
	int store;
};

static int do_word(void *arg)
{
	struct word_args *a = arg;

	if (a->store)
		__atomic_store_n(a->w, htole32(a->v), __ATOMIC_RELEASE);
	else
		a->v = le32toh(__atomic_load_n(a->w, __ATOMIC_ACQUIRE));
	return 0;
}

int mm_ext_load(const uint8_t *ext, unsigned word, uint32_t *v)
{
	struct word_args a = { (uint32_t *)(void *)(ext + 4 * word), 0, 0 };
	int r = mm_guard_run(do_word, &a);

	if (r == 0)
		*v = a.v;
	return r;
}

int mm_ext_store(uint8_t *ext, unsigned word, uint32_t v)
{
	struct word_args a = { (uint32_t *)(void *)(ext + 4 * word), v, 1 };

	return mm_guard_run(do_word, &a);
}

void mm_futex_wake(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

int mm_futex_wait(uint32_t *word, uint32_t seen, unsigned timeout_us)
{
	struct timespec ts = {
		.tv_sec = timeout_us / 1000000,
		.tv_nsec = (long)(timeout_us % 1000000) * 1000,
	};

	if (syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0) == 0)
		return 0;
	switch (errno) {
	case EAGAIN:
		return 0;
	case ETIMEDOUT:
	case EINTR:
		return -errno;
	default:
		/* EFAULT on a mapping futexes cannot key (a PCI BAR), ENOSYS */
		return -ENOSYS;
	}
}
