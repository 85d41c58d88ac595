/* Opening, reading, writing and closing a channel's files. The text files
 * are snapshots taken at open; `peer` gathers what is written until it
 * makes a whole message; `chunks` takes whole lines; `data` is data.c's. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"
#include "fs.h"

int file_text(struct chan *ch, enum file_kind k, char *buf, size_t len)
{
	switch (k) {
	case F_CAPABILITIES:
		return mm_channel_caps_text(&ch->mc, buf, len);
	case F_PEER:
		return mm_channel_peer_text(&ch->mc, buf, len);
	case F_TOKEN:
		return mm_channel_token_text(&ch->mc, buf, len);
	case F_STATUS: {
		int n = mm_channel_status_text(&ch->mc, buf, len);

		if (n >= 0 && (size_t)n < len)
			n += mmfs_ivshmem_status(&ch->mc, buf + n, len - (size_t)n);
		return n;
	}
	case F_CHUNKS:
		return mm_channel_chunks_text(&ch->mc, buf, len);
	default:
		buf[0] = '\0';
		return 0;
	}
}

void handle_free(struct handle *h)
{
	free(h->buf);
	free(h);
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

/* A creator's offer read while its peer is gone starts a new session. */
static void renew(struct mmfs *fs, struct chan *ch)
{
	struct mm_err err = { "" };
	uint64_t dropped;
	int r = mm_channel_renew(&ch->mc, &dropped, &err);

	/* recv waiting for a stream of the old peer lets go */
	if (r == -EBUSY && fifo_yield(fs, ch) > 0)
		r = mm_channel_renew(&ch->mc, &dropped, &err);
	fifo_poke(fs, ch);

	if (r > 0)
		fuse_log(FUSE_LOG_NOTICE, "mmapfs: %s: new session for a new peer, fresh tokens; "
			 "%llu unread bytes dropped\n", ch->key.name, (unsigned long long)dropped);
	else if (r < 0)
		fuse_log(FUSE_LOG_INFO, "mmapfs: %s: no new session: %s\n", ch->key.name, err.msg);
}

/* The chunk lists of a direction a library holds are the library's
 * (libmmapfs(3)): the file's would never meet its stream. 0, or -EBUSY
 * with the reason in the status. */
static int chunks_library(struct mmfs *fs, struct chan *ch, unsigned dir)
{
	if (!data_library_holds(fs, ch, dir))
		return 0;
	mm_channel_set_reason(&ch->mc, "chunks: the stream's %s is a library end: its lists go "
			      "through mmapfs_chunks_%s()", dir == MM_RD ? "reader" : "writer",
			      dir == MM_RD ? "put" : "get");
	trace(fs, "%s: chunks refused: the library's\n", ch->key.name);
	return -EBUSY;
}

/* Open a text file: 0 or -errno. */
static int text_open(struct mmfs *fs, struct chan *ch, enum file_kind k, struct handle *h,
		     struct fuse_file_info *fi)
{
	int accmode = fi->flags & O_ACCMODE, n;

	fi->direct_io = 1;
	if (accmode != O_RDONLY && k != F_PEER && k != F_CHUNKS)
		return -EACCES;
	if (accmode == O_RDWR)
		return -EINVAL;	/* peer and chunks: read what is, or write */
	if (k == F_CHUNKS && (n = chunks_library(fs, ch, accmode == O_RDONLY ? MM_WR : MM_RD)))
		return n;
	h->writer = accmode != O_RDONLY;
	if (h->writer)
		return 0;	/* the text written is gathered in h->buf */
	h->buf = malloc(TEXT_MAX);
	if (!h->buf)
		return -ENOMEM;
	/* the peer as it is now, not as at the last tick (an idle channel's
	 * come every other beat) */
	if ((k == F_STATUS || k == F_CAPABILITIES) && mm_channel_watch(&ch->mc, mmfs_now_ms())) {
		chan_log_change(ch);
		fifo_poke(fs, ch);
	}
	if (k == F_CAPABILITIES)
		renew(fs, ch);
	n = file_text(ch, k, h->buf, TEXT_MAX);
	if (n < 0)
		return n;
	h->len = (size_t)n;
	return 0;
}

static void handle_release(struct mmfs *fs, struct handle *h);

