/* The stream file `pipe`: the same stream as `data`, as a FIFO node
 * (docs/mmapfs.1, DATA; docs/PROTOCOL.md, "The pipe file").
 *
 * The kernel serves a FIFO's open, read and write itself, as a local pipe:
 * none of them reaches the daemon. What does is the LOOKUP of `pipe` that
 * comes before every open (its entry is never cached). There the daemon
 * reads what the caller is doing (/proc/TID/syscall: its thread is inside
 * that system call, waiting for the answer). A stat or an ls is answered and
 * nothing more. An open claims its direction of the stream as an open of
 * `data` would, so ENOTCONN, EBUSY and ENXIO come back as the open's error,
 * and is answered with that direction's own FIFO: writers get F_PIPE,
 * readers F_PIPE_IN, so a reader and a writer of one end never meet in
 * one kernel pipe. Then the pump thread opens the other end of that FIFO
 * through the daemon's own mount, by a name only it may look up, and
 * moves bytes between the FIFO and the ring in large batches:
 *
 *   out  the application writes the FIFO; the pump reads it into the
 *        write ring. Its last close (POLLHUP) ends the stream, as close(2)
 *        of `data` does.
 *   in   the pump writes the read ring's bytes into the FIFO; they are
 *        taken from the ring only once the application has read them
 *        (FIONREAD tells), so a reader that leaves early leaves the rest
 *        to the next one. At an end of stream the pump closes its end: the
 *        reader sees end of file.
 *
 * The pump sleeps in epoll on its FIFOs. A session waiting for the ring
 * (full, or empty) is watched by the ticker beside the poll handles, and
 * the ticker wakes the pump through an eventfd. An idle channel has no
 * session and no descriptor: the daemon holds one on its own mount only
 * while an application has `pipe` open, so unmount and rmdir work as
 * soon as the applications let go. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fs.h"
#include "guard.h"
#include "ring.h"
#include "stream.h"

#define PUMP_BATCH (1024 * 1024)	/* the most moved in one step */
#define FIFO_SIZE_MAX (1024 * 1024)	/* F_SETPIPE_SZ, at most */
#define ARRIVE_MS 2000			/* an opener's longest way to the FIFO */
#define ARRIVE_MIN_US 20		/* first look for a late opener */
#define ARRIVE_MAX_US 50000
#define TAIL_MIN_US 100			/* bytes in the FIFO, nothing new: */
#define TAIL_MAX_US 20000		/* how often to see what was read */
#define RUNNING_TRIES 100		/* 10 us apart: a caller on its way to sleep */
#define NOSPACE_US 100000		/* a write area's disk full: try again */

/* The daemon opens its ends of a channel's FIFOs by names of their own
 * at the top, .pipe.ID.out and .pipe.ID.in, that only its own threads
 * find: a lookup in the channel's directory would wait behind the
 * opener's, which the kernel runs one at a time there (libfuse 3.14
 * does not ask for parallel lookups), and under its directory lock. */
static const char *const end_names[] = {
	[F_PIPE] = "out",
	[F_PIPE_IN] = "in",
};

struct pipe_sess {
	struct handle h;	/* the claim's owner: h.ch, h.kind, h.dirs */
	pid_t tid;		/* fixed: the opener */
	int fd;			/* our end, -1 before and after (set under
				 * fs->lock: pipe_gone() polls it) */
	bool ready;		/* fs->lock: the ticker saw the ring move */
	bool done;		/* fs->lock: finished, its claim on the way back */
	bool fired;		/* pump: an epoll event came */
	bool arrived;		/* pump: the application's end was seen */
	uint64_t since_us;	/* made at */
	uint64_t due_us;	/* pump: next timed look, 0 none */
	unsigned step_us;	/* pump: the wait before the next look */
	size_t inflight;	/* pump, in: in the FIFO, not yet taken */
	bool in_stream;		/* pump, in: the reader took bytes */
	char *pend;		/* pump, out: read from the FIFO, not yet */
	size_t pend_len;	/* in the ring (a short write) */
	struct pipe_sess *next;	/* fs->lock: in fs->pipes */
};

/* How a session ends: its stream done (or broken), its opener never came,
 * or (in) its reader gone before the end of the stream. */
