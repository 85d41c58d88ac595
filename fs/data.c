/* The stream file `data`: an open claims the stream's direction(s) in core,
 * a read or write is a non-blocking call of core's stream (core/stream.h)
 * on the request's buffer.
 *
 * No worker waits. A call that has to wait (a read with nothing to read, a
 * write into a full ring, an open that waits for a release on its way, for
 * the reader to take earlier ends of stream, or for an abandoned stream to
 * be dropped; a library's wait for the stream to move, MM_IOC_WAIT) is parked: kept with its request in its channel's queue, one
 * queue per kind, in the order the calls came, and answered by whichever
 * thread sees the stream move: the channel's waiter (fired by the ticker,
 * event.c), a release, an rmdir, or the caller's interrupt (SIGINT,
 * SIGKILL). An interrupted read moves no bytes; an interrupted write
 * returns what it had put in the ring, EINTR if nothing. At the end every
 * parked request gets ENOTCONN.
 *
 * A descriptor's stream ends when its last copy is closed: FUSE sends a
 * FLUSH on every close of every duplicate, and a RELEASE once, after the
 * last; the claim is given back at RELEASE. Since RELEASE arrives after
 * close() has returned, a new opener that finds the stream held by a handle
 * already flushed waits a little for that release instead of failing.
 *
 * A reader whose last copy closes in the middle of a stream abandons it, as
 * a socket's or a pipe's reader does: the daemon keeps the read claim
 * (owned by &ch->dropping) and drops the rest of that stream up to its end,
 * however late the writer closes; the next reader's open waits for that,
 * and starts at the next stream. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs.h"
#include "stream.h"

/* How long a new opener waits for the release of a closed descriptor. */
#define RELEASE_WAIT_MS 1000

struct parked {
	fuse_req_t req;
	struct handle *h;		/* freed once answered, maybe at once */
	struct chan *ch;		/* h's, a reference of our own */
	enum park_kind kind;
	size_t size;			/* read: the most to read; write: of buf */
	size_t done;			/* write: of buf, put in the ring so far */
	size_t before;			/* write: put in before it was parked */
	char *buf;			/* write: the bytes (a copy) */
	struct fuse_file_info fi;	/* open: to answer with */
	uint64_t deadline_ms;		/* open: for a release on its way */
	uint32_t state[MM_STREAM_STATE_WORDS];	/* wait: the stream's, as the
						 * library last saw it */
	/* fs->lock */
	bool queued;			/* in its queue, else being served */
	struct parked *next;		/* in its channel's queue */
	struct parked *all_next, **all_prev;	/* in fs->parked */
};

static unsigned dirs_of(int accmode)
{
	return accmode == O_RDONLY ? MM_RD : accmode == O_WRONLY ? MM_WR : MM_RD | MM_WR;
}

/* -d: where the rings stand. */
void trace_rings(struct mmfs *fs, struct chan *ch, const char *what)
{
	for (unsigned dir = MM_RD; dir <= MM_WR && fs->debug; dir <<= 1) {
		struct mm_dir_info i;

		if (mm_channel_dir_info(&ch->mc, dir, &i))
			trace(fs, "%s: %s: %s ring data_start=%u data_end=%u, %llu bytes moved\n",
			      ch->key.name, what, dir == MM_RD ? "read" : "write", i.data_start,
			      i.data_end, (unsigned long long)i.bytes);
	}
}

/* Nothing waits on ch any more: its waiter goes, before the stream's claims
 * can (an idle channel's areas may be replaced by a handshake, and the
 * ticker must not look at them then). fs->lock held. */
static void chan_idle(struct mmfs *fs, struct chan *ch)
{
	for (enum park_kind k = 0; k < PARK_KINDS; k++)
		if (ch->waiting[k])
			return;
	if (!ch->dropping)
		waiter_cancel(fs, &ch->wait);
}

enum holders { HELD_BY_NONE, HELD_CLOSING, HELD_DROPPING, HELD_LIVE };

