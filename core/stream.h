/* mmapfs core: the byte stream over a channel's rings.
 *
 * The calls a daemon makes for a file's read() and write(), and a client
 * library makes for its own: each moves bytes through the mapped area, with
 * every value the peer writes loaded once, checked, then used. None of them
 * blocks: -EAGAIN says "wait with mm_stream_wait(), then call again".
 *
 * The caller must hold the claim of the direction it uses
 * (mm_channel_claim), and run one call at a time per direction.
 *
 * Writing is one call: load the pointers, copy under the guard, publish,
 * wake the reader. Reading is a begin/end pair, as liburing's
 * get_sqe/submit: begin hands back a slice (the pieces, and where they
 * came from: the ring, or a piece of xpra's chunk list) that end takes
 * back, so nothing is derived twice. */
#ifndef MMAPFS_STREAM_H
#define MMAPFS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "channel.h"

/* Waiting for the peer: a futex wait that a same-host peer's wake ends at
 * once, else sleeps growing from MM_WAIT_MIN_US to MM_WAIT_MAX_US (a VM
 * boundary, an xpra peer: nobody wakes us). */
#define MM_WAIT_MIN_US 50
#define MM_WAIT_MAX_US 10000

/* What a read's or a write's begin saw, handed back to its end. */
struct mm_slice {
	struct iovec iov[2];		/* the bytes, in the area (two: wrapped) */
	int niov;
	size_t len;			/* their total */
	bool chunk;			/* from the head of xpra's chunk list */
	struct mm_ring_pos pos;		/* from the ring: the pointers seen */
};

/* Write up to len bytes. Bytes written (> 0), -EAGAIN while the ring is
 * full, or -errno: -EPIPE (peer gone; with version 2 also a stream its
 * reader abandoned, or one that failed since the claim: the stream then
 * ends here with an abort mark, and every later write of the claim gets
 * -EPIPE), -ENOTCONN, -ENXIO, -EIO (the area faulted), -EPROTO (corrupt
 * pointers), -ECONNRESET (peer restarted). */
ssize_t mm_stream_write(struct mm_channel *ch, const void *buf, size_t len);

/* The same for a writer that blocks: at the working window's edge, where
 * its reader is not yet half a window on (ring.h), -EAGAIN while hold(arg)
 * says the reader is moving, rather than write on through the rest of the
 * ring; so a reader slower than its writer keeps the stream within the
 * window, as a ring of that size would, while one that has stopped
 * reading leaves the writer the whole ring. hold is asked only there. */
ssize_t mm_stream_write_hold(struct mm_channel *ch, const void *buf, size_t len,
			     bool (*hold)(void *), void *arg);

/* Writing in place, as mm_stream_write() in two steps: begin hands back
 * where the next up to max bytes go, as a slice of the area (the ring's
 * free space); the caller fills it by any means (readv(2) from a FIFO), and
 * end publishes the first n bytes (n <= the count) and wakes the reader.
 * begin returns the count (> 0), -EAGAIN while the ring is full, or the
 * errors of mm_stream_write(). If filling it faulted (the area's file was
 * truncated, or its filesystem is full), mm_stream_write_fault() says so:
 * -ENOSPC (nothing published; try again once there is room) or the
 * channel's failure. */
ssize_t mm_stream_write_begin(struct mm_channel *ch, size_t max, struct mm_slice *s);
int mm_stream_write_end(struct mm_channel *ch, const struct mm_slice *s, size_t n);
int mm_stream_write_fault(struct mm_channel *ch);

/* The next up to max bytes of the stream, as a slice of the area. Returns
 * the count (> 0), 0 at an end of stream (which this call consumes), or
 * -EAGAIN (nothing yet), -ECONNRESET (the peer died and everything it wrote
 * has been read; with version 2 also an abort mark, consumed as an end of
 * stream is, or a claim that failed and stands at a dropped stream), or
 * the errors above. Streams abandoned by this end are dropped on the
 * way. The bytes stay in place until
 * mm_stream_read_end(), with n <= the count: the space goes back to the
 * writer, and the writer is woken. */
ssize_t mm_stream_read_begin(struct mm_channel *ch, size_t max, struct mm_slice *s);
int mm_stream_read_end(struct mm_channel *ch, const struct mm_slice *s, size_t n);

