/* poll/select/epoll on `data`, and the ticker thread: every MM_BEAT_MS
 * the heartbeats and the peers' liveness of the channels due then (each
 * channel says how often it needs a tick: an idle one every other beat, one
 * without an mmapfs peer never); in between, it sleeps in one futex_waitv
 * on the shared words the waiting polls (and the pipe pump's waits) are
 * about, so a same-host peer's wake turns into a poll notification at
 * once; words beyond one futex_waitv's go to watchers. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ext.h"
#include "fs.h"
#include "stream.h"

/* How often waiting polls are checked even without a wake: a peer in
 * another VM, or an xpra peer, wakes nobody. */
#define POLL_RECHECK_US 10000
/* Where futex_waitv cannot wait (a PCI BAR), how long to sleep instead. */
#define POLL_NAP_US 2000
/* A watcher's wait: its kick or its words end it; this only bounds it. */
#define WATCH_TIMEOUT_US 60000000

/* The events that matter to h: what it asked, less the directions it does
 * not hold. */
static unsigned handle_events(const struct handle *h, unsigned events)
{
	if (!(h->dirs & MM_RD))
		events &= ~(unsigned)(POLLIN | POLLRDNORM);
	if (!(h->dirs & MM_WR))
		events &= ~(unsigned)(POLLOUT | POLLWRNORM);
	return events;
}

/* Stop watching h, if it was: a poll is notified (if notify) and its
 * handle forgotten; a pump is woken (if notify). fs->lock held. */
void poll_drop(struct mmfs *fs, struct handle *h, bool notify)
{
	if (!h->polling)
		return;
	mm_stream_sleepers(&h->ch->mc, handle_events(h, h->ph_events), false);
	for (struct handle **p = &fs->pollers; *p; p = &(*p)->poll_next) {
		if (*p == h) {
			*p = h->poll_next;
			break;
		}
	}
	h->polling = false;
	fs->polls_changed = true;
	if (h->ph) {
		if (notify)
			fuse_lowlevel_notify_poll(h->ph);
		fuse_pollhandle_destroy(h->ph);
		h->ph = NULL;
	} else if (notify) {
		pipe_wake(fs, h);
	}
}

/* Wake the ticker: a new poll to watch, or the end. */
static void ticker_kick(struct mmfs *fs)
{
	__atomic_add_fetch(&fs->kick, 1, __ATOMIC_SEQ_CST);
	mm_futex_wake_private(&fs->kick);
}

/* What poll reports now for a handle: a poll of data, or a pump's wait. */
static unsigned handle_mask(const struct handle *h)
{
	unsigned mask = mm_stream_poll(&h->ch->mc);

	return handle_events(h, mask) | (mask & (POLLERR | POLLHUP));
}

void poll_add(struct mmfs *fs, struct handle *h, unsigned events)
{
	poll_drop(fs, h, false);
	h->polling = true;
	h->ph_events = events;
	/* the peer wakes the ticker only if it knows someone waits */
	mm_stream_sleepers(&h->ch->mc, handle_events(h, events), true);
	h->poll_next = fs->pollers;
	fs->pollers = h;
	ticker_kick(fs);
}

void mm_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	     struct fuse_pollhandle *ph)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
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
		poll_add(fs, h, events);
	}
	pthread_mutex_unlock(&fs->lock);
	fuse_reply_poll(req, mask);
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

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		unsigned n = w->n;
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
		/* a word of its slice moved (not a new slice): the ticker looks */
		if (r != -ETIMEDOUT && __atomic_load_n(&w->kick, __ATOMIC_SEQ_CST) == seen[0])
			ticker_kick(fs);
	}
	pthread_mutex_unlock(&fs->lock);
	return NULL;
}

/* The word at index i of all the waits: the ticker's own (i below
 * MM_FUTEX_WAITV_MAX), else a watcher's, made if need be. false if it
 * cannot be placed. fs->lock held. */
static bool place_word(struct mmfs *fs, unsigned i, uint32_t *word, uint32_t v,
		       uint32_t **words, uint32_t *seen)
{
	unsigned per = MM_FUTEX_WAITV_MAX - 1, k;
	struct watcher *w;

	if (i < MM_FUTEX_WAITV_MAX) {
		words[i] = word;
		seen[i] = v;
		return true;
	}
	k = (i - MM_FUTEX_WAITV_MAX) / per;
	if (k >= WATCHERS_MAX)
		return false;
	if (k == fs->nwatchers) {
		w = calloc(1, sizeof(*w));
		if (!w)
			return false;
		w->fs = fs;
		if (pthread_create(&w->thread, NULL, watch, w) != 0) {
			free(w);
			return false;
		}
		fs->watchers[fs->nwatchers++] = w;
	}
	w = fs->watchers[k];
	w->words[(i - MM_FUTEX_WAITV_MAX) % per] = word;
	w->seen[(i - MM_FUTEX_WAITV_MAX) % per] = v;
	w->n = (i - MM_FUTEX_WAITV_MAX) % per + 1;
	return true;
}

/* Notify the polls that came true; gather the shared words the others wait
 * on (loaded before the check, so a change in between is not lost): the
 * first into words/seen from index 1, the rest to watchers. The count for
 * the ticker's own wait, or MM_FUTEX_WAITV_MAX + 1 if they could not all be
 * placed. *recheck: some wait is on an area whose peer cannot wake us (a
 * VM's, an xpra peer's), to be looked at every POLL_RECHECK_US. fs->lock
 * held. */