/* Who holds ch's stream: nobody, only handles that were closed (flushed,
 * no I/O since) with their release on the way, the daemon dropping an
 * abandoned stream, or someone still using it. */
static enum holders holders(struct mmfs *fs, struct chan *ch)
{
	enum holders state = HELD_BY_NONE;

	pthread_mutex_lock(&fs->lock);
	for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1) {
		const struct handle *o = mm_channel_owner(&ch->mc, dir);
		enum holders this;

		/* a holder stays listed in fs->handles (or is a FIFO end,
		 * freed with ch) until after it lets go, so o is alive while
		 * fs->lock is held */
		if (!o)
			continue;
		if (o == (const void *)&ch->dropping)
			this = HELD_DROPPING;
		else if (o->kind == F_DATA && o->flushed)
			this = HELD_CLOSING;
		else
			this = HELD_LIVE;
		if (this > state)
			state = this;
	}
	pthread_mutex_unlock(&fs->lock);
	return state;
}

/* ---- waiting for a release ---- */

static bool wait_over(fuse_req_t req)
{
	return fuse_req_interrupted(req) || fuse_session_exited(fs_of(req)->se);
}

static void nap(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };

	nanosleep(&ts, NULL);
}

/* Dropping an abandoned stream is over: the read claim goes back.
 * rd_lock held. */
static void drop_stop(struct mmfs *fs, struct chan *ch)
{
	pthread_mutex_lock(&fs->lock);
	ch->dropping = false;
	chan_idle(fs, ch);
	pthread_mutex_unlock(&fs->lock);
	mm_channel_abandon(&ch->mc, &ch->dropping);
}

/* The end of dropping an abandoned stream, before its end: for an rmdir. */
static void drop_end(struct mmfs *fs, struct chan *ch)
{
	pthread_mutex_lock(&ch->rd_lock);
	if (ch->dropping)
		drop_stop(fs, ch);
	pthread_mutex_unlock(&ch->rd_lock);
}

bool data_wait_released(fuse_req_t req, struct chan *ch, bool end_drop)
{
	struct mmfs *fs = fs_of(req);
	unsigned waited = 0;
	enum holders h;

	while ((h = holders(fs, ch)) == HELD_CLOSING || h == HELD_DROPPING) {
		if (h == HELD_DROPPING && end_drop) {
			drop_end(fs, ch);
			continue;
		}
		if ((h == HELD_CLOSING && waited >= RELEASE_WAIT_MS * 1000) || wait_over(req))
			return false;
		nap(MM_WAIT_MAX_US);
		waited += MM_WAIT_MAX_US;
	}
	return h == HELD_BY_NONE;
}

/* ---- parked requests ---- */

static void on_interrupt(fuse_req_t req, void *data);

/* Queue p (its interrupt function set before, outside fs->lock): at the
 * back, or (a request being served that must wait again) at the front.
 * -EINTR, without queuing, if it was interrupted already. fs->lock held. */
static int enqueue(struct mmfs *fs, struct parked *p, bool front)
{
	struct chan *ch = p->ch;
	enum park_kind k = p->kind;

	if (fuse_req_interrupted(p->req))
		return -EINTR;
	if (!p->all_prev) {
		ch->waiting[k]++;
		p->all_next = fs->parked;
		if (fs->parked)
			fs->parked->all_prev = &p->all_next;
		p->all_prev = &fs->parked;
		fs->parked = p;
	}
	if (front) {
		p->next = ch->parked[k];
		ch->parked[k] = p;
		if (!p->next)
			ch->parked_last[k] = p;
	} else {
		p->next = NULL;
		*(ch->parked[k] ? &ch->parked_last[k]->next : &ch->parked[k]) = p;
		ch->parked_last[k] = p;
	}
	p->queued = true;
	return 0;
}

/* Take p out of its queue (it is at the head unless interrupted).
 * fs->lock held. */