enum step_end { GOING, END_STREAM, END_ABANDON, END_LEFT };

static struct pipe_sess *sess_of(const struct handle *h)
{
	return (struct pipe_sess *)(uintptr_t)h;	/* h is its first member */
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- what the caller of a LOOKUP is doing ---- */

enum doing { DOING_OTHER, DOING_OPEN, DOING_UNKNOWN };

/* Is thread tid in an open system call, and with which flags? Its
 * /proc/TID/syscall says, while it sleeps in one (as it does inside a
 * LOOKUP, or in a FIFO's open waiting for the other end; our request may
 * come a moment before its sender is asleep: "running", look again).
 * UNKNOWN if we may not look (another user's process, without root). */
static enum doing doing(pid_t tid, int *flags)
{
	char path[64], buf[256];
	unsigned long a[6];
	ssize_t n = 0;
	long nr;
	int fd;

	if (tid <= 0)
		return DOING_UNKNOWN;	/* in a pid namespace we cannot see */
	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)tid);
	for (unsigned tries = 0; tries < RUNNING_TRIES; tries++) {
		struct timespec ts = { 0, 10000 };

		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return errno == ENOENT || errno == ESRCH ? DOING_OTHER : DOING_UNKNOWN;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			return DOING_UNKNOWN;
		buf[n] = '\0';
		if (strncmp(buf, "running", 7) != 0)
			break;
		nanosleep(&ts, NULL);
	}
	if (sscanf(buf, "%ld 0x%lx 0x%lx 0x%lx 0x%lx 0x%lx 0x%lx", &nr, &a[0], &a[1], &a[2],
		   &a[3], &a[4], &a[5]) != 7)
		return strncmp(buf, "running", 7) == 0 ? DOING_UNKNOWN : DOING_OTHER;
	switch (nr) {
	case SYS_openat:
		*flags = (int)a[2];
		return DOING_OPEN;
#ifdef SYS_open
	case SYS_open:
		*flags = (int)a[1];
		return DOING_OPEN;
#endif
#ifdef SYS_creat
	case SYS_creat:
		*flags = O_WRONLY | O_CREAT | O_TRUNC;
		return DOING_OPEN;
#endif
#ifdef SYS_openat2
	case SYS_openat2:
		return DOING_UNKNOWN;	/* its flags are in the caller's memory */
#endif
	default:
		return DOING_OTHER;
	}
}

/* ---- the lookups ---- */

fuse_ino_t pipe_end_ino(fuse_req_t req, const char *name)
{
	unsigned long long id;
	char path[64], kind[4];
	int len = 0;

	if (strncmp(name, ".pipe.", 6) != 0 ||
	    sscanf(name, ".pipe.%llu.%3[a-z]%n", &id, kind, &len) != 2 || name[len] != '\0')
		return 0;
	snprintf(path, sizeof(path), "/proc/self/task/%d", (int)fuse_req_ctx(req)->pid);
	if (access(path, F_OK) < 0)
		return 0;	/* not one of our threads: a channel's name */
	for (enum file_kind k = F_PIPE; k <= F_PIPE_IN; k += F_PIPE_IN - F_PIPE)
		if (strcmp(kind, end_names[k]) == 0)
			return (fuse_ino_t)((id << INO_SHIFT) | k);
	return 0;
}

static void pump_kick(struct mmfs *fs)
{
	uint64_t one = 1;

	if (write(fs->pump_ev, &one, sizeof(one)) < 0 && errno != EAGAIN)
		fuse_log(FUSE_LOG_ERR, "mmapfs: waking the pump: %s\n", strerror(errno));
}

static int connect_end(struct mmfs *fs, struct pipe_sess *s);

