/* The peer's liveness: between two mmapfs ends each writes its session id
 * and a heartbeat into the trailer every MM_BEAT_MS (an attacher waiting
 * for the go-ahead looks every MM_TICK_MS); a heartbeat that stops
 * for MM_DEAD_MS means the peer is dead, a new session id that it
 * restarted (docs/PROTOCOL.md, "Liveness"). An xpra peer has no heartbeat:
 * its liveness is unknown. */
#include <errno.h>
#include <time.h>

#include "ext.h"
#include "guard.h"
#include "internal.h"
#include "stream.h"

/* The trailer words of a role: session, then beat. */
static unsigned session_word(enum mm_chan_role role)
{
	return MM_EXT_W_SESSION + 2 * (role == MM_ATTACHER);
}

/* The version-2 word of a role's epoch. */
static unsigned epoch_word(enum mm_chan_role role)
{
	return MM_EXT2_W_EPOCH + (role == MM_ATTACHER);
}

static enum mm_chan_role peer_role(const struct mm_channel *ch)
{
	return ch->role == MM_CREATOR ? MM_ATTACHER : MM_CREATOR;
}

void mm_publish_session(struct mm_channel *ch, struct mm_dir *d)
{
	unsigned w = session_word(ch->role);

	if (d->present && d->ext) {
		mm_ext_store(d->ext, w, ch->session);
		mm_ext_store(d->ext, w + 1, ch->beat);
	}
	if (d->present && d->ext2)
		mm_ext_store(d->ext2, epoch_word(ch->role), ch->epoch);
}

static void failed_now(struct mm_channel *ch)
{
	ch->failures++;
	ch->failed_at = time(NULL);
}

/* Version 2: the peer is dead, or stalled past the limit (docs/PROTOCOL.md,
 * "Failed streams"). Our epoch moves: every claim taken before (ours, and
 * the peer's when it looks) holds a failed stream from now on, even if
 * the peer's beat comes back. Its writer, told at its next write, ends its
 * stream there with an abort mark; its reader gets what was written before,
 * then ECONNRESET, and abandons the rest. ch->lock held. */
static void fail_streams(struct mm_channel *ch)
{
	if (ch->view || (!ch->rd.ext2 && !ch->wr.ext2))
		return;
	ch->epoch++;
	mm_publish_session(ch, &ch->rd);
	mm_publish_session(ch, &ch->wr);
	failed_now(ch);
}

/* Has the peer failed the streams since we last looked (its epoch moved)?
 * Our claims see it themselves; this is for status and the log. */
static bool peer_failed(struct mm_channel *ch, uint32_t epoch)
{
	if (epoch == ch->peer_epoch)
		return false;
	ch->peer_epoch = epoch;
	failed_now(ch);
	return true;
}

/* The area whose trailer carries the beats this end reads, or NULL. With
 * version 2 both ends beat in one area only: the creator's read area (the
 * attacher's write area) if the channel has it, else the other. A beat then
 * costs a daemon one page of shared memory a channel (a page walk, and a
 * cache line it shares with the peer), not two: 10,000 channels' beats
 * were most of an idle daemon's time. A view that did not map that area
 * (a library that claimed the other direction) has none: it asks its
 * daemon (lib.c). With version 1 an end beats in every area it maps, and
 * reads the peer's beat in the area it reads. */
struct mm_dir *mm_ext_dir(struct mm_channel *ch)
{
	struct mm_dir *first = &ch->rd, *second = &ch->wr;

	if (ch->ext >= 2 && ch->role == MM_ATTACHER) {
		first = &ch->wr;
		second = &ch->rd;
	}
	if (first->present && first->ext)
		return first;
	if (ch->ext >= 2 && ch->beats_unmapped)
		return NULL;
	if (second->present && second->ext)
		return second;
	return NULL;
}

static unsigned peer_word(struct mm_channel *ch)
{
	return session_word(peer_role(ch));
}

void mm_note_peer(struct mm_channel *ch, uint64_t now_ms)
{
	struct mm_dir *d = mm_ext_dir(ch);
	unsigned w = peer_word(ch);

	if (!d) {
		mm_set_peer(ch, MM_PEER_UNKNOWN);
		return;
	}
	mm_ext_load(d->ext, w, &ch->peer_session);
	mm_ext_load(d->ext, w + 1, &ch->peer_beat);
	ch->peer_epoch = 0;
	if (d->ext2)
		mm_ext_load(d->ext2, epoch_word(peer_role(ch)), &ch->peer_epoch);
	ch->peer_beat_ms = now_ms;
	mm_set_peer(ch, MM_PEER_ALIVE);
}

