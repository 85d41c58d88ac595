#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "channel.h"
#include "ext.h"
#include "guard.h"

/* The direction names used in capabilities, from this end's side. */
#define RD_NAME "read"
#define WR_NAME "write"

const char *mm_state_name(enum mm_state s)
{
	static const char *const names[] = {
		[MM_STATE_OFFERED] = "offered",
		[MM_STATE_ATTACHED] = "attached",
		[MM_STATE_READY] = "ready",
		[MM_STATE_ERROR] = "error",
		[MM_STATE_CLOSED] = "closed",
	};

	return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

static enum mm_state get_state(const struct mm_channel *ch)
{
	return __atomic_load_n(&ch->state, __ATOMIC_ACQUIRE);
}

static void set_state(struct mm_channel *ch, enum mm_state s)
{
	__atomic_store_n(&ch->state, s, __ATOMIC_RELEASE);
}

void mm_channel_set_error(struct mm_channel *ch, int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ch->error, sizeof(ch->error), fmt, ap);
	va_end(ap);
	__atomic_store_n(&ch->fail, errnum, __ATOMIC_RELEASE);
	set_state(ch, MM_STATE_ERROR);
}

static uint64_t random_below(uint64_t n)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = (uint64_t)time(NULL) * 2654435761u;
	return n ? v % n : 0;
}

static void dir_init(struct mm_dir *d)
{
	*d = (struct mm_dir){ .area.fd = -1 };
}

static void dir_close(struct mm_dir *d)
{
	mm_area_close(&d->area);
	if (d->chunks) {
		pthread_mutex_destroy(&d->chunks->lock);
		free(d->chunks);
	}
	dir_init(d);
}

static int dir_chunks_init(struct mm_dir *d)
{
	d->chunks = calloc(1, sizeof(*d->chunks));
	if (!d->chunks)
		return -ENOMEM;
	pthread_mutex_init(&d->chunks->lock, NULL);
	return 0;
}

/* Where the ring stops in an area, with or without the trailer. */
static uint64_t ring_end(uint64_t size, bool ext)
{
	return ext ? mm_ext_offset(size) : size;
}

static int dir_setup_ring(struct mm_dir *d, bool ext)
{
	int r = mm_ring_init(&d->ring, d->area.base, d->area.size,
			     ring_end(d->area.size, ext));

	d->ext = ext ? d->area.base + mm_ext_offset(d->area.size) : NULL;
	if (r == 0 && !d->chunks)
		r = dir_chunks_init(d);
	return r;
}

/* Write a fresh token of ours into d: at a random place in the ring, or at
 * its very end (where our own writer reaches last) when `at_end`, never over
 * [avoid, avoid + avoid_len) (the peer's token: the same text may be handed
 * over again, and must then still check). */
static int dir_new_token(struct mm_dir *d, bool at_end, uint64_t avoid,
			 uint64_t avoid_len, struct mm_err *err, const char *name)
{
	/* never in the last 64 bytes: the creator's trailer lives there even
	 * while the text handed over so far has not said mmapfs=1 */
	uint64_t end = mm_ext_offset(d->area.size), bytes = MM_TOKEN_DEFAULT_BYTES, idx;
	int r;

	r = mm_token_random(&d->token, bytes);
	if (r < 0)
		return mm_fail(err, r, "%s: no random token: %s", name, strerror(-r));
	idx = end - bytes;
	for (int tries = 0; tries < 64; tries++) {
		if (!at_end || tries > 0)
			idx = MM_RING_HEADER + random_below(end - bytes - MM_RING_HEADER + 1);
		if (idx + bytes <= avoid || idx >= avoid + avoid_len)
			break;
		if (at_end && avoid >= MM_RING_HEADER + bytes) {
			idx = avoid - bytes;	/* just below it, still far out */
			break;
		}
	}
	d->token_bytes = bytes;
	d->token_index = idx;
	r = mm_token_write(d->area.base, d->area.size, d->token_index, bytes, &d->token);
	if (r < 0)
		return mm_fail(err, r, "%s: cannot write the token: %s", d->area.path,
			       strerror(-r));
	return 0;
}

static void publish_session(struct mm_channel *ch, struct mm_dir *d);

/* A creator's trailer, fresh: an administrator's file may still hold the
 * words of an earlier session, and a stale go-ahead must not let a new
 * attacher start before its tokens are checked. */
static int ext_init(struct mm_dir *d)
{
	int r = mm_ext_store(d->ext, MM_EXT_W_FLAGS, 0);

	if (r == 0)
		r = mm_ext_store(d->ext, MM_EXT_W_VERSION, MM_EXT_VERSION);
	if (r == 0)
		r = mm_ext_store(d->ext, MM_EXT_W_MAGIC, MM_EXT_MAGIC);
	return r;
}

