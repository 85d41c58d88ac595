/* The stream file `data`: an open claims the stream's direction(s) in core,
 * a read or write is one call of core's stream (core/stream.h) on the
 * request's buffer, and a call that has to wait blocks its own worker
 * thread, ending on an interrupt (Ctrl-C) or at shutdown.
 *
 * A descriptor's stream ends when its last copy is closed: FUSE sends a
 * FLUSH on every close of every duplicate, and a RELEASE once, after the
 * last; the claim is given back at RELEASE. Since RELEASE arrives after
 * close() has returned, a new opener that finds the stream held by a handle
 * already flushed waits a little for that release instead of failing. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs.h"
#include "stream.h"

/* How long a new opener waits for the release of a closed descriptor. */
#define RELEASE_WAIT_MS 1000

static unsigned dirs_of(int accmode)
{
	return accmode == O_RDONLY ? MM_RD : accmode == O_WRONLY ? MM_WR : MM_RD | MM_WR;
}

/* A wait ends when its caller is interrupted (Ctrl-C) or the daemon is
 * shutting down (SIGTERM, unmount): libfuse's loop cannot end while a
 * worker waits. */
static bool wait_over(fuse_req_t req)
{
	return fuse_req_interrupted(req) || fuse_session_exited(fs_of(req)->se);
}

static void on_interrupt(fuse_req_t req, void *data)
{
	mm_stream_wake(data);
}

static void nap(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };

	nanosleep(&ts, NULL);
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

enum holders { HELD_BY_NONE, HELD_CLOSING, HELD_LIVE };

/* Who holds ch's stream: nobody, only handles that were closed (flushed,
 * no I/O since) with their release on the way, or someone still using it. */
static enum holders holders(struct mmfs *fs, struct chan *ch)
{
	enum holders state = HELD_BY_NONE;

	pthread_mutex_lock(&fs->lock);
	for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1) {
		const struct handle *o = mm_channel_owner(&ch->mc, dir);
		bool gone;

		/* a holder stays listed in fs->handles (or fs->pipes) until
		 * after it lets go, so o is alive while fs->lock is held */
		if (!o)
			continue;
		gone = o->kind == F_DATA ? o->flushed : pipe_gone(o);
		if (!gone)
			state = HELD_LIVE;
		else if (state == HELD_BY_NONE)
			state = HELD_CLOSING;
	}
	pthread_mutex_unlock(&fs->lock);
	return state;
}

bool data_wait_released(fuse_req_t req, struct chan *ch)
{
	struct mmfs *fs = fs_of(req);
	unsigned waited = 0;
	enum holders h;

	while ((h = holders(fs, ch)) == HELD_CLOSING) {
		if (waited >= RELEASE_WAIT_MS * 1000 || wait_over(req))
			return false;
		nap(MM_WAIT_MAX_US);
		waited += MM_WAIT_MAX_US;
	}
	return h == HELD_BY_NONE;
}

int claim_wait(fuse_req_t req, struct chan *ch, unsigned dirs, const void *owner,
	       bool nonblock)
{
	unsigned step = MM_WAIT_MIN_US;
	int r;

	fuse_req_interrupt_func(req, on_interrupt, &ch->mc);
	for (;;) {
		r = mm_channel_claim(&ch->mc, dirs, owner);
		if (r == -EBUSY && !nonblock && data_wait_released(req, ch))
			continue;
		if (r > 0) {
			/* someone may wait on it now: the peer is watched
			 * every beat */
			pthread_mutex_lock(&fs_of(req)->lock);
			mmfs_tick_soon(fs_of(req), ch);
			pthread_mutex_unlock(&fs_of(req)->lock);
		}
		if (r != -EAGAIN || nonblock)
			return r;
		/* the reader has yet to take six earlier ends of stream */
		if (wait_over(req))
			return -EINTR;
		mm_stream_wait(&ch->mc, MM_WR, step);
		step = mm_wait_next(step);
	}
}

int data_open(fuse_req_t req, struct chan *ch, struct handle *h, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	int r = claim_wait(req, ch, dirs_of(fi->flags & O_ACCMODE), h, fi->flags & O_NONBLOCK);

	if (r < 0)
		return r;
	h->dirs = (unsigned)r;
	fi->direct_io = 1;
	fi->nonseekable = 1;
	trace_rings(fs, ch, h->dirs == (MM_RD | MM_WR) ? "data opened to read and write" :
		    h->dirs == MM_RD ? "data opened to read" : "data opened to write");
	return 0;
}

void data_release(struct mmfs *fs, struct handle *h)
{
	mm_channel_unclaim(&h->ch->mc, h);
	trace_rings(fs, h->ch, h->dirs & MM_WR ? "data closed, end of stream" : "data closed");
}

/* A library's report (MM_IOC_BYTES): the bytes it moved through the areas
 * since its last, for status; and the claim is a library's from now on. */