static void dequeue(struct chan *ch, struct parked *p)
{
	struct parked *prev = NULL;

	for (struct parked *q = ch->parked[p->kind]; q != p; q = q->next)
		prev = q;
	*(prev ? &prev->next : &ch->parked[p->kind]) = p->next;
	if (ch->parked_last[p->kind] == p)
		ch->parked_last[p->kind] = prev;
	p->queued = false;
}

/* p was answered: out of fs->parked, freed. Its handle may be gone
 * already (a release right after the answer); its channel is held. */
static void parked_free(struct mmfs *fs, struct parked *p)
{
	pthread_mutex_lock(&fs->lock);
	if (p->all_prev) {
		*p->all_prev = p->all_next;
		if (p->all_next)
			p->all_next->all_prev = p->all_prev;
		p->ch->waiting[p->kind]--;
		chan_idle(fs, p->ch);
	}
	pthread_mutex_unlock(&fs->lock);
	chan_put(fs, p->ch);
	free(p->buf);
	free(p);
}

/* A write's answer: what went in, or the error if nothing did. */
static void write_reply(fuse_req_t req, size_t done, int r)
{
	if (done > 0)
		fuse_reply_write(req, done);
	else
		fuse_reply_err(req, -r);
}

/* Answer p with r (0, or -errno: EINTR, ENOTCONN, the stream's error), as
 * its kind does; then free it. A read's bytes are answered by read_once(). */
static void answer(struct mmfs *fs, struct parked *p, int r)
{
	if (p->kind == PARK_OPEN)
		open_finish(p->req, p->h, &p->fi, r);
	else if (p->kind == PARK_WRITE)
		write_reply(p->req, p->before + p->done, r);
	else if ((p->kind == PARK_WAIT_IN || p->kind == PARK_WAIT_OUT) && r == 0)
		fuse_reply_ioctl(p->req, 0, NULL, 0);
	else
		fuse_reply_err(p->req, -r);
	parked_free(fs, p);
}

static struct parked *parked_new(fuse_req_t req, struct handle *h, enum park_kind kind)
{
	struct mmfs *fs = fs_of(req);
	struct parked *p = calloc(1, sizeof(*p));

	if (p) {
		p->req = req;
		p->h = h;
		p->ch = h->ch;
		p->kind = kind;
		pthread_mutex_lock(&fs->lock);
		p->ch->refs++;
		pthread_mutex_unlock(&fs->lock);
	}
	return p;
}

/* Park p, or answer it with EINTR if its caller gave up already; then
 * look at once whether it can be answered (the stream may have moved
 * before the waiter was armed). */
static void park(struct mmfs *fs, struct parked *p)
{
	struct chan *ch = p->ch;
	int r;

	fuse_req_interrupt_func(p->req, on_interrupt, fs);
	pthread_mutex_lock(&fs->lock);
	r = enqueue(fs, p, false);
	ch->refs++;	/* p may be answered, its handle released, at once */
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		answer(fs, p, r);
	else
		data_serve(fs, ch);
	chan_put(fs, ch);
}

/* ---- reading ---- */

/* Where h's reader stands after a read that returned n (before the reply:
 * a release may follow it at once). ECONNRESET ends a stream as 0 does: a
 * cut one at its abort mark, or one its end already abandoned (the peer
 * dead). rd_lock held. */
static void note_read(struct handle *h, ssize_t n)
{
	if (n >= 0 || n == -ECONNRESET) {
		h->in_stream = n > 0;
		h->at_end = n <= 0;
	}
}

/* One read for req, rd_lock held: answered (0), or -EAGAIN with nothing
 * done (nothing to read yet). */
