/* poll/select/epoll on `data`, and the ticker thread: every MM_BEAT_MS
 * the heartbeats and the peers' liveness of the channels due then (each
 * channel says how often it needs a tick: an idle one every other beat, one
 * without an mmapfs peer never); in between, it sleeps in one futex_waitv
 * on the shared words the waiting polls are about, so a same-host peer's
 * wake turns into a poll notification at once. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "ext.h"
#include "fs.h"
#include "stream.h"

/* How often waiting polls are checked even without a wake: a peer in
 * another VM, or an xpra peer, wakes nobody. */
#define POLL_RECHECK_US 10000
/* Where futex_waitv cannot wait (a PCI BAR), how long to sleep instead. */
#define POLL_NAP_US 2000

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

/* What poll reports for a data handle now. */
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

/* Notify the polls that came true; gather the shared words the others wait
 * on into words/seen from index n (loaded before the check, so a change in
 * between is not lost). Returns the new count, or MM_FUTEX_WAITV_MAX + 1 if
 * they did not all fit. fs->lock held. */
static unsigned tick_polls(struct mmfs *fs, uint32_t **words, uint32_t *seen, unsigned n)
{
	struct handle *h = fs->pollers, *next;
	bool full = false;

	for (; h; h = next) {
		uint32_t *w[2];
		uint32_t v[2];
		unsigned k;

		next = h->poll_next;
		k = mm_stream_poll_words(&h->ch->mc, handle_events(h, h->ph_events), w, v);
		if (h->ph ? (handle_mask(h) & (h->ph_events | POLLERR | POLLHUP)) != 0 :
			    pipe_ring_ready(h, v, k)) {
			poll_drop(fs, h, true);
			continue;
		}
		for (unsigned i = 0; i < k; i++) {
			if (n == MM_FUTEX_WAITV_MAX) {
				full = true;
				break;
			}
			words[n] = w[i];
			seen[n++] = v[i];
		}
	}
	return full ? MM_FUTEX_WAITV_MAX + 1 : n;
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
 * liveness goes to the log, once. fs->lock held (each tick is short). */
static void tick_channels(struct mmfs *fs, uint64_t now)
{
	struct tick_slot *s = &fs->wheel[fs->wheel_at];

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
		if (mm_channel_tick(&ch->mc, now, &every))
			chan_log_change(ch);
		if (every)
			wheel_in(fs, ch, every / MM_BEAT_MS - 1);
	}
	s->n = 0;
}

static void *ticker(void *arg)
{
	struct mmfs *fs = arg;
	uint32_t *words[MM_FUTEX_WAITV_MAX];
	uint32_t seen[MM_FUTEX_WAITV_MAX];
	uint64_t next_beat = 0;

	pthread_mutex_lock(&fs->lock);
	while (!fs->stop) {
		uint64_t now = mmfs_now_ms();
		unsigned n, timeout_us;
		bool polls;

		if (now >= next_beat) {
			tick_channels(fs, now);
			next_beat = now + MM_BEAT_MS;
		}
		/* sleep until a kick, a peer's wake on a polled word, a recheck
		 * of the polls, or the next heartbeat */
		words[0] = &fs->kick;
		seen[0] = __atomic_load_n(&fs->kick, __ATOMIC_SEQ_CST);
		n = tick_polls(fs, words, seen, 1);
		polls = fs->pollers != NULL;
		timeout_us = polls ? POLL_RECHECK_US : (unsigned)(next_beat - now) * 1000;
		pthread_mutex_unlock(&fs->lock);
		if (n > MM_FUTEX_WAITV_MAX ||
		    mm_futex_waitv(words, seen, n, true, timeout_us) == -ENOSYS)
			usleep(polls && timeout_us > POLL_NAP_US ? POLL_NAP_US : timeout_us);
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
}
