/* A channel's life, the claims on its stream, what others may see of it,
 * and the record of why it failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alias.h"
#include "chunks.h"
#include "ext.h"
#include "internal.h"
#include "stream.h"

bool mm_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 255 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return false;
	for (const char *p = name; *p; p++)
		if (*p == '/' || (unsigned char)*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

static const char *const role_names[] = {
	[MM_CREATOR] = "creator",
	[MM_ATTACHER] = "attacher",
};

const char *mm_role_name(enum mm_chan_role r)
{
	return (unsigned)r < 2 ? role_names[r] : "?";
}

int mm_role_parse(const char *s, enum mm_chan_role *r)
{
	for (unsigned i = 0; i < 2; i++) {
		if (strcmp(s, role_names[i]) == 0) {
			*r = (enum mm_chan_role)i;
			return 0;
		}
	}
	return -EINVAL;
}

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

const char *mm_peer_name(enum mm_peer p)
{
	return p == MM_PEER_ALIVE ? "alive" : p == MM_PEER_DEAD ? "dead" : "unknown";
}

enum mm_state mm_channel_state(struct mm_channel *ch)
{
	return __atomic_load_n(&ch->state, __ATOMIC_ACQUIRE);
}

void mm_set_state(struct mm_channel *ch, enum mm_state s)
{
	__atomic_store_n(&ch->state, s, __ATOMIC_RELEASE);
}

enum mm_peer mm_channel_peer_state(struct mm_channel *ch)
{
	return (enum mm_peer)__atomic_load_n(&ch->peer, __ATOMIC_RELAXED);
}

void mm_set_peer(struct mm_channel *ch, enum mm_peer p)
{
	__atomic_store_n(&ch->peer, (int)p, __ATOMIC_RELAXED);
}

enum mm_chan_role mm_channel_role(struct mm_channel *ch)
{
	enum mm_chan_role r;

	pthread_mutex_lock(&ch->lock);
	r = ch->role;
	pthread_mutex_unlock(&ch->lock);
	return r;
}

/* ---- the failure record ---- */

