/* The event core. Everything in the daemon that waits for a channel's
 * stream waits through a waiter (fs.h): a poll's handle (poll.c), the
 * requests a channel parked (data.c), a FIFO end of the pump (fifo.c).
 *
 * The ticker thread sleeps in one futex_waitv on the shared words of the
 * armed waiters and on its own kick, so that a same-host peer's wake
 * reaches it at once; words beyond one futex_waitv's go to watcher
 * threads. A waiter whose stream is no longer where it stood at arming
 * (mm_stream_state) is taken off the list and fired, outside fs->lock, one
 * at a time; a change of a channel's
 * state or of its peer's liveness fires them all (each looks again, and
 * arms itself again if it still waits). Every MM_TICK_MS, between two
 * waits, the ticker beats the channels due (the wheel, under its own lock):
 * each channel says how often it needs a beat, an idle one every other,
 * one without an mmapfs peer never. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ext.h"
#include "fs.h"
#include "stream.h"

/* How often waits are checked even without a wake: a peer in another VM,
 * or an xpra peer, wakes nobody. For a while after one of those moved (the
 * peer may answer soon, or write on), more often: a one-line answer comes
 * in about a millisecond, not ten, for at most a thousand looks a second
 * while it lasts. */
#define POLL_RECHECK_US 10000
#define POLL_SOON_US 1000
#define POLL_SOON_MS 200
/* Where futex_waitv cannot wait (a PCI BAR), how long to sleep instead. */
#define POLL_NAP_US 2000
/* A watcher's wait: its kick or its words end it; this only bounds it. */
#define WATCH_TIMEOUT_US 60000000

/* Wake the ticker: a waiter armed, a doorbell, or the end. */
void mmfs_ticker_kick(struct mmfs *fs)
{
	__atomic_add_fetch(&fs->kick, 1, __ATOMIC_SEQ_CST);
	mm_futex_wake_private(&fs->kick);
}
#define ticker_kick mmfs_ticker_kick

/* Count w among the sleepers the peer wakes for `events` (0: none). */
static void count(struct waiter *w, unsigned events)
{
	if (w->counted) {
		mm_stream_sleepers(&w->ch->mc, w->counted, false);
		w->counted = 0;
	}
	if (events) {
		mm_stream_sleepers(&w->ch->mc, events, true);
		w->counted = events;
	}
}

/* A waiter is on one list or none: fs->waiters while armed, fs->due from
 * the ticker's look that found it moved until it is fired. */
static void unlist(struct mmfs *fs, struct waiter *w)
{
	struct waiter **head = w->armed ? &fs->waiters : &fs->due;

	if (!w->armed && !w->is_due)
		return;
	*(w->prev ? &w->prev->next : head) = w->next;
	if (w->next)
		w->next->prev = w->prev;
	if (w->armed && w->beat_listed)
		fs->beat_waiters--;
	w->armed = w->is_due = false;
}

static void list(struct waiter **head, struct waiter *w)
{
	w->prev = NULL;
	w->next = *head;
	if (*head)
		(*head)->prev = w;
	*head = w;
}

_Static_assert(sizeof(((struct waiter *)0)->state) ==
	       MM_STREAM_STATE_WORDS * sizeof(uint32_t), "a stream's state");

void waiter_arm(struct mmfs *fs, struct waiter *w, const uint32_t *state)
{
	/* counted in before the words are loaded: either the peer sees us
	 * among the sleepers, or we see its move (docs/PROTOCOL.md,
	 * "Waking") */
	if (w->counted != w->events)
		count(w, w->events);
	unlist(fs, w);
	if (state)
		memcpy(w->state, state, sizeof(w->state));
	else
		mm_stream_state(&w->ch->mc, w->events, w->state);
	list(&fs->waiters, w);
	w->armed = true;
	w->beat_listed = w->beat;
	if (w->beat)
		fs->beat_waiters++;
	fs->waits_changed = true;
	ticker_kick(fs);
}

void waiter_cancel(struct mmfs *fs, struct waiter *w)
{
	if (w->armed)
		fs->waits_changed = true;
	unlist(fs, w);
	if (w->counted && !w->firing)
		count(w, 0);	/* (a firing one's is, once its fire() returns) */
}