static int create_dir(struct mm_dir *d, const char *admin, const struct mm_chan_opts *o,
		      const char *name, struct mm_err *err)
{
	uint64_t size = mm_area_size_for(o->size);
	int r;

	dir_init(d);
	if (admin)
		r = mm_area_open_path(&d->area, admin, true, size, 0, err);
	else
		r = mm_area_create(&d->area, o->mmap_dir, size, err);
	if (r < 0)
		return r;
	d->present = true;
	r = dir_setup_ring(d, true);
	if (r < 0)
		return mm_fail(err, r, "%s: area too small for a ring", d->area.path);
	r = ext_init(d);
	if (r == 0)
		r = dir_new_token(d, false, 0, 0, err, name);
	return r;
}

int mm_channel_open(struct mm_channel *ch, enum mm_chan_role role, bool declared,
		    const struct mm_chan_opts *opts, struct mm_err *err)
{
	int r = 0;

	memset(ch, 0, sizeof(*ch));
	dir_init(&ch->rd);
	dir_init(&ch->wr);
	ch->role = role;
	ch->declared = declared;
	ch->opts = *opts;
	if ((opts->read_file && !(ch->read_file = strdup(opts->read_file))) ||
	    (opts->write_file && !(ch->write_file = strdup(opts->write_file)))) {
		r = -ENOMEM;
		goto fail;
	}
	ch->opts.read_file = ch->read_file;
	ch->opts.write_file = ch->write_file;
	set_state(ch, MM_STATE_OFFERED);
	if (role == MM_ATTACHER)
		return 0;
	/* A channel naming one administrator's file carries that direction only. */
	if (ch->read_file || !ch->write_file)
		r = create_dir(&ch->rd, ch->read_file, opts, RD_NAME, err);
	if (r == 0 && (ch->write_file || !ch->read_file))
		r = create_dir(&ch->wr, ch->write_file, opts, WR_NAME, err);
	if (r == 0) {
		publish_session(ch, &ch->rd);
		publish_session(ch, &ch->wr);
		return 0;
	}
fail:
	mm_channel_close(ch);
	return r;
}

void mm_channel_close(struct mm_channel *ch)
{
	dir_close(&ch->rd);
	dir_close(&ch->wr);
	free(ch->read_file);
	free(ch->write_file);
	ch->read_file = ch->write_file = NULL;
	set_state(ch, MM_STATE_CLOSED);
}

/* ---- texts ---- */

static void caps_of_dir(const struct mm_dir *d, bool offer, struct mm_caps_area *c)
{
	memset(c, 0, sizeof(*c));
	if (!d->present)
		return;
	c->have = MM_CAP_TOKEN_ALL;
	c->token = d->token;
	c->token_index = d->token_index;
	c->token_bytes = d->token_bytes;
	if (offer) {
		c->have |= MM_CAP_FILE | MM_CAP_SIZE;
		snprintf(c->file, sizeof(c->file), "%s", d->area.path);
		c->size = d->area.size;
	}
}

int mm_channel_caps_text(const struct mm_channel *ch, char *buf, size_t len)
{
	struct mm_caps *c = calloc(1, sizeof(*c));
	bool offer = ch->role == MM_CREATOR;
	int r;

	if (!c)
		return -ENOMEM;
	caps_of_dir(&ch->rd, offer, &c->read);
	caps_of_dir(&ch->wr, offer, &c->write);
	/* A creator always offers the extension; an attacher answers with it
	 * only if the creator offered it. */
	c->mmapfs = (offer || ch->ext) ? MM_EXT_VERSION : 0;
	if (!ch->rd.present && !ch->wr.present)
		c->mmapfs = 0;
	r = mm_caps_format(c, buf, len);
	free(c);
	return r;
}

static int token_line(const char *name, const struct mm_dir *d, char *buf,
		      size_t len, size_t *pos)
{
	char hex[MM_TOKEN_HEX_MAX];
	int n;

	if (!d->present)
		return 0;
	mm_token_format(&d->token, hex);
	n = snprintf(buf + *pos, len - *pos, "%s %s %llu %llu\n", name, hex,
		     (unsigned long long)d->token_index,
		     (unsigned long long)d->token_bytes);
	if (n < 0 || (size_t)n >= len - *pos)
		return -ENOSPC;
	*pos += (size_t)n;
	return 0;
}

int mm_channel_token_text(const struct mm_channel *ch, char *buf, size_t len)
{
	size_t pos = 0;
	int r;

	if (len == 0)
		return -ENOSPC;
	buf[0] = '\0';
	r = token_line(RD_NAME, &ch->rd, buf, len, &pos);
	if (r == 0)
		r = token_line(WR_NAME, &ch->wr, buf, len, &pos);
	return r < 0 ? r : (int)pos;
}

int mm_channel_peer_text(const struct mm_channel *ch, char *buf, size_t len)
{
	if (!ch->have_accepted) {
		if (len == 0)
			return -ENOSPC;
		buf[0] = '\0';
		return 0;
	}
	return mm_caps_format(&ch->accepted, buf, len);
}

static const char *peer_name(int p)
{
	return p == MM_PEER_ALIVE ? "alive" : p == MM_PEER_DEAD ? "dead" : "unknown";
}

