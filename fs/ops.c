/* mmapfs: the filesystem. Channels are directories, their files are the
 * handshake and the stream (DESIGN.md, "The tree"). Low-level API: a read or
 * write of `data` that has to wait blocks its own worker thread, polling
 * shared memory with a futex and a backoff, and gives up on an interrupt. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ext.h"
#include "guard.h"
#include "mmapfs.h"

#define TEXT_MAX (32 * 1024)		/* any of our text files fits */
#define DATA_MAX_IO (1024 * 1024)

static const char *const file_names[F_NKINDS] = {
	[F_CAPABILITIES] = "capabilities",
	[F_PEER] = "peer",
	[F_TOKEN] = "token",
	[F_STATUS] = "status",
	[F_DATA] = "data",
	[F_CHUNKS] = "chunks",
};

static const mode_t file_modes[F_NKINDS] = {
	[F_DIR] = S_IFDIR | 0755,
	[F_CAPABILITIES] = S_IFREG | 0444,
	[F_PEER] = S_IFREG | 0600,
	[F_TOKEN] = S_IFREG | 0444,
	[F_STATUS] = S_IFREG | 0444,
	[F_DATA] = S_IFREG | 0600,
	[F_CHUNKS] = S_IFREG | 0600,
};

struct handle {
	struct chan *ch;
	enum file_kind kind;
	char *buf;			/* text snapshot, or peer input so far */
	size_t len;
	size_t done;			/* peer: how much of it was handed over */
	bool reading, writing;		/* data: which slots it holds */
	bool flushed;			/* data: closed once, no I/O since */
	bool stolen;			/* data: a newer open took its slot */
	struct fuse_pollhandle *ph;	/* a poll waiting for a change, fs->lock */
	unsigned ph_events;
	struct handle *poll_next;	/* in fs->pollers while ph is set */
	struct handle *next;		/* in fs->handles, fs->lock */
};

static struct mmfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

uint64_t mmfs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static fuse_ino_t chan_ino(const struct chan *ch, enum file_kind k)
{
	return (fuse_ino_t)((ch->id << INO_SHIFT) | k);
}

/* ---- channels (fs->lock held) ---- */

static struct chan *find_name(struct mmfs *fs, const char *name)
{
	for (struct chan *ch = fs->chans; ch; ch = ch->next)
		if (strcmp(ch->name, name) == 0)
			return ch;
	return NULL;
}

static struct chan *find_ino(struct mmfs *fs, fuse_ino_t ino, enum file_kind *kind)
{
	uint64_t id = ino >> INO_SHIFT;
	unsigned k = ino & ((1u << INO_SHIFT) - 1);

	if (k >= F_NKINDS)
		return NULL;
	for (struct chan *ch = fs->chans; ch; ch = ch->next) {
		if (ch->id == id) {
			*kind = (enum file_kind)k;
			return ch;
		}
	}
	return NULL;
}

static void chan_unref(struct chan *ch)
{
	if (--ch->refs > 0)
		return;
	mm_channel_close(&ch->mc);
	free(ch);
}

static void chan_remove(struct mmfs *fs, struct chan *ch)
{
	for (struct chan **p = &fs->chans; *p; p = &(*p)->next) {
		if (*p == ch) {
			*p = ch->next;
			break;
		}
	}
	ch->removed = true;
	/* Unmap and delete now: no data call is in progress (the caller made
	 * sure), and a later one sees `removed` first. */
	mm_channel_close(&ch->mc);
	chan_unref(ch);
}

static bool valid_name(const char *name)
{
	size_t n = strlen(name);

	return n > 0 && n < 256 && strcmp(name, ".") && strcmp(name, "..") &&
	       !strchr(name, '/');
}

static struct chan *chan_new(struct mmfs *fs, const char *name)
{
	struct chan *ch = calloc(1, sizeof(*ch));

	if (!ch)
		return NULL;
	snprintf(ch->name, sizeof(ch->name), "%s", name);
	ch->id = fs->next_id++;
	ch->refs = 1;
	pthread_mutex_init(&ch->rd_lock, NULL);
	pthread_mutex_init(&ch->wr_lock, NULL);
	clock_gettime(CLOCK_REALTIME, &ch->ctime);
	ch->mtime = ch->ctime;
	return ch;
}

static void chan_link(struct mmfs *fs, struct chan *ch)
{
	struct chan **p = &fs->chans;

	while (*p)
		p = &(*p)->next;
	*p = ch;
}

static void chan_opts(struct mmfs *fs, struct mm_chan_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->mmap_dir = fs->cfg.mmap_dir;
	o->size = fs->cfg.size;
	o->rules.dirs = fs->allow_dirs;
	o->rules.ndirs = fs->n_allow_dirs;
	o->rules.uids = fs->cfg.allow_uids;
	o->rules.nuids = fs->cfg.n_allow_uids;
	o->session = fs->session;
}

