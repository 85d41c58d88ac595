/* A channel seen from a process that is not its daemon: a library that
 * took directions of `data` (the daemon's open descriptor is its claim)
 * maps the areas named by the daemon's `status` and moves bytes through
 * them with the calls of stream.h (docs/PROTOCOL.md, "Native access").
 * A view never handshakes and never publishes a heartbeat: the daemon of
 * this end keeps doing that; mm_channel_watch() follows the peer's. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

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

/* Map the area the status names for direction dir. */
static int view_dir(struct mm_channel *ch, unsigned dir, const char *text, size_t len,
		    struct mm_err *err)
{
	struct mm_dir *d = dir == MM_RD ? &ch->rd : &ch->wr;
	const char *name = dir_name(dir);
	char key[32], path[PATH_MAX];
	uint64_t size, end, local, offset;
	struct mm_window win;
	int r;

	snprintf(key, sizeof(key), "%s.file", name);
	if (status_value(text, len, key, path, sizeof(path)) < 0)
		return mm_fail(err, -ENXIO, "status: no %s area", name);
	snprintf(key, sizeof(key), "%s.size", name);
	r = status_u64(text, len, key, &size);
	snprintf(key, sizeof(key), "%s.ring_end", name);
	if (r == 0)
		r = status_u64(text, len, key, &end);
	snprintf(key, sizeof(key), "%s.offset", name);
	if (r == 0)
		r = status_u64(text, len, key, &offset);
	snprintf(key, sizeof(key), "%s.local", name);
	if (r < 0 || status_u64(text, len, key, &local) < 0)
		return mm_fail(err, -EPROTO, "status: no %s.size, offset, ring_end or local", name);
	/* the area as the daemon maps it: a window of the file, or all of it */
	win = (struct mm_window){ offset, size };
	r = mm_area_open_path(&d->area, path, false, 0, size, &win, err);
	if (r < 0)
		return r;
	d->present = d->usable = true;
	d->local = local != 0;
	if (mm_dir_setup_ring(d, true) < 0 || d->ring.end != end)
		return mm_fail(err, -EPROTO, "%s: ring end %llu, status says %llu", path,
			       (unsigned long long)d->ring.end, (unsigned long long)end);
	/* the ends of stream the last reader took, whichever process it was */
	if (dir == MM_RD && mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &d->eof_ack) < 0)
		return mm_fail(err, -EIO, "%s: the mapping faulted", path);
	return 0;
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
	if (!ext) {
		r = mm_fail(err, -EOPNOTSUPP,
			    "the peer does not speak the mmapfs extension (an xpra peer)");
		goto fail;
	}
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
	ch->ext = true;
	mm_note_peer(ch, now_ms);
	mm_set_state(ch, MM_STATE_READY);
	return (int)have;
fail:
	mm_channel_destroy(ch);
	return r;
}
