#include <endian.h>
#include <errno.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ext.h"
#include "guard.h"

enum word_op { LOAD, STORE, COUNT };

struct word_args {
	uint32_t *w;
	uint32_t v;
	enum word_op op;
	unsigned shift;
	int delta;
};

/* v with its 16-bit count at shift moved by delta, within 0..0xffff. */
static uint32_t count_moved(uint32_t v, unsigned shift, int delta)
{
	int c = (int)((v >> shift) & 0xffff) + delta;

	c = c < 0 ? 0 : c > 0xffff ? 0xffff : c;
	return (v & ~(UINT32_C(0xffff) << shift)) | (uint32_t)c << shift;
}

static int do_word(void *arg)
{
	struct word_args *a = arg;
	uint32_t old;

	switch (a->op) {
	case STORE:
		mm_ext_put((uint8_t *)a->w, 0, a->v);
		break;
	case LOAD:
		a->v = mm_ext_get((const uint8_t *)a->w, 0);
		break;
	case COUNT:
		old = __atomic_load_n(a->w, __ATOMIC_RELAXED);
		while (!__atomic_compare_exchange_n(
			a->w, &old, htole32(count_moved(le32toh(old), a->shift, a->delta)),
			false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
			;
		break;
	}
	return 0;
}

int mm_ext_load(const uint8_t *ext, unsigned word, uint32_t *v)
{
	struct word_args a = { .w = mm_ext_word(ext, word), .op = LOAD };
	int r = mm_guard_run(do_word, &a);

	if (r == 0)
		*v = a.v;
	return r;
}

int mm_ext_store(uint8_t *ext, unsigned word, uint32_t v)
{
	struct word_args a = { .w = mm_ext_word(ext, word), .v = v, .op = STORE };

	return mm_guard_run(do_word, &a);
}

int mm_ext_count(uint8_t *ext, unsigned word, unsigned shift, int delta)
{
	struct word_args a = {
		.w = mm_ext_word(ext, word),
		.op = COUNT,
		.shift = shift,
		.delta = delta,
	};

	return mm_guard_run(do_word, &a);
}

/* A futex wait's outcome: woken or the value had changed (0), a timeout or
 * a signal, or -ENOSYS for "cannot wait here" (EFAULT on a mapping futexes
 * cannot key, such as a PCI BAR; a kernel without the call). */
static int futex_result(long rc)
{
	if (rc >= 0 || errno == EAGAIN)
		return 0;
	if (errno == ETIMEDOUT || errno == EINTR)
		return -errno;
	return -ENOSYS;
}

int mm_futex_wake(uint32_t *word)
{
	return syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0) < 0 &&
	       errno == EFAULT ? -EFAULT : 0;
}

int mm_futex_wait(uint32_t *word, uint32_t seen, unsigned timeout_us)
{
	struct timespec ts = {
		.tv_sec = timeout_us / 1000000,
		.tv_nsec = (long)(timeout_us % 1000000) * 1000,
	};

	return futex_result(syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0));
}

void mm_futex_wake_private(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

int mm_futex_waitv(uint32_t *const *words, const uint32_t *seen, unsigned n,
		   bool first_private, unsigned timeout_us)
{
#ifdef SYS_futex_waitv
	struct futex_waitv w[MM_FUTEX_WAITV_MAX];
	struct timespec ts;

	if (n == 0 || n > MM_FUTEX_WAITV_MAX)
		return -ENOSYS;
	memset(w, 0, sizeof(w[0]) * n);
	for (unsigned i = 0; i < n; i++) {
		w[i].uaddr = (uintptr_t)words[i];
		w[i].val = seen[i];
		w[i].flags = FUTEX_32 | (i == 0 && first_private ? FUTEX_PRIVATE_FLAG : 0);
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_us / 1000000;
	ts.tv_nsec += (long)(timeout_us % 1000000) * 1000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return futex_result(syscall(SYS_futex_waitv, w, n, 0, &ts, CLOCK_MONOTONIC));
#else
	(void)words; (void)seen; (void)n; (void)first_private; (void)timeout_us;
	return -ENOSYS;
#endif
}
