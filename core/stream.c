/* The byte stream: stream.h. Every shared word is loaded once, checked,
 * then used; every touch of an area runs under the SIGBUS guard. */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>

#include "chunks.h"
#include "ext.h"
#include "guard.h"
#include "internal.h"
#include "stream.h"

/* The pointer words: 0 is data_start (the reader's), 1 data_end (the
 * writer's). A reader waits on data_end, a writer on data_start. */
enum { W_START = 0, W_END = 1 };

static uint32_t *word_of(const struct mm_dir *d, unsigned i)
{
	return mm_ext_word(d->area.base, i);
}

/* The raw value of word i of a header or trailer, for a later futex wait
 * (the futex compares memory as it is). 0 or -EFAULT. */
static int raw_ext(const uint8_t *ext, unsigned i, uint32_t *v)
{
	int r = mm_ext_load(ext, i, v);

	*v = htole32(*v);
	return r;
}

/* The same of a pointer word. */
static int raw_word(const struct mm_dir *d, unsigned i, uint32_t *v)
{
	return raw_ext(d->area.base, i, v);
}

static struct mm_dir *dir_of(struct mm_channel *ch, unsigned dir)
{
	return dir == MM_RD ? &ch->rd : &ch->wr;
}

static unsigned count_shift(unsigned i)
{
	return i == W_END ? MM_EXT_WAIT_END_SHIFT : MM_EXT_WAIT_START_SHIFT;
}

/* The version-2 word where a sleeper on word i names its doorbell vector. */
static unsigned bell_word(unsigned i)
{
	return i == W_END ? MM_EXT2_W_BELL_END : MM_EXT2_W_BELL_START;
}

/* FUTEX_WAKE on a word of d's, unless d's mapping is known to have no
 * futex (a PCI BAR, in a guest): there each would be a wasted system call. */
static void futex_wake(struct mm_dir *d, uint32_t *word)
{
	if (!__atomic_load_n(&d->no_futex, __ATOMIC_RELAXED) && mm_futex_wake(word) == -EFAULT)
		__atomic_store_n(&d->no_futex, true, __ATOMIC_RELAXED);
}

/* Tell the other side that word i of d moved, if it may be asleep on it.
 * With the trailer, the waiters word counts who may (docs/PROTOCOL.md,
 * "Waking"): the move is published, the fence orders it before the load
 * of the count, as a sleeper's count comes before its futex's check of
 * the word; so either the sleeper sees the move or we see the sleeper. */
static void wake(struct mm_dir *d, unsigned i)
{
	uint32_t n = 1;

	if (d->ext) {
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (mm_ext_load(d->ext, MM_EXT_W_WAITERS, &n) == 0)
			n = (n >> count_shift(i)) & 0xffff;
	}
	if (n)
		futex_wake(d, word_of(d, i));
	/* across a VM the futex reaches nobody: the doorbell, likewise only
	 * for a peer that may sleep (docs/ivshmem.md, "Doorbells"), on the
	 * vector its word asks for (version 2; 0 if it says none) */
	if (n && d->bell) {
		uint32_t v = 0;

		if (d->ext2)
			mm_ext_load(d->ext2, bell_word(i), &v);
		d->bell->ring(d->bell, v ? v - 1 : 0);
	}
}

/* Count ourselves in (+1) or out (-1) among the sleepers on d's word i.
 * One who may sleep across a VM first says which doorbell vector wakes
 * it: the count's barrier publishes the word before the count. */
static void sleepers(struct mm_dir *d, unsigned i, int delta)
{
	uint32_t v;

	if (!d->ext)
		return;
	if (delta > 0 && d->bell && d->ext2 &&
	    mm_ext_load(d->ext2, bell_word(i), &v) == 0 && v != d->bell_vector + 1)
		mm_ext_store(d->ext2, bell_word(i), d->bell_vector + 1);
	mm_ext_count(d->ext, MM_EXT_W_WAITERS, count_shift(i), delta);
}

