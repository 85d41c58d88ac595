/* The FIFO entries `send` and `recv`: the same stream as `data`, as FIFOs
 * the kernel serves (docs/mmapfs.1, DATA; docs/fifo-entries.md).
 *
 * The FIFOs are on a local tmpfs, in a directory of the daemon's own made
 * at mount (mkdtemp beside the mmap_dir, mode 0711); a channel's `send`
 * and `recv` are symbolic links to them. The kernel serves every open,
 * read, write and poll of a FIFO: none reaches the daemon, and nothing the
 * daemon does goes through its own mount. What it sees is the READLINK of
 * an entry (no symlink is cached, so every path walk asks): from the first
 * one on, it keeps its own ends of that direction's FIFO:
 *
 *   send  a reader end, held while the channel is ready. Bytes arriving
 *         claim the write direction; the writers' last close with the
 *         FIFO drained (POLLHUP) ends the stream. If the stream cannot go
 *         on (its reader abandoned it, the peer failed), the reader end is
 *         closed, so its writers get EPIPE and SIGPIPE, and the entry
 *         names a new FIFO for the next writers.
 *   recv  one FIFO per stream. The daemon holds the read claim while
 *         nothing comes (a soft one: an opener of `data`, an rmdir or a
 *         new session takes it back). When a stream has bytes, it opens a
 *         keeper reader end and its writer end, and copies the ring into
 *         the FIFO; bytes leave the ring once a reader has taken them
 *         (FIONREAD). The first byte taken says a reader is there: the
 *         keeper goes, and from then on POLLERR (no reader left) before
 *         the end abandons the stream. At the end of the stream, drained,
 *         the entry moves to a new FIFO and the writer end closes: the
 *         readers see end of file, and nobody reads on into the next one.
 *
 * Who may open which way is the FIFOs' own modes and ACLs: owned by the
 * daemon's user, the channel's owner (and its group, with g+w) may only
 * write `send` and only read `recv`.
 *
 * The pump thread sleeps in epoll on the FIFO ends, and on an eventfd that
 * the ticker (a ring moved), the readlinks and the releases of `data`
 * kick. While a stream flows, a FIFO that the pump has just drained (send)
 * or filled (recv), or found full, naps instead: for tens of microseconds
 * neither its FIFO nor its ring wakes the pump (its end is out of the
 * epoll set, its ring not waited on), so that the bytes gather, and the
 * next step moves many writes' worth at once. A step that moves only a
 * trickle, or nothing, ends the naps: the first bytes after a pause, and a
 * question and its answer, never wait. On two cores, the two programs and
 * two pumps of a stream through two mounts share them: a wake-up for every
 * write cost the programs their cores. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/acl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "guard.h"
#include "ring.h"
#include "stream.h"

#define PUMP_BATCH (1024 * 1024)	/* the most moved in one step */
#define FIFO_SIZE_MAX (1024 * 1024)	/* F_SETPIPE_SZ, at most */
#define TAIL_MIN_US 100			/* bytes in the FIFO, nothing new: */
#define TAIL_MAX_US 20000		/* how often to see what was read */
#define RETRY_US 10000			/* a claim refused for a moment */
#define NOSPACE_US 100000		/* a write area's disk full: try again */
#define NAP_FIRST_US 50			/* the first nap after bytes moved */
#define NAP_MIN_US 20			/* the naps, adjusted so that each */
#define NAP_MAX_US 250			/* step moves about */
#define NAP_BATCH (128 * 1024)		/* bytes */
#define NAP_TRICKLE 4096		/* less in a step: no nap */
#define LINE 64				/* send: room taken in whole cache lines */

static const char *const dir_names[2] = { "send", "recv" };

/* What a recv end is doing. */
enum recv_state {
	R_OFF,		/* no claim */
	R_IDLE,		/* the read claim (soft), waiting for the ring */
	R_WAITING,	/* a stream in the FIFO, no byte taken (still soft) */
	R_READING,	/* a reader took bytes */
};

struct fifo {
	struct handle h;	/* the claim's owner: h.ch, h.kind, h.dirs */
	int which;		/* FIFO_SEND, FIFO_RECV */
	pthread_mutex_t lock;	/* the pump's step, or a worker's look */
	/* lock */
	unsigned gen;		/* the current FIFO is ID.send.GEN (and
				 * written under fs->lock: readlink reads it) */
	int fd;			/* send: our reader end; recv: our writer end */
	int keeper;		/* recv: a reader end, until a byte is taken */
	int mid;		/* send: a pipe's reader end holding the
				 * stream's next bytes, that the area
				 * refused (a fault); -1 none */
	bool claimed;		/* send: holds the write direction */
	enum recv_state rs;
	size_t inflight;	/* recv: in the FIFO, not yet taken */
	uint64_t due_us;	/* pump: next timed look, 0 none */
	unsigned step_us;
	bool fired;		/* pump: an epoll event came */
	bool armed;		/* our FIFO end is in the pump's epoll set */
	bool napping;		/* till due_us: no event wakes the pump for f */
	unsigned nap_us;	/* the last nap's length, 0: none since events */
	bool closed;		/* let go of for good (finish) */
	/* fs->lock */
	bool ready;		/* something to look at (the ticker, a kick) */
	bool gone;		/* its channel is: the pump lets go of it */
	bool listed;		/* in fs->fifos, with a reference to h.ch */
	struct fifo *next;
};

