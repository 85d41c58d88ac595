/* mmapfs core: a channel, two areas shared with one peer, like a socket.
 *
 * This is the public face of core: the daemon (fs/) and a client library
 * call these functions, with no FUSE type in sight. The calls are spread
 * over files by concern:
 *
 *   channel.c    life (open, close), claims on the stream, accessors,
 *                the failure record
 *   handshake.c  the peer's half: offers, answers, tokens, framing
 *   live.c       heartbeats and the peer's liveness (the periodic tick)
 *   text.c       the texts of the files: capabilities, token, peer, status
 *   stream.c     the byte stream: write, read begin/end, ends of stream,
 *                waits and wake-ups, poll (stream.h)
 *   chunks.c     xpra's out-of-band chunk lists (chunks.h)
 *   view.c       a channel seen from another process than its daemon
 *                (the library, lib.c): the areas the status names
 *
 * Threads and locks. Every function here is safe to call from any thread;
 * which lock protects what is written on each field below.
 *   - ch->lock is short: it is never held across a system call that may
 *     block (open(), mmap() of a peer's file, a futex wait).
 *   - ch->hs_lock serializes handshakes on one channel; it is held while an
 *     offered or administrator's file is opened and mapped, so that one slow
 *     path delays only its own channel.
 *   - The stream runs without either lock. A thread may move bytes in a
 *     direction only while it holds that direction's claim
 *     (mm_channel_claim), and a claimed channel refuses handshakes and
 *     close with EBUSY: so the areas stay mapped and in place under the
 *     data threads, and one reader and one writer run at once. The fields
 *     marked "claim holder" are that thread's alone.
 *   - Liveness (live.c) runs under ch->lock, beside the data threads: what
 *     both see (state, peer, the failure record) is atomic. */
#ifndef MMAPFS_CHANNEL_H
#define MMAPFS_CHANNEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

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

/* Directions, named from this end, as a mask: MM_RD is the area we read. */
enum {
	MM_RD = 1 << 0,
	MM_WR = 1 << 1,
};

/* Why a channel went to error, recorded by whichever thread saw it first
 * (a data thread, or liveness); the text is made from it under the lock. */
enum mm_why {
	MM_WHY_NONE,
	MM_WHY_FAULT,		/* touching an area faulted: truncated */
	MM_WHY_CORRUPT,		/* pointers outside the ring: a = start, b = end */
	MM_WHY_EOF_CORRUPT,	/* ends of stream that make no sense */
	MM_WHY_RESTARTED,	/* the peer's session changed: a = new, b = old */
	MM_WHY_SETUP,		/* a declared file is not ready: ch->error says */
};

struct mm_failure {
	int claimed;			/* atomic: the first failure wins */
	int errnum;			/* atomic (release): what data calls get */
	enum mm_why why;		/* written by the winner before errnum */
	unsigned dir;			/* MM_RD or MM_WR */
	uint32_t a, b;
};

struct mm_chunks;

/* A doorbell (docs/ivshmem.md, "Doorbells"): how to wake the peer where
 * its futex cannot reach, across a VM boundary (an ivshmem-doorbell
 * device: an eventfd on the host, the Doorbell register in the guest).
 * ring() waits for nothing but its own system call (a library's is a
 * request its daemon answers at once): the stream calls it after
 * publishing a pointer when the trailer says the peer may sleep, with the
 * vector the peer's trailer words ask for (any value: ring() checks it). */
struct mm_bell {
	void (*ring)(const struct mm_bell *b, unsigned vector);
	bool hears;			/* the peer's rings reach this end too:
					 * its waits need no futex, no poll */
};

#define MM_VIEW_RINGS 1		/* the daemon rings the peer for a view */
#define MM_VIEW_HEARS 2		/* and hears the peer's rings */