void mm_channel_fail(struct mm_channel *ch, int errnum, enum mm_why why, unsigned dir,
		     uint32_t a, uint32_t b)
{
	int unclaimed = 0;

	if (__atomic_compare_exchange_n(&ch->fail.claimed, &unclaimed, 1, false,
					__ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
		ch->fail.why = why;
		ch->fail.dir = dir;
		ch->fail.a = a;
		ch->fail.b = b;
		__atomic_store_n(&ch->fail.errnum, errnum, __ATOMIC_RELEASE);
		mm_set_state(ch, MM_STATE_ERROR);
	}
	mm_stream_wake(ch);
}

int mm_channel_failed(struct mm_channel *ch)
{
	return -__atomic_load_n(&ch->fail.errnum, __ATOMIC_ACQUIRE);
}

/* Forget a failure: ch->lock held, nothing claimed. */
void mm_fail_clear(struct mm_channel *ch)
{
	ch->fail = (struct mm_failure){ 0 };
}

/* ---- life ---- */

void mm_dir_init(struct mm_dir *d)
{
	*d = (struct mm_dir){ .area.fd = -1 };
}

void mm_dir_close(struct mm_dir *d)
{
	mm_alias_drop(d->tick);
	mm_area_close(&d->area);
	mm_chunks_free(d);
	mm_dir_init(d);
}

int mm_channel_open(struct mm_channel *ch, enum mm_chan_role role, bool declared,
		    const struct mm_chan_opts *opts, struct mm_err *err)
{
	int r = 0;

	memset(ch, 0, sizeof(*ch));
	pthread_mutex_init(&ch->lock, NULL);
	pthread_mutex_init(&ch->hs_lock, NULL);
	mm_dir_init(&ch->rd);
	mm_dir_init(&ch->wr);
	ch->role = role;
	ch->declared = declared;
	ch->opts = *opts;
	if ((opts->read_file && !(ch->read_file = strdup(opts->read_file))) ||
	    (opts->write_file && !(ch->write_file = strdup(opts->write_file)))) {
		r = mm_fail(err, -ENOMEM, "out of memory");
		goto fail;
	}
	ch->opts.read_file = ch->read_file;
	ch->opts.write_file = ch->write_file;
	mm_set_state(ch, MM_STATE_OFFERED);
	if (role == MM_ATTACHER)
		return 0;
	r = mm_creator_setup(ch, err);
	if (r == 0)
		return 0;
	if (mm_setup_later(ch, r)) {
		/* its file is not ready yet (a VM not started): the channel is
		 * there, in error, and reading its offer tries again */
		mm_dir_close(&ch->rd);
		mm_dir_close(&ch->wr);
		snprintf(ch->error, sizeof(ch->error), "%s", err ? err->msg : "");
		mm_channel_fail(ch, -r, MM_WHY_SETUP, 0, 0, 0);
		return 0;
	}
fail:
	mm_channel_destroy(ch);
	return r;
}

static bool busy_locked(struct mm_channel *ch)
{
	return ch->rd.owner || ch->wr.owner || ch->handshaking;
}

const void *mm_channel_owner(struct mm_channel *ch, unsigned dir)
{
	const void *o;

	pthread_mutex_lock(&ch->lock);
	o = dir == MM_RD ? ch->rd.owner : ch->wr.owner;
	pthread_mutex_unlock(&ch->lock);
	return o;
}

static void close_locked(struct mm_channel *ch)
{
	mm_dir_close(&ch->rd);
	mm_dir_close(&ch->wr);
	free(ch->read_file);
	free(ch->write_file);
	free(ch->accepted);
	ch->read_file = ch->write_file = ch->accepted = NULL;
	ch->opts.read_file = ch->opts.write_file = NULL;
	mm_set_state(ch, MM_STATE_CLOSED);
}

int mm_channel_close(struct mm_channel *ch)
{
	int r = 0;

	pthread_mutex_lock(&ch->lock);
	if (busy_locked(ch))
		r = -EBUSY;
	else
		close_locked(ch);
	pthread_mutex_unlock(&ch->lock);
	return r;
}

void mm_channel_destroy(struct mm_channel *ch)
{
	close_locked(ch);
	pthread_mutex_destroy(&ch->hs_lock);
	pthread_mutex_destroy(&ch->lock);
}

/* ---- claims ---- */

/* dir's own pointer word (data_start of the area read, data_end of the
 * one written), as an offset in [8, ring end), or 0 if it is corrupt or
 * cannot be read. ch->lock held. */
static uint32_t own_pointer(const struct mm_dir *d, unsigned dir)
{
	uint32_t start, end, p;

	if (!d->present || mm_ring_raw(&d->ring, &start, &end) < 0)
		return 0;
	p = dir == MM_RD ? start : end;
	if (p == 0 || p == d->ring.end)
		p = MM_RING_HEADER;
	return p < d->ring.end ? p : 0;
}

/* A claim of d: its reports start from here. */
static void told_now(struct mm_dir *d, unsigned dir)
{
	d->told = own_pointer(d, dir);
	d->told_bytes = __atomic_load_n(&d->bytes, __ATOMIC_RELAXED);
	d->owed = 0;
}


int mm_channel_claim(struct mm_channel *ch, unsigned want, const void *owner)
{
	unsigned have = 0;
	int r;

	pthread_mutex_lock(&ch->lock);
	mm_channel_refresh_locked(ch);
	r = mm_channel_failed(ch);
	if (r == 0 && mm_channel_state(ch) != MM_STATE_READY)
		r = -ENOTCONN;
	if (r == 0 && ch->handshaking)
		r = -EBUSY;	/* a new handshake is replacing the areas */
	if (r < 0)
		goto out;
	have = (ch->rd.usable ? MM_RD : 0) | (ch->wr.usable ? MM_WR : 0);
	/* one direction only: a pure open of the missing one fails at once */
	if ((want != (MM_RD | MM_WR) && (want & ~have)) || !(want & have)) {
		r = -ENXIO;
		goto out;
	}
	want &= have;
	if (((want & MM_RD) && ch->rd.owner) || ((want & MM_WR) && ch->wr.owner)) {
		r = -EBUSY;
		goto out;
	}
	if (want & MM_WR) {
		r = mm_writer_begin(ch);
		if (r < 0)
			goto out;
		ch->wr.owner = owner;
		told_now(&ch->wr, MM_WR);
	}
	if (want & MM_RD) {
		/* the last reader may have been another process (a library):
		 * the ends of stream it took are in the trailer */
		if (ch->rd.ext)
			mm_ext_load(ch->rd.ext, MM_EXT_W_EOF_ACK, &ch->rd.eof_ack);
		mm_reader_claimed(&ch->rd);
		ch->rd.owner = owner;
		told_now(&ch->rd, MM_RD);
	}
	mm_sleepers_reset(ch, want);
	r = (int)want;
out:
	pthread_mutex_unlock(&ch->lock);
	return r;
}

static void unclaim(struct mm_channel *ch, const void *owner, bool end_stream,
		    const void *reader)
{
	pthread_mutex_lock(&ch->lock);
	if (ch->rd.owner == owner)
		ch->rd.owner = reader;
	if (ch->wr.owner == owner) {
		if (end_stream)
			mm_writer_end(ch);
		ch->wr.owner = NULL;
	}
	pthread_mutex_unlock(&ch->lock);
}

void mm_channel_unclaim(struct mm_channel *ch, const void *owner)
{
	unclaim(ch, owner, true, NULL);
}

void mm_channel_hand_reader(struct mm_channel *ch, const void *owner, const void *to)
{
	unclaim(ch, owner, true, to);
}

void mm_channel_abandon(struct mm_channel *ch, const void *owner)
{
	unclaim(ch, owner, false, NULL);
}

/* ---- display ---- */

uint64_t mm_channel_add_bytes(struct mm_channel *ch, unsigned dir, uint64_t n)
{
	struct mm_dir *d = dir == MM_RD ? &ch->rd : &ch->wr;
	uint64_t moved = 0, ours;
	uint32_t p;

	pthread_mutex_lock(&ch->lock);
	p = own_pointer(d, dir);
	if (p && d->told)
		moved = p >= d->told ? p - d->told : (d->ring.end - d->told) + (p - MM_RING_HEADER);
	/* past a mark (ring.h) this counts the ring's end beyond it too: the
	 * report itself bounds it. Without the mmapfs trailer (an xpra
	 * peer), a writer may start again at the ring's start: all before
	 * the pointer may be new */
	if (p && !d->ext && p != d->told && p - MM_RING_HEADER > moved)
		moved = p - MM_RING_HEADER;
	ours = __atomic_load_n(&d->bytes, __ATOMIC_RELAXED) - d->told_bytes;
	moved = moved > ours ? moved - ours : 0;
	/* what a reader reports as read before it gives the space back
	 * (an xpra-style reader moves data_start at the end of a piece) is
	 * counted once the pointer has moved: up to a ring is owed */
	n = n > UINT64_MAX - d->owed ? UINT64_MAX : n + d->owed;
	d->owed = n > moved ? n - moved : 0;
	if (d->owed > d->ring.end)
		d->owed = d->ring.end;
	if (n > moved)
		n = moved;
	d->told = p;
	d->told_bytes = __atomic_add_fetch(&d->bytes, n, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&ch->lock);
	return n;
}

unsigned mm_channel_failures(struct mm_channel *ch)
{
	unsigned n;

	pthread_mutex_lock(&ch->lock);
	n = ch->failures;
	pthread_mutex_unlock(&ch->lock);
	return n;
}

bool mm_channel_dir_info(struct mm_channel *ch, unsigned dir, struct mm_dir_info *info)
{
	const struct mm_dir *d = dir == MM_RD ? &ch->rd : &ch->wr;
	bool present;

	memset(info, 0, sizeof(*info));
	pthread_mutex_lock(&ch->lock);
	present = d->present;
	if (present) {
		snprintf(info->path, sizeof(info->path), "%s", d->area.path);
		info->size = d->area.size;
		info->ring_end = d->ring.end;
		info->token_index = d->token_index;
		mm_ring_raw(&d->ring, &info->data_start, &info->data_end);
		info->bytes = __atomic_load_n(&d->bytes, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&ch->lock);
	return present;
}
