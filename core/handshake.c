/* The handshake of docs/PROTOCOL.md: a creator makes its areas and offers
 * them; an attacher opens the offered files, checks the creator's tokens and
 * answers with tokens of its own; the creator checks those, and data may
 * flow. Every value of the peer's text is checked before use. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "alias.h"
#include "chunks.h"
#include "ext.h"
#include "internal.h"

static uint64_t random_below(uint64_t n)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = (uint64_t)time(NULL) * 2654435761u;
	return n ? v % n : 0;
}

/* A session id: random, never 0 (0 is "not started"). */
static uint32_t new_session(void)
{
	return (uint32_t)random_below(UINT32_MAX) + 1;
}

/* The version of the extension both ends speak: the lower of the two
 * (0 for a peer that never said mmapfs=N: xpra). */
static unsigned ext_version(const struct mm_caps *c)
{
	return c->mmapfs < MM_EXT_VERSION ? (unsigned)c->mmapfs : MM_EXT_VERSION;
}

int mm_dir_setup_ring(struct mm_dir *d, unsigned version)
{
	uint64_t end = mm_ext_start(d->area.size, version);
	uint64_t at = mm_ext_start(d->area.size, MM_EXT_VERSION);
	int r;

	d->ext = version ? d->area.base + mm_ext_offset(d->area.size) : NULL;
	d->ext2 = version >= 2 ? d->area.base + end : NULL;
	/* what a daemon's ticker writes, where its page walks are cheap */
	if (version && !d->tick && at >= MM_RING_HEADER)
		d->tick = mm_alias(d->area.base + at, MM_EXT2_SIZE + MM_EXT_SIZE);
	r = mm_ring_init(&d->ring, d->area.base, d->area.size, end);
	if (r == 0 && d->ext2)
		mm_ring_set_mark(&d->ring, mm_ext_word(d->ext2, MM_EXT2_W_MARK),
				 mm_ext_word(d->ext2, MM_EXT2_W_MARK_ON));
	return r;
}