/* A reader leaves in the middle of a stream (docs/PROTOCOL.md, "Readers
 * that leave"): that stream is abandoned, and mm_stream_drop() drops it;
 * with version 2 its writer gets EPIPE, and any later reader drops it too.
 * The claim holder's call. */
void mm_stream_abandon(struct mm_channel *ch);

/* Drop what the reader may not deliver (an abandoned stream, or one cut by
 * a failure), up to its end: 0 once there is nothing more to drop, -EAGAIN
 * while such a stream has yet to end (what it has is dropped meanwhile),
 * or the errors of a read. The claim holder's call. */
int mm_stream_drop(struct mm_channel *ch);

/* Version 2: is there something to drop (a reader that was another
 * process, a library, abandoned its stream; a failure cut one)? Reloads
 * the reader's ends of stream from the trailer: the claim holder's call. */
bool mm_stream_must_drop(struct mm_channel *ch);

/* Begin, a guarded copy into buf, end. */
ssize_t mm_stream_read(struct mm_channel *ch, void *buf, size_t len);

/* May the kernel copy straight out of the read area (a reply that points
 * into it)? Not from device memory such as a PCI BAR; and not with an xpra
 * peer, which must see the space given back before the reader has the
 * bytes (docs/xpra.md). */
bool mm_stream_zero_copy(struct mm_channel *ch);

/* Wait at most timeout_us for the peer to move the word the last -EAGAIN
 * in that direction was about. Spurious returns are fine. 0 (woken, or the
 * word had moved), -ETIMEDOUT, or -EINTR (a signal handler ran). */
int mm_stream_wait(struct mm_channel *ch, unsigned dir, unsigned timeout_us);

/* The longest a wait in direction dir may sleep: MM_WAIT_MAX_US, unless
 * the peer's wakes reach us (a local area): then the next heartbeat. */
unsigned mm_stream_wait_max(struct mm_channel *ch, unsigned dir);

/* The next wait of a backoff that started at MM_WAIT_MIN_US. */
static inline unsigned mm_wait_next(unsigned us)
{
	return us < MM_WAIT_MAX_US / 2 ? us * 2 : MM_WAIT_MAX_US;
}

/* Wake everything waiting on this end's words (an interrupt, a shutdown). */
void mm_stream_wake(struct mm_channel *ch);

/* Count a waiter for `events` (POLLIN: data in the read area, POLLOUT:
 * room in the write area) in (add) or out among the sleepers the other
 * side wakes (docs/PROTOCOL.md, "Waking"): in before the last look at the
 * words, out when it no longer waits. mm_stream_wait() does so itself. */
void mm_stream_sleepers(struct mm_channel *ch, unsigned events, bool add);

/* The shared words whose change may make `events` (POLLIN, POLLOUT) come
 * true, with their values now, for a futex wait: at most four (a pointer
 * and, with the trailer, the count of ends of stream, each way). Load them
 * before checking mm_stream_poll(), so no change falls in between. */
unsigned mm_stream_poll_words(struct mm_channel *ch, unsigned events,
			      uint32_t **words, uint32_t *seen);

/* Where the stream stands for `events`, as raw words: for POLLIN the read
 * ring's data_start, data_end and the writer's close_seq; for POLLOUT the
 * write ring's data_start, data_end and the reader's eof_ack (0 where
 * absent). A wait compares it with what it was at its last look: both
 * pointers, since a ring's pointer may come back to an old value in one
 * move (a read of the whole ring), and the ends of stream, which move no
 * pointer. */
#define MM_STREAM_STATE_WORDS 6
void mm_stream_state(struct mm_channel *ch, unsigned events,
		     uint32_t state[MM_STREAM_STATE_WORDS]);

/* POLLIN/POLLOUT/POLLERR/POLLHUP as they stand now, for the holder of
 * the claims `held` (MM_RD, MM_WR): POLLERR also when its stream failed
 * (version 2), so that its next read or write says how. */
unsigned mm_stream_poll(struct mm_channel *ch, unsigned held);

/* Does the read direction have ends of stream (an mmapfs peer's trailer)? */
bool mm_stream_has_ends(struct mm_channel *ch);

/* Do bytes or an end of stream wait in the read ring? */
bool mm_stream_pending(struct mm_channel *ch);

#endif