static int status_dir(const char *name, const struct mm_dir *d, char *buf,
		      size_t len, size_t *pos)
{
	struct mm_ring_pos p = { 0, 0 };
	uint32_t s = 0, e = 0;
	unsigned long long used = 0, fr = 0;
	int n;

	if (!d->present)
		return 0;
	if (mm_ring_raw(&d->ring, &s, &e) == 0 && mm_ring_load(&d->ring, &p) == 0) {
		used = mm_ring_used(&d->ring, &p);
		fr = mm_ring_free(&d->ring, &p);
	}
	n = snprintf(buf + *pos, len - *pos,
		     "%s.size=%llu\n%s.data_start=%u\n%s.data_end=%u\n"
		     "%s.used=%llu\n%s.free=%llu\n%s.bytes=%llu\n",
		     name, (unsigned long long)d->area.size, name, s, name, e,
		     name, used, name, fr, name,
		     (unsigned long long)__atomic_load_n(&d->bytes, __ATOMIC_RELAXED));
	if (n < 0 || (size_t)n >= len - *pos)
		return -ENOSPC;
	*pos += (size_t)n;
	return 0;
}

int mm_channel_status_text(const struct mm_channel *ch, char *buf, size_t len)
{
	size_t pos = 0;
	int n, r;

	n = snprintf(buf, len, "state=%s\nrole=%s\npeer=%s\nerror=%s\n",
		     mm_state_name(get_state(ch)),
		     ch->role == MM_CREATOR ? "creator" : "attacher",
		     peer_name(__atomic_load_n(&ch->peer, __ATOMIC_RELAXED)),
		     ch->error);
	if (n < 0 || (size_t)n >= len)
		return -ENOSPC;
	pos = (size_t)n;
	r = status_dir(RD_NAME, &ch->rd, buf, len, &pos);
	if (r == 0)
		r = status_dir(WR_NAME, &ch->wr, buf, len, &pos);
	return r < 0 ? r : (int)pos;
}

/* ---- the handshake ---- */

static bool is_offer(const struct mm_caps *c)
{
	return (c->read.have | c->write.have) & MM_CAP_FILE;
}

static int need_keys(const struct mm_caps_area *a, unsigned keys, const char *name,
		     struct mm_err *err)
{
	static const char *const key_names[] = {
		"file", "size", "token", "token_index", "token_bytes",
	};

	for (unsigned i = 0; i < 5; i++)
		if ((keys & (1u << i)) && !(a->have & (1u << i)))
			return mm_fail(err, -EINVAL, "%s.%s: missing", name, key_names[i]);
	return 0;
}

/* Check the peer's token (described by c, key prefix name) in area d. */
static int check_token(const struct mm_dir *d, const struct mm_caps_area *c,
		       const char *name, struct mm_err *err)
{
	char hex[MM_TOKEN_HEX_MAX];
	int r;

	if (mm_token_len(&c->token) == 0)
		return mm_fail(err, -EINVAL, "%s.token: zero is not a token", name);
	if (mm_token_len(&c->token) > c->token_bytes)
		return mm_fail(err, -EINVAL, "%s.token: does not fit in %llu bytes", name,
			       (unsigned long long)c->token_bytes);
	r = mm_token_place_check(d->area.size, c->token_index, c->token_bytes);
	if (r < 0)
		return mm_fail(err, -EINVAL,
			       "%s.token_index: %llu + %llu bytes is outside the %llu-byte area",
			       name, (unsigned long long)c->token_index,
			       (unsigned long long)c->token_bytes,
			       (unsigned long long)d->area.size);
	r = mm_token_check(d->area.base, d->area.size, c->token_index, c->token_bytes,
			   &c->token);
	if (r == -EBADMSG) {
		mm_token_format(&c->token, hex);
		return mm_fail(err, -EBADMSG, "%s.token: %.24s%s not found at index %llu of %s",
			       name, hex, strlen(hex) > 24 ? "..." : "",
			       (unsigned long long)c->token_index, d->area.path);
	}
	if (r < 0)
		return mm_fail(err, r, "%s: %s", d->area.path, strerror(-r));
	return 0;
}

/* Open one offered area (c, named `name` in the offer) as our direction d
 * and check the creator's token in it. Nothing is written. */
static int attach_dir(struct mm_channel *ch, struct mm_dir *d, const char *admin,
		      const struct mm_caps_area *c, const char *name, bool ext,
		      struct mm_err *err)
{
	struct mm_err why;
	uint32_t magic = 0;
	int r;

	r = need_keys(c, MM_CAP_ALL, name, err);
	if (r < 0)
		return r;
	if (admin)
		r = mm_area_open_path(&d->area, admin, false, 0, c->size, &why);
	else
		r = mm_area_open_offered(&d->area, c->file, c->size, &ch->opts.rules, &why);
	if (r < 0)
		return mm_fail(err, r, "%s.file: %s", name, why.msg);
	d->present = true;
	if (dir_setup_ring(d, ext) < 0)
		return mm_fail(err, -EINVAL, "%s.size: too small", name);
	r = check_token(d, c, name, err);
	if (r < 0)
		return r;
	if (ext && (mm_ext_load(d->ext, MM_EXT_W_MAGIC, &magic) < 0 || magic != MM_EXT_MAGIC))
		return mm_fail(err, -EBADMSG, "%s: mmapfs=1 offered but %s has no mmapfs trailer",
			       name, d->area.path);
	return 0;
}