/* The trailer of `version` in an area of size bytes: where, how long. */
static uint64_t trailer_len(uint64_t size, unsigned version)
{
	return mm_ext_offset(size) + MM_EXT_SIZE - mm_ext_start(size, version);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* A store into d's area failed (r): ENOSPC when its filesystem is full. */
static int store_fail(const struct mm_dir *d, int r, const char *what, struct mm_err *err)
{
	if (r == -EFAULT)
		r = mm_area_fault(&d->area);
	if (r == -ENOSPC)
		return mm_fail(err, r, "%s: no space left on its filesystem for %s", d->area.path,
			       what);
	return mm_fail(err, r, "%s: cannot write %s: %s", d->area.path, what, strerror(-r));
}

/* Write a fresh token of ours into d: at a random place in the ring, or at
 * its very end (where our own writer reaches last) when `at_end`, never over
 * [avoid, avoid + avoid_len) (the peer's token: the same text may be handed
 * over again, and must then still check), and never in the last 64 bytes,
 * where the creator's trailer lives even while the text handed over so far
 * has not said mmapfs=N (the longest trailer, of the version we speak). */
static int dir_new_token(struct mm_dir *d, bool at_end, uint64_t avoid,
			 uint64_t avoid_len, struct mm_err *err, const char *name)
{
	uint64_t end = mm_ext_start(d->area.size, MM_EXT_VERSION);
	uint64_t bytes = MM_TOKEN_DEFAULT_BYTES, idx;
	struct mm_token t;
	int r;

	r = mm_token_random(&t, sizeof(d->token));
	if (r < 0)
		return mm_fail(err, r, "%s: no random token: %s", name, strerror(-r));
	memcpy(d->token, t.v, sizeof(d->token));
	idx = end - bytes;
	for (int tries = 0; tries < 64; tries++) {
		if (!at_end || tries > 0)
			idx = MM_RING_HEADER + random_below(end - bytes - MM_RING_HEADER + 1);
		if (!overlaps(idx, bytes, avoid, avoid_len))
			break;
		if (at_end && avoid >= MM_RING_HEADER + bytes) {
			idx = avoid - bytes;	/* just below it, still far out */
			break;
		}
	}
	d->token_bytes = bytes;
	d->token_index = idx;
	r = mm_token_write(d->area.base, d->area.size, d->token_index, bytes, &t);
	return r < 0 ? store_fail(d, r, "the token", err) : 0;
}

/* Empty a ring: both pointers back to the start (the one exception to
 * "each pointer has one writer": the creator, starting a session). */
static int ring_reset(struct mm_dir *d)
{
	int r = mm_ext_store(d->area.base, 0, 0);

	return r == 0 ? mm_ext_store(d->area.base, 1, 0) : r;
}

/* Zero the words of a trailer's part (NULL: none). 0 or -EFAULT. */
static int words_zero(uint8_t *words, unsigned bytes)
{
	int r = 0;

	for (unsigned w = 0; r == 0 && words && w < bytes / 4; w++)
		r = mm_ext_store(words, w, 0);
	return r;
}

/* A creator's area starts a session: empty ring, fresh trailer. An
 * administrator's file may still hold an earlier session's pointers and
 * words, and a stale go-ahead must not let a new attacher start before its
 * tokens are checked. */
static int dir_reset(struct mm_dir *d)
{
	int r = ring_reset(d);

	if (r == 0)
		r = words_zero(d->ext, MM_EXT_SIZE);
	if (r == 0)
		r = words_zero(d->ext2, MM_EXT2_SIZE);
	if (r == 0)
		r = mm_ext_store(d->ext, MM_EXT_W_VERSION, MM_EXT_VERSION);
	if (r == 0)
		r = mm_ext_store(d->ext, MM_EXT_W_MAGIC, MM_EXT_MAGIC);
	return r;
}

/* Where an administrator's path came from, for reasons about it. */
static int admin_fail(const struct mm_chan_opts *o, struct mm_err *err, int r,
		      const struct mm_err *why)
{
	return o->origin ? mm_fail(err, r, "%s: %s", o->origin, why->msg)
			 : mm_fail(err, r, "%s", why->msg);
}

static int create_dir(struct mm_dir *d, const char *admin, const struct mm_window *win,
		      const struct mm_chan_opts *o, const char *name, struct mm_err *err)
{
	uint64_t size = mm_area_size_for(o->size);
	struct mm_err why;
	int r;

	mm_dir_init(d);
	/* a window is part of a device's file: never made here */
	if (admin && (r = mm_area_open_path(&d->area, admin, !(win && win->size), size, 0, win,
					    &why)) < 0)
		return admin_fail(o, err, r, &why);
	if (!admin)
		r = mm_area_create(&d->area, o->mmap_dir, o->area_tag, size, o->user, err);
	if (r == 0 && !admin && o->reserve)
		r = mm_area_reserve(&d->area, err);
	if (r < 0)
		return r;
	d->present = true;
	d->local = !admin;
	d->bell = admin ? (admin == o->read_file ? o->read_bell : o->write_bell) : NULL;
	d->bell_vector = o->bell_vector;
	r = mm_dir_setup_ring(d, MM_EXT_VERSION);
	if (r < 0)
		return mm_fail(err, r, "%s: area too small for a ring", d->area.path);
	r = dir_reset(d);
	if (r < 0)
		return store_fail(d, r, "its header", err);
	return dir_new_token(d, false, 0, 0, err, name);
}

bool mm_setup_later(const struct mm_channel *ch, int r)
{
	bool windows = ch->opts.read_window.size || ch->opts.write_window.size;

	return ch->declared && (r == -EINVAL || (r == -ENOENT && windows));
}

int mm_creator_setup(struct mm_channel *ch, struct mm_err *err)
{
	int r = 0;

	/* A channel naming one administrator's file carries that direction only. */
	if (ch->read_file || !ch->write_file)
		r = create_dir(&ch->rd, ch->read_file, &ch->opts.read_window, &ch->opts,
			       RD_NAME, err);
	if (r == 0 && (ch->write_file || !ch->read_file))
		r = create_dir(&ch->wr, ch->write_file, &ch->opts.write_window, &ch->opts,
			       WR_NAME, err);
	ch->session = new_session();
	if (r == 0) {
		mm_publish_session(ch, &ch->rd);
		mm_publish_session(ch, &ch->wr);
	}
	return r;
}

/* ---- checking the peer's half ---- */

static bool is_offer(const struct mm_caps *c)
{
	return (c->read.have | c->write.have) & MM_CAP_FILE;
}

static const char *const key_names[] = {
	"file", "size", "token", "token_index", "token_bytes",
};

static int need_keys(const struct mm_caps_area *a, unsigned keys, const char *name,
		     struct mm_err *err)
{
	for (unsigned i = 0; i < sizeof(key_names) / sizeof(key_names[0]); i++)
		if ((keys & (1u << i)) && !(a->have & (1u << i)))
			return mm_fail(err, -EINVAL, "%s.%s: missing", name, key_names[i]);
	return 0;
}

/* Could an outsider have written the peer's token (c, key prefix name) in
 * area d without mapping it? Too short, too few random bits, or over bytes
 * whose content is known: the header, our own token, and the trailer when
 * both ends speak the extension (docs/PROTOCOL.md, "Tokens"). */
static int token_guessable(const struct mm_dir *d, const struct mm_caps_area *c,
			   unsigned ext, const char *name, struct mm_err *err)
{
	uint64_t idx = c->token_index, n = c->token_bytes;

	if (n < MM_TOKEN_MIN_BYTES)
		return mm_fail(err, -EINVAL, "%s.token_bytes: %llu is below %d", name,
			       (unsigned long long)n, MM_TOKEN_MIN_BYTES);
	if (mm_token_bits(&c->token) < MM_TOKEN_MIN_BITS)
		return mm_fail(err, -EINVAL, "%s.token: fewer than %d significant bits",
			       name, MM_TOKEN_MIN_BITS);
	if (overlaps(idx, n, 0, MM_RING_HEADER))
		return mm_fail(err, -EINVAL, "%s.token_index: %llu lies over the header",
			       name, (unsigned long long)idx);
	if (d->token_bytes && overlaps(idx, n, d->token_index, d->token_bytes))
		return mm_fail(err, -EINVAL, "%s.token_index: %llu lies over this end's own token",
			       name, (unsigned long long)idx);
	if (ext && overlaps(idx, n, mm_ext_start(d->area.size, ext), trailer_len(d->area.size, ext)))
		return mm_fail(err, -EINVAL, "%s.token_index: %llu lies over the mmapfs trailer",
			       name, (unsigned long long)idx);
	return 0;
}

/* Check the peer's token (described by c, key prefix name) in area d. */
static int check_token(const struct mm_dir *d, const struct mm_caps_area *c, unsigned ext,
		       const char *name, struct mm_err *err)
{
	char hex[MM_TOKEN_HEX_MAX];
	int r;

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
	r = token_guessable(d, c, ext, name, err);
	if (r < 0)
		return r;
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
 * and check the creator's token in it. Nothing is written. No lock: d is
 * the caller's own, and what of ch it reads is fixed after open. */
static int attach_dir(const struct mm_channel *ch, struct mm_dir *d, const char *admin,
		      const struct mm_window *win, const struct mm_caps_area *c,
		      const char *name, unsigned ext, struct mm_err *err)
{
	struct mm_err why;
	uint32_t magic = 0;
	int r;

	r = need_keys(c, MM_CAP_ALL, name, err);
	if (r < 0)
		return r;
	if (admin)
		r = mm_area_open_path(&d->area, admin, false, 0, c->size, win, &why);
	else
		/* an xpra client deletes its files once answered: a library
		 * then maps this end's through its descriptor */
		r = mm_area_open_offered(&d->area, c->file, c->size, &ch->opts.rules, !ext, &why);
	if (r < 0 && admin && ch->opts.origin)
		return mm_fail(err, r, "%s.file: %s: %s", name, ch->opts.origin, why.msg);
	if (r < 0)
		return mm_fail(err, r, "%s.file: %s", name, why.msg);
	d->present = true;
	d->local = !admin;
	d->bell = admin ? (admin == ch->opts.read_file ? ch->opts.read_bell
						       : ch->opts.write_bell) : NULL;
	d->bell_vector = ch->opts.bell_vector;
	if (mm_dir_setup_ring(d, ext) < 0)
		return mm_fail(err, -EINVAL, "%s.size: too small", name);
	r = check_token(d, c, ext, name, err);
	if (r < 0)
		return r;
	if (ext && (mm_ext_load(d->ext, MM_EXT_W_MAGIC, &magic) < 0 || magic != MM_EXT_MAGIC))
		return mm_fail(err, -EBADMSG, "%s: mmapfs=%u offered but %s has no mmapfs trailer",
			       name, ext, d->area.path);
	return 0;
}

/* Chunk queues exist only for an xpra peer. */
static int dirs_chunks(struct mm_channel *ch)
{
	int r = 0;

	mm_chunks_free(&ch->rd);
	mm_chunks_free(&ch->wr);
	if (!ch->ext && ch->rd.usable)
		r = mm_chunks_new(&ch->rd);
	if (r == 0 && !ch->ext && ch->wr.usable)
		r = mm_chunks_new(&ch->wr);
	return r;
}

/* The offer's areas opened and checked (no lock held meanwhile): write our
 * tokens and make them the channel's. ch->lock held. */
static int install_offer(struct mm_channel *ch, const struct mm_caps *c, struct mm_dir *rd,
			 struct mm_dir *wr, uint64_t now_ms, struct mm_err *err)
{
	unsigned ext = ext_version(c);
	int r = 0;

	/* Without the extension nothing tells us when the creator has checked
	 * ours: the one in the area we write goes to the ring's far end,
	 * which our data reaches last. */
	if (wr->present)
		r = dir_new_token(wr, !ext, c->read.token_index, c->read.token_bytes, err, RD_NAME);
	if (r == 0 && rd->present)
		r = dir_new_token(rd, false, c->write.token_index, c->write.token_bytes, err,
				  WR_NAME);
	if (r < 0)
		return r;
	mm_dir_close(&ch->rd);
	mm_dir_close(&ch->wr);
	rd->usable = rd->present;
	wr->usable = wr->present;
	ch->rd = *rd;
	ch->wr = *wr;
	mm_dir_init(rd);
	mm_dir_init(wr);
	ch->role = MM_ATTACHER;
	ch->ext = ext;
	ch->session = new_session();
	ch->epoch = 0;
	ch->failures = 0;
	if (ext && ch->rd.present) {
		/* take over the reading end: earlier ends of stream are gone */
		mm_ext_load(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &ch->rd.eof_ack);
		mm_ext_store(ch->rd.ext, MM_EXT_W_EOF_ACK, ch->rd.eof_ack);
	}
	mm_publish_session(ch, &ch->rd);
	mm_publish_session(ch, &ch->wr);
	mm_note_peer(ch, now_ms);
	mm_set_state(ch, ext ? MM_STATE_ATTACHED : MM_STATE_READY);
	return dirs_chunks(ch);
}

/* ch->lock held on entry and on return; dropped while files are opened. */
static int take_offer(struct mm_channel *ch, const struct mm_caps *c, uint64_t now_ms,
		      struct mm_err *err)
{
	struct mm_dir rd, wr;
	unsigned ext = ext_version(c);
	int r = 0;

	if (ch->declared && ch->role == MM_CREATOR)
		return mm_fail(err, -EINVAL,
			       "this channel is declared as creator: write an answer, not an offer");
	mm_dir_init(&rd);
	mm_dir_init(&wr);
	ch->handshaking++;
	pthread_mutex_unlock(&ch->lock);
	/* The offer's read area is the one the creator reads: we write it. */
	if ((c->read.have & MM_CAP_FILE) || (c->read.have && ch->write_file))
		r = attach_dir(ch, &wr, ch->write_file, &ch->opts.write_window, &c->read,
			       RD_NAME, ext, err);
	if (r == 0 && ((c->write.have & MM_CAP_FILE) || (c->write.have && ch->read_file)))
		r = attach_dir(ch, &rd, ch->read_file, &ch->opts.read_window, &c->write,
			       WR_NAME, ext, err);
	pthread_mutex_lock(&ch->lock);
	ch->handshaking--;
	if (r == 0)
		r = install_offer(ch, c, &rd, &wr, now_ms, err);
	mm_dir_close(&rd);
	mm_dir_close(&wr);
	return r;
}

/* Do the tokens of c lie in our own areas? Then it is an answer, whatever
 * file and size keys it also carries (xpra 6's server sends them). 1 if
 * every token it has verifies, 0 if it holds none of ours; -errno with the
 * reason for an answer that fails. ch->lock held. */
static int check_answer(struct mm_channel *ch, const struct mm_caps *c, struct mm_err *err)
{
	/* The answer's read area is the attacher's: our write area. */
	const struct { struct mm_dir *d; const struct mm_caps_area *a; const char *name; } m[2] = {
		{ &ch->wr, &c->read, RD_NAME },
		{ &ch->rd, &c->write, WR_NAME },
	};
	unsigned ext = ext_version(c);
	int r, n = 0;

	for (int i = 0; i < 2; i++) {
		if (!m[i].a->have)
			continue;
		if (!m[i].d->present)
			return mm_fail(err, -EINVAL, "%s: this end offered no such area",
				       m[i].name);
		r = need_keys(m[i].a, MM_CAP_TOKEN_ALL, m[i].name, err);
		if (r == 0)
			r = check_token(m[i].d, m[i].a, ext, m[i].name, err);
		if (r < 0)
			return r;
		n++;
	}
	if (n == 0)
		return mm_fail(err, -EINVAL, "the answer holds no token");
	return 1;
}

/* The answer checked: data may flow. ch->lock held. */
static int take_answer(struct mm_channel *ch, const struct mm_caps *c, uint64_t now_ms)
{
	struct mm_dir *dirs[2] = { &ch->wr, &ch->rd };
	const struct mm_caps_area *a[2] = { &c->read, &c->write };
	unsigned ext = ext_version(c);

	for (int i = 0; i < 2; i++) {
		struct mm_dir *d = dirs[i];

		d->usable = a[i]->have != 0;
		/* with an xpra attacher the whole area is ring */
		if (d->present)
			mm_dir_setup_ring(d, ext);
		/* The session starts on empty rings: whatever an earlier
		 * mmapfs attacher (one that only stalled) wrote after our
		 * offer went out is not this session's. A new one writes
		 * nothing before our go-ahead, which comes after this (an
		 * xpra server may have started already: leave its ring). */
		if (d->present && ext && ring_reset(d) < 0)
			return -EFAULT;
		/* and with no stream begun, failed or abandoned */
		if (d->present)
			words_zero(d->ext2, MM_EXT2_SIZE);
		if (d->usable && ext) {
			mm_ext_store(d->ext, MM_EXT_W_FLAGS, MM_EXT_VERIFIED);
			if (d == &ch->rd) {
				mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &d->eof_ack);
				mm_ext_store(d->ext, MM_EXT_W_EOF_ACK, d->eof_ack);
			}
		}
	}
	ch->ext = ext;
	mm_publish_session(ch, &ch->rd);
	mm_publish_session(ch, &ch->wr);
	mm_note_peer(ch, now_ms);
	mm_set_state(ch, MM_STATE_READY);
	return dirs_chunks(ch);
}

static bool same_file(const struct mm_dir *d, const struct mm_caps_area *a)
{
	const char *mine, *theirs = strrchr(a->file, '/');

	if (!d->present || !(a->have & MM_CAP_FILE))
		return false;
	mine = strrchr(d->area.path, '/');
	return strcmp(mine ? mine + 1 : d->area.path, theirs ? theirs + 1 : a->file) == 0;
}

/* Text naming this end's own areas is a (failed) answer, never an offer. */
static bool names_own_areas(const struct mm_channel *ch, const struct mm_caps *c)
{
	return same_file(&ch->wr, &c->read) || same_file(&ch->rd, &c->write) ||
	       same_file(&ch->rd, &c->read) || same_file(&ch->wr, &c->write);
}

/* ch->lock held. */
static int peer_locked(struct mm_channel *ch, const struct mm_caps *c, uint64_t now_ms,
		       struct mm_err *err)
{
	struct mm_err why = { "" };
	int r;

	if (mm_channel_state(ch) == MM_STATE_CLOSED)
		return mm_fail(err, -ENOTCONN, "the channel is closed");
	if (ch->rd.owner || ch->wr.owner)
		return mm_fail(err, -EBUSY, "data is open: close it before a new handshake");
	if (ch->role == MM_CREATOR) {
		r = check_answer(ch, c, &why);
		if (r > 0 || !is_offer(c) || names_own_areas(ch, c)) {
			if (r < 0)
				*err = why;
			return r < 0 ? r : take_answer(ch, c, now_ms);
		}
	} else if (!is_offer(c)) {
		return mm_fail(err, -EINVAL,
			       "this end is the attacher: the peer's half must be an offer with file keys");
	}
	return take_offer(ch, c, now_ms, err);
}

int mm_channel_peer(struct mm_channel *ch, const char *text, size_t len,
		    uint64_t now_ms, struct mm_err *err)
{
	struct mm_err why = { "" };
	struct mm_caps *c = calloc(1, sizeof(*c));
	char *accepted = NULL;
	int r;

	if (!c)
		return mm_fail(err, -ENOMEM, "out of memory");
	r = mm_caps_parse(text, len, c, &why);
	/* what `peer` reads back if it is accepted: only the text is kept */
	if (r == 0 && !(accepted = mm_caps_text(c)))
		r = mm_fail(&why, -ENOMEM, "out of memory");
	if (pthread_mutex_trylock(&ch->hs_lock) != 0) {
		free(c);
		free(accepted);
		return mm_fail(err, -EBUSY, "another handshake is in progress");
	}
	pthread_mutex_lock(&ch->lock);
	if (r == 0)
		r = peer_locked(ch, c, now_ms, &why);
	if (r == 0) {
		free(ch->accepted);
		ch->accepted = accepted;
		accepted = NULL;
		ch->error[0] = '\0';
		mm_fail_clear(ch);
	} else {
		snprintf(ch->error, sizeof(ch->error), "%s", why.msg);
		if (err)
			*err = why;
	}
	pthread_mutex_unlock(&ch->lock);
	pthread_mutex_unlock(&ch->hs_lock);
	free(c);
	free(accepted);
	return r;
}

int mm_channel_renew(struct mm_channel *ch, uint64_t *discarded, struct mm_err *err)
{
	struct mm_dir *dirs[2] = { &ch->rd, &ch->wr };
	enum mm_state st;
	int r = 1;

	*discarded = 0;
	if (pthread_mutex_trylock(&ch->hs_lock) != 0)
		return 0;	/* a handshake is under way: its text will do */
	pthread_mutex_lock(&ch->lock);
	st = mm_channel_state(ch);
	if (ch->role == MM_CREATOR && !ch->rd.present && !ch->wr.present &&
	    st == MM_STATE_ERROR) {
		/* a declared file that was not ready: try again */
		struct mm_err why = { "" };

		r = mm_creator_setup(ch, &why);
		if (r == 0) {
			mm_fail_clear(ch);
			ch->error[0] = '\0';
			mm_set_state(ch, MM_STATE_OFFERED);
			r = 1;
		} else {
			mm_dir_close(&ch->rd);
			mm_dir_close(&ch->wr);
			snprintf(ch->error, sizeof(ch->error), "%s", why.msg);
			r = mm_fail(err, r, "%s", why.msg);
		}
		pthread_mutex_unlock(&ch->lock);
		pthread_mutex_unlock(&ch->hs_lock);
		return r;
	}
	if (ch->role != MM_CREATOR ||
	    !(st == MM_STATE_ERROR ||
	      (st == MM_STATE_READY && mm_channel_peer_state(ch) == MM_PEER_DEAD)))
		r = 0;
	else if (ch->rd.owner || ch->wr.owner)
		r = mm_fail(err, -EBUSY, "data is open: close it to start a new session");
	for (int i = 0; i < 2 && r == 1; i++) {
		struct mm_dir *d = dirs[i];
		struct mm_ring_pos p;

		if (!d->present)
			continue;
		if (d->usable && mm_ring_load(&d->ring, &p) == 0)
			*discarded += mm_ring_used(&d->ring, &p);
		mm_chunks_free(d);
		d->usable = false;
		if (mm_dir_setup_ring(d, MM_EXT_VERSION) < 0 || dir_reset(d) < 0)
			r = mm_fail(err, -EIO, "%s: the mapping faulted", d->area.path);
		else if ((r = dir_new_token(d, false, 0, 0, err, dir_name(i ? MM_WR : MM_RD))) == 0)
			r = 1;
	}
	if (r == 1) {
		ch->ext = false;
		free(ch->accepted);
		ch->accepted = NULL;
		ch->error[0] = '\0';
		ch->session = new_session();
		ch->epoch = 0;
		ch->failures = 0;
		ch->peer_session = 0;
		mm_publish_session(ch, &ch->rd);
		mm_publish_session(ch, &ch->wr);
		mm_fail_clear(ch);
		mm_set_peer(ch, MM_PEER_UNKNOWN);
		mm_set_state(ch, MM_STATE_OFFERED);
	} else if (r < 0 && r != -EBUSY) {
		mm_channel_fail(ch, -r, MM_WHY_FAULT, MM_RD, 0, 0);
	}
	pthread_mutex_unlock(&ch->lock);
	pthread_mutex_unlock(&ch->hs_lock);
	return r;
}

void mm_channel_set_reason(struct mm_channel *ch, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&ch->lock);
	va_start(ap, fmt);
	vsnprintf(ch->error, sizeof(ch->error), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&ch->lock);
}

bool mm_peer_text_complete(const char *text, size_t len)
{
	struct mm_caps *c;
	bool done = false;

	if (len == 0 || text[len - 1] != '\n')
		return false;
	c = calloc(1, sizeof(*c));
	if (!c)
		return true;	/* let the handshake fail with ENOMEM */
	if (mm_caps_parse(text, len, c, NULL) < 0) {
		done = true;	/* it will not get better: let it fail now */
	} else {
		unsigned need = is_offer(c) ? MM_CAP_ALL : MM_CAP_TOKEN_ALL;

		done = (c->read.have || c->write.have) &&
		       (!c->read.have || (c->read.have & need) == need) &&
		       (!c->write.have || (c->write.have & need) == need);
	}
	free(c);
	return done;
}