void mm_sleepers_reset(struct mm_channel *ch, unsigned dirs)
{
	if (dirs & MM_RD)
		sleepers(&ch->rd, W_END, -0xffff);
	if (dirs & MM_WR)
		sleepers(&ch->wr, W_START, -0xffff);
}

/* The peer broke the area (r: -EFAULT, -EPROTO): the channel goes to
 * error, and the caller gets what every later call will get. */
static int stream_fail(struct mm_channel *ch, unsigned dir, int r)
{
	struct mm_dir *d = dir_of(ch, dir);
	uint32_t s = 0, e = 0;

	if (r == -EFAULT) {
		mm_channel_fail(ch, EIO, MM_WHY_FAULT, dir, 0, 0);
	} else {
		mm_ring_raw(&d->ring, &s, &e);
		mm_channel_fail(ch, EPROTO, MM_WHY_CORRUPT, dir, s, e);
	}
	return mm_channel_failed(ch);
}

static bool peer_dead(struct mm_channel *ch)
{
	return mm_channel_peer_state(ch) == MM_PEER_DEAD;
}

/* Why data cannot flow right now, or 0. A dead peer stops a writer at
 * once; a reader first gets what the peer wrote before it died. */
static int data_check(struct mm_channel *ch, struct mm_dir *d, int dead_errno)
{
	int r = mm_channel_failed(ch);

	if (r < 0)
		return r;
	if (mm_channel_state(ch) != MM_STATE_READY)
		return -ENOTCONN;
	if (!d->usable)
		return -ENXIO;
	if (dead_errno && peer_dead(ch))
		return -dead_errno;
	return 0;
}

/* ---- version 2: cut and abandoned streams ---- */

/* The version-2 words this file reads, loaded in one guarded run. */
struct ext2_words {
	const uint8_t *ext2;
	uint32_t abandoned, epochs;
	uint32_t close_seq;		/* of version 1's words, which follow */
};

static int do_ext2(void *arg)
{
	struct ext2_words *w = arg;

	w->abandoned = mm_ext_get(w->ext2, MM_EXT2_W_ABANDONED);
	w->close_seq = mm_ext_get(w->ext2 + MM_EXT2_SIZE, MM_EXT_W_CLOSE_SEQ);
	/* each only grows: their sum changes when either does */
	w->epochs = mm_ext_get(w->ext2, MM_EXT2_W_EPOCH) +
		    mm_ext_get(w->ext2, MM_EXT2_W_EPOCH + 1);
	return 0;
}

static int load_ext2(const struct mm_dir *d, struct ext2_words *w)
{
	w->ext2 = d->ext2;
	return mm_guard_run(do_ext2, w);
}

void mm_dir_claimed(struct mm_dir *d)
{
	struct ext2_words w = { .epochs = 0 };

	if (d->ext2)
		load_ext2(d, &w);
	d->epoch = w.epochs;
	d->dropping = false;
	d->cut = false;
}

void mm_reader_claimed(struct mm_dir *d)
{
	mm_dir_claimed(d);
	if (d->ext2) {
		mm_ext_store(d->ext2, MM_EXT2_W_ALIGNED, 1);
		mm_ext_store(d->ext2, MM_EXT2_W_FOLLOWS, 1);
	}
}

/* Has the writer's stream been cut since its claim: failed by either end
 * (an epoch moved), or abandoned by its reader? -EPIPE, 0, -EFAULT. */
static int writer_cut(const struct mm_dir *d)
{
	struct ext2_words w;

	if (!d->ext2)
		return 0;
	if (d->cut)
		return -EPIPE;		/* and stays so until the claim ends */
	if (load_ext2(d, &w) < 0)
		return -EFAULT;
	if (w.epochs != d->epoch)
		return -EPIPE;
	/* the stream being written is number close_seq */
	return w.close_seq + 1 == w.abandoned ? -EPIPE : 0;
}

/* Is stream `at` one the reader drops: abandoned by the reader's end, or
 * left by a reader of this end (drop_below, which version 1 has no word
 * for)? Each names one stream, as its number + 1: the streams that ended
 * before it are whole, and delivered. */