static void publish_session(struct mm_channel *ch, struct mm_dir *d)
{
	unsigned w = MM_EXT_W_SESSION + 2 * (ch->role == MM_ATTACHER);

	if (d->present && d->ext) {
		mm_ext_store(d->ext, w, ch->opts.session);
		mm_ext_store(d->ext, w + 1, ch->beat);
	}
}

static struct mm_dir *ext_dir(struct mm_channel *ch)
{
	if (ch->rd.present && ch->rd.ext)
		return &ch->rd;
	if (ch->wr.present && ch->wr.ext)
		return &ch->wr;
	return NULL;
}

/* Remember the peer's session and heartbeat as they are now. */
static void note_peer(struct mm_channel *ch, uint64_t now_ms)
{
	struct mm_dir *d = ext_dir(ch);
	unsigned w = MM_EXT_W_SESSION + 2 * (ch->role == MM_CREATOR);

	if (!d) {
		__atomic_store_n(&ch->peer, MM_PEER_UNKNOWN, __ATOMIC_RELAXED);
		return;
	}
	mm_ext_load(d->ext, w, &ch->peer_session);
	mm_ext_load(d->ext, w + 1, &ch->peer_beat);
	ch->peer_beat_ms = now_ms;
	__atomic_store_n(&ch->peer, MM_PEER_ALIVE, __ATOMIC_RELAXED);
}

static int take_offer(struct mm_channel *ch, const struct mm_caps *c, uint64_t now_ms,
		      struct mm_err *err)
{
	struct mm_dir rd, wr;
	bool ext = c->mmapfs >= 1;
	int r = 0;

	if (ch->declared && ch->role == MM_CREATOR)
		return mm_fail(err, -EINVAL,
			       "this channel is declared as creator: write an answer, not an offer");
	dir_init(&rd);
	dir_init(&wr);
	/* The offer's read area is the one the creator reads: we write it. */
	if ((c->read.have & MM_CAP_FILE) || (c->read.have && ch->write_file))
		r = attach_dir(ch, &wr, ch->write_file, &c->read, RD_NAME, ext, err);
	if (r == 0 && ((c->write.have & MM_CAP_FILE) || (c->write.have && ch->read_file)))
		r = attach_dir(ch, &rd, ch->read_file, &c->write, WR_NAME, ext, err);
	/* Both areas passed: only now write our tokens. Without the extension
	 * nothing tells us when the creator has checked ours: the one in the
	 * area we write goes to the ring's far end, which our data reaches last. */
	if (r == 0 && wr.present)
		r = dir_new_token(&wr, !ext, c->read.token_index, c->read.token_bytes, err, RD_NAME);
	if (r == 0 && rd.present)
		r = dir_new_token(&rd, false, c->write.token_index, c->write.token_bytes, err,
				  WR_NAME);
	if (r < 0) {
		dir_close(&rd);
		dir_close(&wr);
		return r;
	}
	dir_close(&ch->rd);
	dir_close(&ch->wr);
	rd.usable = rd.present;
	wr.usable = wr.present;
	ch->rd = rd;
	ch->wr = wr;
	ch->role = MM_ATTACHER;
	ch->ext = ext;
	ch->error[0] = '\0';
	if (ext && ch->rd.present) {
		/* take over the reading end: earlier ends of stream are gone */
		mm_ext_load(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &ch->rd.eof_ack);
		mm_ext_store(ch->rd.ext, MM_EXT_W_EOF_ACK, ch->rd.eof_ack);
	}
	publish_session(ch, &ch->rd);
	publish_session(ch, &ch->wr);
	note_peer(ch, now_ms);
	set_state(ch, ext ? MM_STATE_ATTACHED : MM_STATE_READY);
	return 0;
}

static int take_answer(struct mm_channel *ch, const struct mm_caps *c, uint64_t now_ms,
		       struct mm_err *err)
{
	/* The answer's read area is the attacher's: our write area. */
	struct { struct mm_dir *d; const struct mm_caps_area *a; const char *name; } m[2] = {
		{ &ch->wr, &c->read, RD_NAME },
		{ &ch->rd, &c->write, WR_NAME },
	};
	bool answered[2] = { false, false };
	bool ext = c->mmapfs >= 1;
	int r;

