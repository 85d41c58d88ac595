#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include "guard.h"

/* A guarded run on this thread: where to jump back to, and the memory of
 * the areas it touches, the ranges a fault must lie in to be its own. */
struct frame {
	sigjmp_buf jb;
	const struct iovec *areas;	/* NULL: whatever the run touches */
	int nareas;
};

/* initial-exec: a plain load, not a __tls_get_addr() call, in the shared
 * library too (one pointer: it fits the static TLS glibc keeps for dlopen) */
static __thread struct frame *guard_cur __attribute__((tls_model("initial-exec")));
/* Whether a SIGBUS that is not ours goes to the handler we replaced (a
 * library's host program may have one), and that handler. Both are set
 * once, by the first install. */
static bool chained;
static struct sigaction prev;

/* The codes of a fault of this thread's own access, which the access would
 * make again: a truncated file's page (BUS_ADRERR), an object's error, a
 * memory error met by the access. Not BUS_MCEERR_AO (a page found bad in
 * the background, not ours to answer), nor a SIGBUS sent by kill(2),
 * tgkill(2) or sigqueue(3) (si_code <= 0) or by the kernel as such
 * (SI_KERNEL): those carry no address of ours. */
static bool access_fault(const siginfo_t *si)
{
	switch (si->si_code) {
	case BUS_ADRALN:
	case BUS_ADRERR:
	case BUS_OBJERR:
#ifdef BUS_MCEERR_AR
	case BUS_MCEERR_AR:
#endif
		return true;
	default:
		return false;
	}
}

static bool in_areas(const struct frame *f, const void *addr)
{
	uintptr_t a = (uintptr_t)addr;

	if (!f->areas)
		return true;
	for (int i = 0; i < f->nareas; i++) {
		uintptr_t base = (uintptr_t)f->areas[i].iov_base;

		if (a >= base && a - base < f->areas[i].iov_len)
			return true;
	}
	return false;
}

/* The default action: death by SIGBUS, with a core dump where the system
 * makes them. A fault is left to happen again on return, so that the
 * kernel kills with its own address and code; anything else is raised
 * again (blocked in a sanitizer's wrapper, it comes as the mask is put
 * back). */
static void set_default(int sig)
{
	struct sigaction dfl;

	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
}

static void die(int sig, const siginfo_t *si)
{
	set_default(sig);
	if (!access_fault(si))
		raise(sig);
}

/* A SIGBUS that is not ours, as if we had never been installed: to the
 * handler there was before us, with its mask and flags, else the default
 * action (SIG_IGN ignores a signal sent by kill(2); a fault it cannot). */
static void pass_on(int sig, siginfo_t *si, void *uctx)
{
	sigset_t mask, old;

	if (!chained || prev.sa_handler == SIG_DFL ||
	    (prev.sa_handler == SIG_IGN && access_fault(si))) {
		die(sig, si);
		return;
	}
	if (prev.sa_handler == SIG_IGN)
		return;
	if (prev.sa_flags & SA_RESETHAND)
		set_default(sig);	/* as the kernel would have, first */
	mask = prev.sa_mask;
	if (!(prev.sa_flags & SA_NODEFER))
		sigaddset(&mask, sig);
	pthread_sigmask(SIG_BLOCK, &mask, &old);
	if (prev.sa_flags & SA_SIGINFO)
		prev.sa_sigaction(sig, si, uctx);
	else
		prev.sa_handler(sig);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
	struct frame *f = guard_cur;

	if (f && access_fault(si) && in_areas(f, si->si_addr)) {
		guard_cur = NULL;	/* mm_guard_run puts back the outer one */
		/* Leave with the mask of the code that faulted, as a return
		 * would: a handler wrapped by a sanitizer (TSan) runs with
		 * every signal blocked, and a SIGBUS blocked kills at once. */
		pthread_sigmask(SIG_SETMASK, &((ucontext_t *)uctx)->uc_sigmask, NULL);
		siglongjmp(f->jb, 1);
	}
	/* Not ours. The program's handler may jump out of the guarded call
	 * that this thread may be in: no run of ours until it returns. */
	guard_cur = NULL;
	pass_on(sig, si, uctx);
	guard_cur = f;
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
	chained = chain;
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

static int run(const struct iovec *areas, int nareas, int (*fn)(void *arg), void *arg)
{
	struct frame f;
	struct frame *volatile outer = guard_cur;
	int ret;

	f.areas = areas;
	f.nareas = nareas;
	/* No mask to save: the handler puts back the faulting code's own
	 * before it jumps, and saving it here would cost a system call on
	 * every guarded copy. */
	if (sigsetjmp(f.jb, 0)) {
		guard_cur = outer;
		return -EFAULT;
	}
	guard_cur = &f;
	ret = fn(arg);
	guard_cur = outer;
	return ret;
}

int mm_guard_run(int (*fn)(void *arg), void *arg)
{
	return run(NULL, 0, fn, arg);
}

struct copy_args {
	void *dst;
	const void *src;
	size_t n;
};

#define COPY_PIECE 2048

/* memcpy; but where the destination lies 1 to 31 bytes past the source,
 * modulo 64, in pieces of COPY_PIECE bytes. There the `rep movsb` that
 * glibc's memcpy takes for larger copies runs at a tenth of its speed on
 * AMD's Zen (256 KiB: 1.9 against 20 to 30 GB/s), while copies of 2 KiB
 * take its vector loops, which do not care. A ring's data is page-aligned
 * from the writer's first restart on (ring.h), so a program's buffer from
 * malloc (16 bytes past a page) meets it so. */
static void copy(void *dst, const void *src, size_t n)
{
	size_t skew = ((uintptr_t)dst - (uintptr_t)src) & 63;
	char *d = dst;
	const char *s = src;

	if (skew == 0 || skew >= 32) {
		memcpy(dst, src, n);
		return;
	}
	for (; n > COPY_PIECE; n -= COPY_PIECE, d += COPY_PIECE, s += COPY_PIECE)
		memcpy(d, s, COPY_PIECE);
	memcpy(d, s, n);
}

static int do_copy(void *arg)
{
	struct copy_args *c = arg;

	copy(c->dst, c->src, c->n);
	return 0;
}

int mm_guard_copy(void *dst, const void *src, size_t n)
{
	struct copy_args c = { dst, src, n };
	const struct iovec both[2] = { { dst, n }, { (void *)src, n } };

	return run(both, 2, do_copy, &c);
}

struct iov_args {
	char *buf;
	const struct iovec *iov;
	int niov;
	bool to_iov;
};

static int do_copy_iov(void *arg)
{
	struct iov_args *c = arg;
	char *b = c->buf;

	for (int i = 0; i < c->niov; i++) {
		if (c->to_iov)
			copy(c->iov[i].iov_base, b, c->iov[i].iov_len);
		else
			copy(b, c->iov[i].iov_base, c->iov[i].iov_len);
		b += c->iov[i].iov_len;
	}
	return 0;
}

int mm_guard_copy_iov(void *buf, const struct iovec *iov, int niov, bool to_iov)
{
	struct iov_args c = { buf, iov, niov, to_iov };

	return run(iov, niov, do_copy_iov, &c);
}