void data_ioctl(fuse_req_t req, struct handle *h, unsigned cmd, const void *in, size_t in_len)
{
	struct mmfs *fs = fs_of(req);
	struct mm_ioc_bytes b;

	if (cmd != MM_IOC_BYTES || in_len != sizeof(b)) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	memcpy(&b, in, sizeof(b));
	pthread_mutex_lock(&fs->lock);
	h->library = true;
	pthread_mutex_unlock(&fs->lock);
	if (h->dirs & MM_RD)
		mm_channel_add_bytes(&h->ch->mc, MM_RD, b.read);
	if (h->dirs & MM_WR)
		mm_channel_add_bytes(&h->ch->mc, MM_WR, b.written);
	fuse_reply_ioctl(req, 0, NULL, 0);
}

bool data_library_holds(struct mmfs *fs, struct chan *ch, unsigned dir)
{
	const struct handle *o;
	bool lib;

	pthread_mutex_lock(&fs->lock);
	o = mm_channel_owner(&ch->mc, dir);
	lib = o && o->library;		/* alive while fs->lock is held */
	pthread_mutex_unlock(&fs->lock);
	return lib;
}

/* Start a data call: the calls on one direction run one at a time (two
 * threads may share a descriptor), a waiting one still answering an
 * interrupt. 0 or -errno. */
static int io_begin(fuse_req_t req, struct handle *h, unsigned dir)
{
	struct mmfs *fs = fs_of(req);
	pthread_mutex_t *m = dir == MM_WR ? &h->ch->wr_lock : &h->ch->rd_lock;
	unsigned step = MM_WAIT_MIN_US;

	if (!(h->dirs & dir))
		return -EBADF;
	pthread_mutex_lock(&fs->lock);
	h->flushed = false;
	pthread_mutex_unlock(&fs->lock);
	while (pthread_mutex_trylock(m) != 0) {
		if (wait_over(req))
			return -EINTR;
		nap(step);
		step = mm_wait_next(step);
	}
	fuse_req_interrupt_func(req, on_interrupt, &h->ch->mc);
	return 0;
}

static void io_end(struct chan *ch, unsigned dir)
{
	pthread_mutex_unlock(dir == MM_WR ? &ch->wr_lock : &ch->rd_lock);
}

enum stream_op { OP_READ_BEGIN, OP_READ, OP_WRITE };

/* One stream call, repeated while it says -EAGAIN, waiting for the peer in
 * between, unless the descriptor is non-blocking or the caller gives up. */
static ssize_t stream_call(fuse_req_t req, struct fuse_file_info *fi, struct chan *ch,
			   enum stream_op op, void *buf, size_t len, struct mm_slice *s)
{
	unsigned step = MM_WAIT_MIN_US;
	ssize_t n;

	for (;;) {
		if (op == OP_WRITE)
			n = mm_stream_write(&ch->mc, buf, len);
		else if (op == OP_READ)
			n = mm_stream_read(&ch->mc, buf, len);
		else
			n = mm_stream_read_begin(&ch->mc, len, s);
		if (n != -EAGAIN || (fi->flags & O_NONBLOCK))
			return n;
		if (wait_over(req))
			return -EINTR;
		mm_stream_wait(&ch->mc, op == OP_WRITE ? MM_WR : MM_RD, step);
		step = mm_wait_next(step);
	}
}

void data_read(fuse_req_t req, struct handle *h, size_t size, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	struct mm_slice s;
	char *buf = NULL;
	ssize_t n;
	int r;

	r = io_begin(req, h, MM_RD);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (mm_stream_zero_copy(&ch->mc)) {
		/* the reply points into the ring: the kernel copies straight
		 * from shared memory into the reader's buffer; the space is
		 * given back after, and the peer's writer woken */
		n = stream_call(req, fi, ch, OP_READ_BEGIN, NULL, size, &s);
		if (n > 0) {
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
		n = buf ? stream_call(req, fi, ch, OP_READ, buf, size, NULL) : -ENOMEM;
		if (n > 0)
			fuse_reply_buf(req, buf, (size_t)n);
	}
	if (n == 0) {
		trace(fs, "%s: end of stream\n", ch->key.name);
		fuse_reply_buf(req, NULL, 0);
	} else if (n < 0) {
		fuse_reply_err(req, (int)-n);
	}
	free(buf);
	io_end(ch, MM_RD);
}

void data_write(fuse_req_t req, struct handle *h, const char *buf, size_t size,
		struct fuse_file_info *fi)
{
	struct chan *ch = h->ch;
	size_t done = 0;
	ssize_t n = 0;
	int r;

	r = io_begin(req, h, MM_WR);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	/* blocking: the whole count; non-blocking: what fits, or EAGAIN */
	while (done < size) {
		n = stream_call(req, fi, ch, OP_WRITE, (char *)buf + done, size - done, NULL);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	if (done > 0)
		fuse_reply_write(req, done);
	else
		fuse_reply_err(req, (int)-n);
	io_end(ch, MM_WR);
}