	if (ch->role != MM_CREATOR)
		return mm_fail(err, -EINVAL,
			       "this end is the attacher: the peer's half must be an offer with file keys");
	for (int i = 0; i < 2; i++) {
		if (!m[i].a->have)
			continue;
		if (!m[i].d->present)
			return mm_fail(err, -EINVAL, "%s: this end offered no such area",
				       m[i].name);
		r = need_keys(m[i].a, MM_CAP_TOKEN_ALL, m[i].name, err);
		if (r == 0)
			r = check_token(m[i].d, m[i].a, m[i].name, err);
		if (r < 0)
			return r;
		answered[i] = true;
	}
	if (!answered[0] && !answered[1])
		return mm_fail(err, -EINVAL, "the answer holds no token");
	for (int i = 0; i < 2; i++) {
		struct mm_dir *d = m[i].d;

		d->usable = answered[i];
		/* with an xpra attacher the whole area is ring */
		if (d->present)
			dir_setup_ring(d, ext);
		if (d->usable && ext) {
			mm_ext_store(d->ext, MM_EXT_W_FLAGS, MM_EXT_VERIFIED);
			if (d == &ch->rd) {
				mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &d->eof_ack);
				mm_ext_store(d->ext, MM_EXT_W_EOF_ACK, d->eof_ack);
			}
		}
	}
	ch->ext = ext;
	ch->error[0] = '\0';
	publish_session(ch, &ch->rd);
	publish_session(ch, &ch->wr);
	note_peer(ch, now_ms);
	set_state(ch, MM_STATE_READY);
	return 0;
}

int mm_channel_peer(struct mm_channel *ch, const char *text, size_t len,
		    uint64_t now_ms, struct mm_err *err)
{
	struct mm_err why;
	struct mm_caps *c;
	int r;

	if (get_state(ch) == MM_STATE_CLOSED)
		return mm_fail(err, -ENOTCONN, "the channel is closed");
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	r = mm_caps_parse(text, len, c, &why);
	if (r == 0)
		r = is_offer(c) ? take_offer(ch, c, now_ms, &why)
				: take_answer(ch, c, now_ms, &why);
	if (r == 0) {
		ch->accepted = *c;
		ch->have_accepted = true;
	} else {
		snprintf(ch->error, sizeof(ch->error), "%s", why.msg);
		if (err)
			*err = why;
	}
	free(c);
	return r;
}

/* ---- liveness ---- */

void mm_channel_refresh(struct mm_channel *ch)
{
	struct mm_dir *d = ext_dir(ch);
	uint32_t flags;

	if (get_state(ch) == MM_STATE_ATTACHED && d &&
	    mm_ext_load(d->ext, MM_EXT_W_FLAGS, &flags) == 0 && (flags & MM_EXT_VERIFIED))
		set_state(ch, MM_STATE_READY);
}

bool mm_channel_tick(struct mm_channel *ch, uint64_t now_ms)
{
	enum mm_state st = get_state(ch), was = st;
	int peer_was = __atomic_load_n(&ch->peer, __ATOMIC_RELAXED);
	unsigned w = MM_EXT_W_SESSION + 2 * (ch->role == MM_CREATOR);
	uint32_t session, beat;
	struct mm_dir *d;

	if (!ch->ext || (st != MM_STATE_ATTACHED && st != MM_STATE_READY))
		return false;
	ch->beat++;
	publish_session(ch, &ch->rd);
	publish_session(ch, &ch->wr);
	d = ext_dir(ch);
	if (!d || mm_ext_load(d->ext, w, &session) < 0 ||
	    mm_ext_load(d->ext, w + 1, &beat) < 0) {
		mm_channel_set_error(ch, EIO, "%s: the area faulted (truncated?)",
				     d ? d->area.path : "?");
		return true;
	}
	if (ch->peer_session == 0) {
		ch->peer_session = session;	/* it had not started when we looked */
	} else if (session != ch->peer_session) {
		__atomic_store_n(&ch->peer, MM_PEER_DEAD, __ATOMIC_RELAXED);
		mm_channel_set_error(ch, ECONNRESET,
				     "the peer restarted (session %08x, was %08x)",
				     session, ch->peer_session);
		mm_channel_wake(ch);
		return true;
	}
	if (beat != ch->peer_beat) {
		ch->peer_beat = beat;
		ch->peer_beat_ms = now_ms;
		__atomic_store_n(&ch->peer, MM_PEER_ALIVE, __ATOMIC_RELAXED);
	} else if (now_ms - ch->peer_beat_ms > MM_DEAD_MS) {
		__atomic_store_n(&ch->peer, MM_PEER_DEAD, __ATOMIC_RELAXED);
	}
	mm_channel_refresh(ch);
	if (__atomic_load_n(&ch->peer, __ATOMIC_RELAXED) != peer_was)
		mm_channel_wake(ch);
	return get_state(ch) != was || __atomic_load_n(&ch->peer, __ATOMIC_RELAXED) != peer_was;
}

/* ---- the stream ---- */

static bool peer_dead(const struct mm_channel *ch)
{
	return __atomic_load_n(&ch->peer, __ATOMIC_RELAXED) == MM_PEER_DEAD;
}

/* Why data cannot flow right now, or 0. A dead peer stops a writer at
 * once; a reader first gets what the peer wrote before it died. */
static int data_check(struct mm_channel *ch, struct mm_dir *d, int dead_errno)
{
	enum mm_state st = get_state(ch);

	if (st == MM_STATE_ERROR)
		return -__atomic_load_n(&ch->fail, __ATOMIC_ACQUIRE);
	if (st != MM_STATE_READY)
		return -ENOTCONN;
	if (!d->usable)
		return -ENXIO;
	if (dead_errno && peer_dead(ch))
		return -dead_errno;
	return 0;
}