static bool dropped(const struct mm_dir *d, const struct ext2_words *w, uint32_t at)
{
	return (d->ext2 && at + 1 == w->abandoned) || (d->dropping && at + 1 == d->drop_below);
}

/* Would the reader's claim be told that its stream failed: does it stand
 * at a stream to drop, with an epoch older than the failure? */
static bool reader_cut(const struct mm_dir *d)
{
	struct ext2_words w;
	uint32_t ack;

	if (!d->ext2 || load_ext2(d, &w) < 0 || w.epochs == d->epoch ||
	    mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &ack) < 0)
		return false;
	return dropped(d, &w, ack);
}

/* End the stream open in d where its bytes stop now, with an abort mark
 * if it was cut; with version 2 only if it is still open (open_seq): a
 * writer whose stream was cut ended it there itself. */
static void end_stream(struct mm_dir *d, bool cut)
{
	struct mm_ring_pos p;
	uint32_t cs, open = 0, bits = 0, bit;

	if (mm_ring_load(&d->ring, &p) < 0 || mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0)
		return;
	if (d->ext2 && (mm_ext_load(d->ext2, MM_EXT2_W_OPEN_SEQ, &open) < 0 || open != cs + 1))
		return;
	mm_ext_store(d->ext, MM_EXT_W_EOF_POS + cs % MM_EXT_EOF_SLOTS, p.end);
	if (d->ext2) {
		bit = 1u << (cs % MM_EXT_EOF_SLOTS);
		mm_ext_load(d->ext2, MM_EXT2_W_EOF_ABORT, &bits);
		mm_ext_store(d->ext2, MM_EXT2_W_EOF_ABORT, cut ? bits | bit : bits & ~bit);
	}
	mm_ext_store(d->ext, MM_EXT_W_CLOSE_SEQ, cs + 1);
	futex_wake(d, mm_ext_word(d->ext, MM_EXT_W_CLOSE_SEQ));
	futex_wake(d, word_of(d, W_END));	/* where an older reader waits */
	if (d->bell)
		wake(d, W_END);		/* the doorbell, if the reader sleeps */
}

/* The writer learns that its stream was cut (writer_cut): it ends it
 * here, with an abort mark, so that the peer's reader gets every byte
 * written before the cut, then ECONNRESET (docs/PROTOCOL.md, "Failed
 * streams"); later writes of this claim get EPIPE. */
static int writer_told(struct mm_channel *ch, struct mm_dir *d, int r)
{
	if (r == -EPIPE && !d->cut && mm_channel_state(ch) == MM_STATE_READY) {
		end_stream(d, true);
		d->cut = true;
	}
	return r == -EFAULT ? stream_fail(ch, MM_WR, r) : r;
}

/* ---- writing ---- */

/* Where may the writer start again (ring.h, the working window): 0
 * nowhere, unless the reader follows the mark and has taken every end of
 * stream (one may stand at the writer's end, where the mark would go); at
 * MM_RING_AGAIN if it follows there too, else at 8. */
static uint32_t restart_to(const struct mm_dir *d)
{
	uint32_t follows = 0, aligned = 0, cs = 1, ack = 0;

	if (!d->ext2 || mm_ext_load(d->ext2, MM_EXT2_W_FOLLOWS, &follows) < 0 || follows != 1 ||
	    mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &ack) < 0 || cs != ack)
		return 0;
	if (mm_ext_load(d->ext2, MM_EXT2_W_ALIGNED, &aligned) == 0 && aligned == 1)
		return MM_RING_AGAIN;
	return MM_RING_HEADER;
}