int mmfs_add_declared(struct mmfs *fs, const struct mm_chan_decl *d, struct mm_err *err)
{
	struct mm_chan_opts o;
	struct chan *ch = chan_new(fs, d->name);
	int r;

	if (!ch)
		return -ENOMEM;
	chan_opts(fs, &o);
	o.read_file = d->read_file;
	o.write_file = d->write_file;
	r = mm_channel_open(&ch->mc, d->role == MM_ROLE_ATTACHER ? MM_ATTACHER : MM_CREATOR,
			    true, &o, err);
	if (r < 0) {
		free(ch);
		return r;
	}
	chan_link(fs, ch);
	trace(fs, "%s: declared %s\n", ch->name,
	      d->role == MM_ROLE_ATTACHER ? "attacher" : "creator");
	return 0;
}

static void poll_drop(struct mmfs *fs, struct handle *h, bool notify);
static void handle_free(struct handle *h);

/* At the end: the kernel sends no release for files still open when the
 * session ends, so their handles go here. */
void mmfs_close_all(struct mmfs *fs)
{
	pthread_mutex_lock(&fs->lock);
	while (fs->handles) {
		struct handle *h = fs->handles;

		fs->handles = h->next;
		poll_drop(fs, h, false);
		chan_unref(h->ch);
		handle_free(h);
	}
	while (fs->chans)
		chan_remove(fs, fs->chans);
	pthread_mutex_unlock(&fs->lock);
}

/* ---- texts ---- */

static int file_text(struct chan *ch, enum file_kind k, char *buf, size_t len)
{
	mm_channel_refresh(&ch->mc);
	switch (k) {
	case F_CAPABILITIES:
		return mm_channel_caps_text(&ch->mc, buf, len);
	case F_PEER:
		return mm_channel_peer_text(&ch->mc, buf, len);
	case F_TOKEN:
		return mm_channel_token_text(&ch->mc, buf, len);
	case F_STATUS:
		return mm_channel_status_text(&ch->mc, buf, len);
	case F_CHUNKS:
		return mm_channel_chunks_text(&ch->mc, buf, len);
	default:
		buf[0] = '\0';
		return 0;
	}
}

/* ---- attributes ---- */

static void fill_attr(struct mmfs *fs, struct stat *st, fuse_ino_t ino,
		      struct chan *ch, enum file_kind k)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	if (!ch) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		st->st_atim = st->st_mtim = st->st_ctim = fs->mounted;
		return;
	}
	st->st_mode = file_modes[k];
	st->st_nlink = k == F_DIR ? 2 : 1;
	st->st_atim = st->st_ctim = ch->ctime;
	st->st_mtim = k == F_DIR ? ch->ctime : ch->mtime;
	if (k != F_DIR && k != F_DATA && k != F_CHUNKS) {
		char *buf = malloc(TEXT_MAX);
		int n = buf ? file_text(ch, k, buf, TEXT_MAX) : 0;

		st->st_size = n > 0 ? n : 0;
		free(buf);
	}
}

/* Fill st for ino; 0 or ENOENT. fs->lock held. */
static int stat_ino(struct mmfs *fs, fuse_ino_t ino, struct stat *st)
{
	enum file_kind k;
	struct chan *ch;

	if (ino == FUSE_ROOT_ID) {
		fill_attr(fs, st, ino, NULL, F_DIR);
		return 0;
	}
	ch = find_ino(fs, ino, &k);
	if (!ch)
		return ENOENT;
	fill_attr(fs, st, ino, ch, k);
	return 0;
}

static void reply_entry(fuse_req_t req, const struct stat *st)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = st->st_ino;
	e.attr = *st;
	/* sizes and states change under the kernel's feet: cache nothing */
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fuse_reply_entry(req, &e);
}

static void mm_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mmfs *fs = fs_of(req);
	struct stat st;
	enum file_kind k;
	struct chan *ch;
	int err = ENOENT;

	pthread_mutex_lock(&fs->lock);
	if (parent == FUSE_ROOT_ID) {
		ch = find_name(fs, name);
		if (ch) {
			fill_attr(fs, &st, chan_ino(ch, F_DIR), ch, F_DIR);
			err = 0;
		}
	} else if ((ch = find_ino(fs, parent, &k)) && k == F_DIR) {
		for (unsigned i = 1; i < F_NKINDS; i++) {
			if (strcmp(name, file_names[i]) == 0) {
				fill_attr(fs, &st, chan_ino(ch, i), ch, i);
				err = 0;
			}
		}
	} else if (ch) {
		err = ENOTDIR;
	}
	pthread_mutex_unlock(&fs->lock);
	if (err)
		fuse_reply_err(req, err);
	else
		reply_entry(req, &st);
}