static struct fifo *fifo_of(const struct handle *h)
{
	return (struct fifo *)(uintptr_t)h;	/* h is its first member */
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void pump_kick(struct mmfs *fs)
{
	uint64_t one = 1;

	if (write(fs->pump_ev, &one, sizeof(one)) < 0 && errno != EAGAIN)
		fuse_log(FUSE_LOG_ERR, "mmapfs: waking the pump: %s\n", strerror(errno));
}

/* ---- the FIFOs' files ---- */

static void fifo_name(const struct fifo *f, unsigned gen, char *buf, size_t len)
{
	snprintf(buf, len, "%llu.%s.%u", (unsigned long long)f->h.ch->key.id,
		 dir_names[f->which], gen);
}

/* Who may open f's FIFO, and which way: its owner (the daemon's user)
 * both; the channel's owner, if another user, and its group, if it shares
 * the channel (g+w), only f's own way: an access list (the mask, the
 * group's bits, lets nothing more through). Just the mode where nobody
 * else is let in (a tmpfs without access lists, a guest's rootfs). */
static int set_access(struct mmfs *fs, struct fifo *f, int fd)
{
	const char *perm = f->which == FIFO_SEND ? "-w-" : "r--";
	char text[160];
	int n = 0, r = 0;
	acl_t acl;

	pthread_mutex_lock(&fs->lock);
	if (f->h.ch->uid != fs->uid)
		n += snprintf(text + n, sizeof(text) - (size_t)n, ",u:%u:%s",
			      (unsigned)f->h.ch->uid, perm);
	if (f->h.ch->group_w)
		n += snprintf(text + n, sizeof(text) - (size_t)n, ",g:%u:%s",
			      (unsigned)f->h.ch->gid, perm);
	pthread_mutex_unlock(&fs->lock);
	if (n == 0)
		return fchmod(fd, 0600) < 0 ? -errno : 0;
	snprintf(text + n, sizeof(text) - (size_t)n, ",u::rw-,g::---,o::---,m::%s", perm);
	acl = acl_from_text(text + 1);
	if (!acl || acl_set_fd(fd, acl) < 0)
		r = -errno;
	acl_free(acl);
	return r;
}

/* Set who may open f's FIFO number gen: through a reader end of ours,
 * which never waits with O_NONBLOCK (acl_set_fd wants a real one). */
static int fix_access(struct mmfs *fs, struct fifo *f, unsigned gen)
{
	char name[64];
	int fd, r;

	fifo_name(f, gen, name, sizeof(name));
	fd = openat(fs->fifo_dirfd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = set_access(fs, f, fd);
	close(fd);
	if (r < 0)
		fuse_log(FUSE_LOG_ERR, "mmapfs: %s: %s: setting who may open it: %s\n",
			 f->h.ch->key.name, dir_names[f->which], strerror(-r));
	return r;
}

/* Make f's FIFO number gen, its access set. 0 or -errno. */
static int make_fifo(struct mmfs *fs, struct fifo *f, unsigned gen)
{
	char name[64];

	fifo_name(f, gen, name, sizeof(name));
	if (mkfifoat(fs->fifo_dirfd, name, 0600) < 0 && errno != EEXIST)
		return -errno;
	return fix_access(fs, f, gen);
}

/* Let go of FIFO gen: whoever waits in its open gets through (a reader
 * sees end of file, a writer EPIPE), and its name goes. */
static void drop_fifo(struct mmfs *fs, struct fifo *f, unsigned gen)
{
	char name[64];
	int rd, wr;

	fifo_name(f, gen, name, sizeof(name));
	rd = openat(fs->fifo_dirfd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	wr = openat(fs->fifo_dirfd, name, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (wr >= 0)
		close(wr);
	if (rd >= 0)
		close(rd);
	unlinkat(fs->fifo_dirfd, name, 0);
}

/* Open our end of f's current FIFO (flags: which end). */
static int open_end(struct mmfs *fs, struct fifo *f, int flags)
{
	char name[64];
	int fd;

	fifo_name(f, f->gen, name, sizeof(name));
	fd = openat(fs->fifo_dirfd, name, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* The entry moves on to a new FIFO; the old one's name goes (those who
 * hold it keep what they have). The new one exists before the old one
 * goes, so a path walk finds one or the other. */
static void next_fifo(struct mmfs *fs, struct fifo *f)
{
	unsigned old = f->gen;
	char name[64];

	if (make_fifo(fs, f, old + 1) < 0)
		return;		/* the old one stays: said in the log */
	pthread_mutex_lock(&fs->lock);
	f->gen = old + 1;	/* readlink reads it under fs->lock */
	pthread_mutex_unlock(&fs->lock);
	fifo_name(f, old, name, sizeof(name));
	unlinkat(fs->fifo_dirfd, name, 0);
}

/* The FIFO end fd into the pump's epoll set: send's for bytes (each write
 * is an event) and the writers' last close, recv's for room after a full
 * FIFO and the readers' last close. */
static int watch(struct mmfs *fs, struct fifo *f, int fd)
{
	struct epoll_event ev = {
		.events = (f->which == FIFO_SEND ? EPOLLIN : EPOLLOUT) | EPOLLET,
		.data.ptr = f,
	};

	if (epoll_ctl(fs->pump_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	f->armed = true;
	return 0;
}

/* A napping FIFO's end is out of the epoll set, so that its writes (send)
 * or reads (recv) do not wake us; back in, the kernel reports what came
 * meanwhile. */
static void rearm(struct mmfs *fs, struct fifo *f, bool on)
{
	if (f->fd < 0 || f->armed == on)
		return;
	if (!on) {
		epoll_ctl(fs->pump_ep, EPOLL_CTL_DEL, f->fd, NULL);
		f->armed = false;
	} else if (watch(fs, f, f->fd) < 0) {
		fuse_log(FUSE_LOG_ERR, "mmapfs: %s: %s: watching our end: %s\n",
			 f->h.ch->key.name, dir_names[f->which], strerror(errno));
	}
}

static void nap_for(struct fifo *f, uint64_t us)
{
	f->nap_us = (unsigned)(us < NAP_MIN_US ? NAP_MIN_US : us > NAP_MAX_US ? NAP_MAX_US : us);
	f->due_us = now_us() + f->nap_us;
	f->napping = true;
}

/* The step moved `moved` bytes and found no more. More than a trickle:
 * nap, for a time that would have moved about NAP_BATCH. A trickle (a
 * message, a line: those a program waits for an answer to) or nothing:
 * wait for events, and start the next naps short again. */
static void nap(struct fifo *f, size_t moved)
{
	if (moved >= NAP_TRICKLE)
		nap_for(f, f->nap_us ? (uint64_t)f->nap_us * NAP_BATCH / moved : NAP_FIRST_US);
	else
		f->nap_us = 0;
}

static void close_end(struct mmfs *fs, int *fd)
{
	if (*fd < 0)
		return;
	epoll_ctl(fs->pump_ep, EPOLL_CTL_DEL, *fd, NULL);	/* if in it */
	close(*fd);
	*fd = -1;
}

/* What a FIFO end shows now: POLLIN, POLLHUP (no writer left, for a
 * reader end), POLLERR (no reader left, for a writer end). */
static short fifo_state(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 ? p.revents : 0;
}

static bool chan_ready(struct mmfs *fs, struct chan *ch)
{
	bool removed;

	pthread_mutex_lock(&fs->lock);
	removed = ch->removed;
	pthread_mutex_unlock(&fs->lock);
	return !removed && mm_channel_state(&ch->mc) == MM_STATE_READY;
}

static void set_due(struct fifo *f, unsigned us)
{
	f->step_us = us;
	f->due_us = now_us() + us;
}

/* ---- waits on the ring (event.c) ---- */

static void fifo_fire(struct mmfs *fs, struct waiter *w)
{
	pthread_mutex_lock(&fs->lock);
	fifo_of(handle_of_wait(w))->ready = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
}

/* Sleep until the ring moves from `state`, loaded before the last look:
 * for room (send), for bytes (recv). Only with the claim held. */
static void wait_ring(struct mmfs *fs, struct fifo *f, const uint32_t *state)
{
	struct waiter *w = &f->h.wait;

	pthread_mutex_lock(&fs->lock);
	w->ch = f->h.ch;
	w->fire = fifo_fire;
	w->events = f->which == FIFO_RECV ? POLLIN : POLLOUT;
	waiter_arm(fs, w, state);
	pthread_mutex_unlock(&fs->lock);
}

static void unwait(struct mmfs *fs, struct fifo *f)
{
	pthread_mutex_lock(&fs->lock);
	waiter_disarm(fs, &f->h.wait);
	pthread_mutex_unlock(&fs->lock);
}

/* ---- send: the application writes, the pump reads into the ring ---- */

/* Hold a reader end of the current FIFO, if the channel is ready. */
static void send_open(struct mmfs *fs, struct fifo *f)
{
	int fd;

	if (f->fd >= 0 || !chan_ready(fs, f->h.ch))
		return;
	fd = open_end(fs, f, O_RDONLY);
	if (fd >= 0 && watch(fs, f, fd) < 0) {
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		fuse_log(FUSE_LOG_ERR, "mmapfs: %s: send: opening our end: %s\n",
			 f->h.ch->key.name, strerror(errno));
	f->fd = fd;
	fcntl(fd, F_SETPIPE_SZ, FIFO_SIZE_MAX);	/* best effort: a user's limit */
}

/* The stream ends (end: its writers let go) or cannot go on (its writers
 * get EPIPE from now on, and the entry names a new FIFO). */
static void send_end(struct mmfs *fs, struct fifo *f, bool end)
{
	unwait(fs, f);
	if (!end) {
		close_end(fs, &f->fd);
		next_fifo(fs, f);
	}
	close_end(fs, &f->mid);
	if (f->claimed)
		mm_channel_unclaim(&f->h.ch->mc, &f->h);
	f->claimed = false;
	trace(fs, "%s: send: %s\n", f->h.ch->key.name,
	      end ? "end of stream" : "stream cut, writers get EPIPE");
	data_serve(fs, f->h.ch);	/* opens of data waiting for this */
}

/* The pump's pipe from a send FIFO to the ring; none (-1) if it cannot
 * have one: it then reads the FIFOs straight into the ring. */
static void mid_open(struct mmfs *fs)
{
	if (pipe2(fs->pump_mid, O_NONBLOCK | O_CLOEXEC) < 0) {
		fs->pump_mid[0] = fs->pump_mid[1] = -1;
		return;
	}
	fcntl(fs->pump_mid[1], F_SETPIPE_SZ, FIFO_SIZE_MAX);	/* best effort */
}

/* f's next bytes into the ring's free space sl: how many, 0 at the end
 * of its writers, or -errno (-EAGAIN: none yet).
 *
 * Not with one readv of the FIFO: a pipe's reader and its writers take
 * turns under the pipe's lock, so the writers would wait while the pump
 * copies, and the copy into the FIFO and the copy out of it never ran at
 * once. splice(2) moves the FIFO's pages, uncopied, into the pump's own
 * pipe in a moment; the copy into the ring is from there, while the
 * writers go on. */
static ssize_t send_take(struct mmfs *fs, struct fifo *f, const struct mm_slice *sl)
{
	ssize_t n, m;
	int queued = 0, e;

	if (f->mid >= 0) {
		/* what the area refused before comes first */
		m = readv(f->mid, sl->iov, sl->niov);
		e = errno;
		if (m >= 0 && (ioctl(f->mid, FIONREAD, &queued) < 0 || queued <= 0))
			close_end(fs, &f->mid);
		if (m != 0)
			return m < 0 ? -e : m;
	}
	if (fs->pump_mid[0] < 0) {
		n = readv(f->fd, sl->iov, sl->niov);
		return n < 0 ? -errno : n;
	}
	/* the room in whole cache lines: where the ring's free space is less
	 * than the FIFO holds (a reader behind; one byte always stays free),
	 * an odd amount would put every later block off its place in a line
	 * until the writer starts again, and copies into and out of the ring
	 * 1 to 31 bytes off run at a tenth of their speed (docs/PROTOCOL.md,
	 * "The working window") */
	n = splice(f->fd, NULL, fs->pump_mid[1], NULL, sl->len / LINE * LINE,
		   SPLICE_F_NONBLOCK);
	if (n <= 0)
		return n < 0 ? -errno : 0;
	m = readv(fs->pump_mid[0], sl->iov, sl->niov);
	if (m == n)
		return m;
	/* the area faulted part way: f keeps the pipe, with the rest, until
	 * the ring takes it (nothing is lost while a full disk waits), and
	 * the pump makes a new one */
	e = m < 0 ? errno : EFAULT;
	f->mid = fs->pump_mid[0];
	close(fs->pump_mid[1]);
	mid_open(fs);
	return m > 0 ? m : -e;
}

/* The FIFO into the ring, until the FIFO is empty or the ring full. */
static void send_step(struct mmfs *fs, struct fifo *f)
{
	struct mm_channel *mc = &f->h.ch->mc;
	size_t moved = 0;

	send_open(fs, f);
	if (f->fd < 0)
		return;
	for (;;) {
		uint32_t seen[MM_STREAM_STATE_WORDS];
		struct mm_slice sl;
		ssize_t n;
		int queued = 0;

		if (!f->claimed) {
			/* bytes claim the direction; a hang-up with none
			 * is a writer that wrote nothing */
			if (ioctl(f->fd, FIONREAD, &queued) < 0 || queued <= 0)
				return;
			n = mm_channel_claim(mc, MM_WR, &f->h);
			if (n == -EBUSY)
				return;		/* data's: its release kicks us */
			if (n == -EAGAIN) {
				set_due(f, RETRY_US);
				return;
			}
			if (n < 0) {
				trace(fs, "%s: send: claim refused: %s\n", f->h.ch->key.name,
				      strerror((int)-n));
				send_end(fs, f, false);
				return;
			}
			f->claimed = true;
			pthread_mutex_lock(&fs->lock);
			mmfs_tick_soon(fs, f->h.ch);
			pthread_mutex_unlock(&fs->lock);
		}
		mm_stream_state(mc, POLLOUT, seen);	/* before the look */
		/* from the FIFO into the ring's free space (send_take) */
		n = mm_stream_write_begin(mc, PUMP_BATCH, &sl);
		if (n == -EAGAIN || (n >= 0 && n < LINE)) {
			wait_ring(fs, f, seen);	/* room: send_take */
			return;
		}
		if (n < 0) {
			send_end(fs, f, false);	/* the reason is in status */
			return;
		}
		n = send_take(fs, f, &sl);
		if (n > 0) {
			if (mm_stream_write_end(mc, &sl, (size_t)n) < 0) {
				send_end(fs, f, false);
				return;
			}
			moved += (size_t)n;
			continue;
		}
		if (n == -EFAULT) {
			/* the area faulted: a pipe keeps what it could not
			 * copy, so nothing is lost while a full disk waits */
			if (mm_stream_write_fault(mc) == -ENOSPC) {
				set_due(f, NOSPACE_US);	/* the reason is in status */
				return;
			}
			send_end(fs, f, false);
			return;
		}
		if (n < 0 && n != -EAGAIN) {
			send_end(fs, f, false);
			return;
		}
		/* empty: the end of the stream once no writer is left;
		 * else let more gather while the stream flows */
		if (fifo_state(f->fd) & POLLHUP)
			send_end(fs, f, true);
		else
			nap(f, moved);
		return;
	}
}

/* ---- recv: the pump writes the ring into the FIFO ---- */

static void recv_claim(struct mmfs *fs, struct fifo *f)
{
	int r;

	if (f->rs != R_OFF || !chan_ready(fs, f->h.ch))
		return;
	/* refused: data's, a drop's, a failure's; their end, or the
	 * channel's change, kicks us */
	r = mm_channel_claim(&f->h.ch->mc, MM_RD, &f->h);
	if (r < 0)
		return;
	f->rs = R_IDLE;
	pthread_mutex_lock(&fs->lock);
	mmfs_tick_soon(fs, f->h.ch);
	pthread_mutex_unlock(&fs->lock);
}

/* Give the read claim back. how: 0 nothing of the stream was taken (it
 * stays in the ring), 1 the end of the stream was delivered, -1 the
 * reader left in its middle (the rest is dropped). */
static void recv_end(struct mmfs *fs, struct fifo *f, int how)
{
	struct chan *ch = f->h.ch;
	bool reading = f->rs == R_READING;

	unwait(fs, f);
	if (f->rs >= R_WAITING)
		next_fifo(fs, f);	/* before the close: the next reader
					 * finds the next FIFO */
	close_end(fs, &f->keeper);
	close_end(fs, &f->fd);
	f->rs = R_OFF;
	f->inflight = 0;
	if (how < 0) {
		data_reader_left(fs, ch, &f->h, reading, true);
	} else {
		mm_channel_abandon(&ch->mc, &f->h);
	}
	trace(fs, "%s: recv: %s\n", ch->key.name,
	      how > 0 ? "end of stream" : how < 0 ? "reader gone" : "claim given back");
}

/* A stream has something: the FIFO's ends, so that readers' opens return
 * (and our writer's never fails). */
static int recv_open(struct mmfs *fs, struct fifo *f)
{
	struct mm_dir_info i;
	size_t want = FIFO_SIZE_MAX;

	f->keeper = open_end(fs, f, O_RDONLY);
	if (f->keeper < 0)
		return f->keeper;
	f->fd = open_end(fs, f, O_WRONLY);
	if (f->fd < 0)
		return f->fd;
	/* less than half the ring, so that a full ring means a full FIFO,
	 * whose reader then wakes us; and than half the working window: the
	 * bytes in the FIFO are still unread in the ring, and a writer
	 * starts again at the ring's start only once its reader is half a
	 * window on (ring.h) */
	if (mm_channel_dir_info(&f->h.ch->mc, MM_RD, &i))
		while (want > 4096 && (want > (i.ring_end - MM_RING_HEADER) / 2 ||
				       want > MM_RING_WINDOW / 2))
			want /= 2;
	fcntl(f->fd, F_SETPIPE_SZ, (int)want);
	f->rs = R_WAITING;
	return watch(fs, f, f->fd);
}

/* Pieces [off, off + len) of slice sl into the FIFO. Bytes, or -errno. */
static ssize_t fifo_put(struct fifo *f, const struct mm_slice *sl, size_t off, size_t len,
			char *buf)
{
	struct iovec iov[2];
	size_t total = 0;
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
	if (mm_stream_zero_copy(&f->h.ch->mc)) {
		/* the FIFO takes references to the ring's pages, no copy: the
		 * bytes stay in the ring until the reader has read them, and
		 * a page gone (a truncated area) is EFAULT, not SIGBUS */
		w = vmsplice(f->fd, iov, (unsigned long)n, SPLICE_F_NONBLOCK);
		return w < 0 ? -errno : w;
	}
	/* device memory, or an xpra peer: through a guarded copy */
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (mm_guard_copy_iov(buf, iov, n, false) < 0)
		return -EFAULT;
	w = write(f->fd, buf, total);
	return w < 0 ? -errno : w;
}

/* The reader took `took` more bytes of the FIFO. */
static void recv_taken(struct mmfs *fs, struct fifo *f, struct mm_slice *sl, size_t took)
{
	if (!took || mm_stream_read_end(&f->h.ch->mc, sl, took) < 0)
		return;
	f->inflight -= took;
	if (f->rs == R_WAITING) {
		f->rs = R_READING;	/* a reader is there: no keeper now */
		close_end(fs, &f->keeper);
	}
}

/* The ring into the FIFO. Bytes go from the ring only once the reader
 * took them from the FIFO: the ones still in it (inflight) are at the
 * head of the ring, and each step begins after them. */
static void recv_step(struct mmfs *fs, struct fifo *f, char *buf)
{
	struct mm_channel *mc = &f->h.ch->mc;
	size_t moved = 0;

	recv_claim(fs, f);
	if (f->rs == R_OFF)
		return;
	for (;;) {
		uint32_t seen[MM_STREAM_STATE_WORDS];
		struct mm_slice sl;
		ssize_t n, w = 0;
		size_t fresh;
		int queued = 0;

		if (!chan_ready(fs, f->h.ch) && f->rs < R_READING) {
			recv_end(fs, f, 0);
			return;
		}
		mm_stream_state(mc, POLLIN, seen);	/* before the look */
		if (f->rs == R_IDLE) {
			/* bytes, an end of stream, or a failure (the peer
			 * died: readers waiting in their open see end of file) */
			if (!mm_stream_pending(mc) &&
			    !(mm_stream_poll(mc, MM_RD) & (POLLHUP | POLLERR))) {
				wait_ring(fs, f, seen);
				return;
			}
			if ((w = recv_open(fs, f)) < 0) {
				fuse_log(FUSE_LOG_ERR, "mmapfs: %s: recv: opening our ends: %s\n",
					 f->h.ch->key.name, strerror((int)-w));
				recv_end(fs, f, 0);
				return;
			}
		}
		n = mm_stream_read_begin(mc, f->inflight + PUMP_BATCH, &sl);
		if (n == -EAGAIN) {
			/* while the stream flows, let more gather */
			nap(f, moved);
			if (!f->napping)
				wait_ring(fs, f, seen);
			return;
		}
		if (n <= 0) {
			/* an end of stream (0), or why in status: the reader
			 * sees end of file */
			recv_end(fs, f, 1);
			return;
		}
		if (sl.chunk) {
			/* a piece of xpra's chunk list: taken as it goes in */
			f->inflight = 0;
			w = fifo_put(f, &sl, 0, (size_t)n, buf);
			if (w > 0) {
				f->inflight = (size_t)w;
				recv_taken(fs, f, &sl, (size_t)w);
			}
		} else {
			fresh = (size_t)n > f->inflight ? (size_t)n - f->inflight : 0;
			if (fresh) {
				w = fifo_put(f, &sl, f->inflight, fresh, buf);
				if (w > 0) {
					f->inflight += (size_t)w;
					moved += (size_t)w;
				}
			}
			/* what the reader took meanwhile goes back to the writer */
			if (ioctl(f->fd, FIONREAD, &queued) == 0 && (size_t)queued <= f->inflight)
				recv_taken(fs, f, &sl, f->inflight - (size_t)queued);
			if (!fresh && f->inflight) {
				if (f->rs == R_READING && (fifo_state(f->fd) & POLLERR)) {
					recv_end(fs, f, -1);
					return;
				}
				/* all in the FIFO: while the stream flows, let
				 * more gather; else look back at it, and wait
				 * for more */
				nap(f, moved);
				if (f->napping)
					return;
				set_due(f, f->step_us && f->step_us < TAIL_MAX_US / 2 ?
					   f->step_us * 2 : f->step_us ? TAIL_MAX_US : TAIL_MIN_US);
				wait_ring(fs, f, seen);
				return;
			}
		}
		if (w == -EFAULT) {
			mm_channel_fail(mc, EIO, MM_WHY_FAULT, MM_RD, 0, 0);
			recv_end(fs, f, 1);
			return;
		}
		if (w == -EAGAIN) {
			/* the FIFO is full: let its reader drain some (each of
			 * its reads would wake us) */
			f->step_us = 0;
			nap_for(f, f->nap_us ? f->nap_us : NAP_FIRST_US);
			return;
		}
		if (w < 0) {
			recv_end(fs, f, -1);	/* EPIPE: no reader left */
			return;
		}
		f->due_us = 0;
		f->step_us = 0;
	}
}

/* ---- what the rest of the daemon asks ---- */

static struct fifo *fifo_new(struct mmfs *fs, struct chan *ch, int which)
{
	struct fifo *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->h.ch = ch;
	f->h.kind = which == FIFO_SEND ? F_SEND : F_RECV;
	f->h.dirs = which == FIFO_SEND ? MM_WR : MM_RD;
	f->which = which;
	f->fd = f->keeper = f->mid = -1;
	pthread_mutex_init(&f->lock, NULL);
	if (make_fifo(fs, f, 0) < 0) {
		pthread_mutex_destroy(&f->lock);
		free(f);
		return NULL;
	}
	return f;
}

int fifo_readlink(fuse_req_t req, struct chan *ch, int which, char *buf, size_t len)
{
	struct mmfs *fs = fs_of(req);
	struct fifo *f, *made = NULL;

	if (fs->fifo_dirfd < 0)
		return -EOPNOTSUPP;	/* the mount's log said why */
	pthread_mutex_lock(&fs->lock);
	f = ch->fifo[which];
	pthread_mutex_unlock(&fs->lock);
	if (!f && !(made = fifo_new(fs, ch, which)))
		return -EIO;		/* the log says why */
	pthread_mutex_lock(&fs->lock);
	if (!ch->fifo[which] && !ch->removed) {
		/* listed, with a reference: the channel (and so f, freed
		 * with it) stays until the pump lets go */
		f = ch->fifo[which] = made;
		made = NULL;
		f->listed = true;
		ch->refs++;
		f->next = fs->fifos;
		fs->fifos = f;
	}
	f = ch->fifo[which];
	pthread_mutex_unlock(&fs->lock);
	if (made) {
		drop_fifo(fs, made, 0);
		fifo_free(made);
	}
	if (!f)
		return -ENOENT;
	/* a writer's open after this answer must find our reader end there
	 * (with O_NONBLOCK it would fail, without, wait) */
	pthread_mutex_lock(&f->lock);
	if (which == FIFO_SEND && !f->closed)
		send_open(fs, f);
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_lock(&fs->lock);
	f->ready = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
	fifo_target(fs, ch, which, buf, len);
	return 0;
}

int fifo_target(struct mmfs *fs, struct chan *ch, int which, char *buf, size_t len)
{
	unsigned gen;

	pthread_mutex_lock(&fs->lock);
	gen = ch->fifo[which] ? ch->fifo[which]->gen : 0;
	pthread_mutex_unlock(&fs->lock);
	return snprintf(buf, len, "%s/%llu.%s.%u", fs->fifo_dir ? fs->fifo_dir : "",
			(unsigned long long)ch->key.id, dir_names[which], gen);
}

void fifo_access(struct mmfs *fs, struct chan *ch)
{
	for (int i = 0; i < 2; i++) {
		struct fifo *f;

		pthread_mutex_lock(&fs->lock);
		f = ch->fifo[i];
		pthread_mutex_unlock(&fs->lock);
		if (!f)
			continue;
		pthread_mutex_lock(&f->lock);
		if (!f->closed)
			fix_access(fs, f, f->gen);
		pthread_mutex_unlock(&f->lock);
	}
}

void fifo_free(struct fifo *f)
{
	if (!f)
		return;
	pthread_mutex_destroy(&f->lock);
	free(f);
}

/* Something to look at for ch's FIFOs: a claim given back, a change of
 * state (gone: the channel is). */
static void mark(struct mmfs *fs, struct chan *ch, bool gone)
{
	bool any = false;

	pthread_mutex_lock(&fs->lock);
	for (int i = 0; i < 2; i++) {
		struct fifo *f = ch->fifo[i];

		if (!f || !f->listed)
			continue;
		f->ready = true;
		f->gone |= gone;
		any = true;
	}
	pthread_mutex_unlock(&fs->lock);
	if (any)
		pump_kick(fs);
}

void fifo_poke(struct mmfs *fs, struct chan *ch)
{
	mark(fs, ch, false);
}

void fifo_remove(struct mmfs *fs, struct chan *ch)
{
	mark(fs, ch, true);
}

void fifo_poke_all(struct mmfs *fs)
{
	pthread_mutex_lock(&fs->lock);
	for (struct fifo *f = fs->fifos; f; f = f->next)
		f->ready = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
}

int fifo_yield(struct mmfs *fs, struct chan *ch)
{
	struct fifo *f;
	int r = 0, queued = 0;

	pthread_mutex_lock(&fs->lock);
	f = ch->fifo[FIFO_RECV];
	pthread_mutex_unlock(&fs->lock);
	if (!f || mm_channel_owner(&ch->mc, MM_RD) != &f->h)
		return 0;
	/* the pump may be in a step, or this very thread in one (a data
	 * open served from the FIFO's own end): then later */
	if (pthread_mutex_trylock(&f->lock) != 0)
		return -EAGAIN;
	if (f->rs == R_WAITING && ioctl(f->fd, FIONREAD, &queued) == 0 &&
	    (size_t)queued < f->inflight) {
		/* a reader took bytes the pump has yet to see: it reads */
		pthread_mutex_unlock(&f->lock);
		fifo_poke(fs, ch);
		return 0;
	}
	if (f->rs == R_IDLE || f->rs == R_WAITING) {
		recv_end(fs, f, 0);
		r = 1;
	}
	pthread_mutex_unlock(&f->lock);
	return r;
}

/* ---- the pump ---- */

/* f's channel is gone, or the daemon stops: our ends closed, whoever
 * waits in an open let through, the FIFO's name gone, the claim given
 * back. The pump's own thread (or the last one). */
static void finish(struct mmfs *fs, struct fifo *f)
{
	struct chan *ch = f->h.ch;

	pthread_mutex_lock(&f->lock);
	if (f->which == FIFO_SEND && f->claimed)
		send_end(fs, f, true);
	else if (f->which == FIFO_RECV && f->rs != R_OFF)
		recv_end(fs, f, 1);
	close_end(fs, &f->fd);
	close_end(fs, &f->keeper);
	drop_fifo(fs, f, f->gen);
	f->closed = true;
	pthread_mutex_unlock(&f->lock);
	pthread_mutex_lock(&fs->lock);
	for (struct fifo **p = &fs->fifos; *p; p = &(*p)->next) {
		if (*p == f) {
			*p = f->next;
			break;
		}
	}
	f->listed = false;
	pthread_mutex_unlock(&fs->lock);
	chan_put(fs, ch);	/* f goes with ch */
}

static void step(struct mmfs *fs, struct fifo *f, char *buf)
{
	if (f->due_us && now_us() >= f->due_us)
		f->due_us = 0;
	pthread_mutex_lock(&f->lock);
	f->napping = false;
	if (f->which == FIFO_SEND)
		send_step(fs, f);
	else
		recv_step(fs, f, buf);
	/* unless napping (a step comes when it ends), our end's next event
	 * wakes us */
	rearm(fs, f, !f->napping);
	pthread_mutex_unlock(&f->lock);
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
		struct fifo *f, *next;
		uint64_t due = 0, now;
		struct timespec ts;
		bool stop;
		int n;

		pthread_mutex_lock(&fs->lock);
		stop = fs->stop;
		for (f = fs->fifos; f; f = f->next)
			if (f->due_us && (!due || f->due_us < due))
				due = f->due_us;
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
				((struct fifo *)evs[i].data.ptr)->fired = true;
			} else {
				uint64_t v;

				if (read(fs->pump_ev, &v, sizeof(v)) < 0 && errno != EAGAIN)
					break;
			}
		}
		/* new ones are put at the head: from the head seen here on,
		 * the list only loses what this thread frees */
		now = now_us();
		pthread_mutex_lock(&fs->lock);
		f = fs->fifos;
		pthread_mutex_unlock(&fs->lock);
		for (; f; f = next) {
			bool go, gone;

			pthread_mutex_lock(&fs->lock);
			next = f->next;
			go = f->ready || f->fired || (f->due_us && now >= f->due_us);
			gone = f->gone;
			f->ready = false;
			pthread_mutex_unlock(&fs->lock);
			f->fired = false;
			if (gone)
				finish(fs, f);
			else if (go)
				step(fs, f, buf);
		}
	}
	free(buf);
	return NULL;
}

/* ---- the FIFOs' directory ---- */

/* The directory of a dead daemon's FIFOs (nobody holds its lock):
 * its FIFOs go, and it goes. Only FIFOs of our names are removed. */
static void sweep_one(int parent, const char *name, uid_t uid)
{
	int dfd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *e;
	struct stat st;
	DIR *d;

	if (dfd < 0)
		return;
	/* 0711 once its daemon held the lock (0700 while it is being made) */
	if (fstat(dfd, &st) < 0 || st.st_uid != uid || (st.st_mode & 07777) != 0711 ||
	    flock(dfd, LOCK_EX | LOCK_NB) < 0 || !(d = fdopendir(dfd))) {
		close(dfd);
		return;
	}
	while ((e = readdir(d))) {
		unsigned long long id;
		unsigned gen;
		char way[5];
		int len = 0;

		if (sscanf(e->d_name, "%llu.%4[a-z].%u%n", &id, way, &gen, &len) == 3 &&
		    e->d_name[len] == '\0' &&
		    fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISFIFO(st.st_mode))
			unlinkat(dfd, e->d_name, 0);
	}
	closedir(d);
	if (unlinkat(parent, name, AT_REMOVEDIR) == 0)
		fuse_log(FUSE_LOG_NOTICE, "mmapfs: removed %s, a dead mmapfs's FIFOs\n", name);
}

/* Make our FIFOs' directory, PREFIX.fifo.XXXXXX: a name nobody can take
 * first, searchable by all (the FIFOs' ACLs say who opens them), locked
 * while we live; and sweep those of dead daemons of ours beside it.
 * 0, or -errno with *path the one tried. */
static int fifo_dir_make(struct mmfs *fs, const char *prefix, char **path)
{
	size_t n = strlen(prefix);
	char *slash, *base;
	struct dirent *e;
	DIR *d;

	while (n > 1 && prefix[n - 1] == '/')
		n--;
	if (asprintf(path, "%.*s.fifo.XXXXXX", (int)n, prefix) < 0) {
		*path = NULL;
		return -ENOMEM;
	}
	slash = strrchr(*path, '/');
	base = slash ? slash + 1 : *path;
	if (slash) {
		*slash = '\0';
		d = opendir(**path ? *path : "/");
		*slash = '/';
	} else {
		d = opendir(".");
	}
	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, base, strlen(base) - 6) == 0 &&
		    strlen(e->d_name) == strlen(base))
			sweep_one(dirfd(d), e->d_name, fs->uid);
	}
	if (d)
		closedir(d);
	if (!mkdtemp(*path) ||
	    (fs->fifo_dirfd = open(*path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0 ||
	    flock(fs->fifo_dirfd, LOCK_EX | LOCK_NB) < 0 || fchmod(fs->fifo_dirfd, 0711) < 0) {
		int r = -errno;

		if (fs->fifo_dirfd >= 0)
			close(fs->fifo_dirfd);
		fs->fifo_dirfd = -1;
		return r;
	}
	fs->fifo_dir = *path;
	return 0;
}

/* Beside the mmap_dir; where its parent is missing (a guest whose areas
 * are all BARs may have no /dev/shm), in /tmp: a FIFO holds no data on
 * its filesystem. Without either, no FIFO entries (the log says why). */
static void fifo_dirs(struct mmfs *fs)
{
	char *path, prefix[64];
	int r = fifo_dir_make(fs, fs->cfg.mmap_dir, &path);

	if (r == -ENOENT) {
		free(path);
		snprintf(prefix, sizeof(prefix), "/tmp/mmapfs-%u", (unsigned)fs->uid);
		r = fifo_dir_make(fs, prefix, &path);
	}
	if (r < 0) {
		fuse_log(FUSE_LOG_ERR, "mmapfs: %s: cannot make the FIFOs' directory: %s; "
			 "no send and recv\n", path ? path : fs->cfg.mmap_dir, strerror(-r));
		free(path);
	}
}

int mmfs_pump_start(struct mmfs *fs)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int r;

	fs->fifo_dirfd = -1;
	fifo_dirs(fs);
	mid_open(fs);
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
	close(fs->pump_mid[0]);
	close(fs->pump_mid[1]);
	return r;
}

/* At the end: every FIFO let go (its readers see end of file, its
 * writers EPIPE, those in an open get through), the directory gone. */
void mmfs_pump_stop(struct mmfs *fs)
{
	pthread_mutex_lock(&fs->lock);
	fs->stop = true;
	pthread_mutex_unlock(&fs->lock);
	pump_kick(fs);
	pthread_join(fs->pump, NULL);
	while (fs->fifos)
		finish(fs, fs->fifos);
	close(fs->pump_ep);
	close(fs->pump_ev);
	close(fs->pump_mid[0]);
	close(fs->pump_mid[1]);
	if (fs->fifo_dirfd >= 0) {
		close(fs->fifo_dirfd);
		rmdir(fs->fifo_dir);
	}
	free(fs->fifo_dir);
}