/* write_begin, with the blocking library writer's hold (stream.h). */
static ssize_t write_begin(struct mm_channel *ch, size_t max, struct mm_slice *s,
			   bool (*hold)(void *), void *arg)
{
	struct mm_dir *d = &ch->wr;
	int r = data_check(ch, d, EPIPE);

	*s = (struct mm_slice){ .niov = 0 };
	if (r == 0 && (r = writer_cut(d)) < 0)
		return writer_told(ch, d, r);
	if (r < 0)
		return r;
	if (raw_word(d, W_START, &d->seen) < 0)
		return stream_fail(ch, MM_WR, -EFAULT);
	r = mm_ring_load(&d->ring, &s->pos);
	if (r == 0 && d->ring.mark) {
		/* the reader's words (guarded loads) only where the writer may
		 * start again or hold: not at each write */
		uint32_t to = mm_ring_past_window(&d->ring, &s->pos, MM_RING_WINDOW) ?
			      restart_to(d) : 0;
		uint32_t again = to && mm_ring_restart_due(&d->ring, &s->pos, MM_RING_WINDOW, to) ?
				 to : 0;

		if (again || s->pos.mark)
			r = mm_ring_restart(&d->ring, &s->pos, again);
		if (r == 0 && !again && to && hold &&
		    mm_ring_at_edge(&d->ring, &s->pos, MM_RING_WINDOW, to) && hold(arg))
			return -EAGAIN;
	}
	if (r < 0)
		return stream_fail(ch, MM_WR, r);
	s->niov = mm_ring_write_iov(&d->ring, &s->pos, max, s->iov, &s->len);
	return s->len ? (ssize_t)s->len : -EAGAIN;
}

ssize_t mm_stream_write_begin(struct mm_channel *ch, size_t max, struct mm_slice *s)
{
	return write_begin(ch, max, s, NULL, NULL);
}

int mm_stream_write_end(struct mm_channel *ch, const struct mm_slice *s, size_t n)
{
	struct mm_dir *d = &ch->wr;
	struct mm_ring_pos p = s->pos;
	int r;

	if (n > s->len)
		return -EINVAL;
	if (n == 0)
		return 0;
	r = mm_ring_commit(&d->ring, &p, n);
	if (r < 0)
		return stream_fail(ch, MM_WR, r);
	if (d->chunks)
		mm_chunks_log(d, s->pos.end, n);
	__atomic_add_fetch(&d->bytes, (uint64_t)n, __ATOMIC_RELAXED);
	wake(d, W_END);
	return 0;
}

int mm_stream_write_fault(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->wr;

	if (mm_area_fault(&d->area) == -ENOSPC) {
		/* a sparse area on a full filesystem: nothing was published,
		 * the write may be tried again once there is room */
		mm_channel_set_reason(ch, "write area %s: no space left on its filesystem",
				      d->area.path);
		return -ENOSPC;
	}
	return stream_fail(ch, MM_WR, -EFAULT);
}

ssize_t mm_stream_write_hold(struct mm_channel *ch, const void *buf, size_t len,
			     bool (*hold)(void *), void *arg)
{
	struct mm_slice s;
	ssize_t n = write_begin(ch, len, &s, hold, arg);
	int r;

	if (n <= 0)
		return n;
	if (mm_guard_copy_iov((void *)buf, s.iov, s.niov, true) < 0)
		return mm_stream_write_fault(ch);
	r = mm_stream_write_end(ch, &s, (size_t)n);
	return r < 0 ? r : n;
}

ssize_t mm_stream_write(struct mm_channel *ch, const void *buf, size_t len)
{
	return mm_stream_write_hold(ch, buf, len, NULL, NULL);
}

/* ---- ends of stream (the extension's trailer) ---- */

int mm_writer_begin(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->wr;
	uint32_t cs, ack;

	if (!d->ext)
		return 0;
	if (mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, &cs) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &ack) < 0)
		return stream_fail(ch, MM_WR, -EFAULT);
	if (cs - ack > MM_EXT_EOF_SLOTS) {
		mm_channel_fail(ch, EPROTO, MM_WHY_EOF_CORRUPT, MM_WR, 0, 0);
		return -EPROTO;
	}
	if (cs - ack == MM_EXT_EOF_SLOTS)
		return -EAGAIN;
	/* a stream begins: its number is cs */
	if (d->ext2 && mm_ext_store(d->ext2, MM_EXT2_W_OPEN_SEQ, cs + 1) < 0)
		return stream_fail(ch, MM_WR, -EFAULT);
	mm_dir_claimed(d);
	return 0;
}