static void mm_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct stat st;
	int err;

	pthread_mutex_lock(&fs->lock);
	err = stat_ino(fs, ino, &st);
	pthread_mutex_unlock(&fs->lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, 0);
}

static void mm_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	/* Truncation (from O_TRUNC) and times are accepted and mean nothing;
	 * ownership and modes are fixed. */
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	mm_getattr(req, ino, fi);
}

/* ---- directories ---- */

struct dirbuf {
	char *p;
	size_t len;
};

static int dirbuf_add(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino,
		      mode_t mode)
{
	struct stat st = { .st_ino = ino, .st_mode = mode };
	size_t n = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	char *p = realloc(b->p, b->len + n);

	if (!p)
		return -ENOMEM;
	b->p = p;
	fuse_add_direntry(req, b->p + b->len, n, name, &st, (off_t)(b->len + n));
	b->len += n;
	return 0;
}

static void mm_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct dirbuf b = { NULL, 0 };
	enum file_kind k;
	struct chan *ch;
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	if (ino == FUSE_ROOT_ID) {
		r = dirbuf_add(req, &b, ".", ino, S_IFDIR);
		if (r == 0)
			r = dirbuf_add(req, &b, "..", ino, S_IFDIR);
		for (ch = fs->chans; ch && r == 0; ch = ch->next)
			r = dirbuf_add(req, &b, ch->name, chan_ino(ch, F_DIR), S_IFDIR);
	} else if ((ch = find_ino(fs, ino, &k)) && k == F_DIR) {
		r = dirbuf_add(req, &b, ".", ino, S_IFDIR);
		if (r == 0)
			r = dirbuf_add(req, &b, "..", FUSE_ROOT_ID, S_IFDIR);
		for (unsigned i = 1; i < F_NKINDS && r == 0; i++)
			r = dirbuf_add(req, &b, file_names[i], chan_ino(ch, i), S_IFREG);
	} else {
		r = ch ? -ENOTDIR : -ENOENT;
	}
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else if ((size_t)off < b.len)
		fuse_reply_buf(req, b.p + off, b.len - (size_t)off < size ? b.len - (size_t)off : size);
	else
		fuse_reply_buf(req, NULL, 0);
	free(b.p);
}

static void mm_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct mmfs *fs = fs_of(req);
	struct mm_chan_opts o;
	struct mm_err err = { "" };
	struct stat st;
	struct chan *ch;
	int r;

	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!valid_name(name)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	if (find_name(fs, name)) {
		r = -EEXIST;
	} else if (!(ch = chan_new(fs, name))) {
		r = -ENOMEM;
	} else {
		chan_opts(fs, &o);
		r = mm_channel_open(&ch->mc, MM_CREATOR, false, &o, &err);
		if (r < 0) {
			free(ch);
			fuse_log(FUSE_LOG_ERR, "mmapfs: mkdir %s: %s\n", name, err.msg);
		} else {
			chan_link(fs, ch);
			fill_attr(fs, &st, chan_ino(ch, F_DIR), ch, F_DIR);
			trace(fs, "%s: created, read area %s, write area %s\n", name,
			      ch->mc.rd.area.path, ch->mc.wr.area.path);
		}
	}
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, &st);
}

static void mm_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch;
	int err = 0;

	pthread_mutex_lock(&fs->lock);
	ch = parent == FUSE_ROOT_ID ? find_name(fs, name) : NULL;
	if (!ch) {
		err = parent == FUSE_ROOT_ID ? ENOENT : ENOTDIR;
	} else if (ch->io_busy ||
		   (ch->reader && !ch->reader->flushed) ||
		   (ch->writer && !ch->writer->flushed)) {
		/* data is open; a handle that was closed but whose release is
		 * still on its way does not count */
		err = EBUSY;
	} else {
		trace(fs, "%s: removed\n", name);
		if (ch->writer) {
			/* closed, its release on the way: the stream ends now */
			mm_channel_writer_end(&ch->mc);
			ch->writer->stolen = true;
			ch->writer = NULL;
		}
		chan_remove(fs, ch);
	}
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_err(req, err);
}

static void mm_refuse(fuse_req_t req)
{
	fuse_reply_err(req, EPERM);
}

static void mm_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	mm_refuse(req);
}

static void mm_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	mm_refuse(req);
}

static void mm_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	mm_refuse(req);
}

static void mm_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	mm_refuse(req);
}

/* ---- open and close ---- */

/* -d: where the rings stand. fs->lock held. */
static void trace_rings(struct mmfs *fs, struct chan *ch, const char *what)
{
	for (int i = 0; i < 2 && fs->debug; i++) {
		const struct mm_dir *d = i ? &ch->mc.wr : &ch->mc.rd;
		uint32_t start = 0, end = 0;

		if (d->present && mm_ring_raw(&d->ring, &start, &end) == 0)
			trace(fs, "%s: %s: %s ring data_start=%u data_end=%u, %llu bytes moved\n",
			      ch->name, what, i ? "write" : "read", start, end,
			      (unsigned long long)__atomic_load_n(&d->bytes, __ATOMIC_RELAXED));
	}
}

