/* mmapfs core: survive a shared mapping that shrinks under us.
 *
 * If the file behind a shared mapping is truncated, touching the pages past
 * its new end raises SIGBUS. Every access to an area's memory that a peer
 * could make fault runs through mm_guard_run(): a fault inside it becomes
 * -EFAULT for that call, on that thread, and nothing else happens. A SIGBUS
 * outside a guarded call is a real bug and still kills the process; in a
 * library, it goes to the program's own handler, installed before ours. */
#ifndef MMAPFS_GUARD_H
#define MMAPFS_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

/* Install the SIGBUS handler; call once at start-up, before any thread.
 * Returns 0 or -errno. A second call (of either) does nothing. */
int mm_guard_init(void);

/* The same for a library: a SIGBUS outside a guarded call goes to the
 * handler this one replaces (the program's), or kills the process if there
 * was none (SIG_DFL, SIG_IGN). */
int mm_guard_init_chained(void);

/* Run fn(arg) and return its result, or -EFAULT if it faulted on a mapping. */
int mm_guard_run(int (*fn)(void *arg), void *arg);

/* memcpy() under the guard: 0 or -EFAULT. */
int mm_guard_copy(void *dst, const void *src, size_t n);

/* The same between a flat buffer and the pieces of an area (a wrapped
 * ring gives two): into the pieces when to_iov, else out of them. */
int mm_guard_copy_iov(void *buf, const struct iovec *iov, int niov, bool to_iov);

#endif