void mm_writer_end(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->wr;

	if (d->usable && d->ext && mm_channel_state(ch) == MM_STATE_READY)
		end_stream(d, writer_cut(d) < 0);
}

/* With an end of stream pending, how many bytes remain before it: 0 and
 * *dist, 1 if none is pending, -EFAULT or -EPROTO. */
static int eof_distance(struct mm_dir *d, const struct mm_ring_pos *p, uint32_t cs,
			size_t *dist)
{
	uint32_t b;

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
	*dist = mm_ring_dist(&d->ring, p, b);
	return *dist > mm_ring_used(&d->ring, p) ? -EPROTO : 0;
}

/* ---- reading ---- */

/* The head of xpra's chunk list as a slice: its length, 0 if the list is
 * empty, -EFAULT. */
static ssize_t chunk_slice(struct mm_dir *d, size_t max, struct mm_slice *s)
{
	struct mm_chunk k;
	int r = mm_chunks_head(d, &k);

	if (r <= 0)
		return r;
	s->chunk = true;
	s->len = k.len < max ? k.len : max;
	s->iov[0].iov_base = d->area.base + k.off;
	s->iov[0].iov_len = s->len;
	s->niov = 1;
	return (ssize_t)s->len;
}

/* The reader takes the end of stream it is at (dist 0 from it). */
static int eof_take(struct mm_dir *d)
{
	d->eof_ack++;
	if (mm_ext_store(d->ext, MM_EXT_W_EOF_ACK, d->eof_ack) < 0)
		return -EFAULT;
	futex_wake(d, mm_ext_word(d->ext, MM_EXT_W_EOF_ACK));
	futex_wake(d, word_of(d, W_START));	/* where an older writer waits */
	if (d->bell)
		wake(d, W_START);	/* the doorbell, if the writer sleeps */
	return 0;
}

/* Where the stream at hand ends: *dist bytes on (1 if its end has yet to
 * come, 0 if it has), cs loaded before p (the end is written before it).
 * Corrupt ends of stream fail the channel. */
static int load_at(struct mm_channel *ch, struct mm_dir *d, uint32_t *cs,
		   struct mm_ring_pos *p, size_t *dist)
{
	int r;

	if (raw_word(d, W_END, &d->seen) < 0 || mm_ext_load(d->ext, MM_EXT_W_CLOSE_SEQ, cs) < 0)
		return stream_fail(ch, MM_RD, -EFAULT);
	r = mm_ring_load(&d->ring, p);
	if (r < 0)
		return stream_fail(ch, MM_RD, r);
	r = eof_distance(d, p, *cs, dist);
	if (r == -EPROTO) {
		mm_channel_fail(ch, EPROTO, MM_WHY_EOF_CORRUPT, MM_RD, 0, 0);
		return -EPROTO;
	}
	return r < 0 ? stream_fail(ch, MM_RD, r) : r;
}

/* Drop the streams the reader may not deliver (dropped()), each up to
 * its end: 0 once the stream at hand is one to deliver, -EAGAIN while a
 * dropped one has yet to end (what it has is dropped meanwhile), or
 * -ECONNRESET if its writer died first, or a failure. With `tell`, a
 * claim that was reading when the streams failed (an epoch moved since
 * it was taken) is told instead: -ECONNRESET when it reaches such a
 * stream, which stays for the next reader to drop. */
static int drop_cut(struct mm_channel *ch, struct mm_dir *d, bool tell)
{
	struct ext2_words w = { .ext2 = NULL, .abandoned = 0 };
	struct mm_ring_pos p;
	size_t dist = 0;
	uint32_t cs;
	int r;

	for (;;) {
		if (d->ext2 && load_ext2(d, &w) < 0)
			return stream_fail(ch, MM_RD, -EFAULT);
		if (!dropped(d, &w, d->eof_ack)) {
			d->dropping = false;	/* past the one left, if any */
			return 0;
		}
		if (tell && d->ext2 && w.epochs != d->epoch)
			return -ECONNRESET;
		r = load_at(ch, d, &cs, &p, &dist);
		if (r < 0)
			return r;
		if (r == 1)
			dist = mm_ring_used(&d->ring, &p);	/* all it has */
		if (dist && mm_ring_consume(&d->ring, &p, dist) < 0)
			return stream_fail(ch, MM_RD, -EFAULT);
		if (dist) {
			__atomic_add_fetch(&d->bytes, dist, __ATOMIC_RELAXED);
			wake(d, W_START);
		}
		if (r == 1)
			return peer_dead(ch) ? -ECONNRESET : -EAGAIN;
		if (eof_take(d) < 0)
			return stream_fail(ch, MM_RD, -EFAULT);
	}
}