static void handle_free(struct handle *h)
{
	free(h->buf);
	free(h);
}

/* Take h off the list of open handles. fs->lock held. */
static void handle_unlink(struct mmfs *fs, struct handle *h)
{
	for (struct handle **p = &fs->handles; *p; p = &(*p)->next) {
		if (*p == h) {
			*p = h->next;
			break;
		}
	}
}

/* Forget h's poll handle, if any. fs->lock held. */
static void poll_drop(struct mmfs *fs, struct handle *h, bool notify)
{
	if (!h->ph)
		return;
	for (struct handle **p = &fs->pollers; *p; p = &(*p)->poll_next) {
		if (*p == h) {
			*p = h->poll_next;
			break;
		}
	}
	if (notify)
		fuse_lowlevel_notify_poll(h->ph);
	fuse_pollhandle_destroy(h->ph);
	h->ph = NULL;
}

/* Take the data slots for h. fs->lock held. 0 or -errno. */
static int data_claim(struct chan *ch, struct handle *h, int accmode)
{
	struct mm_channel *mc = &ch->mc;
	bool rd = accmode != O_WRONLY, wr = accmode != O_RDONLY;
	int r;

	mm_channel_refresh(mc);
	if (mc->state == MM_STATE_ERROR)
		return -__atomic_load_n(&mc->fail, __ATOMIC_ACQUIRE);
	if (mc->state != MM_STATE_READY)
		return -ENOTCONN;
	/* one direction only: a pure open of the missing one fails at once */
	if ((accmode == O_RDONLY && !mc->rd.usable) || (accmode == O_WRONLY && !mc->wr.usable) ||
	    (!mc->rd.usable && !mc->wr.usable))
		return -ENXIO;
	rd = rd && mc->rd.usable;
	wr = wr && mc->wr.usable;
	if ((rd && ch->reader && !ch->reader->flushed) ||
	    (wr && ch->writer && !ch->writer->flushed))
		return -EBUSY;
	if (wr) {
		if (ch->writer) {
			/* closed, its release still on the way: its stream ends here */
			mm_channel_writer_end(mc);
			ch->writer->stolen = true;
			ch->writer = NULL;
		}
		r = mm_channel_writer_begin(mc);
		if (r < 0)
			return r;
		ch->writer = h;
		h->writing = true;
	}
	if (rd) {
		if (ch->reader) {
			ch->reader->stolen = true;
			ch->reader = NULL;
		}
		ch->reader = h;
		h->reading = true;
	}
	return 0;
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
	mm_channel_wake(data);
}

/* Sleep a little for the peer: a futex wait that its wake ends at once
 * (same host), else a backoff from 50 us to 10 ms (a VM boundary, an xpra
 * peer, which wakes nobody). */
static unsigned wait_step(struct chan *ch, bool writing, unsigned step)
{
	mm_channel_wait(&ch->mc, writing, step);
	return step < 10000 ? step * 2 : step;
}

static void mm_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	int accmode = fi->flags & O_ACCMODE;
	struct handle *h = calloc(1, sizeof(*h));
	unsigned step = 50;
	enum file_kind k;
	struct chan *ch;
	int r = 0, n;

	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	ch = find_ino(fs, ino, &k);
	if (!ch) {
		r = -ENOENT;
	} else if (k == F_DIR) {
		r = -EISDIR;
	} else if (k == F_DATA) {
		while ((r = data_claim(ch, h, accmode)) == -EAGAIN &&
		       !(fi->flags & O_NONBLOCK) && !wait_over(req)) {
			/* the reader has yet to take earlier ends of stream;
			 * io_busy keeps the areas mapped while we wait */
			ch->io_busy++;
			pthread_mutex_unlock(&fs->lock);
			fuse_req_interrupt_func(req, on_interrupt, &ch->mc);
			step = wait_step(ch, true, step);
			pthread_mutex_lock(&fs->lock);
			ch->io_busy--;
		}
		if (r == -EAGAIN && wait_over(req))
			r = -EINTR;
		if (r == 0) {
			ch->data_handles++;
			fi->direct_io = 1;
			fi->nonseekable = 1;
			trace_rings(fs, ch, h->reading && h->writing ? "data opened to read and write" :
				    h->reading ? "data opened to read" : "data opened to write");
		}
	} else if (accmode != O_RDONLY && k != F_PEER && k != F_CHUNKS) {
		r = -EACCES;
	} else if (accmode == O_RDWR) {
		r = -EINVAL;	/* peer and chunks: read what is, or write */
	} else if (accmode != O_RDONLY) {
		/* the text written is gathered in h->buf */
		fi->direct_io = 1;
	} else {
		h->buf = malloc(TEXT_MAX);
		n = h->buf ? file_text(ch, k, h->buf, TEXT_MAX) : -ENOMEM;
		if (n < 0)
			r = n;
		else
			h->len = (size_t)n;
		fi->direct_io = 1;
	}
	if (r == 0) {
		h->ch = ch;
		h->kind = k;
		ch->refs++;
		h->next = fs->handles;
		fs->handles = h;
	}
	pthread_mutex_unlock(&fs->lock);
	if (r < 0) {
		handle_free(h);
		fuse_reply_err(req, -r);
		return;
	}
	fi->fh = (uintptr_t)h;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* the opener was interrupted: nobody will release this */
		pthread_mutex_lock(&fs->lock);
		if (h->reading)
			ch->reader = NULL;
		if (h->writing) {
			mm_channel_writer_end(&ch->mc);
			ch->writer = NULL;
		}
		if (k == F_DATA)
			ch->data_handles--;
		handle_unlink(fs, h);
		chan_unref(ch);
		pthread_mutex_unlock(&fs->lock);
		handle_free(h);
	}
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

