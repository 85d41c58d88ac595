/* The tree: channels are directories at the top, their files below
 * (docs/mmapfs.1, "FILES"). The channel table lives here. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sanitizer/asan_interface.h>
#include <search.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

static const char *const file_names[F_NKINDS] = {
	[F_CAPABILITIES] = "capabilities",
	[F_PEER] = "peer",
	[F_TOKEN] = "token",
	[F_STATUS] = "status",
	[F_DATA] = "data",
	[F_CHUNKS] = "chunks",
	[F_SEND] = "send",
	[F_RECV] = "recv",
};

/* For the owner; the group gets the same when the channel is group-writable
 * (docs/mmapfs.1, "USERS"); others nothing. The FIFO entries are symbolic
 * links: the FIFOs' own modes and ACLs say who opens them which way. */
static const mode_t file_modes[F_NKINDS] = {
	[F_DIR] = S_IFDIR | 0700,
	[F_CAPABILITIES] = S_IFREG | 0400,
	[F_PEER] = S_IFREG | 0600,
	[F_TOKEN] = S_IFREG | 0400,
	[F_STATUS] = S_IFREG | 0400,
	[F_DATA] = S_IFREG | 0600,
	[F_CHUNKS] = S_IFREG | 0600,
	[F_SEND] = S_IFLNK | 0777,
	[F_RECV] = S_IFLNK | 0777,
};

uint64_t mmfs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

fuse_ino_t chan_ino(const struct chan *ch, enum file_kind k)
{
	return (fuse_ino_t)((ch->key.id << INO_SHIFT) | k);
}

/* ---- the table (fs->lock held) ---- */

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct chan_key *)a)->name, ((const struct chan_key *)b)->name);
}

static int cmp_id(const void *a, const void *b)
{
	uint64_t x = ((const struct chan_key *)a)->id, y = ((const struct chan_key *)b)->id;

	return x < y ? -1 : x > y;
}

static struct chan *find(void *const *tree, const struct chan_key *key,
			 int (*cmp)(const void *, const void *))
{
	struct chan *const *node = tfind(key, tree, cmp);

	return node ? *node : NULL;
}

static struct chan *find_name(struct mmfs *fs, const char *name)
{
	struct chan_key key;

	if (strlen(name) >= sizeof(key.name))
		return NULL;
	strcpy(key.name, name);
	return find(&fs->by_name, &key, cmp_name);
}

static struct chan *find_ino(struct mmfs *fs, fuse_ino_t ino, enum file_kind *kind)
{
	struct chan_key key = { .id = ino >> INO_SHIFT };
	unsigned k = ino & ((1u << INO_SHIFT) - 1);
	struct chan *ch;

	if (k >= F_NKINDS)
		return NULL;
	ch = find(&fs->by_id, &key, cmp_id);
	if (ch)
		*kind = (enum file_kind)k;
	return ch;
}

/* ---- where channels live ----
 *
 * In chunks of 2 MiB asked to be huge pages: the ticker visits thousands
 * of channels every beat, and a page walk for each (on a VM, through two
 * page tables) was most of what a visit cost. A freed channel is kept for
 * the next one made; the chunks stay for the daemon's life. Under ASan a
 * freed channel is poisoned, so a use after free is still reported. */
#define CHAN_CHUNK ((size_t)2 << 20)
#define CHAN_SIZE ((sizeof(struct chan) + 63) & ~(size_t)63)