static int read_once(struct mmfs *fs, fuse_req_t req, struct handle *h, size_t size)
{
	struct chan *ch = h->ch;
	struct mm_slice s;
	char *buf = NULL;
	ssize_t n;
	int r;

	if (mm_stream_zero_copy(&ch->mc)) {
		/* the reply points into the ring: the kernel copies straight
		 * from shared memory into the reader's buffer; the space is
		 * given back after (under rd_lock: a poll meanwhile does not
		 * count these bytes), and the peer's writer woken. A reply
		 * that fails (its caller gave up) moves nothing. */
		n = mm_stream_read_begin(&ch->mc, size, &s);
		if (n > 0) {
			note_read(h, n);
			r = fuse_reply_iov(req, s.iov, s.niov);
			if (r == 0)
				mm_stream_read_end(&ch->mc, &s, (size_t)n);
			else
				trace(fs, "%s: read reply failed: %s\n", ch->key.name, strerror(-r));
		}
	} else {
		/* device memory, or an xpra peer (which acts on data_start as
		 * soon as our reader has its bytes): a copy, the space given
		 * back before the reply */
		size = size < DATA_MAX_IO ? size : DATA_MAX_IO;
		buf = malloc(size);
		n = buf ? mm_stream_read(&ch->mc, buf, size) : -ENOMEM;
		if (n > 0) {
			note_read(h, n);
			fuse_reply_buf(req, buf, (size_t)n);
		}
		free(buf);
	}
	if (n == -EAGAIN)
		return -EAGAIN;
	if (n == 0) {
		note_read(h, n);
		trace(fs, "%s: end of stream\n", ch->key.name);
		fuse_reply_buf(req, NULL, 0);
	} else if (n < 0) {
		note_read(h, n);
		fuse_reply_err(req, (int)-n);
	}
	return 0;
}

/* Start a data call on dir: -EBADF if h does not hold it; else with the
 * direction's lock taken, 1 if it may go at once, 0 if calls of that
 * direction are parked before it (it queues behind them). */
static int io_begin(struct mmfs *fs, struct handle *h, unsigned dir)
{
	struct chan *ch = h->ch;
	bool first;

	if (!(h->dirs & dir))
		return -EBADF;
	pthread_mutex_lock(dir == MM_RD ? &ch->rd_lock : &ch->wr_lock);
	pthread_mutex_lock(&fs->lock);
	h->flushed = false;
	first = !ch->parked[dir == MM_RD ? PARK_READ : PARK_WRITE];
	pthread_mutex_unlock(&fs->lock);
	return first;
}

void data_read(fuse_req_t req, struct handle *h, size_t size, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	struct parked *p;
	int r = io_begin(fs, h, MM_RD);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = r ? read_once(fs, req, h, size) : -EAGAIN;
	pthread_mutex_unlock(&ch->rd_lock);
	if (r == 0)
		return;
	if (fi->flags & O_NONBLOCK) {
		fuse_reply_err(req, EAGAIN);
		return;
	}
	p = parked_new(req, h, PARK_READ);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p->size = size;
	park(fs, p);
}

/* ---- writing ---- */

/* Put what fits of p's bytes in the ring: 0 once all are in, -EAGAIN when
 * it is full, or the stream's error. wr_lock held. */
static int write_some(struct chan *ch, const char *buf, size_t size, size_t *done)
{
	while (*done < size) {
		ssize_t n = mm_stream_write(&ch->mc, buf + *done, size - *done);

		if (n <= 0)
			return n == 0 ? -EAGAIN : (int)n;
		*done += (size_t)n;
	}
	return 0;
}

void data_write(fuse_req_t req, struct handle *h, const char *buf, size_t size,
		struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	struct parked *p;
	size_t done = 0;
	int r = io_begin(fs, h, MM_WR);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = r ? write_some(ch, buf, size, &done) : -EAGAIN;
	pthread_mutex_unlock(&ch->wr_lock);
	/* blocking: the whole count; non-blocking: what fits, or EAGAIN */
	if (r != -EAGAIN || (fi->flags & O_NONBLOCK)) {
		write_reply(req, done, r);
		return;
	}
	p = parked_new(req, h, PARK_WRITE);
	if (p && !(p->buf = malloc(size - done))) {
		parked_free(fs, p);
		p = NULL;
	}
	if (!p) {
		write_reply(req, done, -ENOMEM);
		return;
	}
	/* the rest is ours to keep: libfuse's buffer is not */
	memcpy(p->buf, buf + done, size - done);
	p->size = size - done;
	p->before = done;
	park(fs, p);
}