void waiter_disarm(struct mmfs *fs, struct waiter *w)
{
	while (w->firing)
		pthread_cond_wait(&fs->fired, &fs->lock);
	waiter_cancel(fs, w);
}

/* Watchers: one futex_waitv takes at most MM_FUTEX_WAITV_MAX words, the
 * ticker's first of them its own kick. The words of more waits (a reader
 * blocked on each of a thousand pipes) go to watcher threads, up to
 * MM_FUTEX_WAITV_MAX - 1 each, which kick the ticker when one of theirs
 * moves: waits cost nothing while nothing moves, however many. Made when
 * first needed, kept until the end. */
struct watcher {
	struct mmfs *fs;
	pthread_t thread;
	uint32_t kick;			/* atomic: bumped with a new slice */
	unsigned n;			/* fs->lock: the slice */
	uint32_t *words[MM_FUTEX_WAITV_MAX - 1];
	uint32_t seen[MM_FUTEX_WAITV_MAX - 1];
};

static void *watch(void *arg)
{
	struct watcher *w = arg;
	struct mmfs *fs = w->fs;
	uint32_t *words[MM_FUTEX_WAITV_MAX];
	uint32_t seen[MM_FUTEX_WAITV_MAX];
	bool told = false;

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		/* once it told the ticker of a move, only its kick (a new
		 * slice) until then: the moved word would end every wait */
		unsigned n = told ? 0 : w->n;
		int r;

		words[0] = &w->kick;
		seen[0] = __atomic_load_n(&w->kick, __ATOMIC_SEQ_CST);
		memcpy(words + 1, w->words, n * sizeof(words[0]));
		memcpy(seen + 1, w->seen, n * sizeof(seen[0]));
		pthread_mutex_unlock(&fs->lock);
		r = mm_futex_waitv(words, seen, n + 1, true, WATCH_TIMEOUT_US);
		if (r == -ENOSYS) {
			/* a word no futex can wait on (a BAR): the ticker's
			 * recheck looks at it; wait for a new slice */
			if (mm_futex_waitv(words, seen, 1, true, WATCH_TIMEOUT_US) == -ENOSYS)
				usleep(POLL_RECHECK_US);
			r = -ETIMEDOUT;	/* nothing of ours to tell */
		}
		pthread_mutex_lock(&fs->lock);
		if (__atomic_load_n(&w->kick, __ATOMIC_SEQ_CST) != seen[0]) {
			told = false;	/* a new slice */
		} else if (r != -ETIMEDOUT && n) {
			ticker_kick(fs);	/* a word of its slice moved */
			told = true;
		}
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* The word at index i of all the waits: the ticker's own (i below
 * MM_FUTEX_WAITV_MAX), else a watcher's. false if that watcher is not
 * there yet (*want: how many are needed). fs->lock held. */
static bool place_word(struct mmfs *fs, unsigned i, uint32_t *word, uint32_t v,
		       uint32_t **words, uint32_t *seen, unsigned *want)
{
	unsigned per = MM_FUTEX_WAITV_MAX - 1, k;
	struct watcher *w;

	if (i < MM_FUTEX_WAITV_MAX) {
		words[i] = word;
		seen[i] = v;
		return true;
	}
	k = (i - MM_FUTEX_WAITV_MAX) / per;
	if (k >= fs->nwatchers) {
		*want = k + 1;
		return false;
	}
	w = fs->watchers[k];
	w->words[(i - MM_FUTEX_WAITV_MAX) % per] = word;
	w->seen[(i - MM_FUTEX_WAITV_MAX) % per] = v;
	w->n = (i - MM_FUTEX_WAITV_MAX) % per + 1;
	return true;
}

/* Start watchers until there are `want` (at most WATCHERS_MAX); fs->lock
 * not held (pthread_create). false if none could be added. */
static bool add_watchers(struct mmfs *fs, unsigned want)
{
	bool added = false;

	assert_unlocked(fs);
	for (;;) {
		struct watcher *w;
		unsigned have;

		pthread_mutex_lock(&fs->lock);
		have = fs->nwatchers;
		pthread_mutex_unlock(&fs->lock);
		if (have >= want || have >= WATCHERS_MAX)
			return added;
		w = calloc(1, sizeof(*w));
		if (!w)
			return added;
		w->fs = fs;
		if (pthread_create(&w->thread, NULL, watch, w) != 0) {
			free(w);
			return added;
		}
		pthread_mutex_lock(&fs->lock);
		fs->watchers[fs->nwatchers++] = w;	/* only the ticker adds */
		pthread_mutex_unlock(&fs->lock);
		added = true;
	}
}

