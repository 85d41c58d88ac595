/* libmmapfs (mmapfs.h): a channel's stream through the mapped areas, on
 * top of core (docs/PROTOCOL.md, "Native access").
 *
 * The claim is an open descriptor of CHAN/data: the daemon's own open()
 * gives ENOTCONN, EBUSY, ENXIO and EAGAIN, and its release of that
 * descriptor ends our stream. The areas are found in CHAN/status and
 * mapped as a view (view.c); bytes move with core's stream calls, and a
 * wait watches the peer's heartbeat. Across a VM with a doorbell the
 * daemon rings and waits for us (MM_IOC_RING, MM_IOC_WAIT). With an xpra
 * peer the view's chunk lists (chunks.c) are filled and emptied by the
 * program's calls. Inside: -errno, as in core; -1 and errno only at the
 * public edge. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "chunks.h"
#include "guard.h"
#include "mmapfs.h"
#include "stream.h"

/* Any list fits: MM_CHUNKS_MAX lines of "4294967295 4294967295\n", a NUL. */
_Static_assert(MM_CHUNKS_MAX * 22 + 1 <= MMAPFS_CHUNKS_TEXT_MAX, "MMAPFS_CHUNKS_TEXT_MAX");

#define STATUS_MAX (32 * 1024)
/* How long a call that has to wait looks again before it sleeps. */
#define SPIN_NS 10000
#define SPIN_PAUSES 16		/* between two looks: less traffic on the pointers */
/* How often at most the bytes moved are told to the daemon (status). */
#define TELL_MS 250
#define HOLD_NS 2000000		/* a reader still this long has stopped */

/* A direction's doorbell across a VM, which its daemon rings for us
 * (MM_IOC_RING): core's wake() calls it after a move the peer may sleep
 * through. */
struct lib_bell {
	struct mm_bell bell;		/* first: what the direction holds */
	int fd;
	unsigned dir;
};

/* What a direction told its daemon last: its own thread's. */
struct told {
	uint64_t bytes;
	uint64_t ms;
};

struct mmapfs_chan {
	struct mm_channel ch;		/* the view */
	int fd;				/* CHAN/data: the claim */
	bool nonblock;
	bool tells;			/* the daemon takes our counts */
	unsigned dirs;
	uint64_t watched_ms;		/* atomic: the peer's beat last looked at */
	uint64_t asked_ms;		/* atomic: the daemon last asked */
	struct lib_bell bells[2];	/* the read area's, the write area's;
					 * bell.hears (the direction's own
					 * thread's): its waits go through the
					 * daemon, which hears the peer's */
	/* the reader's */
	struct mm_slice slice;		/* the last read_begin's, until its end */
	size_t handed;			/* how much of it the caller has */
	bool in_stream;			/* bytes of a stream taken, not its end */
	bool at_end;			/* the last read was an end of stream */
	struct told rd_told;
	/* the writer's */
	struct told wr_told;
	uint32_t hold_seen;		/* the reader's start, at the window's edge */
	uint64_t hold_moved_ns;		/* when it was last seen to move */
};

static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_err;

static void guard_setup(void)
{
	guard_err = mm_guard_init_chained();
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
	return now_ns() / 1000000;
}

static uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* How far a pointer surely moves before it comes round: a ring, or where a
 * writer may start again behind a mark (ring.h), the window less where it
 * starts again (its shortest lap runs from MM_RING_AGAIN to a mark past
 * 8 + MM_RING_WINDOW). */
static size_t turn(const struct mm_ring *r)
{
	size_t cap = mm_ring_capacity(r);

	return r->mark && cap > MM_RING_WINDOW ? MM_RING_WINDOW - MM_RING_AGAIN : cap;
}

/* Tell the daemon of this end what dir moved since the last time, for
 * status's counters (MM_IOC_BYTES): at most every TELL_MS, unless `now`,
 * or the `next` bytes about to move could bring the pointer round to where
 * it stood at the last report. Called by dir's own thread. */