int pipe_lookup(fuse_req_t req, struct chan *ch, enum file_kind *k)
{
	struct mmfs *fs = fs_of(req);
	pid_t tid = fuse_req_ctx(req)->pid;
	struct pipe_sess *s;
	unsigned dir;
	int flags = 0, r;
	enum doing what = doing(tid, &flags);

	trace(fs, "%s: pipe looked up by thread %d: %s, flags %#x\n", ch->key.name, (int)tid,
	      what == DOING_OPEN ? "open" : what == DOING_OTHER ? "no open" : "cannot tell", flags);
	if (what == DOING_OTHER)
		return 0;		/* stat, ls, access: the writers' FIFO */
	if (what == DOING_UNKNOWN)
		return -EACCES;
	if (flags & O_PATH)
		return 0;
	if ((flags & O_ACCMODE) == O_RDWR)
		return -EINVAL;		/* a FIFO carries one direction */
	dir = (flags & O_ACCMODE) == O_RDONLY ? MM_RD : MM_WR;
	*k = dir == MM_RD ? F_PIPE_IN : F_PIPE;

	/* the same opener again: the kernel looks up a second time when the
	 * answer is another inode than its cached entry's */
	pthread_mutex_lock(&fs->lock);
	for (s = fs->pipes; s; s = s->next)
		if (s->h.ch == ch && s->h.kind == *k && s->tid == tid && !pipe_gone(&s->h))
			break;
	pthread_mutex_unlock(&fs->lock);
	if (s)
		return 0;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->h.kind = *k;
	s->h.dirs = dir;
	s->h.ch = ch;
	s->tid = tid;
	s->fd = -1;
	s->since_us = now_us();
	r = claim_wait(req, ch, dir, &s->h, flags & O_NONBLOCK);
	if (r < 0) {
		free(s);
		return r;
	}
	/* a writer: our reader end is there before its open, which then
	 * neither waits nor (O_NONBLOCK) fails; a reader's open must come
	 * first (the pump tries) */
	if (dir == MM_WR && (r = connect_end(fs, s)) <= 0) {
		if (s->fd >= 0)
			close(s->fd);
		mm_channel_abandon(&ch->mc, &s->h);
		fuse_log(FUSE_LOG_ERR, "mmapfs: %s: pipe: opening our end: %s\n", ch->key.name,
			 strerror(r < 0 ? -r : EIO));
		free(s);
		return -EIO;
	}
	pthread_mutex_lock(&fs->lock);
	ch->refs++;
	s->next = fs->pipes;
	fs->pipes = s;
	pthread_mutex_unlock(&fs->lock);
	trace(fs, "%s: pipe opened to %s by thread %d\n", ch->key.name,
	      dir == MM_RD ? "read" : "write", (int)tid);
	pump_kick(fs);
	return 0;
}

/* What a FIFO end shows now: POLLIN, POLLHUP (no writer left, for a
 * reader end), POLLERR (no reader left, for a writer end). */
static short fifo_state(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 ? p.revents : 0;
}

/* A writer that came and left: hung up, and nothing left to read. */
static bool fifo_writer_gone(int fd)
{
	return (fifo_state(fd) & (POLLHUP | POLLIN)) == POLLHUP;
}

/* Has the application let go of h's FIFO? Its end of stream is then on the
 * way: an opener may wait for it. fs->lock held. */
bool pipe_gone(const struct handle *h)
{
	const struct pipe_sess *s = sess_of(h);

	if (s->done)
		return true;
	if (s->fd < 0)
		return false;	/* its opener is on the way */
	/* out: no writer left (POLLHUP); in: no reader left (POLLERR) */
	return (fifo_state(s->fd) & (POLLHUP | POLLERR)) != 0;
}

/* ---- waits on the ring (event.c) ---- */

static void pipe_fire(struct mmfs *fs, struct waiter *w)
{
	pthread_mutex_lock(&fs->lock);
	sess_of(handle_of_wait(w))->ready = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
}

/* Sleep until the ring moves from `state`, loaded before the last look:
 * for room (out), for bytes (in). */
static void wait_ring(struct mmfs *fs, struct pipe_sess *s, const uint32_t *state)
{
	struct waiter *w = &s->h.wait;

	pthread_mutex_lock(&fs->lock);
	w->ch = s->h.ch;
	w->fire = pipe_fire;
	w->events = s->h.dirs == MM_RD ? POLLIN : POLLOUT;
	waiter_arm(fs, w, state);
	pthread_mutex_unlock(&fs->lock);
}

/* ---- the pump ---- */

