/* A channel seen from a process that is not its daemon: a library that
 * took directions of `data` (the daemon's open descriptor is its claim)
 * maps the areas named by the daemon's `status` and moves bytes through
 * them with the calls of stream.h (docs/PROTOCOL.md, "Native access").
 * A view never handshakes and never publishes a heartbeat: the daemon of
 * this end keeps doing that; mm_channel_watch() follows the peer's. With
 * an xpra peer (no mmapfs extension) a view keeps chunk lists of its own,
 * which its process fills and empties (chunks.h): the daemon's are for
 * its own stream. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunks.h"
#include "ext.h"
#include "internal.h"

/* The value of the line "key=..." of a status text, copied into out (NUL
 * terminated): 0, or -EPROTO if there is no such line or it is too long. */
static int status_value(const char *text, size_t len, const char *key, char *out,
			size_t outlen)
{
	size_t klen = strlen(key);

	for (const char *p = text, *end = text + len; p < end; ) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((nl ? nl : end) - p);

		if (n > klen && memcmp(p, key, klen) == 0 && p[klen] == '=') {
			if (n - klen - 1 >= outlen)
				return -EPROTO;
			memcpy(out, p + klen + 1, n - klen - 1);
			out[n - klen - 1] = '\0';
			return 0;
		}
		p += n + 1;
	}
	return -EPROTO;
}

static int status_u64(const char *text, size_t len, const char *key, uint64_t *v)
{
	char buf[32];

	if (status_value(text, len, key, buf, sizeof(buf)) < 0 ||
	    mm_parse_u64(buf, UINT64_MAX, v) < 0)
		return -EPROTO;
	return 0;
}

/* "AREA.field" in key (KEY_MAX bytes). */
#define KEY_MAX 32

static const char *key_of(char *key, const char *area, const char *field)
{
	snprintf(key, KEY_MAX, "%s.%s", area, field);
	return key;
}

/* name opened read-write, if it is the file (dev, ino): its descriptor,
 * or -errno (-ESTALE for another file). */
static int open_same(const char *name, uint64_t dev, uint64_t ino)
{
	struct stat st;
	int fd = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
		return fd;
	close(fd);
	return -ESTALE;
}

/* The file the daemon maps for an area: by its path, else by the daemon's
 * own descriptor (proc, /proc/PID/fd/N, or "" where the daemon keeps
 * none), for a path that is gone or names another file now (xpra's
 * clients delete their files once answered). Its descriptor, or -errno
 * with err set. */
static int open_area(const char *path, const char *proc, uint64_t dev, uint64_t ino,
		     struct mm_err *err)
{
	int fd = open_same(path, dev, ino), r;

	if (fd >= 0)
		return fd;
	if (!proc[0])
		return mm_fail(err, fd, "%s: %s", path,
			       fd == -ESTALE ? "not the file the daemon maps" : strerror(-fd));
	r = open_same(proc, dev, ino);
	if (r >= 0)
		return r;
	return mm_fail(err, r, "%s: %s; the daemon's descriptor %s: %s", path,
		       fd == -ESTALE ? "not the file the daemon maps" : strerror(-fd), proc,
		       r == -ESTALE ? "not the daemon's file" : strerror(-r));
}

/* Map the area the status names for direction dir. */
static int view_dir(struct mm_channel *ch, unsigned dir, const char *text, size_t len,
		    struct mm_err *err)
{
	struct mm_dir *d = dir == MM_RD ? &ch->rd : &ch->wr;
	const char *name = dir_name(dir);
	char key[KEY_MAX], path[PATH_MAX], proc[64], bell[8];
	uint64_t size, end, local, offset, dev, ino, vector;
	struct mm_window win;
	int r, fd;