static void tell(struct mmapfs_chan *c, unsigned dir, bool now, size_t next)
{
	struct told *t = dir == MM_RD ? &c->rd_told : &c->wr_told;
	uint64_t moved = __atomic_load_n(dir == MM_RD ? &c->ch.rd.bytes : &c->ch.wr.bytes,
					 __ATOMIC_RELAXED);
	struct mm_ioc_bytes b = { 0, 0 };
	uint64_t ms;

	if (!c->tells || moved == t->bytes)
		return;
	ms = coarse_ms();
	/* and before the pointer could come round again: the daemon counts
	 * no more than it moved since the last report, less than a turn */
	if (!now && ms - t->ms < TELL_MS &&
	    moved - t->bytes + next < turn(dir == MM_RD ? &c->ch.rd.ring : &c->ch.wr.ring))
		return;
	*(dir == MM_RD ? &b.read : &b.written) = moved - t->bytes;
	ioctl(c->fd, MM_IOC_BYTES, &b);
	t->bytes = moved;
	t->ms = ms;
}

static void lib_ring(const struct mm_bell *b, unsigned vector)
{
	const struct lib_bell *lb = (const struct lib_bell *)(const void *)b;
	struct mm_ioc_ring r = { lb->dir, vector };

	ioctl(lb->fd, MM_IOC_RING, &r);
}

/* Areas with a doorbell, across a VM from their peer (status's
 * DIR.doorbell): the peer's futex wakes cannot reach us, nor ours it.
 * Our daemon rings for us, and waits for us where it hears the peer. */
static void bells(struct mmapfs_chan *c)
{
	for (unsigned i = 0; i < 2; i++) {
		struct mm_dir *d = i == 0 ? &c->ch.rd : &c->ch.wr;

		if (!d->usable || !d->view_bell || d->local)
			continue;
		c->bells[i] = (struct lib_bell){
			.bell = { .ring = lib_ring, .hears = d->view_bell == MM_VIEW_HEARS },
			.fd = c->fd,
			.dir = i == 0 ? MM_RD : MM_WR,
		};
		d->bell = &c->bells[i].bell;
	}
}

/* Wait through the daemon (MM_IOC_WAIT) until dir's words move from
 * state: 0, or -EINTR. A daemon that cannot (one without the call, or out
 * of memory) leaves the wait to mm_stream_wait(), for step µs, as does an
 * answer whose move we cannot see (no turn of the loop goes without a
 * sleep); a peer it found dead, or a channel failed, ends the stream for
 * us too. */
static int daemon_wait(struct mmapfs_chan *c, unsigned dir, const uint32_t *state,
		       unsigned step)
{
	struct mm_ioc_wait w = { .events = dir == MM_RD ? POLLIN : POLLOUT };
	uint32_t now[MM_STREAM_STATE_WORDS];

	memcpy(w.state, state, sizeof(w.state));
	if (ioctl(c->fd, MM_IOC_WAIT, &w) == 0) {
		mm_stream_state(&c->ch, w.events, now);
		if (memcmp(now, state, sizeof(now)) != 0)
			return 0;
		return mm_stream_wait(&c->ch, dir, step);
	}
	if (errno == EINTR)
		return -EINTR;
	if (errno == EPIPE || errno == EIO || errno == ENOTCONN) {
		mm_channel_peer_dead(&c->ch);
		return 0;
	}
	if (errno == ENOTTY || errno == EINVAL)
		c->bells[dir == MM_RD ? 0 : 1].bell.hears = false;
	return mm_stream_wait(&c->ch, dir, step);
}

/* Why this thread's last call failed (mmapfs_reason). */
static __thread char reason[512];

const char *mmapfs_reason(void)
{
	return reason;
}

/* The public edge: -1 and errno from a -errno, and the reason: why, else
 * the errno's text. */
static int fail_why(long r, const char *why)
{
	snprintf(reason, sizeof(reason), "%s", why && *why ? why : strerror((int)-r));
	errno = (int)-r;
	return -1;
}

static int fail(long r)
{
	return fail_why(r, NULL);
}

/* A stream call's failure: the channel's reason where it broke or its
 * peer died (status's error=, what the files would say). */
