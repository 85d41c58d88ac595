/* poll/select/epoll on `data`.
 *
 * The answer is exact: POLLIN only while a byte no read has taken, or an end
 * of stream, is there (it is taken under the read lock, so the bytes a read
 * is handing out are not counted), POLLOUT only while the ring has room;
 * POLLERR for a broken channel, POLLHUP for a dead peer.
 *
 * The kernel's poll handle is kept, the latest one, and notified at every
 * move of the words the poll is about, whatever the answer was: an
 * edge-triggered epoll (Go's runtime puts every file in one) is told of each
 * change, also one that comes after a read emptied the ring. A notified
 * kernel asks again, and gets the answer of the moment. */
#include <poll.h>

#include "fs.h"
#include "stream.h"

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

static void poll_fire(struct mmfs *fs, struct waiter *w)
{
	struct handle *h = handle_of_wait(w);
	struct fuse_pollhandle *ph;

	/* armed again before the notification: what moves after it is
	 * told again. h->ph stays while we fire (mm_poll and the release
	 * wait for the fire to end before they replace or free it). */
	pthread_mutex_lock(&fs->lock);
	ph = h->ph;
	if (ph)
		waiter_arm(fs, w, NULL);
	pthread_mutex_unlock(&fs->lock);
	if (ph)
		fuse_lowlevel_notify_poll(ph);
}

void poll_forget(struct mmfs *fs, struct handle *h)
{
	struct fuse_pollhandle *ph;

	pthread_mutex_lock(&fs->lock);
	waiter_disarm(fs, &h->wait);
	ph = h->ph;
	h->ph = NULL;
	pthread_mutex_unlock(&fs->lock);
	if (ph)
		fuse_pollhandle_destroy(ph);
}

void mm_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	     struct fuse_pollhandle *ph)
{
	struct mmfs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	unsigned events = fi->poll_events ? fi->poll_events : POLLIN | POLLOUT;
	struct fuse_pollhandle *old = NULL;
	unsigned mask;

	if (h->kind != F_DATA) {
		if (ph)
			fuse_pollhandle_destroy(ph);
		fuse_reply_poll(req, POLLIN | POLLRDNORM);
		return;
	}
	/* the read lock first: no read hands bytes out while we look */
	if (h->dirs & MM_RD)
		pthread_mutex_lock(&h->ch->rd_lock);
	if (ph) {
		/* armed before the look: a move after it is notified */
		pthread_mutex_lock(&fs->lock);
		waiter_disarm(fs, &h->wait);
		old = h->ph;
		h->ph = ph;
		h->wait.ch = h->ch;
		h->wait.fire = poll_fire;
		h->wait.events = handle_events(h, events) & (POLLIN | POLLOUT);
		if (h->wait.events)
			waiter_arm(fs, &h->wait, NULL);
		pthread_mutex_unlock(&fs->lock);
	}
	/* an abandoned or failed stream is dropped first: what is left to
	 * read after it is what the answer is about (a library drops its own) */
	if ((h->dirs & MM_RD) && !data_is_library(fs, h))
		mm_stream_drop(&h->ch->mc);
	mask = mm_stream_poll(&h->ch->mc, h->dirs);
	mask = handle_events(h, mask) | (mask & (POLLERR | POLLHUP));
	if (h->dirs & MM_RD)
		pthread_mutex_unlock(&h->ch->rd_lock);
	if (old)
		fuse_pollhandle_destroy(old);
	fuse_reply_poll(req, mask);
}