void open_finish(fuse_req_t req, struct handle *h, struct fuse_file_info *fi, int r)
{
	struct mmfs *fs = fs_of(req);

	if (r < 0) {
		if (h->ch)
			chan_put(fs, h->ch);
		handle_free(h);
		fuse_reply_err(req, -r);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	h->next = fs->handles;
	fs->handles = h;
	pthread_mutex_unlock(&fs->lock);
	fi->fh = (uintptr_t)h;
	if (fuse_reply_open(req, fi) == -ENOENT)
		handle_release(fs, h);	/* the opener was interrupted: no release comes */
}

void mm_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = calloc(1, sizeof(*h));
	enum file_kind k = F_DIR;
	struct chan *ch = NULL;
	int r;

	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ch = chan_get(fs, ino, &k);	/* the handle keeps this reference */
	h->ch = ch;
	h->kind = k;
	if (!ch)
		r = -ENOENT;
	else if (k == F_DIR)
		r = -EISDIR;
	else if (k == F_DATA)
		r = data_open(req, ch, h, fi);
	else if (k == F_SEND || k == F_RECV)
		r = -ELOOP;	/* a symbolic link: opened only where it leads */
	else
		r = text_open(fs, ch, k, h, fi);
	if (r <= 0)
		open_finish(req, h, fi, r);
	/* else parked: data.c answers */
}

/* Hand the text gathered so far to the channel: all of it again if an
 * earlier part was handed over already (a message written in pieces: the
 * handshake takes the same text twice). A refusal starts afresh. */
static int peer_process(struct mmfs *fs, struct handle *h)
{
	struct chan *ch = h->ch;
	struct mm_err err = { "" };
	char *text;
	size_t len;
	int r;

	pthread_mutex_lock(&fs->lock);
	len = h->done = h->len;
	text = malloc(len ? len : 1);
	if (text)
		memcpy(text, h->buf, len);
	pthread_mutex_unlock(&fs->lock);
	if (!text)
		return -ENOMEM;
	r = mm_channel_peer(&ch->mc, text, len, mmfs_now_ms(), &err);
	if (r == -EBUSY && fifo_yield(fs, ch) > 0)	/* recv waiting lets go */
		r = mm_channel_peer(&ch->mc, text, len, mmfs_now_ms(), &err);
	fifo_poke(fs, ch);
	free(text);
	pthread_mutex_lock(&fs->lock);
	clock_gettime(CLOCK_REALTIME, &ch->mtime);
	if (r < 0)
		h->len = h->done = 0;
	else
		mmfs_tick_soon(fs, ch);	/* a peer to beat for, or none now */
	pthread_mutex_unlock(&fs->lock);
	if (r < 0) {
		fuse_log(fs->debug ? FUSE_LOG_DEBUG : FUSE_LOG_INFO,
			 "mmapfs: %s: peer refused: %s\n", ch->key.name, err.msg);
		return r;
	}
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: %s: peer accepted, role %s, state %s\n", ch->key.name,
		 mm_role_name(mm_channel_role(&ch->mc)),
		 mm_state_name(mm_channel_state(&ch->mc)));
	for (unsigned dir = MM_RD; dir <= MM_WR && fs->debug; dir <<= 1) {
		struct mm_dir_info i;

		if (mm_channel_dir_info(&ch->mc, dir, &i))
			trace(fs, "%s: %s area %s, %llu bytes, ring 8..%u, our token at %llu\n",
			      ch->key.name, dir == MM_RD ? "read" : "write", i.path,
			      (unsigned long long)i.size, i.ring_end,
			      (unsigned long long)i.token_index);
	}
	return 0;
}

/* Append buf to what h gathered, up to max bytes in all. fs->lock held. */
static int gather(struct handle *h, const char *buf, size_t size, size_t max)
{
	char *p;

	if (h->len + size > max)
		return -EFBIG;
	p = realloc(h->buf, h->len + size);
	if (!p)
		return -ENOMEM;
	h->buf = p;
	memcpy(h->buf + h->len, buf, size);
	h->len += size;
	return 0;
}

static void peer_write(fuse_req_t req, struct handle *h, const char *buf, size_t size)
{
	struct mmfs *fs = fs_of(req);
	bool whole = false;
	int r;

	pthread_mutex_lock(&fs->lock);
	r = gather(h, buf, size, MM_CAPS_MAX);
	if (r == -EFBIG)
		h->len = h->done = 0;
	else if (r == 0)
		whole = mm_peer_text_complete(h->buf, h->len);
	pthread_mutex_unlock(&fs->lock);
	if (r == -EFBIG)
		mm_channel_set_reason(&h->ch->mc, "peer: more than %d bytes written", MM_CAPS_MAX);
	if (whole)
		r = peer_process(fs, h);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
}