/* Open our end of s's FIFO by its own name, and check it is that FIFO. */
static int open_end(struct mmfs *fs, struct pipe_sess *s, int flags)
{
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (snprintf(path, sizeof(path), "%s/.pipe.%llu.%s", fs->mountpoint,
		     (unsigned long long)s->h.ch->key.id, end_names[s->h.kind]) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, flags | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode) ||
	    st.st_ino != chan_ino(s->h.ch, s->h.kind)) {
		close(fd);
		return -ESTALE;
	}
	return fd;
}

static void set_due(struct pipe_sess *s, unsigned us)
{
	s->step_us = us;
	s->due_us = now_us() + us;
}

/* The FIFO's size: out, large batches; in, less than half the ring, so
 * a full ring always means a full FIFO, whose reader then wakes us. */
static void size_fifo(struct pipe_sess *s)
{
	struct mm_dir_info i;
	size_t want = FIFO_SIZE_MAX;

	if (s->h.dirs == MM_RD && mm_channel_dir_info(&s->h.ch->mc, MM_RD, &i)) {
		while (want > 4096 && want > (i.ring_end - MM_RING_HEADER) / 2)
			want /= 2;
	}
	fcntl(s->fd, F_SETPIPE_SZ, (int)want);	/* best effort: a user's limit */
}