static int ring_fail(struct mm_channel *ch, struct mm_dir *d, const char *name, int r)
{
	uint32_t s = 0, e = 0;

	if (r == -EFAULT) {
		mm_channel_set_error(ch, EIO, "%s area %s: the mapping faulted (file truncated?)",
				     name, d->area.path);
		return -EIO;
	}
	mm_ring_raw(&d->ring, &s, &e);
	mm_channel_set_error(ch, EPROTO,
			     "%s area: corrupt pointers data_start=%u data_end=%u (ring 8..%u)",
			     name, s, e, d->ring.end);
	return -EPROTO;
}

static uint32_t *word_of(const struct mm_dir *d, unsigned i)
{
	return (uint32_t *)(void *)(d->area.base + 4 * i);
}

/* The raw value of a pointer word, for a later futex wait (the futex
 * compares memory as it is). 0 or -EFAULT. */
static int raw_word(const struct mm_dir *d, unsigned i, uint32_t *v)
{
	int r = mm_ext_load(d->area.base, i, v);

	*v = htole32(*v);
	return r;
}

int mm_channel_writer_begin(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->wr;
	uint32_t cs, ack;
	int r = data_check(ch, d, EPIPE);

	if (r < 0 || !d->ext)
		return r;
	if (raw_word(d, 0, &d->seen) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &ack) < 0)
		return ring_fail(ch, d, WR_NAME, -EFAULT);
	if (cs - ack > MM_EXT_EOF_SLOTS)
		return ring_fail(ch, d, WR_NAME, -EPROTO);
	return cs - ack == MM_EXT_EOF_SLOTS ? -EAGAIN : 0;
}

void mm_channel_writer_end(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->wr;
	struct mm_ring_pos p;
	uint32_t cs;

	if (!d->usable || !d->ext || get_state(ch) != MM_STATE_READY)
		return;
	if (mm_ring_load(&d->ring, &p) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0)
		return;
	mm_ext_store(d->ext, MM_EXT_W_EOF_POS + cs % MM_EXT_EOF_SLOTS, p.end);
	mm_ext_store(d->ext, MM_EXT_W_CLOSE_SEQ, cs + 1);
	mm_futex_wake(word_of(d, 1));
}

/* With an end of stream pending, how many bytes remain before it. */
static int eof_distance(struct mm_channel *ch, struct mm_dir *d, size_t used,
			size_t *dist)
{
	uint32_t cs, b;
	size_t len = d->ring.end - MM_RING_HEADER;

	if (mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0)
		return -EFAULT;
	if (cs == d->eof_ack)
		return 1;
	if (cs - d->eof_ack > MM_EXT_EOF_SLOTS)
		return -EPROTO;
	if (mm_ext_load(d->ext, MM_EXT_W_EOF_POS + d->eof_ack % MM_EXT_EOF_SLOTS, &b) < 0)
		return -EFAULT;
	if (b == 0 || b == d->ring.end)
		b = MM_RING_HEADER;
	if (b < MM_RING_HEADER || b > d->ring.end)
		return -EPROTO;
	*dist = (b + len - d->pos.start) % len;
	if (*dist > used)
		return -EPROTO;
	(void)ch;
	return 0;
}

/* The next pending piece, if the user gave any (xpra's chunk list). */
static ssize_t chunk_iov(struct mm_dir *d, size_t max, struct iovec *iov, int *niov)
{
	struct mm_chunks *c = d->chunks;
	ssize_t n = 0;

	pthread_mutex_lock(&c->lock);
	if (c->n) {
		const struct mm_chunk *k = &c->q[c->head];

		n = (ssize_t)(k->len < max ? k->len : max);
		iov->iov_base = d->area.base + k->off;
		iov->iov_len = (size_t)n;
		*niov = 1;
	}
	pthread_mutex_unlock(&c->lock);
	return n;
}

ssize_t mm_channel_read_iov(struct mm_channel *ch, size_t max, struct iovec iov[2],
			    int *niov)
{
	struct mm_dir *d = &ch->rd;
	size_t used, n, limit = max;
	uint32_t cs = 0;
	ssize_t got;
	int r = data_check(ch, d, 0);

	*niov = 0;
	if (r < 0)
		return r;
	got = chunk_iov(d, max, iov, niov);
	if (got > 0)
		return got;
	if (raw_word(d, 1, &d->seen) < 0)
		return ring_fail(ch, d, RD_NAME, -EFAULT);
	/* the end of stream is loaded before the pointers it refers to */
	if (d->ext && mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0)
		return ring_fail(ch, d, RD_NAME, -EFAULT);
	r = mm_ring_load(&d->ring, &d->pos);
	if (r < 0)
		return ring_fail(ch, d, RD_NAME, r);
	used = mm_ring_used(&d->ring, &d->pos);
	if (d->ext && cs != d->eof_ack) {
		size_t dist = 0;

		r = eof_distance(ch, d, used, &dist);
		if (r < 0)
			return ring_fail(ch, d, RD_NAME, r);
		if (r == 0 && dist == 0) {
			d->eof_ack++;
			if (mm_ext_store(d->ext, MM_EXT_W_EOF_ACK, d->eof_ack) < 0)
				return ring_fail(ch, d, RD_NAME, -EFAULT);
			mm_futex_wake(word_of(d, 0));
			return 0;
		}
		if (r == 0 && dist < limit)
			limit = dist;
	}
	if (used == 0)
		return peer_dead(ch) ? -ECONNRESET : -EAGAIN;
	*niov = mm_ring_read_iov(&d->ring, &d->pos, limit, iov, &n);
	return (ssize_t)n;
}