/* One direction, named from this end: rd is the area we read from. */
struct mm_dir {
	/* set by the handshake under ch->lock; fixed while claimed (first,
	 * with owner: what a tick reads) */
	bool present;			/* this end has the area */
	bool usable;			/* the handshake covered it */
	bool local;			/* a file one of the ends created on this
					 * host, not an administrator's path
					 * (which may be shared with another VM):
					 * the peer's futex wakes reach us */
	bool no_futex;			/* atomic: a FUTEX_WAKE on its words
					 * failed (a PCI BAR has no futex): no
					 * more are tried */
	uint8_t *ext;			/* the trailer's version-1 words, or NULL */
	uint8_t *ext2;			/* its version-2 words, or NULL */
	uint8_t *tick;			/* a daemon's second mapping of the
					 * trailer (alias.h): version 2's words,
					 * then version 1's; or NULL */
	const struct mm_bell *bell;	/* the administrator's area has a
					 * doorbell (opts), or NULL */
	unsigned bell_vector;		/* the vector that rings us (opts) */
	uint8_t view_bell;		/* a view: the daemon's doorbell on the
					 * area (status's DIR.doorbell): 0 none,
					 * MM_VIEW_RINGS, MM_VIEW_HEARS */
	/* ch->lock */
	const void *owner;		/* who holds the claim, or NULL */
	/* set by the handshake under ch->lock; fixed while claimed */
	struct mm_area area;
	struct mm_ring ring;
	uint64_t token_index;		/* our token in this area: where, */
	uint64_t token_bytes;		/* over how many bytes, and its value
					 * (least significant byte first; the
					 * bytes above are zero) */
	uint8_t token[MM_TOKEN_RANDOM_BYTES];
	struct mm_chunks *chunks;	/* xpra peer only (chunks.h) */
	/* claim holder */
	uint32_t seen;			/* raw pointer word the last -EAGAIN saw */
	uint32_t eof_ack;		/* reader: ends of stream delivered */
	uint32_t epoch;			/* both ends' epochs at the claim: a
					 * change fails the claim's stream */
	uint32_t drop_below;		/* reader: streams below this were left
					 * by a reader of this end (version 1
					 * has no word for it) */
	bool dropping;			/* drop_below is in force */
	bool cut;			/* writer: told its stream was cut */
	/* ch->lock: where the claim's last report (or the claim) left this
	 * end's pointer word (data_start to read, data_end to write), and
	 * the counter then (mm_channel_add_bytes) */
	uint32_t told;
	uint64_t told_bytes;
	uint64_t owed;			/* reported, not yet seen moved */
	/* atomic */
	uint64_t bytes;			/* moved through the stream */
};

struct mm_chan_opts {
	const char *mmap_dir;		/* where new areas are created */
	const struct mm_owner *user;	/* a user's channel: the user the daemon
					 * acts for, or NULL. New areas are given
					 * to them (mmap_dir is then theirs), and
					 * rules.user names them too. */
	uint64_t size;			/* ring bytes of a new area */
	bool reserve;			/* allocate new areas whole (area.h) */
	const char *read_file;		/* administrator's paths, or NULL */
	const char *write_file;
	struct mm_window read_window;	/* parts of those files, or zero */
	struct mm_window write_window;
	const char *origin;		/* "FILE:LINE" of a declared channel, or
					 * NULL: named in reasons about its paths */
	struct mm_attach_rules rules;
	const char *area_tag;		/* in the names of created areas, or NULL
					 * (area.h: leftovers) */
	const struct mm_bell *read_bell;	/* read_file's and write_file's */
	const struct mm_bell *write_bell;	/* doorbells, or NULL */
	unsigned bell_vector;		/* the doorbell's vector that rings this
					 * end, for both areas: the peer is told
					 * it in the trailer (docs/PROTOCOL.md) */
};

struct mm_channel {
	/* First, together, what a tick touches (a daemon ticks thousands of
	 * channels: each line is a cache miss). */
	pthread_mutex_t lock;
	/* atomic; written under lock */
	enum mm_state state;
	/* atomic */
	int peer;			/* enum mm_peer */
	/* lock */
	enum mm_chan_role role;
	unsigned ext;			/* the extension's version both ends
					 * speak: 0 (an xpra peer), 1 or 2 */
	uint32_t epoch;			/* times we failed the streams */
	uint32_t peer_epoch;		/* the peer's, as last seen */
	uint32_t failures;		/* streams failed, by either end */
	int64_t failed_at;		/* when last (time(2)) */
	/* lock (liveness) */
	uint32_t session;		/* random, new at each handshake */
	uint32_t beat;			/* our heartbeat */
	uint32_t peer_session;
	uint32_t peer_beat;
	uint64_t peer_beat_ms;		/* when peer_beat last moved */
	/* lock */
	struct mm_dir rd, wr;
	/* the rest */
	pthread_mutex_t hs_lock;
	bool declared;			/* from the configuration: role fixed */
	bool view;			/* another process's (view.c): it never
					 * writes the trailer's words of its end */
	bool beats_unmapped;		/* a view without the area of the beats
					 * (live.c, mm_ext_dir) */
	struct mm_chan_opts opts;	/* fixed after open */
	char *read_file, *write_file;	/* copies of the administrator's paths */
	char *accepted;			/* the peer's last accepted half, as
					 * text (malloc'd), or NULL */
	unsigned handshaking;		/* a handshake is opening files */
	char error[512];		/* last refusal, one line */
	/* atomic */
	struct mm_failure fail;
};