	if (status_value(text, len, key_of(key, name, "file"), path, sizeof(path)) < 0)
		return mm_fail(err, -ENXIO, "status: no %s area", name);
	if (status_u64(text, len, key_of(key, name, "size"), &size) < 0 ||
	    status_u64(text, len, key_of(key, name, "ring_end"), &end) < 0 ||
	    status_u64(text, len, key_of(key, name, "offset"), &offset) < 0 ||
	    status_u64(text, len, key_of(key, name, "local"), &local) < 0 ||
	    status_u64(text, len, key_of(key, name, "dev"), &dev) < 0 ||
	    status_u64(text, len, key_of(key, name, "ino"), &ino) < 0)
		return mm_fail(err, -EPROTO,
			       "status: no %s.size, offset, ring_end, local, dev or ino", name);
	/* only for a file its maker may delete (core/area.h) */
	if (status_value(text, len, key_of(key, name, "fd"), proc, sizeof(proc)) < 0)
		proc[0] = '\0';
	/* the area as the daemon maps it: a window of the file, or all of it */
	fd = open_area(path, proc, dev, ino, err);
	if (fd < 0)
		return fd;
	win = (struct mm_window){ offset, size };
	r = mm_area_open_fd(&d->area, fd, path, size, &win, err);
	if (r < 0)
		return r;
	d->present = d->usable = true;
	d->local = local != 0;
	/* its daemon's doorbell: rung and heard for us (MM_IOC_RING, _WAIT) */
	if (status_value(text, len, key_of(key, name, "doorbell"), bell, sizeof(bell)) == 0)
		d->view_bell = strcmp(bell, "hears") == 0 ? MM_VIEW_HEARS :
			       strcmp(bell, "rings") == 0 ? MM_VIEW_RINGS : 0;
	if (d->view_bell && status_u64(text, len, "doorbell.vector", &vector) == 0 &&
	    vector <= UINT16_MAX)
		d->bell_vector = (unsigned)vector;	/* what a sleep of ours names */
	if (mm_dir_setup_ring(d, ch->ext) < 0 || d->ring.end != end)
		return mm_fail(err, -EPROTO, "%s: ring end %llu, status says %llu", path,
			       (unsigned long long)d->ring.end, (unsigned long long)end);
	/* an xpra peer: this view's own chunk lists (chunks.h) */
	if (!ch->ext)
		return mm_chunks_new(d) < 0 ? mm_fail(err, -ENOMEM, "out of memory") : 0;
	/* the ends of stream the last reader took, whichever process it was */
	if (dir == MM_RD && mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &d->eof_ack) < 0)
		return mm_fail(err, -EIO, "%s: the mapping faulted", path);
	/* the claim is ours: its streams' epoch */
	if (dir == MM_RD)
		mm_reader_claimed(d);
	else
		mm_dir_claimed(d);
	return 0;
}

/* Version 2's beats are in one area (live.c, mm_ext_dir): the creator's
 * read area, if the channel has it (the daemon's status names its file),
 * which a view that claimed one direction may not have mapped. */
static bool beats_unmapped(const struct mm_channel *ch, const char *status, size_t len,
			   unsigned have)
{
	unsigned beats = ch->role == MM_CREATOR ? MM_RD : MM_WR;
	char key[KEY_MAX], file[PATH_MAX];

	return !(have & beats) &&
	       status_value(status, len, key_of(key, dir_name(beats), "file"), file,
			    sizeof(file)) == 0;
}

int mm_channel_view(struct mm_channel *ch, const char *status, size_t len, unsigned dirs,
		    uint64_t now_ms, struct mm_err *err)
{
	char val[32];
	uint64_t ext = 0;
	unsigned have = 0;
	int r;

	memset(ch, 0, sizeof(*ch));
	pthread_mutex_init(&ch->lock, NULL);
	pthread_mutex_init(&ch->hs_lock, NULL);
	mm_dir_init(&ch->rd);
	mm_dir_init(&ch->wr);
	r = status_value(status, len, "role", val, sizeof(val));
	if (r == 0)
		r = mm_role_parse(val, &ch->role);
	if (r == 0)
		r = status_u64(status, len, "mmapfs", &ext);
	if (r < 0) {
		r = mm_fail(err, -EPROTO, "status: no role or mmapfs line");
		goto fail;
	}
	/* 0: an xpra peer, no trailer, chunk lists */
	ch->ext = ext < MM_EXT_VERSION ? (unsigned)ext : MM_EXT_VERSION;
	ch->view = true;
	for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1) {
		if (!(dirs & dir))
			continue;
		r = view_dir(ch, dir, status, len, err);
		if (r == -ENXIO && dirs == (MM_RD | MM_WR))
			continue;	/* both: what the channel has, as a claim */
		if (r < 0)
			goto fail;
		have |= dir;
	}
	if (!have) {
		r = mm_fail(err, -ENXIO, "status: no area");
		goto fail;
	}
	ch->beats_unmapped = beats_unmapped(ch, status, len, (unsigned)have);
	mm_note_peer(ch, now_ms);
	mm_set_state(ch, MM_STATE_READY);
	return (int)have;
fail:
	mm_channel_destroy(ch);
	return r;
}