static int fail_stream(struct mmapfs_chan *c, long r)
{
	char why[sizeof(reason)] = "";

	if (mm_channel_failed(&c->ch) < 0 || mm_channel_peer_state(&c->ch) == MM_PEER_DEAD)
		mm_channel_reason(&c->ch, why, sizeof(why));
	return fail_why(r, why);
}

/* CHAN/status, whole, into buf: its length or -errno. */
static ssize_t read_status(const char *dir, char *buf, size_t max)
{
	char path[PATH_MAX];
	size_t len = 0;
	ssize_t n = 1;
	int fd, e;

	if (snprintf(path, sizeof(path), "%s/status", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len < max && (n = read(fd, buf + len, max - len)) > 0)
		len += (size_t)n;
	e = errno;
	close(fd);
	return n < 0 ? -e : (ssize_t)len;
}

struct mmapfs_chan *mmapfs_open(const char *chan_dir, int flags)
{
	int acc = flags & O_ACCMODE, e;
	struct mm_err err = { "" };
	struct mmapfs_chan *c;
	char path[PATH_MAX];
	char *status;
	ssize_t n;

	if ((flags & ~(O_ACCMODE | O_NONBLOCK | O_CLOEXEC)) || acc == O_ACCMODE) {
		fail_why(-EINVAL, "flags: O_RDONLY, O_WRONLY or O_RDWR, and O_NONBLOCK");
		return NULL;
	}
	pthread_once(&guard_once, guard_setup);
	if (guard_err) {
		fail_why(guard_err, "cannot install the SIGBUS handler");
		return NULL;
	}
	if (snprintf(path, sizeof(path), "%s/data", chan_dir) >= (int)sizeof(path)) {
		fail(-ENAMETOOLONG);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	status = malloc(STATUS_MAX);
	if (!c || !status) {
		free(c);
		free(status);
		fail(-ENOMEM);
		return NULL;
	}
	c->nonblock = flags & O_NONBLOCK;
	/* the claim: the daemon's open() says whether we may */
	c->fd = open(path, acc | (flags & O_NONBLOCK) | O_CLOEXEC);
	if (c->fd < 0) {
		e = errno;
		mm_fail(&err, -e, "%s: %s", path, strerror(e));
		goto out;
	}
	/* claimed: no handshake can change the areas the status names now */
	n = read_status(chan_dir, status, STATUS_MAX);
	e = n < 0 ? (int)-n : 0;
	if (n < 0)
		mm_fail(&err, -e, "%s/status: %s", chan_dir, strerror(e));
	if (n >= 0) {
		int r = mm_channel_view(&c->ch, status, (size_t)n,
					acc == O_RDONLY ? MM_RD : acc == O_WRONLY ? MM_WR : MM_RD | MM_WR,
					now_ms(), &err);

		e = r < 0 ? -r : 0;
		c->dirs = r < 0 ? 0 : (unsigned)r;
	}
	if (e)
		close(c->fd);	/* gives the claim back */
out:
	free(status);
	if (e) {
		free(c);
		fail_why(-e, err.msg);
		return NULL;
	}
	c->watched_ms = now_ms();
	/* a library's claim, from now on: its daemon knows whose the chunk
	 * lists are (a daemon without the call: ENOTTY, and nothing to tell) */
	c->tells = ioctl(c->fd, MM_IOC_BYTES, &(struct mm_ioc_bytes){ 0, 0 }) == 0;
	bells(c);
	return c;
}

/* Look at the peer's heartbeat. A view looks only when a call finds
 * nothing to do: a blocked call at least every beat, but a non-blocking
 * one, after a pause, cannot tell when the beat last moved; it then asks
 * the daemon of this end, which watches all the time (poll's POLLHUP: the
 * peer is dead; POLLERR: the channel or that daemon failed). A view that
 * has not mapped the area of the peer's beats (format version 2: live.c,
 * mm_ext_dir) asks every time, at most every MM_TICK_MS. */
static void watch(struct mmapfs_chan *c, bool ask)
{
	uint64_t now = now_ms();
	uint64_t last = __atomic_exchange_n(&c->watched_ms, now, __ATOMIC_RELAXED);
	struct pollfd p = { .fd = c->fd, .events = POLLIN | POLLOUT };
	bool blind = c->ch.beats_unmapped;

	mm_channel_watch(&c->ch, now);
	if (blind)
		last = __atomic_load_n(&c->asked_ms, __ATOMIC_RELAXED);
	if ((ask || blind) && now - last >= MM_TICK_MS) {
		__atomic_store_n(&c->asked_ms, now, __ATOMIC_RELAXED);
		if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)))
			mm_channel_peer_dead(&c->ch);
	}
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