/* Does a doorbell wake the waits of mc's direction dir (ivshmem.c)? Then
 * the words are not waited on (the peer's futex wakes cannot reach them,
 * and a BAR's cannot be waited on at all); with the debug setting
 * ivshmem_poll = false nothing but the doorbell wakes them: no recheck. */
static bool rung(const struct mm_channel *mc, unsigned dir)
{
	const struct mm_bell *b = dir == MM_RD ? mc->rd.bell : mc->wr.bell;

	return b && b->hears;
}

/* Is a wait of w's on an area whose peer cannot wake us (a VM's, an xpra
 * peer's), to be looked at every POLL_RECHECK_US? */
static bool polled(const struct mmfs *fs, struct waiter *w)
{
	for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1)
		if ((w->events & (dir == MM_RD ? POLLIN : POLLOUT)) &&
		    mm_stream_wait_max(&w->ch->mc, dir) < MM_TICK_MS * 1000 &&
		    !(fs->cfg.ivshmem_nopoll && rung(&w->ch->mc, dir)))
			return true;
	return false;
}

/* One look at the armed waiters: those whose stream moved from its state
 * at arming (all of them if `all`, those with beat if `beat`) go to
 * fs->due, to be fired; the words of the others go into words/seen from
 * index 1, the rest to watchers. *n: the count for
 * the ticker's own wait, MM_FUTEX_WAITV_MAX + 1 if they could not all be
 * placed (*want: the watchers that needs). *recheck: some wait is polled.
 * fs->lock held: a walk of the armed waiters, each a few loads from its
 * area. */
static void gather(struct mmfs *fs, bool all, bool beat, uint32_t **words,
		   uint32_t *seen, unsigned *n, unsigned *want, bool *recheck)
{
	struct waiter *w, *next;
	unsigned i = 1;
	bool full = false;

	*recheck = false;
	*want = 0;
	for (unsigned k = 0; k < fs->nwatchers; k++)
		fs->watchers[k]->n = 0;
	for (w = fs->waiters; w; w = next) {
		uint32_t st[MM_STREAM_STATE_WORDS], *wd[4], v[4];
		unsigned k;
		bool moved;

		next = w->next;
		/* the words to sleep on, loaded before the state; none where
		 * a doorbell wakes us */
		k = 0;
		for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1) {
			unsigned ev = dir == MM_RD ? POLLIN : POLLOUT;

			if ((w->events & ev) && !rung(&w->ch->mc, dir))
				k += mm_stream_poll_words(&w->ch->mc, ev, wd + k, v + k);
		}
		mm_stream_state(&w->ch->mc, w->events, st);
		moved = memcmp(st, w->state, sizeof(st)) != 0;
		if (moved && polled(fs, w))
			fs->polled_move_ms = mmfs_now_ms();
		if (all || (beat && w->beat) || moved) {
			unlist(fs, w);
			list(&fs->due, w);
			w->is_due = true;
			continue;
		}
		*recheck |= polled(fs, w);
		for (unsigned j = 0; j < k && !full; j++)
			full = !place_word(fs, i++, wd[j], v[j], words, seen, want);
	}
	for (unsigned k = 0; k < fs->nwatchers; k++) {
		__atomic_add_fetch(&fs->watchers[k]->kick, 1, __ATOMIC_SEQ_CST);
		mm_futex_wake_private(&fs->watchers[k]->kick);
	}
	*n = full ? MM_FUTEX_WAITV_MAX + 1 : i < MM_FUTEX_WAITV_MAX ? i : MM_FUTEX_WAITV_MAX;
}

/* Fire the waiters gather() found due, one at a time; fs->lock held but
 * not during a fire. A waiter is marked firing only while its own fire()
 * runs, and one disarmed before its turn is not fired: so whoever waits
 * for a fire to end (waiter_disarm) waits for that one alone. */