/* Heartbeat (docs/PROTOCOL.md, "Liveness"): every MM_BEAT_MS while the
 * channel is handshaken with an mmapfs peer, whether its stream is in use
 * or not (the tick's cost is two trailers' pages per channel: 10,000
 * channels with readers blocked on them cost their daemon well under 1 %
 * of a core at this rate, twice that at MM_TICK_MS); every MM_TICK_MS while
 * an attacher waits for the creator's go-ahead, which is also the step of
 * a daemon's ticker and the longest a library's wait sleeps. A peer whose
 * beat stands still for MM_DEAD_MS is dead: it must stay well above
 * MM_BEAT_MS. */
#define MM_TICK_MS 250
#define MM_BEAT_MS 500
#define MM_DEAD_MS 1000

/* A valid channel name: 1 to 255 bytes, not "." or "..", no '/' and no
 * control character. The one rule for mkdir and the configuration. */
bool mm_name_valid(const char *name);

/* "creator", "attacher"; and back (-EINVAL for anything else). */
const char *mm_role_name(enum mm_chan_role r);
int mm_role_parse(const char *s, enum mm_chan_role *r);
const char *mm_state_name(enum mm_state s);
const char *mm_peer_name(enum mm_peer p);

/* Set up ch as creator (areas created or opened from the administrator's
 * paths, tokens written, state offered) or as an attacher waiting for an
 * offer. opts is copied; its strings must outlive ch except read_file and
 * write_file, which are copied. 0 or -errno with err set; on failure ch
 * holds nothing (no mm_channel_destroy needed). May block (creates files).
 * A declared creator whose file is too small for its area or window, or a
 * missing file given with a window (an ivshmem device's, before the VM
 * starts), opens in MM_STATE_ERROR with the reason, and is set up when its
 * offer is next read (mm_channel_renew). */
int mm_channel_open(struct mm_channel *ch, enum mm_chan_role role,
		    bool declared, const struct mm_chan_opts *opts,
		    struct mm_err *err);

/* Unmap, close, delete the files this end created; state closed. -EBUSY
 * (nothing done) while a direction is claimed or a handshake runs. */
int mm_channel_close(struct mm_channel *ch);

/* Close whatever is left and free the locks: the channel's last user. */
void mm_channel_destroy(struct mm_channel *ch);

/* Take the stream for `owner` (any unique pointer: a file handle, a library
 * handle): `want` is MM_RD, MM_WR or both, as O_RDONLY, O_WRONLY, O_RDWR.
 * A single direction the peer did not offer is -ENXIO; both take what the
 * channel has (-ENXIO if neither). Returns the mask taken (> 0), or -ENOTCONN
 * (not ready), -EBUSY (someone holds it), -EAGAIN (the reader has yet to
 * take six earlier ends of stream: try again later), or the channel's
 * failure. Taking MM_WR starts a stream. */
int mm_channel_claim(struct mm_channel *ch, unsigned want, const void *owner);

/* Give back what owner holds; giving back MM_WR ends its stream (the reader
 * sees end of file after the bytes written so far). */
void mm_channel_unclaim(struct mm_channel *ch, const void *owner);

/* Give back what owner holds without ending a stream: for a claim taken
 * for an opener that never came (a FIFO open that failed after its
 * lookup). */
void mm_channel_abandon(struct mm_channel *ch, const void *owner);

/* Give back what owner holds (its write direction ending its stream),
 * but its read direction, which passes to `to` at once: the daemon takes
 * a reader's claim that left in the middle of a stream, to drop the rest. */
