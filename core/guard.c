#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <ucontext.h>

#include "guard.h"

static __thread sigjmp_buf *guard_jmp;

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
	sigjmp_buf *jb = guard_jmp;

	(void)si;
	if (jb) {
		guard_jmp = NULL;
		/* Leave with the mask of the code that faulted, as a return
		 * would: a handler wrapped by a sanitizer (TSan) runs with
		 * every signal blocked, and a SIGBUS blocked kills at once. */
		pthread_sigmask(SIG_SETMASK, &((ucontext_t *)uctx)->uc_sigmask, NULL);
		siglongjmp(*jb, 1);
	}
	/* Not ours: die as we would have without a handler. */
	signal(sig, SIG_DFL);
	raise(sig);
}

int mm_guard_init(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		return -errno;
	return 0;
}

int mm_guard_run(int (*fn)(void *arg), void *arg)
{
	sigjmp_buf jb;
	sigjmp_buf *volatile outer = guard_jmp;
	int ret;

	/* No mask to save: the handler puts back the faulting code's own
	 * before it jumps, and saving it here would cost a system call on
	 * every guarded copy. */
	if (sigsetjmp(jb, 0)) {
		guard_jmp = outer;
		return -EFAULT;
	}
	guard_jmp = &jb;
	ret = fn(arg);
	guard_jmp = outer;
	return ret;
}

struct copy_args {
	void *dst;
	const void *src;
	size_t n;
};

static int do_copy(void *arg)
{
	struct copy_args *c = arg;

	memcpy(c->dst, c->src, c->n);
	return 0;
}

int mm_guard_copy(void *dst, const void *src, size_t n)
{
	struct copy_args c = { dst, src, n };

	return mm_guard_run(do_copy, &c);
}

int mm_guard_copy_iov(void *buf, const struct iovec *iov, int niov, bool to_iov)
{
	char *b = buf;

	for (int i = 0; i < niov; i++) {
		int r = to_iov ? mm_guard_copy(iov[i].iov_base, b, iov[i].iov_len)
			       : mm_guard_copy(b, iov[i].iov_base, iov[i].iov_len);

		if (r < 0)
			return r;
		b += iov[i].iov_len;
	}
	return 0;
}