/* ---- opening ---- */

/* A claim taken: the handle is set up for data. */
static void opened(struct mmfs *fs, struct handle *h, unsigned dirs, struct fuse_file_info *fi)
{
	h->dirs = dirs;
	fi->direct_io = 1;
	fi->nonseekable = 1;
	pthread_mutex_lock(&fs->lock);
	mmfs_tick_soon(fs, h->ch);	/* the peer's liveness, fresh for its user */
	pthread_mutex_unlock(&fs->lock);
	trace_rings(fs, h->ch, dirs == (MM_RD | MM_WR) ? "data opened to read and write" :
		    dirs == MM_RD ? "data opened to read" : "data opened to write");
}

/* Try the claim of an open: 0 (claimed: opened), -EAGAIN (wait for it),
 * or the error to answer. */
static int open_once(struct mmfs *fs, struct handle *h, struct fuse_file_info *fi,
		     uint64_t deadline_ms)
{
	struct chan *ch = h->ch;

	for (;;) {
		int r = mm_channel_claim(&ch->mc, dirs_of(fi->flags & O_ACCMODE), h);
		enum holders who;

		if (r > 0) {
			opened(fs, h, (unsigned)r, fi);
			return 0;
		}
		if (r != -EBUSY)
			return r;	/* -EAGAIN: six ends of stream not yet read */
		/* recv waiting for a reader gives the read claim back */
		if ((dirs_of(fi->flags & O_ACCMODE) & MM_RD) && (r = fifo_yield(fs, ch)) != 0) {
			if (r > 0)
				continue;
			return -EAGAIN;
		}
		who = holders(fs, ch);
		if (who == HELD_BY_NONE)
			continue;	/* released meanwhile */
		if (who == HELD_DROPPING ||
		    (who == HELD_CLOSING && mmfs_now_ms() < deadline_ms))
			return -EAGAIN;
		return -EBUSY;
	}
}

int data_open(fuse_req_t req, struct chan *ch, struct handle *h, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	uint64_t deadline = mmfs_now_ms() + RELEASE_WAIT_MS;
	struct parked *p;
	int r = open_once(fs, h, fi, (fi->flags & O_NONBLOCK) ? 0 : deadline);

	if (r != -EAGAIN || (fi->flags & O_NONBLOCK))
		return r;
	p = parked_new(req, h, PARK_OPEN);
	if (!p)
		return -ENOMEM;
	p->fi = *fi;
	p->deadline_ms = deadline;
	park(fs, p);
	return 1;
}

/* ---- serving ---- */

/* The next parked request of kind k, taken out of its queue; NULL if
 * none. */
static struct parked *next_parked(struct mmfs *fs, struct chan *ch, enum park_kind k)
{
	struct parked *p;

	pthread_mutex_lock(&fs->lock);
	p = ch->parked[k];
	if (p)
		dequeue(ch, p);
	pthread_mutex_unlock(&fs->lock);
	return p;
}

/* p must wait again: back at the head of its queue, unless its caller
 * gave up meanwhile (then answered here). */
static void requeue(struct mmfs *fs, struct parked *p)
{
	int r;

	pthread_mutex_lock(&fs->lock);
	r = enqueue(fs, p, true);
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		answer(fs, p, r);
}

/* Drop what is left of an abandoned stream, up to its end; then give the
 * read claim back. rd_lock held. */
static void drop_some(struct mmfs *fs, struct chan *ch)
{
	int r = mm_stream_drop(&ch->mc);

	if (r == -EAGAIN)
		return;		/* the writer has not ended it yet */
	/* its end; or the peer died, or the channel broke: nothing more of
	 * it will come */
	drop_stop(fs, ch);
	trace_rings(fs, ch, r == 0 ? "abandoned stream dropped to its end" :
		    "abandoned stream dropped, the channel failed");
}