void mm_channel_hand_reader(struct mm_channel *ch, const void *owner, const void *to);

/* Who holds direction dir (MM_RD or MM_WR), or NULL. */
const void *mm_channel_owner(struct mm_channel *ch, unsigned dir);

/* Snapshots for display; safe at any time. */
enum mm_state mm_channel_state(struct mm_channel *ch);
enum mm_chan_role mm_channel_role(struct mm_channel *ch);
enum mm_peer mm_channel_peer_state(struct mm_channel *ch);

/* How many times either end failed the streams (docs/PROTOCOL.md,
 * "Failed streams") since this session began. */
unsigned mm_channel_failures(struct mm_channel *ch);

/* What one direction is, for traces and status. false if absent. */
struct mm_dir_info {
	char path[PATH_MAX];
	uint64_t size;
	uint32_t ring_end;
	uint64_t token_index;
	uint32_t data_start, data_end;	/* raw words */
	uint64_t bytes;
};
bool mm_channel_dir_info(struct mm_channel *ch, unsigned dir, struct mm_dir_info *info);

/* Put the channel in error (first failure wins) and wake its waiters.
 * Callable from any thread, with or without ch->lock. */
void mm_channel_fail(struct mm_channel *ch, int errnum, enum mm_why why, unsigned dir,
		     uint32_t a, uint32_t b);

/* 0, or the negative errno a data call gets in MM_STATE_ERROR. */
int mm_channel_failed(struct mm_channel *ch);

/* --- the handshake (handshake.c) --- */

/* Process the peer's half: an offer (it names files: this end becomes, or
 * is, the attacher) or an answer (this end is the creator). On failure
 * nothing changes, the reason is in err and in the status, and the result
 * is -EINVAL (unparsable or inconsistent text), -EACCES (a file that may
 * not be opened), -EBADMSG (a token that is not there) or -EBUSY (the
 * stream is in use, or another handshake runs). May block on the files an
 * offer names, holding only this channel's hs_lock. */
int mm_channel_peer(struct mm_channel *ch, const char *text, size_t len,
		    uint64_t now_ms, struct mm_err *err);

/* Framing of text written in pieces: does it make a whole message yet?
 * (Each area it names has all its keys, five in an offer and three in an
 * answer, and it ends a line; text that cannot parse is whole too, so it
 * fails now.) */
bool mm_peer_text_complete(const char *text, size_t len);

/* A creator whose peer is gone (dead, restarted, or the channel in error)
 * starts a new session when asked for its offer: fresh tokens, both rings
 * emptied, the trailer reset, state offered. 1 if it did (*discarded: the
 * unread bytes dropped, both ways), 0 if there was no reason to, -EBUSY
 * while the stream is open. docs/PROTOCOL.md, "Restarts". */
int mm_channel_renew(struct mm_channel *ch, uint64_t *discarded, struct mm_err *err);