int mm_stream_drop(struct mm_channel *ch)
{
	int r = data_check(ch, &ch->rd, 0);

	return r < 0 ? r : ch->rd.ext ? drop_cut(ch, &ch->rd, false) : 0;
}

void mm_stream_abandon(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->rd;
	uint32_t a;

	if (!d->usable || !d->ext)
		return;
	d->drop_below = d->eof_ack + 1;
	d->dropping = true;
	/* version 2: the writer is told (EPIPE), and whoever reads next drops
	 * the stream too */
	if (d->ext2 && mm_ext_load(d->ext2, MM_EXT2_W_ABANDONED, &a) == 0 &&
	    mm_seq_below(a, d->drop_below))
		mm_ext_store(d->ext2, MM_EXT2_W_ABANDONED, d->drop_below);
}

bool mm_stream_must_drop(struct mm_channel *ch)
{
	struct mm_dir *d = &ch->rd;
	struct ext2_words w;

	if (!d->usable || !d->ext2 || load_ext2(d, &w) < 0 ||
	    mm_ext_load(d->ext, MM_EXT_W_EOF_ACK, &d->eof_ack) < 0)
		return false;
	return dropped(d, &w, d->eof_ack);
}

/* The reader is told that the peer is dead (it read all there was): with
 * version 2 the stream it was in, if one is open, is failed: abandoned, so
 * that its writer gets EPIPE and no later byte of it is delivered, should
 * the peer come back. cs: the close_seq loaded for this read. */
static int reader_told(struct mm_dir *d, uint32_t cs)
{
	uint32_t open, a;

	if (d->ext2 && cs == d->eof_ack &&
	    mm_ext_load(d->ext2, MM_EXT2_W_OPEN_SEQ, &open) == 0 && open == cs + 1 &&
	    mm_ext_load(d->ext2, MM_EXT2_W_ABANDONED, &a) == 0 && a != cs + 1)
		mm_ext_store(d->ext2, MM_EXT2_W_ABANDONED, cs + 1);
	return -ECONNRESET;
}

ssize_t mm_stream_read_begin(struct mm_channel *ch, size_t max, struct mm_slice *s)
{
	struct mm_dir *d = &ch->rd;
	size_t used, dist = 0, limit = max;
	uint32_t cs = 0;
	ssize_t got;
	int r = data_check(ch, d, 0);

	*s = (struct mm_slice){ .niov = 0 };
	if (r < 0)
		return r;
	if (d->chunks && (got = chunk_slice(d, max, s)) != 0)
		return got < 0 ? stream_fail(ch, MM_RD, (int)got) : got;
	if (d->ext2 || d->dropping) {
		r = drop_cut(ch, d, true);
		if (r < 0)
			return r;
	}
	if (!d->ext) {
		if (raw_word(d, W_END, &d->seen) < 0)
			return stream_fail(ch, MM_RD, -EFAULT);
		r = mm_ring_load(&d->ring, &s->pos);
		if (r < 0)
			return stream_fail(ch, MM_RD, r);
	} else {
		/* the end of stream is loaded before the pointers it refers to */
		r = load_at(ch, d, &cs, &s->pos, &dist);
		if (r < 0)
			return r;
		if (r == 0 && dist == 0) {
			uint32_t abort = 0;

			if (d->ext2)
				mm_ext_load(d->ext2, MM_EXT2_W_EOF_ABORT, &abort);
			if (eof_take(d) < 0)
				return stream_fail(ch, MM_RD, -EFAULT);
			/* a cut stream ends with an error, not end of file */
			return abort & (1u << ((d->eof_ack - 1) % MM_EXT_EOF_SLOTS)) ? -ECONNRESET
										   : 0;
		}
		if (r == 0 && dist < limit)
			limit = dist;
	}
	used = mm_ring_used(&d->ring, &s->pos);
	if (used == 0 && peer_dead(ch))
		return reader_told(d, cs);
	if (used == 0)
		return -EAGAIN;
	s->niov = mm_ring_read_iov(&d->ring, &s->pos, limit, s->iov, &s->len);
	return (ssize_t)s->len;
}