void mm_channel_refresh_locked(struct mm_channel *ch)
{
	struct mm_dir *d = mm_ext_dir(ch);
	uint32_t flags;

	if (mm_channel_state(ch) == MM_STATE_ATTACHED && d &&
	    mm_ext_load(d->ext, MM_EXT_W_FLAGS, &flags) == 0 && (flags & MM_EXT_VERIFIED))
		mm_set_state(ch, MM_STATE_READY);
}

/* What the peer's session and beat, just read, say. ch->lock held. */
static void peer_seen(struct mm_channel *ch, uint64_t now_ms, uint32_t session, uint32_t beat)
{
	if (ch->peer_session == 0) {
		ch->peer_session = session;	/* it had not started when we looked */
	} else if (session != ch->peer_session) {
		mm_set_peer(ch, MM_PEER_DEAD);
		mm_channel_fail(ch, ECONNRESET, MM_WHY_RESTARTED, 0, session, ch->peer_session);
		return;
	}
	/* now_ms was read before the lock: another look (the ticker's, a
	 * status read's) may have seen the beat move at a later time. Time
	 * goes forward only, or a look a moment behind would find the peer
	 * silent for 2^64 ms and fail its streams. */
	if (beat != ch->peer_beat) {
		ch->peer_beat = beat;
		if (now_ms > ch->peer_beat_ms)
			ch->peer_beat_ms = now_ms;
		mm_set_peer(ch, MM_PEER_ALIVE);
	} else if (now_ms > ch->peer_beat_ms + MM_DEAD_MS &&
		   mm_channel_peer_state(ch) != MM_PEER_DEAD) {
		mm_set_peer(ch, MM_PEER_DEAD);
		fail_streams(ch);
	}
}

/* The peer's half of a tick: its session and beat, read from the trailer.
 * ch->lock held. */
static void watch_locked(struct mm_channel *ch, uint64_t now_ms)
{
	unsigned w = peer_word(ch);
	uint32_t session, beat;
	struct mm_dir *d = mm_ext_dir(ch);

	uint32_t epoch = ch->peer_epoch;

	if (!d || mm_ext_load(d->ext, w, &session) < 0 ||
	    mm_ext_load(d->ext, w + 1, &beat) < 0 ||
	    (d->ext2 && mm_ext_load(d->ext2, epoch_word(peer_role(ch)), &epoch) < 0)) {
		mm_channel_fail(ch, EIO, MM_WHY_FAULT, d == &ch->wr ? MM_WR : MM_RD, 0, 0);
		return;
	}
	peer_seen(ch, now_ms, session, beat);
	peer_failed(ch, epoch);
}

/* A tick's words in one guarded run (each run costs a setjmp, and a daemon
 * ticks thousands of channels): our session and beat into each area we
 * map (the peer's daemon and its library read them from either), then the
 * peer's from `from`. */
struct tick_words {
	struct mm_channel *ch;
	const struct mm_dir *from;
	uint32_t session, beat, epoch;	/* the peer's */
};

/* The trailer's words as a daemon's ticker reaches them: through its
 * second mapping (alias.h) if it has one. */
static uint8_t *tick_ext(const struct mm_dir *d)
{
	return d->tick ? d->tick + MM_EXT2_SIZE : d->ext;
}

static int tick_words(void *arg)
{
	struct tick_words *t = arg;
	struct mm_channel *ch = t->ch;
	unsigned w = session_word(ch->role), p = peer_word(ch);
	struct mm_dir *dirs[2] = { &ch->rd, &ch->wr };
	const uint8_t *from = tick_ext(t->from);

	for (int i = 0; i < 2; i++) {
		/* version 2: the one area both ends beat in */
		if (dirs[i]->present && dirs[i]->ext && (ch->ext < 2 || dirs[i] == t->from)) {
			mm_ext_put(tick_ext(dirs[i]), w, ch->session);
			mm_ext_put(tick_ext(dirs[i]), w + 1, ch->beat);
		}
	}
	t->session = mm_ext_get(from, p);
	t->beat = mm_ext_get(from, p + 1);
	/* version 2's words end where version 1's begin */
	if (t->from->ext2)
		t->epoch = mm_ext_get(from - MM_EXT2_SIZE, epoch_word(peer_role(ch)));
	return 0;
}