static void fire(struct mmfs *fs)
{
	struct waiter *w;

	while ((w = fs->due)) {
		/* read under the lock: its owner may arm it again meanwhile */
		void (*fn)(struct mmfs *fs, struct waiter *w) = w->fire;

		unlist(fs, w);
		w->firing = true;
		pthread_mutex_unlock(&fs->lock);
		fn(fs, w);
		pthread_mutex_lock(&fs->lock);
		w->firing = false;	/* freed, maybe, once fs->lock is let go */
		if (!w->armed && !w->is_due)
			count(w, 0);	/* it waits no more */
		pthread_cond_broadcast(&fs->fired);
	}
}

void chan_log_change(struct chan *ch)
{
	unsigned failures = mm_channel_failures(&ch->mc);
	bool failed = __atomic_exchange_n(&ch->failures_logged, failures, __ATOMIC_RELAXED) <
		      failures;
	char why[512];

	mm_channel_reason(&ch->mc, why, sizeof(why));
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: %s: state %s, peer %s%s%s%s\n", ch->key.name,
		 mm_state_name(mm_channel_state(&ch->mc)),
		 mm_peer_name(mm_channel_peer_state(&ch->mc)),
		 failed ? ", the open streams failed (status: streams_failed)" : "",
		 why[0] ? ", " : "", why);
}

/* The wheel: fs->wheel[(fs->wheel_at + k) % TICK_SLOTS] holds the channels
 * due k beats after the next one. A channel is in it while it needs ticks,
 * so a beat costs what the channels due then need, nothing for the others.
 * Each slot is an array with room for every channel (made when a channel
 * is), so the ticker never allocates and can look ahead. Under
 * fs->wheel_lock, which the ticker holds across a beat; the calls from
 * outside come with fs->lock held (the order of fs.h). */
_Static_assert(MM_BEAT_MS / MM_TICK_MS < TICK_SLOTS, "the wheel is too small");

int mmfs_tick_room(struct mmfs *fs, unsigned n)
{
	unsigned room;
	int r = 0;

	pthread_mutex_lock(&fs->wheel_lock);
	room = fs->wheel_room ? fs->wheel_room : 64;
	while (room < n)
		room *= 2;
	for (unsigned i = 0; i < TICK_SLOTS && n > fs->wheel_room; i++) {
		struct chan **p = realloc(fs->wheel[i].chans, room * sizeof(*p));

		if (!p) {
			r = -ENOMEM;	/* the slots grown so far keep their room */
			break;
		}
		fs->wheel[i].chans = p;
	}
	if (r == 0 && n > fs->wheel_room)
		fs->wheel_room = room;
	pthread_mutex_unlock(&fs->wheel_lock);
	return r;
}

void mmfs_tick_free(struct mmfs *fs)
{
	for (unsigned i = 0; i < TICK_SLOTS; i++)
		free(fs->wheel[i].chans);
}

static void wheel_in(struct mmfs *fs, struct chan *ch, unsigned beats)
{
	unsigned at = (fs->wheel_at + beats) % TICK_SLOTS;
	struct tick_slot *s = &fs->wheel[at];

	ch->tick_slot = (int)at;
	ch->tick_idx = s->n;
	s->chans[s->n++] = ch;
}

static void wheel_out(struct mmfs *fs, struct chan *ch)
{
	struct tick_slot *s;
	struct chan *last;

	if (ch->tick_slot < 0)
		return;
	s = &fs->wheel[ch->tick_slot];
	last = s->chans[--s->n];
	s->chans[ch->tick_idx] = last;
	last->tick_idx = ch->tick_idx;
	ch->tick_slot = -1;
}

void mmfs_tick_forget(struct mmfs *fs, struct chan *ch)
{
	pthread_mutex_lock(&fs->wheel_lock);
	wheel_out(fs, ch);
	pthread_mutex_unlock(&fs->wheel_lock);
}

void mmfs_tick_soon(struct mmfs *fs, struct chan *ch)
{
	if (ch->removed)
		return;
	pthread_mutex_lock(&fs->wheel_lock);
	wheel_out(fs, ch);
	wheel_in(fs, ch, 0);
	pthread_mutex_unlock(&fs->wheel_lock);
}

/* How far ahead the ticker starts fetching a channel's memory, and its
 * trailers': each channel is a few cache misses, which overlap so. */
#define AHEAD 16

/* The heartbeats due now; each channel goes back into the wheel as far
 * ahead as it says, or out of it. A change of state or of the peer's
 * liveness goes to the log, once. Whether any changed. fs->lock not held:
 * the wheel's lock, for as long as the beat takes. */
