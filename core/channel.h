/* mmapfs core: a channel, two areas shared with one peer.
 *
 * This is the handshake of DESIGN.md and the byte stream over the rings,
 * with no FUSE in sight: fs/ turns files into calls of these functions.
 *
 * Locking is the caller's: the handshake functions, mm_channel_tick() and
 * mm_channel_close() need the channel to themselves; the data functions may
 * run on one reader and one writer thread at once, provided no handshake or
 * close runs while either direction is in use (fs/ refuses those with EBUSY
 * while `data` is open). Counters read by status are atomics. */
#ifndef MMAPFS_CHANNEL_H
#define MMAPFS_CHANNEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "area.h"
#include "caps.h"
#include "err.h"
#include "ring.h"
#include "token.h"

enum mm_state {
	MM_STATE_OFFERED,	/* creator: areas made, offer out; attacher: waiting */
	MM_STATE_ATTACHED,	/* attacher: answered, waiting for the creator */
	MM_STATE_READY,		/* data may flow */
	MM_STATE_ERROR,		/* the peer broke the format, or went away */
	MM_STATE_CLOSED,
};

enum mm_chan_role {
	MM_CREATOR,
	MM_ATTACHER,
};

enum mm_peer {
	MM_PEER_UNKNOWN,	/* no heartbeat to go by (an xpra peer) */
	MM_PEER_ALIVE,
	MM_PEER_DEAD,
};

/* A piece of an area, as xpra's packets describe where its data lies. */
struct mm_chunk {
	uint32_t off;
	uint32_t len;
};

#define MM_CHUNKS_MAX 1024

/* xpra's writer may restart at offset 8 and give the pieces out of band:
 * on the reading side, `pending` are the pieces the next reads return; on
 * the writing side, `log` is where the bytes written since the last look
 * went. Guarded by `lock`. */
struct mm_chunks {
	pthread_mutex_t lock;
	struct mm_chunk q[MM_CHUNKS_MAX];
	unsigned head, n;
	bool overflow;			/* writing side: pieces were lost */
};

/* One direction, named from this end: rd is the area we read from. */
struct mm_dir {
	bool present;			/* this end has the area */
	bool usable;			/* the handshake covered it */
	struct mm_area area;
	struct mm_ring ring;
	uint8_t *ext;			/* the trailer, or NULL */
	struct mm_token token;		/* our token in this area */
	uint64_t token_index;
	uint64_t token_bytes;
	struct mm_ring_pos pos;		/* data thread: last loaded pointers */
	uint32_t seen;			/* data thread: raw word to wait on */
	uint32_t eof_ack;		/* reader: ends of stream delivered */
	uint64_t bytes;			/* moved through data (atomic) */
	struct mm_chunks *chunks;	/* allocated with the area */
};

struct mm_chan_opts {
	const char *mmap_dir;		/* where new areas are created */
	uint64_t size;			/* ring bytes of a new area */
	const char *read_file;		/* administrator's paths, or NULL */
	const char *write_file;
	struct mm_attach_rules rules;
	uint32_t session;		/* this daemon's random session id */
};

struct mm_channel {
	enum mm_state state;		/* written under the caller's lock; the
					 * data path reads it atomically */
	enum mm_chan_role role;
	bool declared;			/* from the configuration: role fixed */
	bool ext;			/* both ends speak the extension */
	struct mm_dir rd, wr;
	struct mm_chan_opts opts;
	char *read_file, *write_file;	/* copies of the administrator's paths */
	struct mm_caps accepted;	/* the peer's last accepted half */
	bool have_accepted;
	uint32_t beat;			/* our heartbeat */
	uint32_t peer_session;
	uint32_t peer_beat;
	uint64_t peer_beat_ms;		/* when peer_beat last moved */
	int peer;			/* enum mm_peer (atomic) */
	int fail;			/* errno for data users in MM_STATE_ERROR */
	char error[512];		/* last reason, one line */
};

/* Heartbeat period and the silence after which a peer is dead. */
#define MM_BEAT_MS 250
#define MM_DEAD_MS 1000

/* Set up ch as creator (role MM_CREATOR: areas created or opened from the
 * administrator's paths, tokens written, state offered) or as an attacher
 * waiting for an offer. opts is copied; its strings must outlive ch except
 * read_file/write_file, which are copied. 0 or -errno with err set. */
int mm_channel_open(struct mm_channel *ch, enum mm_chan_role role,
		    bool declared, const struct mm_chan_opts *opts,
		    struct mm_err *err);