/* Does the text gathered so far make a whole message? Each area it names
 * has all its keys (five in an offer, three in an answer), and it ends a
 * line. */
static bool peer_complete(const char *buf, size_t len)
{
	struct mm_caps *c;
	bool done = false;

	if (len == 0 || buf[len - 1] != '\n')
		return false;
	c = calloc(1, sizeof(*c));
	if (!c)
		return false;
	if (mm_caps_parse(buf, len, c, NULL) < 0) {
		done = true;	/* it will not get better: let it fail now */
	} else {
		bool offer = (c->read.have | c->write.have) & MM_CAP_FILE;
		unsigned need = offer ? MM_CAP_ALL : MM_CAP_TOKEN_ALL;

		done = (c->read.have || c->write.have) &&
		       (!c->read.have || (c->read.have & need) == need) &&
		       (!c->write.have || (c->write.have & need) == need);
	}
	free(c);
	return done;
}

/* Hand the text gathered so far to the channel, all of it again if an
 * earlier part was handed over already (a message written in pieces): the
 * handshake is made to take the same text twice. A refusal starts the
 * handle afresh. fs->lock held. 0 or -errno. */
static int peer_process(struct mmfs *fs, struct handle *h)
{
	struct chan *ch = h->ch;
	struct mm_err err = { "" };
	int r;

	h->done = h->len;

	if (ch->removed)
		return -ENOENT;
	if (ch->data_handles || ch->io_busy) {
		snprintf(ch->mc.error, sizeof(ch->mc.error),
			 "data is open: close it before a new handshake");
		return -EBUSY;
	}
	r = mm_channel_peer(&ch->mc, h->buf, h->len, mmfs_now_ms(), &err);
	clock_gettime(CLOCK_REALTIME, &ch->mtime);
	if (r < 0) {
		h->len = h->done = 0;
		fuse_log(fs->debug ? FUSE_LOG_DEBUG : FUSE_LOG_INFO,
			 "mmapfs: %s: peer refused: %s\n", ch->name, err.msg);
		return r;
	}
	trace(fs, "%s: peer accepted, role %s, state %s, extension %s\n", ch->name,
	      ch->mc.role == MM_CREATOR ? "creator" : "attacher",
	      mm_state_name(ch->mc.state), ch->mc.ext ? "on" : "off");
	for (int i = 0; i < 2 && fs->debug; i++) {
		const struct mm_dir *d = i ? &ch->mc.wr : &ch->mc.rd;

		if (d->present)
			trace(fs, "%s: %s area %s, %llu bytes, ring 8..%u, our token at %llu\n",
			      ch->name, i ? "write" : "read", d->area.path,
			      (unsigned long long)d->area.size, d->ring.end,
			      (unsigned long long)d->token_index);
	}
	return 0;
}

static void peer_write(fuse_req_t req, struct handle *h, const char *buf, size_t size)
{
	struct mmfs *fs = fs_of(req);
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	if (h->len + size > MM_CAPS_MAX) {
		snprintf(h->ch->mc.error, sizeof(h->ch->mc.error),
			 "peer: more than %d bytes written", MM_CAPS_MAX);
		h->len = h->done = 0;
		r = -EFBIG;
	} else {
		char *p = realloc(h->buf, h->len + size);

		if (!p) {
			r = -ENOMEM;
		} else {
			h->buf = p;
			memcpy(h->buf + h->len, buf, size);
			h->len += size;
			if (peer_complete(h->buf, h->len))
				r = peer_process(fs, h);
		}
	}
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
}