enum op { OP_READ, OP_READ_BEGIN, OP_WRITE };

/* A blocking writer at the working window's edge waits for its reader
 * while the reader moves (mm_stream_write_hold): it has moved within
 * HOLD_NS. */
static bool reader_moving(void *arg)
{
	struct mmapfs_chan *c = arg;
	uint64_t now = now_ns();

	if (c->ch.wr.seen != c->hold_seen) {
		c->hold_seen = c->ch.wr.seen;
		c->hold_moved_ns = now;
	}
	return now - c->hold_moved_ns < HOLD_NS;
}

/* One stream call, repeated while it says -EAGAIN (unless non-blocking).
 * A peer that answers within SPIN_NS is met by looking again: sleeping
 * and being woken cost tens of microseconds on a VM. After that, a futex
 * wait, woken at once by a peer on this host, bounded so that the
 * heartbeat is looked at every beat (and a peer that may be across a VM
 * boundary, which cannot wake us, every 10 ms); or, where our daemon
 * hears that peer's doorbell, a wait in the daemon (daemon_wait). */
static ssize_t stream_call(struct mmapfs_chan *c, enum op op, void *buf, size_t len)
{
	unsigned dir = op == OP_WRITE ? MM_WR : MM_RD, step = MM_WAIT_MIN_US;
	uint32_t state[MM_STREAM_STATE_WORDS];
	const bool *by_daemon = &c->bells[dir == MM_RD ? 0 : 1].bell.hears;
	uint64_t spin_end = 0;
	bool sleepy = false;		/* looks before a daemon's wait */

	for (;;) {
		ssize_t n;
		int r;

		/* what a wait through the daemon waits to see move */
		if (sleepy)
			mm_stream_state(&c->ch, dir == MM_RD ? POLLIN : POLLOUT, state);
		if (op == OP_WRITE)
			n = mm_stream_write_hold(&c->ch, buf, len, c->nonblock ? NULL : reader_moving,
						 c);
		else if (op == OP_READ)
			n = mm_stream_read(&c->ch, buf, len);
		else
			n = mm_stream_read_begin(&c->ch, len, &c->slice);
		if (op != OP_WRITE && (n >= 0 || n == -ECONNRESET)) {
			/* ECONNRESET ends a stream as 0 does (stream.h) */
			c->in_stream = n > 0;
			c->at_end = n <= 0;
		}
		if (n != -EAGAIN)
			return n;
		if (c->nonblock) {
			watch(c, true);
			if (mm_channel_peer_state(&c->ch) == MM_PEER_DEAD || mm_channel_failed(&c->ch))
				continue;	/* say so now: EPIPE, ECONNRESET */
			return n;
		}
		if (spin_end == 0)
			spin_end = now_ns() + SPIN_NS;
		if (now_ns() < spin_end) {
			for (int k = 0; k < SPIN_PAUSES; k++)
				cpu_relax();
			continue;
		}
		if (*by_daemon && !sleepy) {
			sleepy = true;	/* look once more, the state first */
			continue;
		}
		if (*by_daemon)
			r = daemon_wait(c, dir, state, step);
		else
			r = mm_stream_wait(&c->ch, dir, step);
		watch(c, false);
		tell(c, dir, false, 0);
		if (r == -EINTR)
			return -EINTR;
		if ((step *= 2) > mm_stream_wait_max(&c->ch, dir))
			step = mm_stream_wait_max(&c->ch, dir);
	}
}

ssize_t mmapfs_read(struct mmapfs_chan *c, void *buf, size_t len)
{
	ssize_t n;

	if (!c || !(c->dirs & MM_RD))
		return fail(-EBADF);
	if (len == 0)
		return 0;
	tell(c, MM_RD, false, len);
	n = stream_call(c, OP_READ, buf, len);
	tell(c, MM_RD, false, 0);
	return n < 0 ? fail_stream(c, n) : n;
}