/* Unmap, close, delete the files this end created. */
void mm_channel_close(struct mm_channel *ch);

/* Process the peer's half: an offer (it names files: this end becomes, or
 * is, the attacher) or an answer (this end is the creator). On failure
 * nothing changes, the reason is in err and in ch->error, and the result is
 * -EINVAL (unparsable or inconsistent text), -EACCES (a file that may not be
 * opened) or -EBADMSG (a token that is not there). */
int mm_channel_peer(struct mm_channel *ch, const char *text, size_t len,
		    uint64_t now_ms, struct mm_err *err);

/* The texts of the files: capabilities, token, peer (what was accepted),
 * status. Length written, or -ENOSPC. */
int mm_channel_caps_text(const struct mm_channel *ch, char *buf, size_t len);
int mm_channel_token_text(const struct mm_channel *ch, char *buf, size_t len);
int mm_channel_peer_text(const struct mm_channel *ch, char *buf, size_t len);
int mm_channel_status_text(const struct mm_channel *ch, char *buf, size_t len);

const char *mm_state_name(enum mm_state s);

/* An attacher becomes ready when the creator has set its go-ahead: look
 * now rather than at the next tick. */
void mm_channel_refresh(struct mm_channel *ch);

/* Every MM_BEAT_MS: our heartbeat, the peer's, the creator's go-ahead for an
 * attacher. Returns true if the state or the peer's liveness changed. */
bool mm_channel_tick(struct mm_channel *ch, uint64_t now_ms);

/* Put the channel in error with a reason; data users get errnum. */
void mm_channel_set_error(struct mm_channel *ch, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* --- the stream --- */

/* Start and end a stream on the writing side. begin: 0, or -EAGAIN while
 * the reader has yet to take six earlier ends of stream. */
int mm_channel_writer_begin(struct mm_channel *ch);
void mm_channel_writer_end(struct mm_channel *ch);

/* Reading: up to max bytes of the stream as up to two pieces of the area.
 * Returns the byte count (> 0, pieces in iov, count in niov), 0 at the end of a
 * stream (consumed by this call), or -EAGAIN (nothing yet), -ENXIO (no such
 * direction), -ECONNRESET (peer gone), -EPROTO/-EIO (channel in error).
 * After copying, mm_channel_read_done() with the count taken. */
ssize_t mm_channel_read_iov(struct mm_channel *ch, size_t max,
			    struct iovec iov[2], int *niov);
int mm_channel_read_done(struct mm_channel *ch, size_t n);

/* Writing: where up to max bytes may go; then mm_channel_write_done(). Same
 * errors, with -EPIPE for a peer gone. */
ssize_t mm_channel_write_iov(struct mm_channel *ch, size_t max,
			     struct iovec iov[2], int *niov);
int mm_channel_write_done(struct mm_channel *ch, size_t n);

/* Wait (at most timeout_us) for the peer to move the pointer the last
 * -EAGAIN was about. Returns at once if it moved; spurious returns are
 * fine. */
void mm_channel_wait(struct mm_channel *ch, bool writing, unsigned timeout_us);

/* Wake anything waiting in mm_channel_wait on this end's words. */
void mm_channel_wake(struct mm_channel *ch);

/* Reading side: queue pieces ("OFFSET LENGTH" lines) for the next reads,
 * each inside the ring and not over the header. All or nothing: -EINVAL
 * with the line at fault, -ENOSPC past MM_CHUNKS_MAX pending. */
int mm_channel_chunks_add(struct mm_channel *ch, const char *text, size_t len,
			  struct mm_err *err);

/* Writing side: the pieces written since the last call, one "OFFSET LENGTH"
 * line each, and forget them. Length, -ENOSPC, or -EOVERFLOW if more than
 * MM_CHUNKS_MAX pieces piled up unread (they are dropped). */
int mm_channel_chunks_text(struct mm_channel *ch, char *buf, size_t len);

/* The shared words whose change may make `events` (POLLIN, POLLOUT) come
 * true, with their values now, for a futex wait: at most two. Load them
 * before checking mm_channel_poll(), so no change falls in between. */
unsigned mm_channel_poll_words(struct mm_channel *ch, unsigned events,
			       uint32_t **words, uint32_t *seen);

/* POLLIN/POLLOUT/POLLERR as they stand now. */
unsigned mm_channel_poll(struct mm_channel *ch);


#endif