int mm_stream_read_end(struct mm_channel *ch, const struct mm_slice *s, size_t n)
{
	struct mm_dir *d = &ch->rd;
	struct mm_ring_pos p = s->pos;
	int r;

	if (n > s->len)
		return -EINVAL;
	if (n == 0)
		return 0;
	r = s->chunk ? mm_chunks_take(d, n) : mm_ring_consume(&d->ring, &p, n);
	if (r < 0)
		return stream_fail(ch, MM_RD, r);
	__atomic_add_fetch(&d->bytes, n, __ATOMIC_RELAXED);
	wake(d, W_START);
	return 0;
}

ssize_t mm_stream_read(struct mm_channel *ch, void *buf, size_t len)
{
	struct mm_slice s;
	ssize_t n = mm_stream_read_begin(ch, len, &s);
	int r;

	if (n <= 0)
		return n;
	r = mm_guard_copy_iov(buf, s.iov, s.niov, false);
	if (r == 0)
		r = mm_stream_read_end(ch, &s, (size_t)n);
	else
		r = stream_fail(ch, MM_RD, r);
	return r < 0 ? r : n;
}

bool mm_stream_zero_copy(struct mm_channel *ch)
{
	return ch->ext && ch->rd.area.kernel_copy;
}

/* ---- waiting ---- */

int mm_stream_wait(struct mm_channel *ch, unsigned dir, unsigned timeout_us)
{
	struct mm_dir *d = dir_of(ch, dir);
	struct timespec ts = {
		.tv_sec = timeout_us / 1000000,
		.tv_nsec = (long)(timeout_us % 1000000) * 1000,
	};
	unsigned w = dir == MM_WR ? W_START : W_END;
	int r = -ENOSYS;

	if (d->present) {
		sleepers(d, w, 1);
		r = mm_futex_wait(word_of(d, w), d->seen, timeout_us);
		sleepers(d, w, -1);
	}
	if (r == -ENOSYS)
		r = nanosleep(&ts, NULL) < 0 ? -EINTR : -ETIMEDOUT;
	return r;
}

unsigned mm_stream_wait_max(struct mm_channel *ch, unsigned dir)
{
	return dir_of(ch, dir)->local && dir_of(ch, dir)->ext ? MM_TICK_MS * 1000 : MM_WAIT_MAX_US;
}

void mm_stream_wake(struct mm_channel *ch)
{
	if (ch->rd.present)
		futex_wake(&ch->rd, word_of(&ch->rd, W_END));
	if (ch->wr.present)
		futex_wake(&ch->wr, word_of(&ch->wr, W_START));
}

void mm_stream_sleepers(struct mm_channel *ch, unsigned events, bool add)
{
	if ((events & POLLIN) && ch->rd.usable)
		sleepers(&ch->rd, W_END, add ? 1 : -1);
	if ((events & POLLOUT) && ch->wr.usable)
		sleepers(&ch->wr, W_START, add ? 1 : -1);
}

