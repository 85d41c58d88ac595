/* mmapfs core: survive a shared mapping that shrinks under us.
 *
 * If the file behind a shared mapping is truncated, touching the pages past
 * its new end raises SIGBUS. Every access to an area's memory that a peer
 * could make fault runs through mm_guard_run() or a guarded copy: a fault
 * of that access becomes -EFAULT for that call, on that thread, and nothing
 * else happens. A fault is the call's own when the kernel raised it for an
 * access (si_code BUS_ADRERR, BUS_ADRALN, BUS_OBJERR, BUS_MCEERR_AR) on a
 * thread inside a guarded call, at an address (si_addr) inside the areas
 * the call names: a copy names its area side (mm_guard_copy_iov: the
 * pieces; mm_guard_copy: both sides), mm_guard_run() whatever its function
 * touches, which must be area memory alone. Any other SIGBUS (the caller's
 * buffer, a fault outside a guarded call, one sent by kill(2)) is not
 * ours: the daemon dies of it (SIG_DFL, its core dump with the real
 * address); in a library, it goes to the program's handler installed
 * before ours (with that handler's flags and mask), or to the default
 * action if there was none, as if the library were not there. */
#ifndef MMAPFS_GUARD_H
#define MMAPFS_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

/* Install the SIGBUS handler; call once at start-up, before any thread.
 * Returns 0 or -errno. A second call (of either) does nothing. */
int mm_guard_init(void);

/* The same for a library: a SIGBUS that is not a guarded call's goes to
 * the handler this one replaces (the program's), or gets the default
 * action if there was none (SIG_DFL; SIG_IGN ignores a SIGBUS sent by
 * kill(2), a fault kills). */
int mm_guard_init_chained(void);

/* Run fn(arg) and return its result, or -EFAULT if it faulted on a mapping.
 * fn touches area memory only (and its own locals). */
int mm_guard_run(int (*fn)(void *arg), void *arg);

/* memcpy() under the guard: 0 or -EFAULT. */
int mm_guard_copy(void *dst, const void *src, size_t n);

/* The same between a flat buffer and the pieces of an area (a wrapped
 * ring gives two): into the pieces when to_iov, else out of them. */
int mm_guard_copy_iov(void *buf, const struct iovec *iov, int niov, bool to_iov);

#endif