static void serve_reads(struct mmfs *fs, struct chan *ch)
{
	struct parked *p;

	pthread_mutex_lock(&ch->rd_lock);
	if (ch->dropping)
		drop_some(fs, ch);
	while ((p = next_parked(fs, ch, PARK_READ))) {
		if (read_once(fs, p->req, p->h, p->size) == 0) {
			parked_free(fs, p);
		} else {
			requeue(fs, p);
			break;
		}
	}
	pthread_mutex_unlock(&ch->rd_lock);
}

static void serve_writes(struct mmfs *fs, struct chan *ch)
{
	struct parked *p;

	pthread_mutex_lock(&ch->wr_lock);
	while ((p = next_parked(fs, ch, PARK_WRITE))) {
		int r = write_some(ch, p->buf, p->size, &p->done);

		if (r == -EAGAIN) {
			requeue(fs, p);
			break;
		}
		answer(fs, p, r);
	}
	pthread_mutex_unlock(&ch->wr_lock);
}

/* Requests that had their one try and must wait again, each pushed on
 * the list (the last tried first): back at the head of their queue, so in
 * the order they were tried. */
static void requeue_tried(struct mmfs *fs, struct parked *waiting)
{
	struct parked *p;

	while ((p = waiting)) {
		waiting = p->next;
		requeue(fs, p);
	}
}

static void serve_opens(struct mmfs *fs, struct chan *ch)
{
	struct parked *p, *waiting = NULL;

	/* each is tried once: those that still wait go back in order */
	while ((p = next_parked(fs, ch, PARK_OPEN))) {
		int r = open_once(fs, p->h, &p->fi, p->deadline_ms);

		if (r == -EAGAIN) {
			p->next = waiting;
			waiting = p;
			continue;
		}
		answer(fs, p, r);
	}
	requeue_tried(fs, waiting);
}

/* A library's waits of kind k (PARK_WAIT_IN, _OUT) that can end: the
 * stream's words moved from where the library saw them, or the channel
 * failed, or its peer died. The others go back in order. */
static void serve_waits(struct mmfs *fs, struct chan *ch, enum park_kind k)
{
	unsigned events = k == PARK_WAIT_IN ? POLLIN : POLLOUT;
	uint32_t now[MM_STREAM_STATE_WORDS];
	struct parked *p, *waiting = NULL;
	bool looked = false;

	while ((p = next_parked(fs, ch, k))) {
		if (!looked)
			mm_stream_state(&ch->mc, events, now);
		looked = true;
		if (mm_channel_state(&ch->mc) != MM_STATE_READY)
			answer(fs, p, -EIO);
		else if (mm_channel_peer_state(&ch->mc) == MM_PEER_DEAD)
			answer(fs, p, -EPIPE);
		else if (memcmp(now, p->state, sizeof(now)) != 0)
			answer(fs, p, 0);
		else {
			p->next = waiting;
			waiting = p;
		}
	}
	requeue_tried(fs, waiting);
}

/* The channel's waiter: what it waits for is what is parked, counting
 * the requests another thread is serving (they may have to wait again).
 * fs->lock held. */
static void chan_arm(struct mmfs *fs, struct chan *ch)
{
	struct waiter *w = &ch->wait;
	bool opens = ch->waiting[PARK_OPEN] > 0;	/* looked at every beat */
	unsigned events = 0;

	if (ch->waiting[PARK_READ] || ch->waiting[PARK_WAIT_IN] || ch->dropping)
		events |= POLLIN;
	if (ch->waiting[PARK_WRITE] || ch->waiting[PARK_WAIT_OUT])
		events |= POLLOUT;
	if (!events && !opens)
		return;
	/* armed anew even if armed: its words' values must be from after
	 * the last attempt (a ring's pointers come back to old values) */
	w->events = events;
	w->beat = opens;
	waiter_arm(fs, w, NULL);
}