/* Record a refusal the caller made (as the handshake does its own). */
void mm_channel_set_reason(struct mm_channel *ch, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* --- liveness (live.c) --- */

/* Our heartbeat, the peer's, the creator's go-ahead for an attacher.
 * Returns true if the state or the peer's liveness changed. *every (if not
 * NULL) says when the next tick is due, in ms: MM_TICK_MS while an
 * attacher waits for the go-ahead, MM_BEAT_MS while it is handshaken with
 * an mmapfs peer, 0 while nothing needs ticks (no such peer yet, an xpra
 * peer, in error, closed) until a handshake changes that. */
bool mm_channel_tick(struct mm_channel *ch, uint64_t now_ms, unsigned *every);

/* Start fetching what a tick of ch touches, as a daemon does a few
 * channels ahead of the one it ticks: the channel's first lines, or (once
 * those are on their way) its trailers. A hint: nothing is locked. */
void mm_channel_prefetch(const struct mm_channel *ch, bool trailers);

/* The peer's half of a tick alone: the peer's session and beat, never our
 * own. For an end that is not the daemon (a library's view, whose daemon
 * publishes this end's), and for the daemon between ticks (a status read
 * sees the peer as it is now). Returns true if the state or the peer's
 * liveness changed. */
bool mm_channel_watch(struct mm_channel *ch, uint64_t now_ms);

/* Such an end's daemon says the peer is dead (it watches all the time, a
 * view only while it waits): take its word, until the peer's beat moves
 * again. Returns true if that changed the peer's liveness. */
bool mm_channel_peer_dead(struct mm_channel *ch);

/* An attacher becomes ready when the creator has set its go-ahead: look
 * now rather than at the next tick. ch->lock held. */
void mm_channel_refresh_locked(struct mm_channel *ch);

/* --- views (view.c) --- */

/* Set ch up as a view of a channel served by a daemon, for a process that
 * took `dirs` of its data file (MM_RD, MM_WR, or both: what the channel
 * has): map the areas that the daemon's status text (len bytes) names,
 * ready for the calls of stream.h and mm_channel_watch(); with an xpra
 * peer (status's mmapfs=0) each direction gets chunk lists of the view's
 * own, for the calls of chunks.h. Returns the directions set up (> 0), or
 * -ENXIO, -EPROTO (a status without the keys), or an area's open or mmap
 * errno, with err set; on failure ch holds nothing. mm_channel_destroy()
 * unmaps it. */
int mm_channel_view(struct mm_channel *ch, const char *status, size_t len, unsigned dirs,
		    uint64_t now_ms, struct mm_err *err);

/* A view's process tells the daemon of its end the bytes it moved, for
 * status's counters: an ioctl on its claim (the data descriptor), which
 * also marks that claim as a library's (docs/PROTOCOL.md, "Native
 * access"). The counts are those since the last report. */
struct mm_ioc_bytes {
	uint64_t read;
	uint64_t written;
};
#define MM_IOC_BYTES _IOW('M', 1, struct mm_ioc_bytes)

/* A view's doorbell, through its daemon (docs/PROTOCOL.md, "Native
 * access"): the library cannot take a doorbell's interrupt, nor ring one
 * itself. MM_IOC_WAIT waits, without holding a thread of the daemon, until
 * the stream's words for `events` (POLLIN: the read direction, POLLOUT:
 * the write one) are no longer `state` (mm_stream_state(), taken before
 * the look that found nothing to do); the daemon counts itself among the
 * sleepers meanwhile, so the peer rings it. It returns 0, or fails with
 * EINTR (a signal), EPIPE (the peer is dead), EIO (the channel failed),
 * ENOTCONN (the daemon is stopping) or EINVAL. MM_IOC_RING rings the
 * doorbell of the area of direction `dir` (MM_RD, MM_WR) on `vector`, as
 * core's wake() would: EOPNOTSUPP where it has none. */
struct mm_ioc_wait {
	uint32_t events;
	uint32_t state[6];		/* MM_STREAM_STATE_WORDS */
};
struct mm_ioc_ring {
	uint32_t dir;
	uint32_t vector;
};
#define MM_IOC_WAIT _IOW('M', 2, struct mm_ioc_wait)
#define MM_IOC_RING _IOW('M', 3, struct mm_ioc_ring)

/* Someone else (a library holding dir's claim) says it moved n bytes
 * through dir since its last report: status's counter takes n, but never
 * more than this end's pointer moved since then (the distance forward
 * from where it stood, less than one turn of the ring) beyond what the
 * daemon itself moved and counted meanwhile; with an xpra peer, whose
 * writer may start again at the ring's start, at most up to the pointer
 * from there, if it moved. What the pointer has not covered yet is kept,
 * up to a ring, for the next report (a reader may say it read before it
 * gives the space back). Returns what was counted. The count is exact
 * from a reporter that tells before its pointer can come round (the
 * library does). */
uint64_t mm_channel_add_bytes(struct mm_channel *ch, unsigned dir, uint64_t n);

/* --- texts (text.c): length written, or -ENOSPC --- */

int mm_channel_caps_text(struct mm_channel *ch, char *buf, size_t len);
int mm_channel_token_text(struct mm_channel *ch, char *buf, size_t len);
int mm_channel_peer_text(struct mm_channel *ch, char *buf, size_t len);
int mm_channel_status_text(struct mm_channel *ch, char *buf, size_t len);
/* The last reason (status's error=), one line. */
void mm_channel_reason(struct mm_channel *ch, char *buf, size_t len);

#endif