/* Pieces for the next reads of data, a whole line at a time. */
static void chunks_write(fuse_req_t req, struct handle *h, const char *buf, size_t size)
{
	struct mmfs *fs = fs_of(req);
	struct mm_err err = { "" };
	char *lines = NULL;
	size_t whole = 0;
	int r = chunks_library(fs, h->ch, MM_RD);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	r = gather(h, buf, size, MM_CHUNKS_LINES_MAX * MM_CHUNKS_LINE_MAX);
	if (r == 0) {
		char *nl = memrchr(h->buf, '\n', h->len);

		whole = nl ? (size_t)(nl - h->buf) + 1 : 0;
		if (whole && !(lines = malloc(whole)))
			r = -ENOMEM;
		if (lines) {
			memcpy(lines, h->buf, whole);
			memmove(h->buf, h->buf + whole, h->len - whole);
			h->len -= whole;
		}
	}
	if (r < 0)
		h->len = 0;
	pthread_mutex_unlock(&fs->lock);
	if (r == -EFBIG) {
		r = mm_fail(&err, -EINVAL, "chunks: a line longer than %d bytes",
			    MM_CHUNKS_LINES_MAX * MM_CHUNKS_LINE_MAX);
	} else if (lines) {
		r = mm_channel_chunks_add(&h->ch->mc, lines, whole, &err);
		free(lines);
	}
	if (r < 0) {
		mm_channel_set_reason(&h->ch->mc, "%s", err.msg);
		trace(fs, "%s: %s\n", h->ch->key.name, err.msg);
		fuse_reply_err(req, -r);
	} else {
		fuse_reply_write(req, size);
	}
}

void mm_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	     struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = handle_of(fi);
	char *copy = NULL;
	size_t n = 0;

	if (h->kind == F_DATA) {
		data_read(req, h, size, fi);
		return;
	}
	/* a copy: once the reply is out the reader may close, and the
	 * release free h->buf while libfuse still holds the pointer */
	pthread_mutex_lock(&fs->lock);
	if (h->buf && off >= 0 && (size_t)off < h->len) {
		n = h->len - (size_t)off < size ? h->len - (size_t)off : size;
		copy = malloc(n);
		if (copy)
			memcpy(copy, h->buf + off, n);
	}
	pthread_mutex_unlock(&fs->lock);
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		fuse_reply_err(req, EBADF);
	else if (n && !copy)
		fuse_reply_err(req, ENOMEM);
	else
		fuse_reply_buf(req, copy, n);
	free(copy);
}

void mm_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
	      off_t off, struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	if (h->kind == F_DATA)
		data_write(req, h, buf, size, fi);
	else if (h->kind == F_PEER)
		peer_write(req, h, buf, size);
	else if (h->kind == F_CHUNKS)
		chunks_write(req, h, buf, size);
	else
		fuse_reply_err(req, EBADF);
}

void mm_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
	      struct fuse_file_info *fi, unsigned flags, const void *in_buf,
	      size_t in_bufsz, size_t out_bufsz)
{
	struct handle *h = handle_of(fi);

	if (h->kind == F_DATA && !(flags & FUSE_IOCTL_COMPAT))
		data_ioctl(req, h, cmd, in_buf, in_bufsz);
	else
		fuse_reply_err(req, ENOTTY);
}

void mm_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = handle_of(fi);
	bool rest = false;
	int r = 0;

	/* FLUSH comes with every close of every duplicate: it ends nothing.
	 * A reader's buffer is the snapshot it read, not text to hand over. */
	pthread_mutex_lock(&fs->lock);
	if (h->kind == F_DATA)
		h->flushed = true;
	else if (h->kind == F_PEER && h->writer)
		rest = h->len > h->done;
	pthread_mutex_unlock(&fs->lock);
	if (rest)
		r = peer_process(fs, h);	/* what came after the last whole message */
	fuse_reply_err(req, -r);
}

static void handle_release(struct mmfs *fs, struct handle *h)
{
	struct chan *ch = h->ch;

	poll_forget(fs, h);
	if (h->kind == F_DATA)
		data_release(fs, h);
	pthread_mutex_lock(&fs->lock);
	for (struct handle **p = &fs->handles; *p; p = &(*p)->next) {
		if (*p == h) {
			*p = h->next;
			break;
		}
	}
	pthread_mutex_unlock(&fs->lock);
	handle_free(h);
	chan_put(fs, ch);
}

void mm_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle_release(fs_of(req), handle_of(fi));
	fuse_reply_err(req, 0);
}