static unsigned tick_polls(struct mmfs *fs, uint32_t **words, uint32_t *seen, bool *recheck)
{
	struct handle *h = fs->pollers, *next;
	unsigned n = 1;
	bool full = false;

	*recheck = false;
	for (unsigned k = 0; k < fs->nwatchers; k++)
		fs->watchers[k]->n = 0;
	for (; h; h = next) {
		unsigned events = handle_events(h, h->ph_events);
		uint32_t *w[2];
		uint32_t v[2];
		unsigned k;

		next = h->poll_next;
		k = mm_stream_poll_words(&h->ch->mc, events, w, v);
		if (h->moved ? pipe_ring_moved(h, v, k) :
			       (handle_mask(h) & (h->ph_events | POLLERR | POLLHUP)) != 0) {
			poll_drop(fs, h, true);
			continue;
		}
		for (unsigned dir = MM_RD; dir <= MM_WR; dir <<= 1)
			if ((events & (dir == MM_RD ? POLLIN : POLLOUT)) &&
			    mm_stream_wait_max(&h->ch->mc, dir) < MM_BEAT_MS * 1000)
				*recheck = true;
		for (unsigned i = 0; i < k && !full; i++)
			full = !place_word(fs, n++, w[i], v[i], words, seen);
	}
	for (unsigned k = 0; k < fs->nwatchers; k++) {
		__atomic_add_fetch(&fs->watchers[k]->kick, 1, __ATOMIC_SEQ_CST);
		mm_futex_wake_private(&fs->watchers[k]->kick);
	}
	if (full)
		return MM_FUTEX_WAITV_MAX + 1;
	return n < MM_FUTEX_WAITV_MAX ? n : MM_FUTEX_WAITV_MAX;
}

void chan_log_change(struct chan *ch)
{
	char why[512];

	mm_channel_reason(&ch->mc, why, sizeof(why));
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: %s: state %s, peer %s%s%s\n", ch->key.name,
		 mm_state_name(mm_channel_state(&ch->mc)),
		 mm_peer_name(mm_channel_peer_state(&ch->mc)), why[0] ? ", " : "", why);
}

/* The wheel: fs->wheel[(fs->wheel_at + k) % TICK_SLOTS] holds the channels
 * due k beats after the next one. A channel is in it while it needs ticks,
 * so a beat costs what the channels due then need, nothing for the others.
 * Each slot is an array with room for every channel (made when a channel
 * is), so the ticker never allocates and can look ahead. fs->lock held. */
_Static_assert(MM_IDLE_BEAT_MS / MM_BEAT_MS < TICK_SLOTS, "the wheel is too small");

int mmfs_tick_room(struct mmfs *fs, unsigned n)
{
	unsigned room = fs->wheel_room ? fs->wheel_room : 64;

	if (n <= fs->wheel_room)
		return 0;
	while (room < n)
		room *= 2;
	for (unsigned i = 0; i < TICK_SLOTS; i++) {
		struct chan **p = realloc(fs->wheel[i].chans, room * sizeof(*p));

		if (!p)
			return -ENOMEM;	/* the slots grown so far keep their room */
		fs->wheel[i].chans = p;
	}
	fs->wheel_room = room;
	return 0;
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

void mmfs_tick_forget(struct mmfs *fs, struct chan *ch)
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

void mmfs_tick_soon(struct mmfs *fs, struct chan *ch)
{
	if (ch->removed)
		return;
	mmfs_tick_forget(fs, ch);
	wheel_in(fs, ch, 0);
}

/* How far ahead the ticker starts fetching a channel's memory, and its
 * trailers': each channel is a few cache misses, which overlap so. */
#define AHEAD 16

/* The heartbeats due now; each channel goes back into the wheel as far
 * ahead as it says, or out of it. A change of state or of the peer's
 * liveness goes to the log, once. Whether any changed. fs->lock held
 * (each tick is short). */
static bool tick_channels(struct mmfs *fs, uint64_t now)
{
	struct tick_slot *s = &fs->wheel[fs->wheel_at];
	bool changed = false;

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
			wheel_in(fs, ch, every / MM_BEAT_MS - 1);
	}
	s->n = 0;
	return changed;
}

static void *ticker(void *arg)
{
	struct mmfs *fs = arg;
	uint32_t *words[MM_FUTEX_WAITV_MAX];
	uint32_t seen[MM_FUTEX_WAITV_MAX];
	uint64_t next_beat = 0;
	unsigned n = 1;
	bool recheck = false;
	int r = 0;

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		uint64_t now = mmfs_now_ms();
		unsigned timeout_us;

		if (now >= next_beat) {
			if (tick_channels(fs, now))
				fs->polls_changed = true;
			next_beat = now + MM_BEAT_MS;
		}
		/* the polls are looked at again only when something moved: a
		 * kick, a word, a channel's state, a poll come or gone, or the
		 * recheck of areas whose peers cannot wake us; a heartbeat alone
		 * leaves the waits as they are */
		words[0] = &fs->kick;
		seen[0] = __atomic_load_n(&fs->kick, __ATOMIC_SEQ_CST);
		if (r != -ETIMEDOUT || recheck || fs->polls_changed) {
			fs->polls_changed = false;
			n = tick_polls(fs, words, seen, &recheck);
		}
		timeout_us = recheck ? POLL_RECHECK_US : (unsigned)(next_beat - now) * 1000;
		pthread_mutex_unlock(&fs->lock);
		r = n > MM_FUTEX_WAITV_MAX ? -ENOSYS :
		    mm_futex_waitv(words, seen, n, true, timeout_us);
		if (r == -ENOSYS)
			usleep(timeout_us > POLL_NAP_US ? POLL_NAP_US : timeout_us);
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