ssize_t mmapfs_write(struct mmapfs_chan *c, const void *buf, size_t len)
{
	size_t done = 0;
	ssize_t n = 0;

	if (!c || !(c->dirs & MM_WR))
		return fail(-EBADF);
	/* blocking: the whole count; non-blocking: what fits, or EAGAIN */
	while (done < len) {
		tell(c, MM_WR, false, len - done);
		n = stream_call(c, OP_WRITE, (char *)buf + done, len - done);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	tell(c, MM_WR, false, 0);
	if (done > 0 || len == 0)
		return (ssize_t)done;
	return fail_stream(c, n);
}

ssize_t mmapfs_read_begin(struct mmapfs_chan *c, const void **p, size_t max)
{
	ssize_t n;

	if (!c || !(c->dirs & MM_RD))
		return fail(-EBADF);
	if (max == 0 || !p)
		return fail(-EINVAL);
	c->handed = 0;
	tell(c, MM_RD, false, max);
	n = stream_call(c, OP_READ_BEGIN, NULL, max);
	if (n <= 0)
		return n < 0 ? fail_stream(c, n) : 0;
	/* one piece: up to where the ring wraps */
	*p = c->slice.iov[0].iov_base;
	c->handed = c->slice.iov[0].iov_len;
	return (ssize_t)c->handed;
}

int mmapfs_read_end(struct mmapfs_chan *c, size_t n)
{
	int r;

	if (!c || !(c->dirs & MM_RD))
		return fail(-EBADF);
	if (n > c->handed || (n == 0 && c->handed == 0))
		return fail(-EINVAL);
	r = mm_stream_read_end(&c->ch, &c->slice, n);
	c->handed = 0;
	tell(c, MM_RD, false, 0);
	return r < 0 ? fail_stream(c, r) : 0;
}

int mmapfs_chunks_put(struct mmapfs_chan *c, const char *text)
{
	struct mm_err err = { "" };
	int r;

	if (!c || !(c->dirs & MM_RD))
		return fail(-EBADF);
	if (!text)
		return fail(-EINVAL);
	r = mm_channel_chunks_add(&c->ch, text, strlen(text), &err);
	return r < 0 ? fail_why(r, err.msg) : 0;
}

ssize_t mmapfs_chunks_get(struct mmapfs_chan *c, char *buf, size_t len)
{
	int r;

	if (!c || !(c->dirs & MM_WR))
		return fail(-EBADF);
	if (!buf)
		return fail(-EINVAL);
	r = mm_channel_chunks_text(&c->ch, buf, len);
	if (r == -ENOSPC)
		return fail_why(r, "chunks: the list is longer than the buffer");
	if (r == -EOVERFLOW) {
		char why[80];

		snprintf(why, sizeof(why), "chunks: more than %d pieces since the last call: "
			 "the list is lost", MM_CHUNKS_MAX);
		return fail_why(r, why);
	}
	if (r == -EOPNOTSUPP)
		return fail_why(r, "chunks: the peer is mmapfs, whose writer always wraps: "
				"chunk lists are for xpra peers");
	return r < 0 ? fail(r) : r;
}

int mmapfs_fd(struct mmapfs_chan *c)
{
	return c ? c->fd : fail(-EBADF);
}

int mmapfs_close(struct mmapfs_chan *c)
{
	int r;

	if (!c)
		return fail(-EBADF);
	/* a reader that leaves in the middle of a stream abandons it, as the
	 * daemon's readers do: with version 2 the trailer says so, and the
	 * daemon drops the rest at the release of our claim */
	if ((c->dirs & MM_RD) &&
	    (c->in_stream || (!c->at_end && mm_stream_pending(&c->ch))))
		mm_stream_abandon(&c->ch);
	tell(c, MM_RD, true, 0);
	tell(c, MM_WR, true, 0);
	mm_channel_destroy(&c->ch);
	/* the daemon's release of the claim ends our stream */
	r = close(c->fd);
	free(c);
	return r;
}