/* Start a data call: the channel stays mapped until data_end(), and the
 * calls on one direction run one at a time (two threads may share an fd),
 * a waiting one still answering an interrupt. */
static int data_begin(fuse_req_t req, struct handle *h, bool writing)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	pthread_mutex_t *m = writing ? &ch->wr_lock : &ch->rd_lock;
	unsigned step = 50;
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	if (ch->removed)
		r = -ENOTCONN;
	else if (h->stolen)
		r = -EBADF;
	else {
		ch->io_busy++;
		h->flushed = false;
	}
	pthread_mutex_unlock(&fs->lock);
	while (r == 0 && pthread_mutex_trylock(m) != 0) {
		if (wait_over(req)) {
			pthread_mutex_lock(&fs->lock);
			ch->io_busy--;
			pthread_mutex_unlock(&fs->lock);
			return -EINTR;
		}
		usleep(step);
		step = step < 10000 ? step * 2 : step;
	}
	return r;
}

/* After the reply h may be released already: only ch may be used. */
static void data_end(struct mmfs *fs, struct chan *ch, bool writing)
{
	pthread_mutex_unlock(writing ? &ch->wr_lock : &ch->rd_lock);
	pthread_mutex_lock(&fs->lock);
	ch->io_busy--;
	pthread_mutex_unlock(&fs->lock);
}

static void reply_copy(fuse_req_t req, struct chan *ch, const struct iovec *iov,
		       int niov, size_t n)
{
	char *buf = malloc(n);
	int r = buf ? 0 : -ENOMEM;

	if (r == 0 && mm_guard_copy_iov(buf, iov, niov, false) < 0) {
		mm_channel_set_error(&ch->mc, EIO,
				     "read area %s: the mapping faulted (file truncated?)",
				     ch->mc.rd.area.path);
		r = -EIO;
	}
	if (r == 0)
		r = mm_channel_read_done(&ch->mc, n);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, buf, n);
	free(buf);
}

static void data_read(fuse_req_t req, struct handle *h, size_t size,
		      struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	struct iovec iov[2];
	unsigned step = 50;
	ssize_t n;
	int niov, r;

	if (!h->reading) {
		fuse_reply_err(req, EBADF);
		return;
	}
	r = data_begin(req, h, false);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fuse_req_interrupt_func(req, on_interrupt, &ch->mc);
	for (;;) {
		n = mm_channel_read_iov(&ch->mc, size, iov, &niov);
		if (n != -EAGAIN)
			break;
		if ((fi->flags & O_NONBLOCK) || wait_over(req)) {
			n = (fi->flags & O_NONBLOCK) ? -EAGAIN : -EINTR;
			break;
		}
		step = wait_step(ch, false, step);
	}
	if (n > 0 && ch->mc.ext) {
		/* the reply points into the ring: the kernel copies straight
		 * from shared memory into the reader's buffer; the space is
		 * given back after, and the peer's writer woken */
		r = fuse_reply_iov(req, iov, niov);
		if (r == 0)
			mm_channel_read_done(&ch->mc, (size_t)n);
		else
			trace(fs, "%s: read reply failed: %s\n", ch->name, strerror(-r));
	} else if (n > 0) {
		/* an xpra peer acts on data_start as soon as our reader has its
		 * bytes: give the space back before the reply, from a copy */
		reply_copy(req, ch, iov, niov, (size_t)n);
	} else if (n == 0) {
		trace(fs, "%s: end of stream\n", ch->name);
		fuse_reply_buf(req, NULL, 0);
	} else {
		fuse_reply_err(req, (int)-n);
	}
	data_end(fs, ch, false);
}

struct copy_in {
	struct iovec *iov;
	int niov;
	const char *src;
};

static void data_write(fuse_req_t req, struct handle *h, const char *buf, size_t size,
		       struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = h->ch;
	struct iovec iov[2];
	unsigned step = 50;
	size_t done = 0;
	ssize_t n = 0;
	int niov, r;

	if (!h->writing) {
		fuse_reply_err(req, EBADF);
		return;
	}
	r = data_begin(req, h, true);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fuse_req_interrupt_func(req, on_interrupt, &ch->mc);
	while (done < size) {
		n = mm_channel_write_iov(&ch->mc, size - done, iov, &niov);
		if (n > 0) {
			if (mm_guard_copy_iov((char *)buf + done, iov, niov, true) < 0) {
				mm_channel_set_error(&ch->mc, EIO,
						     "write area %s: the mapping faulted (file truncated?)",
						     ch->mc.wr.area.path);
				n = -EIO;
				break;
			}
			done += (size_t)n;
			mm_channel_write_done(&ch->mc, (size_t)n);
			step = 50;
			continue;
		}
		if (n != -EAGAIN)
			break;
		if ((fi->flags & O_NONBLOCK) || wait_over(req)) {
			n = (fi->flags & O_NONBLOCK) ? -EAGAIN : -EINTR;
			break;
		}
		step = wait_step(ch, true, step);
	}
	if (done > 0)
		fuse_reply_write(req, done);
	else
		fuse_reply_err(req, (int)-n);
	data_end(fs, ch, true);
}