static bool live(struct mm_channel *ch)
{
	enum mm_state st = mm_channel_state(ch);

	return ch->ext && (st == MM_STATE_ATTACHED || st == MM_STATE_READY);
}

/* ch->lock held. */
static void tick_locked(struct mm_channel *ch, uint64_t now_ms)
{
	struct tick_words t = { ch, mm_ext_dir(ch), 0, 0, ch->peer_epoch };

	if (!live(ch))
		return;
	ch->beat++;
	if (t.from && mm_guard_run(tick_words, &t) == 0) {
		peer_seen(ch, now_ms, t.session, t.beat);
		peer_failed(ch, t.epoch);
	} else {
		/* a fault: again a word at a time, which tells the area */
		mm_publish_session(ch, &ch->rd);
		mm_publish_session(ch, &ch->wr);
		watch_locked(ch, now_ms);
	}
	mm_channel_refresh_locked(ch);	/* nothing after a failure: not attached */
}

/* When the next tick is due (mm_channel_tick). ch->lock held. */
static unsigned every_locked(struct mm_channel *ch)
{
	if (!live(ch))
		return 0;
	if (mm_channel_state(ch) == MM_STATE_ATTACHED)
		return MM_TICK_MS;
	return MM_BEAT_MS;
}

/* A tick or a watch, under the lock; wake the waiters if the state or the
 * peer's liveness changed. *every, if asked, as in mm_channel_tick. */
static bool look(struct mm_channel *ch, uint64_t now_ms,
		 void (*fn)(struct mm_channel *ch, uint64_t now_ms), unsigned *every)
{
	enum mm_state was;
	enum mm_peer peer_was;
	bool changed;
	uint32_t failures_were;

	pthread_mutex_lock(&ch->lock);
	was = mm_channel_state(ch);
	peer_was = mm_channel_peer_state(ch);
	failures_were = ch->failures;
	fn(ch, now_ms);
	changed = mm_channel_state(ch) != was || mm_channel_peer_state(ch) != peer_was ||
		  ch->failures != failures_were;
	if (every)
		*every = every_locked(ch);
	pthread_mutex_unlock(&ch->lock);
	if (changed)
		mm_stream_wake(ch);
	return changed;
}

bool mm_channel_tick(struct mm_channel *ch, uint64_t now_ms, unsigned *every)
{
	return look(ch, now_ms, tick_locked, every);
}

/* The trailers' addresses are read without the lock (a handshake may be
 * changing them): a stale one only fetches a line for nothing. */
__attribute__((no_sanitize("thread")))
void mm_channel_prefetch(const struct mm_channel *ch, bool trailers)
{
	const struct mm_dir *dirs[2] = { &ch->rd, &ch->wr };

	if (!trailers) {
		__builtin_prefetch(ch, 1);
		__builtin_prefetch(dirs[0], 1);
		__builtin_prefetch(dirs[1], 1);
		return;
	}
	/* version 2: the one area of the beats (mm_ext_dir) */
	if (*(const volatile unsigned *)&ch->ext >= 2) {
		bool attacher = *(const volatile enum mm_chan_role *)&ch->role == MM_ATTACHER;

		dirs[0] = attacher && *(uint8_t *const volatile *)&ch->wr.ext ? &ch->wr : &ch->rd;
		dirs[1] = NULL;
	}
	for (int i = 0; i < 2 && dirs[i]; i++) {
		uint8_t *ext = *(uint8_t *const volatile *)&dirs[i]->tick;

		ext = ext ? ext + MM_EXT2_SIZE : *(uint8_t *const volatile *)&dirs[i]->ext;
		if (ext)
			__builtin_prefetch(ext + 4 * MM_EXT_W_SESSION, 1);
	}
}

static void watch_live_locked(struct mm_channel *ch, uint64_t now_ms)
{
	if (live(ch) && mm_ext_dir(ch))
		watch_locked(ch, now_ms);
}

bool mm_channel_watch(struct mm_channel *ch, uint64_t now_ms)
{
	return look(ch, now_ms, watch_live_locked, NULL);
}

static void dead_locked(struct mm_channel *ch, uint64_t now_ms)
{
	if (live(ch))
		mm_set_peer(ch, MM_PEER_DEAD);
}

bool mm_channel_peer_dead(struct mm_channel *ch)
{
	return look(ch, 0, dead_locked, NULL);
}