static bool tick_channels(struct mmfs *fs, uint64_t now)
{
	struct tick_slot *s;
	bool changed = false;

	assert_unlocked(fs);
	pthread_mutex_lock(&fs->wheel_lock);
	s = &fs->wheel[fs->wheel_at];
	/* what goes back in goes into other slots: s stays as it is */
	fs->wheel_at = (fs->wheel_at + 1) % TICK_SLOTS;
	for (unsigned i = 0; i < s->n; i++) {
		struct chan *ch = s->chans[i];
		unsigned every;

		if (i + AHEAD < s->n)
			mm_channel_prefetch(&s->chans[i + AHEAD]->mc, false);
		if (i + AHEAD / 2 < s->n)
			mm_channel_prefetch(&s->chans[i + AHEAD / 2]->mc, true);
		ch->tick_slot = -1;
		if (mm_channel_tick(&ch->mc, now, &every)) {
			chan_log_change(ch);
			changed = true;
		}
		if (every)
			wheel_in(fs, ch, every / MM_TICK_MS - 1);
	}
	s->n = 0;
	pthread_mutex_unlock(&fs->wheel_lock);
	return changed;
}

static void *ticker(void *arg)
{
	struct mmfs *fs = arg;
	uint32_t *words[MM_FUTEX_WAITV_MAX];
	uint32_t seen[MM_FUTEX_WAITV_MAX];
	uint64_t next_beat = 0;
	unsigned n = 1, want;
	bool recheck = false, moved = true;

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		uint64_t now = mmfs_now_ms();
		bool beat = now >= next_beat, all = false;
		unsigned timeout_us;
		int r;

		if (beat) {
			pthread_mutex_unlock(&fs->lock);
			all = tick_channels(fs, now);	/* a state changed */
			if (all)
				fifo_poke_all(fs);
			pthread_mutex_lock(&fs->lock);
			next_beat = now + MM_TICK_MS;
		}
		/* the waiters are looked at again only when something moved: a
		 * kick, a word, a channel's state, a waiter come or gone, the
		 * beat of those that want it, or the recheck of areas whose
		 * peers cannot wake us; a heartbeat alone leaves them be */
		words[0] = &fs->kick;
		seen[0] = __atomic_load_n(&fs->kick, __ATOMIC_SEQ_CST);
		if (moved || recheck || all || fs->waits_changed || (beat && fs->beat_waiters)) {
			fs->waits_changed = false;
			gather(fs, all, beat, words, seen, &n, &want, &recheck);
			if (fs->due) {
				fire(fs);
				moved = true;	/* fired ones may be armed again */
				continue;
			}
			if (want > fs->nwatchers) {
				pthread_mutex_unlock(&fs->lock);
				moved = add_watchers(fs, want);	/* or naps (ENOSYS) */
				pthread_mutex_lock(&fs->lock);
				if (moved)
					continue;
			}
		}
		timeout_us = !recheck ? (unsigned)(next_beat - now) * 1000 :
			     fs->polled_move_ms + POLL_SOON_MS > now ? POLL_SOON_US : POLL_RECHECK_US;
		pthread_mutex_unlock(&fs->lock);
		r = n > MM_FUTEX_WAITV_MAX ? -ENOSYS :
		    mm_futex_waitv(words, seen, n, true, timeout_us);
		if (r == -ENOSYS) {
			/* a word no futex can wait on (a PCI BAR): a nap, then
			 * a look; but on the kick, so that a doorbell, a new
			 * waiter or the end is heard at once, not after it */
			unsigned nap = timeout_us > POLL_NAP_US ? POLL_NAP_US : timeout_us;

			if (mm_futex_waitv(words, seen, 1, true, nap) == -ENOSYS)
				usleep(nap);	/* a kernel without futex_waitv */
		}
		moved = r != -ETIMEDOUT;
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
	for (unsigned k = 0; k < fs->nwatchers; k++) {
		struct watcher *w = fs->watchers[k];

		__atomic_add_fetch(&w->kick, 1, __ATOMIC_SEQ_CST);
		mm_futex_wake_private(&w->kick);
		pthread_join(w->thread, NULL);
		free(w);
	}
	fs->nwatchers = 0;
}