static char *chunk_new(void)
{
	char *p = mmap(NULL, 2 * CHAN_CHUNK, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *a;

	if (p == MAP_FAILED)
		return NULL;
	/* aligned, so that it can be one huge page */
	a = (char *)(((uintptr_t)p + CHAN_CHUNK - 1) & ~(uintptr_t)(CHAN_CHUNK - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	munmap(a + CHAN_CHUNK, (size_t)(p + CHAN_CHUNK - a));
	madvise(a, CHAN_CHUNK, MADV_HUGEPAGE);
	ASAN_POISON_MEMORY_REGION(a, CHAN_CHUNK);
	return a;
}

static struct chan *chan_alloc(struct mmfs *fs)
{
	struct chan *ch = NULL;

	pthread_mutex_lock(&fs->pool.lock);
	if (fs->pool.free) {
		ch = fs->pool.free;
		ASAN_UNPOISON_MEMORY_REGION(ch, CHAN_SIZE);
		fs->pool.free = ch->next;
	} else {
		if (!fs->pool.chunk || fs->pool.used + CHAN_SIZE > CHAN_CHUNK) {
			fs->pool.chunk = chunk_new();
			fs->pool.used = 0;
		}
		if (fs->pool.chunk) {
			ch = (struct chan *)(void *)(fs->pool.chunk + fs->pool.used);
			fs->pool.used += CHAN_SIZE;
			ASAN_UNPOISON_MEMORY_REGION(ch, CHAN_SIZE);
		}
	}
	pthread_mutex_unlock(&fs->pool.lock);
	if (ch)
		memset(ch, 0, sizeof(*ch));
	return ch;
}

/* Free a channel whose core part is closed or was never opened. */
static void chan_discard(struct mmfs *fs, struct chan *ch)
{
	pthread_mutex_destroy(&ch->rd_lock);
	pthread_mutex_destroy(&ch->wr_lock);
	free(ch->user_dir);
	pthread_mutex_lock(&fs->pool.lock);
	ch->next = fs->pool.free;
	fs->pool.free = ch;
	ASAN_POISON_MEMORY_REGION(ch, CHAN_SIZE);
	pthread_mutex_unlock(&fs->pool.lock);
}

static void chan_free(struct mmfs *fs, struct chan *ch)
{
	pthread_mutex_lock(&fs->lock);
	waiter_disarm(fs, &ch->wait);
	pthread_mutex_unlock(&fs->lock);
	mm_channel_destroy(&ch->mc);
	fifo_free(ch->fifo[FIFO_SEND]);
	fifo_free(ch->fifo[FIFO_RECV]);
	chan_discard(fs, ch);
}

struct chan *chan_get(struct mmfs *fs, fuse_ino_t ino, enum file_kind *kind)
{
	struct chan *ch;

	pthread_mutex_lock(&fs->lock);
	ch = find_ino(fs, ino, kind);
	if (ch)
		ch->refs++;
	pthread_mutex_unlock(&fs->lock);
	return ch;
}

void chan_put(struct mmfs *fs, struct chan *ch)
{
	bool last;

	pthread_mutex_lock(&fs->lock);
	last = --ch->refs == 0;
	pthread_mutex_unlock(&fs->lock);
	if (last)
		chan_free(fs, ch);
}

/* ---- limits: each user's channels and area bytes (docs/mmapfs.1,
 * LIMITS; fs->lock held) ---- */

static struct usage *usage_of(struct mmfs *fs, uid_t uid)
{
	struct usage *u;

	for (size_t i = 0; i < fs->nusage; i++)
		if (fs->usage[i].uid == uid)
			return &fs->usage[i];
	u = realloc(fs->usage, (fs->nusage + 1) * sizeof(*u));
	if (!u)
		return NULL;
	fs->usage = u;
	u += fs->nusage++;
	*u = (struct usage){ uid, 0, 0 };
	return u;
}

/* Count a new channel of uid's, whose areas are `bytes`, if its limits
 * let it: 0, or -EDQUOT (err says whose limit and which), -ENOMEM. */
static int charge(struct mmfs *fs, uid_t uid, uint64_t bytes, struct mm_err *err)
{
	bool owner = uid == fs->uid;
	const struct mm_limits *l = owner ? &fs->cfg.owner_max : &fs->cfg.user_max;
	const char *key = owner ? "owner_max" : "max";
	struct usage *u = usage_of(fs, uid);

	if (!u)
		return mm_fail(err, -ENOMEM, "out of memory");
	if (l->channels && u->chans >= l->channels)
		return mm_fail(err, -EDQUOT, "uid %u is at its limit of %llu channels (%s_channels)",
			       (unsigned)uid, (unsigned long long)l->channels, key);
	if (l->bytes && (u->bytes > l->bytes || bytes > l->bytes - u->bytes))
		return mm_fail(err, -EDQUOT, "uid %u: %llu bytes of areas more would pass its "
			       "limit of %llu (%s_bytes), %llu in use", (unsigned)uid,
			       (unsigned long long)bytes, (unsigned long long)l->bytes, key,
			       (unsigned long long)u->bytes);
	u->chans++;
	u->bytes += bytes;
	return 0;
}

static void uncharge(struct mmfs *fs, uid_t uid, uint64_t bytes)
{
	struct usage *u = usage_of(fs, uid);	/* there: it was charged */

	u->chans--;
	u->bytes -= bytes;
}

/* Take ch out of the table. fs->lock held; the caller drops its ref. */
static void chan_unlink(struct mmfs *fs, struct chan *ch)
{
	tdelete(&ch->key, &fs->by_name, cmp_name);
	tdelete(&ch->key, &fs->by_id, cmp_id);
	mmfs_tick_forget(fs, ch);
	fs->nchans--;
	*(ch->prev ? &ch->prev->next : &fs->chans) = ch->next;
	*(ch->next ? &ch->next->prev : &fs->last) = ch->prev;
	ch->removed = true;
	ch->refs--;
	if (ch->charge)
		uncharge(fs, ch->payer, ch->charge);
}

static struct chan *chan_new(struct mmfs *fs, const char *name)
{
	struct chan *ch = chan_alloc(fs);

	if (!ch)
		return NULL;
	snprintf(ch->key.name, sizeof(ch->key.name), "%s", name);
	ch->tick_slot = -1;
	pthread_mutex_init(&ch->rd_lock, NULL);
	pthread_mutex_init(&ch->wr_lock, NULL);
	data_init_chan(ch);
	clock_gettime(CLOCK_REALTIME, &ch->ctime);
	ch->mtime = ch->ctime;
	return ch;
}

/* Put an opened channel in the table: -EEXIST if the name was taken
 * meanwhile (ch is then the caller's to free), -ENOMEM. */
static int chan_link(struct mmfs *fs, struct chan *ch)
{
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	ch->key.id = fs->next_id;
	if (find_name(fs, ch->key.name)) {
		r = -EEXIST;
	} else if (mmfs_tick_room(fs, fs->nchans + 1) < 0) {
		r = -ENOMEM;
	} else if (!tsearch(&ch->key, &fs->by_name, cmp_name)) {
		r = -ENOMEM;
	} else if (!tsearch(&ch->key, &fs->by_id, cmp_id)) {
		tdelete(&ch->key, &fs->by_name, cmp_name);
		r = -ENOMEM;
	} else {
		fs->next_id++;
		fs->nchans++;
		ch->refs = 1;
		ch->prev = fs->last;
		*(fs->last ? &fs->last->next : &fs->chans) = ch;
		fs->last = ch;
	}
	pthread_mutex_unlock(&fs->lock);
	return r;
}

/* A channel belongs to uid:gid. One of another user than the daemon's is
 * a user's channel: the daemon (as root) acts for that user, its areas go
 * to their directory in the mmap_dir, MMAP_DIR/uUID (core/area.h,
 * mm_area_user_dir), and an offered file must be theirs. */
static int chan_owner(struct mmfs *fs, struct chan *ch, uid_t uid, gid_t gid, bool group_w,
		      struct mm_err *err)
{
	const char *dir = fs->cfg.mmap_dir;
	size_t len = strlen(dir);

	ch->uid = uid;
	ch->gid = gid;
	ch->group_w = group_w;
	ch->for_user = uid != geteuid();
	if (!ch->for_user)
		return 0;
	ch->user = (struct mm_owner){ uid, gid };
	while (len > 1 && dir[len - 1] == '/')
		len--;
	if (asprintf(&ch->user_dir, "%.*s/u%u", (int)len, dir, (unsigned)uid) < 0) {
		ch->user_dir = NULL;
		return mm_fail(err, -ENOMEM, "out of memory");
	}
	if (strlen(ch->user_dir) >= PATH_MAX)
		return mm_fail(err, -ENAMETOOLONG, "%s: path too long", dir);
	ch->user_dirs[0] = ch->user_dir;
	return 0;
}

static void chan_opts(struct mmfs *fs, struct chan *ch, struct mm_chan_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->mmap_dir = fs->cfg.mmap_dir;
	o->size = fs->cfg.size;
	o->reserve = fs->cfg.reserve;
	o->rules.dirs = fs->allow_dirs;
	o->rules.ndirs = fs->n_allow_dirs;
	o->rules.uids = fs->cfg.allow_uids;
	o->rules.nuids = fs->cfg.n_allow_uids;
	o->area_tag = fs->area_tag;
	if (ch->for_user) {
		o->mmap_dir = ch->user_dir;
		o->user = &ch->user;
		o->rules.user = &ch->user;
		if (fs->cfg.n_allow_dirs == 0) {
			o->rules.dirs = ch->user_dirs;
			o->rules.ndirs = 1;
		}
	}
}

/* The mmap_dir, on first use: a guest whose areas are all declared files
 * never needs one. Made if missing, locked as ours, and a dead daemon's
 * leftovers swept, its users' too (core/area.h). */
int mmfs_mmap_dir(struct mmfs *fs, struct mm_err *err)
{
	struct mm_err why;
	unsigned swept = 0;
	int r = 0;

	pthread_mutex_lock(&fs->dir_lock);
	if (fs->dir_lockfd < 0) {
		r = mm_area_dir_prepare(fs->cfg.mmap_dir, &why);
		if (r == 0)
			r = mm_area_dir_lock(fs->cfg.mmap_dir, fs->area_tag, &fs->dir_lockfd,
					     &swept, &why);
		if (r < 0)
			mm_fail(err, r, "mmap_dir %s", why.msg);
		if (swept)
			fuse_log(FUSE_LOG_NOTICE,
				 "mmapfs: %s: removed %u areas a dead mmapfs left behind\n",
				 fs->cfg.mmap_dir, swept);
	}
	pthread_mutex_unlock(&fs->dir_lock);
	return r;
}

/* A user's directory for their channels' areas, in the mmap_dir: made if
 * missing, theirs, private (docs/mmapfs.1, "USERS"). */
static int user_dir(struct mmfs *fs, struct chan *ch, struct mm_err *err)
{
	char path[PATH_MAX];
	struct mm_err why;
	int r = mmfs_mmap_dir(fs, err);

	if (r == 0 && (r = mm_area_user_dir(fs->cfg.mmap_dir, &ch->user, path, sizeof(path),
					    &why)) < 0)
		mm_fail(err, r, "areas of uid %u: %s", (unsigned)ch->user.uid, why.msg);
	return r;
}

/* Make a channel owned by uid:gid (this may create files: no lock held)
 * and list it. */
static struct chan *chan_create(struct mmfs *fs, const char *name, enum mm_chan_role role,
				const struct mm_chan_decl *decl, uid_t uid, gid_t gid,
				bool group_w, uint64_t charge, int *res, struct mm_err *err)
{
	const char *read_file = decl ? decl->read_file : NULL;
	const char *write_file = decl ? decl->write_file : NULL;
	struct chan *ch = chan_new(fs, name);
	char origin[PATH_MAX + 16];
	struct mm_chan_opts o;
	int r;

	if (!ch) {
		*res = mm_fail(err, -ENOMEM, "out of memory");
		return NULL;
	}
	/* a creator makes in the mmap_dir (or its user's) the areas no path
	 * was given for */
	r = chan_owner(fs, ch, uid, gid, group_w, err);
	if (r == 0 && role == MM_CREATOR && !read_file && !write_file)
		r = ch->for_user ? user_dir(fs, ch, err) : mmfs_mmap_dir(fs, err);
	if (r < 0) {
		*res = r;
		chan_discard(fs, ch);
		return NULL;
	}
	chan_opts(fs, ch, &o);
	ch->payer = uid;
	ch->charge = charge;
	if (decl) {
		o.read_file = read_file;
		o.write_file = write_file;
		o.read_window = decl->read_window;
		o.write_window = decl->write_window;
		o.read_bell = mmfs_ivshmem_bell(fs, read_file);
		o.write_bell = mmfs_ivshmem_bell(fs, write_file);
		if (o.read_bell || o.write_bell)
			o.bell_vector = mmfs_ivshmem_vector(fs);
		snprintf(origin, sizeof(origin), "%s:%d", fs->cfg.file ? fs->cfg.file : "?",
			 decl->line);
		o.origin = origin;
	}
	r = mm_channel_open(&ch->mc, role, decl != NULL, &o, err);
	if (r == 0 && (r = chan_link(fs, ch)) < 0) {
		mm_fail(err, r, "%s: exists", name);
		mm_channel_destroy(&ch->mc);
	}
	if (r < 0) {
		chan_discard(fs, ch);
		ch = NULL;
	}
	*res = r;
	return ch;
}

int mmfs_add_declared(struct mmfs *fs, const struct mm_chan_decl *d, struct mm_err *err)
{
	char why[512];
	struct chan *ch;
	int r;

	ch = chan_create(fs, d->name, d->role, d, d->uid != (uid_t)-1 ? d->uid : fs->uid,
			 d->gid != (gid_t)-1 ? d->gid : fs->gid, d->group_w, 0, &r, err);
	if (!ch)
		return r;
	trace(fs, "%s: declared %s\n", d->name, mm_role_name(d->role));
	if (mm_channel_state(&ch->mc) == MM_STATE_ERROR) {
		mm_channel_reason(&ch->mc, why, sizeof(why));
		fuse_log(FUSE_LOG_NOTICE, "mmapfs: %s: not ready: %s\n", d->name, why);
	}
	return 0;
}

/* At the end: the kernel sends no release for files still open when the
 * session ends, so their handles go here. No other thread runs. */
void mmfs_close_all(struct mmfs *fs)
{
	while (fs->handles) {
		struct handle *h = fs->handles;

		fs->handles = h->next;
		poll_forget(fs, h);
		if (h->dirs)
			mm_channel_unclaim(&h->ch->mc, h);
		if (--h->ch->refs == 0)
			chan_free(fs, h->ch);
		handle_free(h);
	}
	while (fs->chans) {
		struct chan *ch = fs->chans;

		mm_channel_abandon(&ch->mc, &ch->dropping);
		chan_unlink(fs, ch);
		if (ch->refs == 0)
			chan_free(fs, ch);
	}
}

/* ---- attributes ---- */

static void fill_attr(struct mmfs *fs, struct stat *st, fuse_ino_t ino,
		      struct chan *ch, enum file_kind k)
{
	bool group_w;

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_blksize = 4096;
	if (!ch) {
		st->st_uid = fs->uid;
		st->st_gid = fs->top_gid;
		st->st_mode = S_IFDIR | fs->top_mode;
		st->st_nlink = 2;
		st->st_atim = st->st_mtim = st->st_ctim = fs->mounted;
		return;
	}
	st->st_nlink = k == F_DIR ? 2 : 1;
	st->st_atim = st->st_ctim = ch->ctime;
	pthread_mutex_lock(&fs->lock);
	st->st_mtim = k == F_DIR ? ch->ctime : ch->mtime;
	st->st_uid = ch->uid;
	st->st_gid = ch->gid;
	group_w = ch->group_w;
	pthread_mutex_unlock(&fs->lock);
	st->st_mode = file_modes[k] | (group_w ? (file_modes[k] & 0700) >> 3 : 0);
	if (k == F_SEND || k == F_RECV) {
		char target[PATH_MAX];

		st->st_size = fifo_target(fs, ch, k == F_SEND ? FIFO_SEND : FIFO_RECV, target,
					  sizeof(target));
	} else if (k != F_DIR && k != F_DATA && k != F_CHUNKS) {
		/* st_size is the text's length: `cat` and editors rely on it */
		char *buf = malloc(TEXT_MAX);
		int n = buf ? file_text(ch, k, buf, TEXT_MAX) : 0;

		st->st_size = n > 0 ? n : 0;
		free(buf);
	}
}

/* Sizes and states change under the kernel's feet: nothing is cached (and
 * so every path walk through `send` or `recv` reads the link anew). */
static void reply_entry(fuse_req_t req, const struct stat *st)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = st->st_ino;
	e.attr = *st;
	e.attr_timeout = 0;
	e.entry_timeout = 0;
	fuse_reply_entry(req, &e);
}

static unsigned kind_of_name(const char *name)
{
	for (unsigned i = 1; i < F_NKINDS; i++)
		if (strcmp(name, file_names[i]) == 0)
			return i;
	return F_NKINDS;
}

void mm_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mmfs *fs = fs_of(req);
	enum file_kind k = F_DIR;
	struct chan *ch = NULL;
	struct stat st;
	int err = 0;

	if (parent == FUSE_ROOT_ID) {
		pthread_mutex_lock(&fs->lock);
		ch = find_name(fs, name);
		if (ch)
			ch->refs++;
		pthread_mutex_unlock(&fs->lock);
		err = ch ? 0 : ENOENT;
	} else if ((ch = chan_get(fs, parent, &k)) == NULL) {
		err = ENOENT;
	} else if (k != F_DIR) {
		err = ENOTDIR;
	} else if ((k = kind_of_name(name)) == F_NKINDS) {
		err = ENOENT;
	}
	if (err == 0)
		fill_attr(fs, &st, chan_ino(ch, k), ch, k);
	if (ch)
		chan_put(fs, ch);
	if (err)
		fuse_reply_err(req, err);
	else
		reply_entry(req, &st);
}

void mm_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	enum file_kind k;
	struct chan *ch;
	struct stat st;

	if (ino == FUSE_ROOT_ID) {
		fill_attr(fs, &st, ino, NULL, F_DIR);
		fuse_reply_attr(req, &st, 0);
		return;
	}
	ch = chan_get(fs, ino, &k);
	if (!ch) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(fs, &st, ino, ch, k);
	chan_put(fs, ch);
	fuse_reply_attr(req, &st, 0);
}