void data_serve(struct mmfs *fs, struct chan *ch)
{
	assert_unlocked(fs);
	/* armed before the looks below, so that a move after them fires it */
	pthread_mutex_lock(&fs->lock);
	chan_arm(fs, ch);
	pthread_mutex_unlock(&fs->lock);
	serve_reads(fs, ch);
	serve_writes(fs, ch);
	serve_opens(fs, ch);
	serve_waits(fs, ch, PARK_WAIT_IN);
	serve_waits(fs, ch, PARK_WAIT_OUT);
	fifo_poke(fs, ch);	/* a claim given back may be theirs to take */
}

static void chan_fire(struct mmfs *fs, struct waiter *w)
{
	data_serve(fs, w->ch);
}

/* The caller gave up (SIGINT, SIGKILL): a parked request is answered now.
 * libfuse calls this holding the request's lock, in the thread that took
 * the INTERRUPT; one being served (not queued) is answered by its server. */
static void on_interrupt(fuse_req_t req, void *data)
{
	struct mmfs *fs = data;
	struct parked *p;

	pthread_mutex_lock(&fs->lock);
	for (p = fs->parked; p && p->req != req; p = p->all_next)
		;
	if (p && p->queued)
		dequeue(p->ch, p);
	else
		p = NULL;
	pthread_mutex_unlock(&fs->lock);
	if (p)
		answer(fs, p, -EINTR);
}

void data_cancel_all(struct mmfs *fs)
{
	struct parked *p;

	for (;;) {
		pthread_mutex_lock(&fs->lock);
		p = fs->parked;
		if (p && p->queued)
			dequeue(p->ch, p);
		pthread_mutex_unlock(&fs->lock);
		if (!p)
			break;
		answer(fs, p, -ENOTCONN);
	}
}

/* ---- closing ---- */

void data_init_chan(struct chan *ch)
{
	ch->wait.ch = ch;
	ch->wait.fire = chan_fire;
}

void data_reader_left(struct mmfs *fs, struct chan *ch, const void *owner, bool in_stream,
		      bool at_end)
{
	bool drop;

	pthread_mutex_lock(&ch->rd_lock);
	drop = mm_stream_has_ends(&ch->mc) &&
	       (in_stream || (!at_end && mm_stream_pending(&ch->mc)));
	if (drop)
		mm_stream_abandon(&ch->mc);	/* version 2: its writer is told */
	else
		drop = mm_stream_must_drop(&ch->mc);	/* a library's, a failure's */
	if (drop) {
		pthread_mutex_lock(&fs->lock);
		ch->dropping = true;
		pthread_mutex_unlock(&fs->lock);
		mm_channel_hand_reader(&ch->mc, owner, &ch->dropping);
	}
	pthread_mutex_unlock(&ch->rd_lock);
	if (!drop)
		mm_channel_unclaim(&ch->mc, owner);
	trace_rings(fs, ch, drop ? "reader gone in the middle of a stream, the rest dropped" :
		    "reader gone");
	data_serve(fs, ch);	/* the drop, and opens waiting for this */
}

void data_release(struct mmfs *fs, struct handle *h)
{
	/* a library's reads are its own, not seen here: it says in the
	 * trailer if it left in the middle of a stream (version 2) */
	if (h->dirs & MM_RD) {
		bool in_stream = false, at_end = true, lib = data_is_library(fs, h);

		pthread_mutex_lock(&h->ch->rd_lock);
		if (!lib) {
			in_stream = h->in_stream;
			at_end = h->at_end;
		}
		pthread_mutex_unlock(&h->ch->rd_lock);
		data_reader_left(fs, h->ch, h, in_stream, at_end);
		return;
	}
	mm_channel_unclaim(&h->ch->mc, h);
	trace_rings(fs, h->ch, h->dirs & MM_WR ? "data closed, end of stream" : "data closed");
	data_serve(fs, h->ch);	/* opens waiting for this release */
}

