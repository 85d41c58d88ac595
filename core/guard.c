#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <ucontext.h>

#include "guard.h"

/* initial-exec: a plain load, not a __tls_get_addr() call, in the shared
 * library too (one pointer: it fits the static TLS glibc keeps for dlopen) */
static __thread sigjmp_buf *guard_jmp __attribute__((tls_model("initial-exec")));
/* The handler we replaced, when chaining (a library's host program may
 * have one); else SIG_DFL. */
static struct sigaction prev;

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
	sigjmp_buf *jb = guard_jmp;

	if (jb) {
		guard_jmp = NULL;
		/* Leave with the mask of the code that faulted, as a return
		 * would: a handler wrapped by a sanitizer (TSan) runs with
		 * every signal blocked, and a SIGBUS blocked kills at once. */
		pthread_sigmask(SIG_SETMASK, &((ucontext_t *)uctx)->uc_sigmask, NULL);
		siglongjmp(*jb, 1);
	}
	/* Not ours: the handler there was before us, else die as we would
	 * have without a handler (an ignored SIGBUS from a fault kills too). */
	if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
		prev.sa_sigaction(sig, si, uctx);
		return;
	}
	if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL &&
	    prev.sa_handler != SIG_IGN) {
		prev.sa_handler(sig);
		return;
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static int install(bool chain)
{
	struct sigaction sa, old;

	if (sigaction(SIGBUS, NULL, &old) < 0)
		return -errno;
	if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == on_sigbus)
		return 0;	/* installed already */
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (chain)
		prev = old;
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		return -errno;
	return 0;
}

int mm_guard_init(void)
{
	return install(false);
}

int mm_guard_init_chained(void)
{
	return install(true);
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