unsigned mm_stream_poll_words(struct mm_channel *ch, unsigned events,
			      uint32_t **words, uint32_t *seen)
{
	unsigned n = 0;

	if (mm_channel_state(ch) != MM_STATE_READY)
		return 0;
	/* data moves data_end, an end of stream close_seq; space moves
	 * data_start, an end of stream taken eof_ack. An end of stream moves
	 * no pointer: a wait on data_end alone could miss the wake of one
	 * that came after its look at the state */
	if ((events & POLLIN) && ch->rd.usable) {
		if (raw_word(&ch->rd, W_END, &seen[n]) == 0)
			words[n++] = word_of(&ch->rd, W_END);
		if (ch->rd.ext && raw_ext(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &seen[n]) == 0)
			words[n++] = mm_ext_word(ch->rd.ext, MM_EXT_W_CLOSE_SEQ);
	}
	if ((events & POLLOUT) && ch->wr.usable) {
		if (raw_word(&ch->wr, W_START, &seen[n]) == 0)
			words[n++] = word_of(&ch->wr, W_START);
		if (ch->wr.ext && raw_ext(ch->wr.ext, MM_EXT_W_EOF_ACK, &seen[n]) == 0)
			words[n++] = mm_ext_word(ch->wr.ext, MM_EXT_W_EOF_ACK);
	}
	return n;
}

void mm_stream_state(struct mm_channel *ch, unsigned events,
		     uint32_t state[MM_STREAM_STATE_WORDS])
{
	memset(state, 0, MM_STREAM_STATE_WORDS * sizeof(state[0]));
	if (mm_channel_state(ch) != MM_STATE_READY)
		return;
	if ((events & POLLIN) && ch->rd.usable) {
		mm_ring_raw(&ch->rd.ring, &state[0], &state[1]);
		if (ch->rd.ext)
			mm_ext_load(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &state[2]);
	}
	if ((events & POLLOUT) && ch->wr.usable) {
		mm_ring_raw(&ch->wr.ring, &state[3], &state[4]);
		if (ch->wr.ext)
			mm_ext_load(ch->wr.ext, MM_EXT_W_EOF_ACK, &state[5]);
	}
}

bool mm_stream_has_ends(struct mm_channel *ch)
{
	return ch->rd.usable && ch->rd.ext;
}

bool mm_stream_pending(struct mm_channel *ch)
{
	struct mm_ring_pos p;
	uint32_t cs = 0, ack = 0;

	if (!ch->rd.usable || mm_ring_load(&ch->rd.ring, &p) < 0)
		return false;
	/* the trailer's eof_ack, not ours: the reader may be another
	 * process (a library holding our descriptor) */
	if (ch->rd.ext) {
		mm_ext_load(ch->rd.ext, MM_EXT_W_CLOSE_SEQ, &cs);
		mm_ext_load(ch->rd.ext, MM_EXT_W_EOF_ACK, &ack);
	}
	if (ch->rd.ext2) {
		struct ext2_words w;

		/* a stream to drop whose end has yet to come: nothing to read
		 * (mm_stream_drop() took what came before it). The trailer's
		 * word alone: drop_below is the claim holder's. */
		if (load_ext2(&ch->rd, &w) < 0 || w.abandoned == ack + 1)
			return false;
	}
	return mm_ring_used(&ch->rd.ring, &p) > 0 || cs != ack ||
	       (ch->rd.chunks && mm_chunks_pending(&ch->rd));
}

unsigned mm_stream_poll(struct mm_channel *ch, unsigned held)
{
	unsigned mask = 0;
	struct mm_ring_pos p;
	enum mm_state st = mm_channel_state(ch);

	if (st == MM_STATE_ERROR)
		return POLLERR | POLLIN | POLLOUT;
	if (st != MM_STATE_READY)
		return 0;
	if (peer_dead(ch))
		mask |= POLLHUP | POLLIN;
	if (mm_stream_pending(ch))
		mask |= POLLIN | POLLRDNORM;
	/* a failed or abandoned stream: the next read or write says so */
	if ((held & MM_RD) && reader_cut(&ch->rd))
		mask |= POLLERR | POLLIN;
	if ((held & MM_WR) && writer_cut(&ch->wr) < 0)
		mask |= POLLERR | POLLOUT;
	if (ch->wr.usable && mm_ring_load(&ch->wr.ring, &p) == 0 &&
	    mm_ring_free(&ch->wr.ring, &p) > 0)
		mask |= POLLOUT | POLLWRNORM;
	return mask;
}