/* Make our end. 1 done, 0 try again later, -errno give up. */
static int connect_end(struct mmfs *fs, struct pipe_sess *s)
{
	struct epoll_event ev = { .data.ptr = s };
	bool left = false;
	int fd, flags;

	/* out: a reader end opens at once (and lets the writer's open
	 * through); in: a writer end opens once the reader is in its open */
	fd = open_end(fs, s, s->h.dirs == MM_WR ? O_RDONLY : O_WRONLY);
	if (fd == -ENXIO && (left = doing(s->tid, &flags) == DOING_OTHER))
		fd = open_end(fs, s, O_WRONLY);	/* out of its open: in since the last try? */
	if (fd == -ENXIO) {
		if (left || now_us() - s->since_us > ARRIVE_MS * 1000)
			return -ENXIO;	/* its open failed, or it went */
		set_due(s, s->step_us ? (s->step_us < ARRIVE_MAX_US / 2 ? s->step_us * 2 :
					 ARRIVE_MAX_US) : ARRIVE_MIN_US);
		return 0;
	}
	if (fd < 0)
		return fd;
	pthread_mutex_lock(&fs->lock);
	s->fd = fd;
	pthread_mutex_unlock(&fs->lock);
	size_fifo(s);
	ev.events = (s->h.dirs == MM_WR ? EPOLLIN : EPOLLOUT) | EPOLLET;
	if (epoll_ctl(fs->pump_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	if (s->h.dirs == MM_RD)
		s->arrived = true;	/* the reader is there: it let us open */
	else
		set_due(s, ARRIVE_MIN_US * 50);	/* a look for a writer that never came */
	return 1;
}

/* out: no event yet from the writer whose lookup made s. If its open is
 * over, find out whether it is there (silent) or never came: a writer of
 * ours, opened and closed at once, makes POLLHUP show on our end iff no
 * other writer is left. Readers never open this FIFO (they get the other
 * one), so nobody is disturbed. */
static enum step_end check_arrival(struct mmfs *fs, struct pipe_sess *s)
{
	int flags, w;

	if (doing(s->tid, &flags) != DOING_OTHER && now_us() - s->since_us < ARRIVE_MS * 1000) {
		set_due(s, s->step_us < ARRIVE_MAX_US / 2 ? s->step_us * 2 : ARRIVE_MAX_US);
		return GOING;
	}
	if (fifo_state(s->fd))
		return GOING;	/* bytes or a hang-up: the events tell */
	w = open_end(fs, s, O_WRONLY);
	if (w >= 0)
		close(w);
	if (fifo_writer_gone(s->fd))
		return END_ABANDON;
	s->arrived = true;
	return GOING;
}

/* out: the FIFO into the ring, until the FIFO is empty or the ring full. */
static enum step_end pump_out(struct mmfs *fs, struct pipe_sess *s, char *buf)
{
	struct mm_channel *mc = &s->h.ch->mc;

	for (;;) {
		uint32_t seen[MM_STREAM_STATE_WORDS];
		ssize_t room, n, w;

		mm_stream_state(mc, POLLOUT, seen);	/* before the look */
		if (s->pend_len) {
			w = mm_stream_write(mc, s->pend, s->pend_len);
			if (w == -EAGAIN) {
				wait_ring(fs, s, seen);
				return GOING;
			}
			if (w == -ENOSPC) {
				set_due(s, NOSPACE_US);	/* the reason is in status */
				return GOING;
			}
			if (w < 0)
				return END_STREAM;
			memmove(s->pend, s->pend + w, s->pend_len - (size_t)w);
			s->pend_len -= (size_t)w;
			continue;
		}
		room = mm_stream_room(mc);
		if (room < 0)
			return END_STREAM;	/* the reason is in status */
		if (room == 0) {
			wait_ring(fs, s, seen);
			return GOING;
		}
		n = read(s->fd, buf, (size_t)room < PUMP_BATCH ? (size_t)room : PUMP_BATCH);
		if (n > 0) {
			s->arrived = true;
			w = mm_stream_write(mc, buf, (size_t)n);
			if (w == -ENOSPC)
				w = 0;	/* a full disk: kept, and tried again */
			if (w < 0)
				return END_STREAM;
			if (w < n) {
				s->pend = malloc((size_t)(n - w));
				if (!s->pend)
					return END_STREAM;
				memcpy(s->pend, buf + w, (size_t)(n - w));
				s->pend_len = (size_t)(n - w);
			}
			continue;
		}
		if (n < 0 && errno != EAGAIN)
			return END_STREAM;
		/* empty: read() says 0 also before the writer came, POLLHUP
		 * only after it left */
		if (fifo_writer_gone(s->fd)) {
			s->arrived = true;
			return END_STREAM;
		}
		return GOING;	/* the next write or hang-up is an event */
	}
}

/* in: pieces [off, off + len) of slice sl into the FIFO. Bytes, or -errno. */
static ssize_t fifo_put(struct pipe_sess *s, const struct mm_slice *sl, size_t off, size_t len,
			char *buf)
{
	struct iovec iov[2];
	int n = 0;
	ssize_t w;

	for (int i = 0; i < sl->niov && len; i++) {
		size_t l = sl->iov[i].iov_len;

		if (off >= l) {
			off -= l;
			continue;
		}
		iov[n].iov_base = (char *)sl->iov[i].iov_base + off;
		iov[n].iov_len = l - off < len ? l - off : len;
		len -= iov[n].iov_len;
		off = 0;
		n++;
	}
	if (!mm_stream_zero_copy(&s->h.ch->mc)) {
		/* device memory, or an xpra peer: through a guarded copy */
		size_t total = 0;

		for (int i = 0; i < n; i++)
			total += iov[i].iov_len;
		if (mm_guard_copy_iov(buf, iov, n, false) < 0)
			return -EFAULT;
		iov[0] = (struct iovec){ buf, total };
		n = 1;
	}
	w = writev(s->fd, iov, n);
	return w < 0 ? -errno : w;
}

/* in: the ring into the FIFO. Bytes go from the ring only once the reader
 * took them from the FIFO: the ones still in it (inflight) are at the
 * head of the ring, and each step begins after them. */
static enum step_end pump_in(struct mmfs *fs, struct pipe_sess *s, char *buf)
{
	struct mm_channel *mc = &s->h.ch->mc;

	for (;;) {
		uint32_t seen[MM_STREAM_STATE_WORDS];
		struct mm_slice sl;
		ssize_t n, w = 0;
		size_t fresh, took;
		int queued = 0;

		mm_stream_state(mc, POLLIN, seen);	/* before the look */
		n = mm_stream_read_begin(mc, s->inflight + PUMP_BATCH, &sl);
		if (n == -EAGAIN) {
			wait_ring(fs, s, seen);
			return GOING;
		}
		if (n <= 0)
			return END_STREAM;	/* an end of stream (0), or why in status */
		if (sl.chunk) {
			/* a piece of xpra's chunk list: taken as it goes in */
			s->inflight = 0;
			w = fifo_put(s, &sl, 0, (size_t)n, buf);
			if (w > 0 && mm_stream_read_end(mc, &sl, (size_t)w) == 0)
				s->in_stream = true;
		} else {
			fresh = (size_t)n > s->inflight ? (size_t)n - s->inflight : 0;
			if (fresh) {
				w = fifo_put(s, &sl, s->inflight, fresh, buf);
				if (w > 0)
					s->inflight += (size_t)w;
			}
			/* what the reader took meanwhile goes back to the writer */
			if (ioctl(s->fd, FIONREAD, &queued) == 0 && (size_t)queued <= s->inflight) {
				took = s->inflight - (size_t)queued;
				if (took && mm_stream_read_end(mc, &sl, took) == 0) {
					s->inflight -= took;
					s->in_stream = true;
				}
			}
			if (!fresh && s->inflight) {
				if (fifo_state(s->fd) & POLLERR)
					return END_LEFT;
				/* all in the FIFO: look back at it, and wait for more */
				set_due(s, s->step_us && s->step_us < TAIL_MAX_US / 2 ? s->step_us * 2 :
					   s->step_us ? TAIL_MAX_US : TAIL_MIN_US);
				wait_ring(fs, s, seen);
				return GOING;
			}
		}
		if (w == -EFAULT) {
			mm_channel_fail(mc, EIO, MM_WHY_FAULT, MM_RD, 0, 0);
			return END_STREAM;
		}
		if (w == -EAGAIN) {
			s->step_us = 0;
			return GOING;	/* the FIFO is full: its reader wakes us */
		}
		if (w < 0)
			return END_LEFT;	/* EPIPE */
		s->due_us = 0;
		s->step_us = 0;
	}
}

/* The end of a session: out of the list (a new opener makes its own),
 * our end closed, the claim given back (ending the stream out, unless the
 * writer never came), the session freed. */
static void finish(struct mmfs *fs, struct pipe_sess *s, enum step_end how)
{
	struct chan *ch = s->h.ch;
	int fd = s->fd;

	if (fd >= 0)
		epoll_ctl(fs->pump_ep, EPOLL_CTL_DEL, fd, NULL);
	pthread_mutex_lock(&fs->lock);
	waiter_disarm(fs, &s->h.wait);
	s->fd = -1;
	s->done = true;
	for (struct pipe_sess **p = &fs->pipes; *p; p = &(*p)->next) {
		if (*p == s) {
			*p = s->next;
			break;
		}
	}
	pthread_mutex_unlock(&fs->lock);
	if (fd >= 0)
		close(fd);
	/* what the reader left in its FIFO was put there for it: as good as
	 * taken, so it is in the middle of the stream */
	if (how == END_LEFT)
		data_reader_left(fs, ch, &s->h, s->in_stream || s->inflight, true);
	else if (how == END_ABANDON)
		mm_channel_abandon(&ch->mc, &s->h);
	else
		mm_channel_unclaim(&ch->mc, &s->h);
	/* a holders() (data.c) that found s as the owner is done with it */
	pthread_mutex_lock(&fs->lock);
	pthread_mutex_unlock(&fs->lock);
	trace(fs, "%s: pipe %s %s\n", ch->key.name, s->h.dirs == MM_RD ? "reader" : "writer",
	      how == END_ABANDON ? "never came" : how == END_LEFT ? "gone" : "done");
	trace_rings(fs, ch, "pipe closed");
	if (how != END_LEFT)
		data_serve(fs, ch);	/* opens of data waiting for this */
	free(s->pend);
	free(s);
	chan_put(fs, ch);
}

/* One step of a session that has something to do. */
static void step(struct mmfs *fs, struct pipe_sess *s, char *buf)
{
	enum step_end e = GOING;
	bool due = s->due_us && now_us() >= s->due_us;
	int r;

	if (s->fd < 0) {
		if (s->due_us && !due)
			return;
		s->due_us = 0;
		r = connect_end(fs, s);
		if (r < 0) {
			if (r != -ENXIO)
				fuse_log(FUSE_LOG_ERR, "mmapfs: %s: pipe: opening our end: %s\n",
					 s->h.ch->key.name, strerror(-r));
			finish(fs, s, END_ABANDON);
		}
		if (r <= 0)
			return;
		due = false;
	}
	if (due)
		s->due_us = 0;
	if (s->h.dirs == MM_WR) {
		e = pump_out(fs, s, buf);
		if (e == GOING && !s->arrived && due)
			e = check_arrival(fs, s);
		else if (e == GOING && !s->arrived && !s->due_us)
			set_due(s, s->step_us ? s->step_us : ARRIVE_MIN_US * 50);
	} else {
		e = pump_in(fs, s, buf);
	}
	if (e != GOING)
		finish(fs, s, e);
}

/* epoll_pwait2 for its microseconds; epoll_wait (milliseconds, rounded up)
 * where a kernel or a seccomp filter lacks it. */
static int pump_wait(struct mmfs *fs, struct epoll_event *evs, int max, const struct timespec *ts)
{
	static bool no_pwait2;
	int n;

	if (!no_pwait2) {
		n = epoll_pwait2(fs->pump_ep, evs, max, ts, NULL);
		if (n >= 0 || (errno != ENOSYS && errno != EPERM))
			return n;
		no_pwait2 = true;
	}
	return epoll_wait(fs->pump_ep, evs, max,
			  ts ? (int)(ts->tv_sec * 1000 + (ts->tv_nsec + 999999) / 1000000) : -1);
}

static void *pump(void *arg)
{
	struct mmfs *fs = arg;
	struct epoll_event evs[64];
	char *buf = malloc(PUMP_BATCH);

	while (buf) {
		struct pipe_sess *s, *next;
		uint64_t due = 0, now;
		struct timespec ts;
		bool stop;
		int n;

		pthread_mutex_lock(&fs->lock);
		stop = fs->stop;
		for (s = fs->pipes; s; s = s->next)
			if (s->due_us && (!due || s->due_us < due))
				due = s->due_us;
		pthread_mutex_unlock(&fs->lock);
		if (stop)
			break;
		now = now_us();
		due = due > now ? due - now : due ? 0 : UINT64_MAX;
		ts.tv_sec = (time_t)(due / 1000000);
		ts.tv_nsec = (long)(due % 1000000) * 1000;
		n = pump_wait(fs, evs, 64, due == UINT64_MAX ? NULL : &ts);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr) {
				((struct pipe_sess *)evs[i].data.ptr)->fired = true;
			} else {
				uint64_t v;

				if (read(fs->pump_ev, &v, sizeof(v)) < 0 && errno != EAGAIN)
					break;
			}
		}
		/* new sessions are put at the head: from the head seen here on,
		 * the list only loses what this thread frees */
		now = now_us();
		pthread_mutex_lock(&fs->lock);
		s = fs->pipes;
		pthread_mutex_unlock(&fs->lock);
		for (; s; s = next) {
			bool go;

			next = s->next;
			pthread_mutex_lock(&fs->lock);
			go = s->ready || s->fired || s->fd < 0 || (s->due_us && now >= s->due_us);
			s->ready = false;
			pthread_mutex_unlock(&fs->lock);
			s->fired = false;
			if (go)
				step(fs, s, buf);
		}
	}
	free(buf);
	return NULL;
}

int mmfs_pump_start(struct mmfs *fs)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int r;

	fs->pump_ep = epoll_create1(EPOLL_CLOEXEC);
	fs->pump_ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fs->pump_ep < 0 || fs->pump_ev < 0 ||
	    epoll_ctl(fs->pump_ep, EPOLL_CTL_ADD, fs->pump_ev, &ev) < 0)
		return -errno;
	r = -pthread_create(&fs->pump, NULL, pump, fs);
	if (r == 0)
		return 0;
	close(fs->pump_ep);
	close(fs->pump_ev);
	return r;
}

/* At the end, after the loop: the sessions end as if their applications
 * had closed (the reader sees end of file, the writer EPIPE). */
void mmfs_pump_stop(struct mmfs *fs)
{
	pthread_mutex_lock(&fs->lock);
	fs->stop = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
	pthread_join(fs->pump, NULL);
	while (fs->pipes)
		finish(fs, fs->pipes, fs->pipes->arrived ? END_STREAM : END_ABANDON);
	close(fs->pump_ep);
	close(fs->pump_ev);
}