/* Done with n bytes of the head piece: when it is all read, data_start
 * moves past it, as xpra's reader does. 1 if pieces were in use. */
static int chunk_done(struct mm_dir *d, size_t n)
{
	struct mm_chunks *c = d->chunks;
	struct mm_chunk *k;
	int r = 1;

	pthread_mutex_lock(&c->lock);
	if (!c->n) {
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	k = &c->q[c->head];
	k->off += (uint32_t)n;
	k->len -= (uint32_t)n;
	if (k->len == 0) {
		r = mm_ext_store(d->area.base, 0, k->off) < 0 ? -EFAULT : 1;
		c->head = (c->head + 1) % MM_CHUNKS_MAX;
		c->n--;
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

int mm_channel_read_done(struct mm_channel *ch, size_t n)
{
	struct mm_dir *d = &ch->rd;
	int r;

	if (n == 0)
		return 0;
	r = chunk_done(d, n);
	if (r == 0)
		r = mm_ring_consume(&d->ring, &d->pos, n);
	if (r < 0)
		return ring_fail(ch, d, RD_NAME, r);
	__atomic_add_fetch(&d->bytes, n, __ATOMIC_RELAXED);
	mm_futex_wake(word_of(d, 0));
	return 0;
}

ssize_t mm_channel_write_iov(struct mm_channel *ch, size_t max, struct iovec iov[2],
			     int *niov)
{
	struct mm_dir *d = &ch->wr;
	size_t n;
	int r = data_check(ch, d, EPIPE);

	*niov = 0;
	if (r < 0)
		return r;
	if (raw_word(d, 0, &d->seen) < 0)
		return ring_fail(ch, d, WR_NAME, -EFAULT);
	r = mm_ring_load(&d->ring, &d->pos);
	if (r < 0)
		return ring_fail(ch, d, WR_NAME, r);
	*niov = mm_ring_write_iov(&d->ring, &d->pos, max, iov, &n);
	return n ? (ssize_t)n : -EAGAIN;
}

/* Note where a write went, merging with the piece before when they touch. */
static void chunk_log(struct mm_dir *d, uint32_t off, size_t len)
{
	struct mm_chunks *c = d->chunks;
	struct mm_chunk *last;

	if (len == 0)
		return;
	pthread_mutex_lock(&c->lock);
	last = c->n ? &c->q[(c->head + c->n - 1) % MM_CHUNKS_MAX] : NULL;
	if (last && last->off + last->len == off && last->len + len <= UINT32_MAX)
		last->len += (uint32_t)len;
	else if (c->n < MM_CHUNKS_MAX)
		c->q[(c->head + c->n++) % MM_CHUNKS_MAX] = (struct mm_chunk){ off, (uint32_t)len };
	else
		c->overflow = true;
	pthread_mutex_unlock(&c->lock);
}

int mm_channel_write_done(struct mm_channel *ch, size_t n)
{
	struct mm_dir *d = &ch->wr;
	size_t first = d->ring.end - d->pos.end;
	int r;

	if (n == 0)
		return 0;
	chunk_log(d, d->pos.end, n < first ? n : first);
	if (n > first)
		chunk_log(d, MM_RING_HEADER, n - first);
	r = mm_ring_commit(&d->ring, &d->pos, n);
	if (r < 0)
		return ring_fail(ch, d, WR_NAME, r);
	__atomic_add_fetch(&d->bytes, n, __ATOMIC_RELAXED);
	mm_futex_wake(word_of(d, 1));
	return 0;
}

void mm_channel_wait(struct mm_channel *ch, bool writing, unsigned timeout_us)
{
	struct mm_dir *d = writing ? &ch->wr : &ch->rd;
	struct timespec ts = { 0, (long)timeout_us * 1000 };

	if (!d->present || mm_futex_wait(word_of(d, writing ? 0 : 1), d->seen,
					 timeout_us) == -ENOSYS) {
		while (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		nanosleep(&ts, NULL);
	}
}

void mm_channel_wake(struct mm_channel *ch)
{
	if (ch->rd.present)
		mm_futex_wake(word_of(&ch->rd, 1));
	if (ch->wr.present)
		mm_futex_wake(word_of(&ch->wr, 0));
}

int mm_channel_chunks_add(struct mm_channel *ch, const char *text, size_t len,
			  struct mm_err *err)
{
	struct mm_dir *d = &ch->rd;
	struct mm_chunk add[64];
	struct mm_chunks *c;
	unsigned nadd = 0, line = 0;
	const char *p = text, *end = text + len;
	int r = data_check(ch, d, 0);

	if (r < 0)
		return mm_fail(err, r, "no readable area: %s", strerror(-r));
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		char buf[64], extra;
		unsigned long long off, n;

		eol = eol ? eol : end;
		line++;
		if ((size_t)(eol - p) >= sizeof(buf))
			return mm_fail(err, -EINVAL, "chunks line %u: too long", line);
		memcpy(buf, p, (size_t)(eol - p));
		buf[eol - p] = '\0';
		p = eol + 1;
		if (buf[strspn(buf, " \t\r")] == '\0' || buf[0] == '#')
			continue;
		if (sscanf(buf, " %llu %llu %c", &off, &n, &extra) != 2 || strchr(buf, '-'))
			return mm_fail(err, -EINVAL, "chunks line %u: expected OFFSET LENGTH", line);
		if (n == 0 || off < MM_RING_HEADER || off > d->ring.end || n > d->ring.end - off)
			return mm_fail(err, -EINVAL,
				       "chunks line %u: %llu+%llu is not inside the ring 8..%u",
				       line, off, n, d->ring.end);
		if (nadd == sizeof(add) / sizeof(add[0]))
			return mm_fail(err, -EINVAL, "chunks: more than %zu lines in one write",
				       sizeof(add) / sizeof(add[0]));
		add[nadd++] = (struct mm_chunk){ (uint32_t)off, (uint32_t)n };
	}
	c = d->chunks;
	pthread_mutex_lock(&c->lock);
	if (c->n + nadd > MM_CHUNKS_MAX) {
		r = mm_fail(err, -ENOSPC, "chunks: more than %d pending", MM_CHUNKS_MAX);
	} else {
		for (unsigned i = 0; i < nadd; i++)
			c->q[(c->head + c->n++) % MM_CHUNKS_MAX] = add[i];
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

int mm_channel_chunks_text(struct mm_channel *ch, char *buf, size_t len)
{
	struct mm_chunks *c = ch->wr.chunks;
	size_t pos = 0;
	int r = 0;

	if (len == 0)
		return -ENOSPC;
	buf[0] = '\0';
	if (!c)
		return 0;
	pthread_mutex_lock(&c->lock);
	if (c->overflow) {
		r = -EOVERFLOW;
	} else {
		for (unsigned i = 0; i < c->n && r == 0; i++) {
			const struct mm_chunk *k = &c->q[(c->head + i) % MM_CHUNKS_MAX];
			int w = snprintf(buf + pos, len - pos, "%u %u\n", k->off, k->len);

			if (w < 0 || (size_t)w >= len - pos)
				r = -ENOSPC;
			else
				pos += (size_t)w;
		}
	}
	if (r != -ENOSPC) {
		c->head = 0;
		c->n = 0;
		c->overflow = false;
	}
	pthread_mutex_unlock(&c->lock);
	return r < 0 ? r : (int)pos;
}

unsigned mm_channel_poll_words(struct mm_channel *ch, unsigned events,
			       uint32_t **words, uint32_t *seen)
{
	unsigned n = 0;

	if (get_state(ch) != MM_STATE_READY)
		return 0;
	/* data and ends of stream move data_end; space moves data_start */
	if ((events & POLLIN) && ch->rd.usable && raw_word(&ch->rd, 1, &seen[n]) == 0)
		words[n++] = word_of(&ch->rd, 1);
	if ((events & POLLOUT) && ch->wr.usable && raw_word(&ch->wr, 0, &seen[n]) == 0)
		words[n++] = word_of(&ch->wr, 0);
	return n;
}

unsigned mm_channel_poll(struct mm_channel *ch)
{
	unsigned mask = 0;
	struct mm_ring_pos p;
	enum mm_state st = get_state(ch);

	if (st == MM_STATE_ERROR)
		return POLLERR | POLLIN | POLLOUT;
	if (st != MM_STATE_READY)
		return 0;
	if (__atomic_load_n(&ch->peer, __ATOMIC_RELAXED) == MM_PEER_DEAD)
		mask |= POLLHUP | POLLIN;
	if (ch->rd.usable && mm_ring_load(&ch->rd.ring, &p) == 0) {
		uint32_t cs = ch->rd.eof_ack;

		if (ch->rd.ext)
			mm_ext_load(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &cs);
		if (mm_ring_used(&ch->rd.ring, &p) > 0 || cs != ch->rd.eof_ack ||
		    __atomic_load_n(&ch->rd.chunks->n, __ATOMIC_RELAXED))
			mask |= POLLIN | POLLRDNORM;
	}
	if (ch->wr.usable && mm_ring_load(&ch->wr.ring, &p) == 0 &&
	    mm_ring_free(&ch->wr.ring, &p) > 0)
		mask |= POLLOUT | POLLWRNORM;
	return mask;
}