void mm_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct mmfs *fs = fs_of(req);
	char target[PATH_MAX];
	enum file_kind k;
	struct chan *ch = chan_get(fs, ino, &k);
	int r = -ENOENT;

	if (ch && (k == F_SEND || k == F_RECV))
		r = fifo_readlink(req, ch, k == F_SEND ? FIFO_SEND : FIFO_RECV, target,
				  sizeof(target));
	else if (ch)
		r = -EINVAL;
	if (ch)
		chan_put(fs, ch);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, target);
}

void mm_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi)
{
	struct mmfs *fs = fs_of(req);
	enum file_kind k = F_DIR;
	struct chan *ch = NULL;

	/* Truncation (from O_TRUNC) and times are accepted and mean nothing.
	 * A channel's directory takes chmod, of which only the group's write
	 * bit counts (it shares the channel with the group), and chown: the
	 * kernel let only its owner or root ask (default_permissions). The
	 * files and the top keep their modes and owners. */
	if (!(to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		mm_getattr(req, ino, fi);
		return;
	}
	if (ino != FUSE_ROOT_ID)
		ch = chan_get(fs, ino, &k);
	if (!ch || k != F_DIR) {
		if (ch)
			chan_put(fs, ch);
		fuse_reply_err(req, EPERM);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	if (to_set & FUSE_SET_ATTR_MODE)
		ch->group_w = (attr->st_mode & S_IWGRP) != 0;
	if (to_set & FUSE_SET_ATTR_UID)
		ch->uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		ch->gid = attr->st_gid;
	pthread_mutex_unlock(&fs->lock);
	fifo_access(fs, ch);
	chan_put(fs, ch);
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

void mm_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
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
			r = dirbuf_add(req, &b, ch->key.name, chan_ino(ch, F_DIR), S_IFDIR);
	} else if ((ch = find_ino(fs, ino, &k)) && k == F_DIR) {
		r = dirbuf_add(req, &b, ".", ino, S_IFDIR);
		if (r == 0)
			r = dirbuf_add(req, &b, "..", FUSE_ROOT_ID, S_IFDIR);
		for (unsigned i = 1; i < F_NKINDS && r == 0; i++)
			r = dirbuf_add(req, &b, file_names[i], chan_ino(ch, i),
				       file_modes[i] & S_IFMT);
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

void mm_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct mmfs *fs = fs_of(req);
	/* the apparent size of its two areas, the most it can come to */
	uint64_t bytes = 2 * mm_area_size_for(fs->cfg.size);
	struct mm_dir_info rd, wr;
	struct mm_err err = { "" };
	struct stat st;
	struct chan *ch;
	bool charged;
	int r;

	if (parent != FUSE_ROOT_ID) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!mm_name_valid(name)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* counted against its maker's limits from now on */
	pthread_mutex_lock(&fs->lock);
	r = find_name(fs, name) ? -EEXIST : charge(fs, ctx->uid, bytes, &err);
	pthread_mutex_unlock(&fs->lock);
	/* the maker's, private unless the mode (less the umask) lets the
	 * group write */
	charged = r == 0;
	ch = r ? NULL : chan_create(fs, name, MM_CREATOR, NULL, ctx->uid, ctx->gid,
				    (mode & ~ctx->umask & S_IWGRP) != 0, bytes, &r, &err);
	if (!ch && charged) {
		pthread_mutex_lock(&fs->lock);
		uncharge(fs, ctx->uid, bytes);
		pthread_mutex_unlock(&fs->lock);
	}
	if (!ch) {
		if (r != -EEXIST)
			fuse_log(FUSE_LOG_ERR, "mmapfs: mkdir %s: %s\n", name, err.msg);
		fuse_reply_err(req, -r);
		return;
	}
	if (fs->debug && mm_channel_dir_info(&ch->mc, MM_RD, &rd) &&
	    mm_channel_dir_info(&ch->mc, MM_WR, &wr))
		trace(fs, "%s: created, read area %s, write area %s\n", name, rd.path, wr.path);
	fill_attr(fs, &st, chan_ino(ch, F_DIR), ch, F_DIR);
	reply_entry(req, &st);
}

void mm_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct mmfs *fs = fs_of(req);
	struct chan *ch = NULL;
	int r;

	pthread_mutex_lock(&fs->lock);
	if (parent == FUSE_ROOT_ID && (ch = find_name(fs, name)))
		ch->refs++;
	pthread_mutex_unlock(&fs->lock);
	if (!ch) {
		fuse_reply_err(req, parent == FUSE_ROOT_ID ? ENOENT : ENOTDIR);
		return;
	}
	/* a stream closed just now still holds its slot until its release
	 * arrives, recv waits for one to come: that does not make the
	 * channel busy */
	fifo_yield(fs, ch);
	r = mm_channel_close(&ch->mc);
	if (r == -EBUSY && data_wait_released(req, ch, true))
		r = mm_channel_close(&ch->mc);
	if (r == 0) {
		pthread_mutex_lock(&fs->lock);
		if (!ch->removed)
			chan_unlink(fs, ch);
		pthread_mutex_unlock(&fs->lock);
		trace(fs, "%s: removed\n", name);
		fifo_remove(fs, ch);
		data_serve(fs, ch);	/* opens that waited: ENOTCONN now */
	}
	chan_put(fs, ch);
	fuse_reply_err(req, -r);
}

static void mm_refuse(fuse_req_t req)
{
	fuse_reply_err(req, EPERM);
}

void mm_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	      dev_t rdev)
{
	mm_refuse(req);
}

void mm_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	mm_refuse(req);
}

void mm_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
	       fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	mm_refuse(req);
}

void mm_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi)
{
	mm_refuse(req);
}