/* A library's report (MM_IOC_BYTES): the bytes it moved through the areas
 * since its last, for status, counted only as far as the pointers moved
 * (mm_channel_add_bytes); and the claim is a library's from now on. */
static void ioc_bytes(fuse_req_t req, struct handle *h, const struct mm_ioc_bytes *b)
{
	struct mmfs *fs = fs_of(req);

	pthread_mutex_lock(&fs->lock);
	h->library = true;
	pthread_mutex_unlock(&fs->lock);
	if (h->dirs & MM_RD)
		mm_channel_add_bytes(&h->ch->mc, MM_RD, b->read);
	if (h->dirs & MM_WR)
		mm_channel_add_bytes(&h->ch->mc, MM_WR, b->written);
	fuse_reply_ioctl(req, 0, NULL, 0);
}

/* A library waits, across a VM, for what we hear (MM_IOC_WAIT): parked as
 * a read is, with the state it saw, and answered when the stream moves
 * from there (serve_waits). */
static void ioc_wait(fuse_req_t req, struct handle *h, const struct mm_ioc_wait *w)
{
	unsigned dir = w->events == POLLIN ? MM_RD : w->events == POLLOUT ? MM_WR : 0;
	struct parked *p;

	if (!(h->dirs & dir)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	p = parked_new(req, h, dir == MM_RD ? PARK_WAIT_IN : PARK_WAIT_OUT);
	if (!p) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memcpy(p->state, w->state, sizeof(p->state));
	park(fs_of(req), p);
}

/* A library rings the peer of its direction across a VM (MM_IOC_RING), as
 * our stream does after a move the peer may sleep through (the vector:
 * what the peer asked for in the trailer; the bell checks it). */
static void ioc_ring(fuse_req_t req, struct handle *h, const struct mm_ioc_ring *r)
{
	const struct mm_bell *b;

	if ((r->dir != MM_RD && r->dir != MM_WR) || !(h->dirs & r->dir)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	b = r->dir == MM_RD ? h->ch->mc.rd.bell : h->ch->mc.wr.bell;
	if (!b) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	b->ring(b, r->vector);
	fuse_reply_ioctl(req, 0, NULL, 0);
}

_Static_assert(sizeof(((struct mm_ioc_wait *)0)->state) ==
	       MM_STREAM_STATE_WORDS * sizeof(uint32_t), "a stream's state");

void data_ioctl(fuse_req_t req, struct handle *h, unsigned cmd, const void *in, size_t in_len)
{
	union {
		struct mm_ioc_bytes bytes;
		struct mm_ioc_wait wait;
		struct mm_ioc_ring ring;
	} u;

	if (in_len != _IOC_SIZE(cmd) || in_len > sizeof(u) ||
	    (cmd != MM_IOC_BYTES && cmd != MM_IOC_WAIT && cmd != MM_IOC_RING)) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	memcpy(&u, in, in_len);
	if (cmd == MM_IOC_BYTES)
		ioc_bytes(req, h, &u.bytes);
	else if (cmd == MM_IOC_WAIT)
		ioc_wait(req, h, &u.wait);
	else
		ioc_ring(req, h, &u.ring);
}

bool data_is_library(struct mmfs *fs, const struct handle *h)
{
	bool lib;

	pthread_mutex_lock(&fs->lock);
	lib = h->library;
	pthread_mutex_unlock(&fs->lock);
	return lib;
}

bool data_library_holds(struct mmfs *fs, struct chan *ch, unsigned dir)
{
	const struct handle *o;
	bool lib;

	pthread_mutex_lock(&fs->lock);
	o = mm_channel_owner(&ch->mc, dir);
	lib = o && o != (const void *)&ch->dropping && o->library;
	pthread_mutex_unlock(&fs->lock);
	return lib;
}