/* Pieces for the next reads of data, a whole line at a time. */
static void chunks_write(fuse_req_t req, struct handle *h, const char *buf, size_t size)
{
	struct mmfs *fs = fs_of(req);
	struct mm_err err = { "" };
	char *p, *nl;
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	if (h->len + size > 4096) {
		r = -EINVAL;
		snprintf(err.msg, sizeof(err.msg), "chunks: a line longer than 4096 bytes");
	} else if (!(p = realloc(h->buf, h->len + size))) {
		r = -ENOMEM;
	} else {
		h->buf = p;
		memcpy(h->buf + h->len, buf, size);
		h->len += size;
		nl = memrchr(h->buf, '\n', h->len);
		if (nl && !h->ch->removed) {
			size_t whole = (size_t)(nl - h->buf) + 1;

			r = mm_channel_chunks_add(&h->ch->mc, h->buf, whole, &err);
			memmove(h->buf, h->buf + whole, h->len - whole);
			h->len -= whole;
		}
	}
	if (r < 0) {
		h->len = 0;
		snprintf(h->ch->mc.error, sizeof(h->ch->mc.error), "%s", err.msg);
		trace(fs, "%s: %s\n", h->ch->name, err.msg);
	}
	pthread_mutex_unlock(&fs->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
}

static void mm_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct handle *h = handle_of(fi);

	if (h->kind == F_DATA) {
		data_read(req, h, size, fi);
		return;
	}
	if (!h->buf || (fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (off < 0 || (size_t)off >= h->len) {
		fuse_reply_buf(req, NULL, 0);
	} else {
		/* a copy: once the reply is out the reader may close, and the
		 * release free h->buf while libfuse still holds the pointer */
		size_t n = h->len - (size_t)off < size ? h->len - (size_t)off : size;
		char *copy = malloc(n);

		if (!copy) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(copy, h->buf + off, n);
		fuse_reply_buf(req, copy, n);
		free(copy);
	}
}

static void mm_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
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

static void mm_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = handle_of(fi);
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	if (h->kind == F_DATA)
		h->flushed = true;
	else if (h->kind == F_PEER && h->len > h->done)
		r = peer_process(fs, h);	/* what came after the last whole message */
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_err(req, -r);
}

static void mm_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = handle_of(fi);
	struct chan *ch = h->ch;

	pthread_mutex_lock(&fs->lock);
	if (h->kind == F_DATA) {
		if (ch->reader == h)
			ch->reader = NULL;
		if (ch->writer == h) {
			if (!ch->removed)
				mm_channel_writer_end(&ch->mc);
			ch->writer = NULL;
		}
		ch->data_handles--;
		if (!ch->removed)
			trace_rings(fs, ch, h->writing ? "data closed, end of stream" : "data closed");
	}
	poll_drop(fs, h, false);
	handle_unlink(fs, h);
	chan_unref(ch);
	pthread_mutex_unlock(&fs->lock);
	handle_free(h);
	fuse_reply_err(req, 0);
}

/* Wake the ticker: a new poll to watch, or the end. */
static void ticker_kick(struct mmfs *fs)
{
	__atomic_add_fetch(&fs->kick, 1, __ATOMIC_SEQ_CST);
	mm_futex_wake_private(&fs->kick);
}

/* What poll reports for a data handle: the channel's readiness, less the
 * directions the handle does not hold. fs->lock held. */
static unsigned handle_mask(const struct handle *h)
{
	unsigned mask = h->ch->removed ? POLLERR : mm_channel_poll(&h->ch->mc);

	if (!h->reading)
		mask &= ~(unsigned)(POLLIN | POLLRDNORM);
	if (!h->writing)
		mask &= ~(unsigned)(POLLOUT | POLLWRNORM);
	return mask;
}

static void mm_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		    struct fuse_pollhandle *ph)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = handle_of(fi);
	unsigned events = fi->poll_events ? fi->poll_events : POLLIN | POLLOUT;
	unsigned mask = POLLIN | POLLRDNORM;

	if (h->kind != F_DATA) {
		if (ph)
			fuse_pollhandle_destroy(ph);
		fuse_reply_poll(req, mask);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	mask = handle_mask(h);
	/* the kernel asks again after each notification: a newer poll of the
	 * same file replaces the older one, without a wakeup */
	poll_drop(fs, h, false);
	if (ph && (mask & (events | POLLERR | POLLHUP))) {
		fuse_pollhandle_destroy(ph);	/* ready now: nothing to wait for */
	} else if (ph) {
		h->ph = ph;
		h->ph_events = events;
		h->poll_next = fs->pollers;
		fs->pollers = h;
		ticker_kick(fs);
	}
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_poll(req, mask);
}

/* ---- the ticker: heartbeats, liveness, poll notifications ---- */

/* How often waiting polls are checked even without a wake: a peer in
 * another VM, or an xpra peer, wakes nobody. */
#define POLL_RECHECK_US 10000

/* Notify the polls that came true; gather the shared words the others wait
 * on into words/seen from index n (loaded before the check, so a change in
 * between is not lost). Returns the new count, or MM_FUTEX_WAITV_MAX + 1 if
 * they did not all fit. fs->lock held. */
static unsigned tick_polls(struct mmfs *fs, uint32_t **words, uint32_t *seen, unsigned n)
{
	struct handle *h = fs->pollers, *next;
	bool full = false;

	for (; h; h = next) {
		unsigned events = h->ph_events, k = 0;
		uint32_t *w[2];
		uint32_t v[2];

		next = h->poll_next;
		if (!h->reading)
			events &= ~(unsigned)POLLIN;
		if (!h->writing)
			events &= ~(unsigned)POLLOUT;
		if (!h->ch->removed)
			k = mm_channel_poll_words(&h->ch->mc, events, w, v);
		if (handle_mask(h) & (h->ph_events | POLLERR | POLLHUP)) {
			poll_drop(fs, h, true);
			continue;
		}
		for (unsigned i = 0; i < k; i++) {
			if (n == MM_FUTEX_WAITV_MAX) {
				full = true;
				break;
			}
			words[n] = w[i];
			seen[n++] = v[i];
		}
	}
	return full ? MM_FUTEX_WAITV_MAX + 1 : n;
}

static void *ticker(void *arg)
{
	struct mmfs *fs = arg;
	uint32_t *words[MM_FUTEX_WAITV_MAX];
	uint32_t seen[MM_FUTEX_WAITV_MAX];
	uint64_t next_beat = 0;

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		uint64_t now = mmfs_now_ms();
		unsigned n, timeout_us;
		bool polls;

		if (now >= next_beat) {
			for (struct chan *ch = fs->chans; ch; ch = ch->next)
				if (mm_channel_tick(&ch->mc, now))
					trace(fs, "%s: state %s, peer %s%s%s\n", ch->name,
					      mm_state_name(ch->mc.state),
					      ch->mc.peer == MM_PEER_ALIVE ? "alive" :
					      ch->mc.peer == MM_PEER_DEAD ? "dead" : "unknown",
					      ch->mc.error[0] ? ", " : "", ch->mc.error);
			next_beat = now + MM_BEAT_MS;
		}
		/* sleep until a kick, a peer's wake on a polled word, a recheck
		 * of the polls, or the next heartbeat */
		words[0] = &fs->kick;
		seen[0] = __atomic_load_n(&fs->kick, __ATOMIC_SEQ_CST);
		n = tick_polls(fs, words, seen, 1);
		polls = fs->pollers != NULL;
		timeout_us = polls ? POLL_RECHECK_US : (unsigned)(next_beat - now) * 1000;
		pthread_mutex_unlock(&fs->lock);
		if (n > MM_FUTEX_WAITV_MAX ||
		    mm_futex_waitv(words, seen, n, true, timeout_us) == -ENOSYS)
			usleep(polls && timeout_us > 2000 ? 2000 : timeout_us);
		pthread_mutex_lock(&fs->lock);
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

int mmfs_ticker_start(struct mmfs *fs)
{
	return -pthread_create(&fs->ticker, NULL, ticker, fs);
}

void mmfs_ticker_stop(struct mmfs *fs)
{
	pthread_mutex_lock(&fs->lock);
	fs->stop = true;
	pthread_mutex_unlock(&fs->lock);
	ticker_kick(fs);
	pthread_join(fs->ticker, NULL);
}

static void mm_init(void *userdata, struct fuse_conn_info *conn)
{
	/* `echo x > peer` truncates: take O_TRUNC with the open */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* A stream: the chunks of one large read or write must reach us one
	 * after the other, in order, never at once. */
	conn->want &= ~FUSE_CAP_ASYNC_DIO;
	conn->max_write = DATA_MAX_IO;
}

const struct fuse_lowlevel_ops mmfs_ops = {
	.init = mm_init,
	.lookup = mm_lookup,
	.getattr = mm_getattr,
	.setattr = mm_setattr,
	.readdir = mm_readdir,
	.mkdir = mm_mkdir,
	.rmdir = mm_rmdir,
	.mknod = mm_mknod,
	.unlink = mm_unlink,
	.rename = mm_rename,
	.create = mm_create,
	.open = mm_open,
	.read = mm_read,
	.write = mm_write,
	.flush = mm_flush,
	.release = mm_release,
	.poll = mm_poll,
};
