/* mmapfs daemon: what its files share. The filesystem is split by concern:
 *
 *   main.c    options, configuration, mount, the session loop
 *   tree.c    the channel table, inodes, lookup/getattr/readdir,
 *             mkdir/rmdir
 *   files.c   open/read/write/flush/release of the text files (capabilities,
 *             peer, token, status, chunks); dispatch of data to data.c
 *   data.c    the stream file `data`: claims, reads and writes; a call
 *             that has to wait is parked with its request and answered
 *             later, by whichever thread sees the stream move
 *   fifo.c    the FIFO entries `send` and `recv`: FIFOs the kernel
 *             serves, and the pump thread between them and the rings
 *   poll.c    poll on `data`
 *   event.c   the event core: waiters (what a wait is for, what to do when
 *             it moves) and the ticker thread that fires them, beside the
 *             heartbeats and liveness of the channels due
 *   ivshmem.c doorbells across a VM: the host's ivshmem server for QEMU's
 *             ivshmem-doorbell, the guest's Doorbell register and VFIO
 *
 * No libfuse worker waits: a worker does bounded work and returns.
 *
 * Locks, in the order they may be taken (a thread holding one may take
 * only those after it):
 *   fifo->lock (fifo.c)        a FIFO end's state: held by the pump's step
 *                              of it, or a worker's look (readlink, a
 *                              claim taken back); a send end's before a
 *                              recv end's, and one that may already be
 *                              held is only tried (trylock)
 *   ch->rd_lock, ch->wr_lock   one stream call at a time per direction,
 *                              held across that call and its reply (a
 *                              write to /dev/fuse), never across a wait;
 *                              one of them at a time
 *   fs->lock                   the channel table, handles, waiters, parked
 *                              requests: held only for list and field
 *                              updates, never across a system call (but a
 *                              futex wake) nor a walk of the channels; the
 *                              one walk under it is the ticker's look at
 *                              the armed waiters (a few loads each)
 *   fs->wheel_lock             the ticker's wheel; held across a beat's
 *                              ticks
 *   ch->mc's own locks         (core/channel.h)
 *   the ivshmem server's lock  (ivshmem.c) its clients' eventfds: a leaf,
 *                              taken by a doorbell's ring (a stream call
 *                              under any of the above), never waiting
 * libfuse calls an interrupt function holding the request's own lock,
 * which then takes fs->lock: so nothing that takes a request's lock
 * (fuse_req_interrupt_func) is called under fs->lock. Debug builds check
 * that fs->lock is not held where it must not be (assert_unlocked). */
#ifndef MMAPFS_FS_H
#define MMAPFS_FS_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "channel.h"
#include "config.h"

/* The files of a channel, in the order readdir lists them. Inode numbers:
 * 1 is the root, channel `id` is id * 16, its files id * 16 + kind. */
enum file_kind {
	F_DIR = 0,
	F_CAPABILITIES,
	F_PEER,
	F_TOKEN,
	F_STATUS,
	F_DATA,
	F_CHUNKS,			/* xpra interoperability: docs/xpra.md */
	F_SEND,				/* symlinks to the FIFOs (fifo.c) */
	F_RECV,
	F_NKINDS,			/* (the files listed) */
};

/* The two FIFO entries of a channel: ch->fifo[FIFO_SEND], [FIFO_RECV]. */
enum { FIFO_SEND, FIFO_RECV };
struct fifo;

#define INO_SHIFT 4
#define WATCHERS_MAX 128		/* event.c: 127 waits' words each */
/* The ticker's wheel: a slot for each of the next beats (event.c). */
#define TICK_SLOTS 4
#define TEXT_MAX (32 * 1024)		/* any of our text files fits */
#define DATA_MAX_IO (1024 * 1024)	/* the largest read or write of data */

/* What the table finds a channel by (the first member of struct chan). */
struct chan_key {
	uint64_t id;
	char name[256];
};

struct mmfs;

/* A wait on a channel's stream (event.c). The ticker sleeps on the shared
 * words the peer moves for `events` (POLLIN: the read ring's data_end,
 * POLLOUT: the write ring's data_start) and calls fire() once, without
 * fs->lock, when the stream's state (mm_stream_state: both pointers and
 * the ends of stream) is no longer what it was when the waiter was armed,
 * when the channel's state or its peer's liveness changed, or at every
 * beat if `beat`. A waiter that still waits arms itself again in fire(). */
struct waiter {
	/* fixed while armed */
	struct chan *ch;
	void (*fire)(struct mmfs *fs, struct waiter *w);
	/* fs->lock */
	unsigned events;
	bool beat;
	bool armed;			/* in fs->waiters */
	bool is_due;			/* in fs->due */
	bool beat_listed;		/* counted in fs->beat_waiters */
	bool firing;			/* the ticker is in fire() */
	unsigned counted;		/* the events it is among the sleepers for */
	uint32_t state[6];		/* the stream's, at arming */
	struct waiter *next, *prev;	/* in fs->waiters or fs->due */
};

/* The kinds of request a channel parks (data.c), one queue each: reads,
 * writes, opens, and a library's waits for either direction (MM_IOC_WAIT). */
enum park_kind { PARK_READ, PARK_WRITE, PARK_OPEN, PARK_WAIT_IN, PARK_WAIT_OUT, PARK_KINDS };
struct parked;

struct chan {
	/* fixed */
	struct chan_key key;
	/* fs->wheel_lock: where it is in the ticker's wheel (event.c) while
	 * it needs ticks, else tick_slot -1 */
	int tick_slot;
	unsigned tick_idx;
	/* its own locks */
	struct mm_channel mc;
	pthread_mutex_t rd_lock;	/* one data read at a time */
	pthread_mutex_t wr_lock;	/* one data write at a time */
	/* fs->lock: requests that wait, in the order they came (data.c),
	 * and the waiter that serves them */
	struct parked *parked[PARK_KINDS], *parked_last[PARK_KINDS];
	unsigned waiting[PARK_KINDS];	/* parked, queued or being served */
	struct waiter wait;
	/* rd_lock: a reader left in the middle of a stream; the daemon holds
	 * the read claim (owner: &ch->dropping) and drops the rest of that
	 * stream, up to its end */
	bool dropping;
	/* atomic: the streams_failed count the log last told (event.c) */
	unsigned failures_logged;
	/* fixed */
	struct timespec ctime;
	/* fs->lock */
	struct chan *next, *prev;	/* in fs->chans, in the order made */
	unsigned refs;			/* the table's, and one per user */
	bool removed;
	struct timespec mtime;		/* last handshake change */
	uid_t uid;			/* its owner and group (chown) */
	gid_t gid;
	bool group_w;			/* the group has the owner's access (chmod) */
	/* fixed: a user's channel (its maker was not the daemon's user) is
	 * made for that user, its areas in user_dir (core/channel.h) */
	bool for_user;
	struct mm_owner user;
	char *user_dir;			/* malloc'd; NULL unless for_user */
	const char *user_dirs[1];	/* the allowed directory, without allow_dirs */
	/* fs->lock: set at the first readlink of each, freed with ch */
	struct fifo *fifo[2];
	/* fixed: what its maker's usage counts for it (a mkdir), else 0 */
	uid_t payer;
	uint64_t charge;		/* the apparent bytes of its two areas */
};

/* What one user's channels made by mkdir hold, against cfg's limits. */
struct usage {
	uid_t uid;
	uint64_t chans;
	uint64_t bytes;
};

struct handle {
	/* fixed */
	struct chan *ch;
	enum file_kind kind;
	bool writer;			/* peer, chunks: opened to write */
	unsigned dirs;			/* data: MM_RD/MM_WR it holds */
	/* fs->lock */
	char *buf;			/* text snapshot, or input so far */
	size_t len;
	size_t done;			/* peer: how much was handed over */
	bool flushed;			/* data: closed once, no I/O since */
	bool library;			/* data: a libmmapfs handle's claim */
	struct fuse_pollhandle *ph;	/* data: the latest poll's, kept and
					 * notified at every move (poll.c) */
	struct waiter wait;		/* ph's; or a FIFO end's (fifo.c) */
	/* rd_lock: data, where its reader stands: in a stream (bytes read
	 * since its last end of stream), or just past an end of stream */
	bool in_stream;
	bool at_end;
	struct handle *next;		/* in fs->handles */
};

struct mmfs {
	pthread_mutex_t lock;
	struct chan *chans, *last;	/* lock: every channel, oldest first */
	void *by_name, *by_id;		/* lock: the same in tsearch(3) trees */
	uint64_t next_id;		/* lock */
	struct handle *handles;		/* lock: every open handle */
	struct waiter *waiters;		/* lock: the armed ones */
	struct waiter *due;		/* lock: those to fire now */
	bool waits_changed;		/* lock: one came or went */
	unsigned beat_waiters;		/* lock: armed ones with beat */
	uint64_t polled_move_ms;	/* lock: when a wait that only the
					 * recheck sees last moved */
	pthread_cond_t fired;		/* lock: a waiter's fire() returned */
	struct parked *parked;		/* lock: every parked request */
	pthread_mutex_t wheel_lock;
	struct tick_slot {		/* wheel_lock: the channels due at each of the */
		struct chan **chans;	/* next ticks, the next at wheel_at; */
		unsigned n;		/* each has room for every channel */
	} wheel[TICK_SLOTS];
	unsigned wheel_at;		/* wheel_lock */
	unsigned wheel_room;		/* wheel_lock */
	unsigned nchans;		/* lock: in the table */
	struct usage *usage;		/* lock: each user's (tree.c) */
	size_t nusage;			/* lock */
	struct {			/* where channels are made (tree.c) */
		pthread_mutex_t lock;
		struct chan *free;	/* lock: freed ones, for the next */
		char *chunk;		/* lock: the chunk being filled */
		size_t used;		/* lock */
	} pool;
	bool stop;			/* lock */
	/* fixed after start-up */
	struct mm_config cfg;
	const char **allow_dirs;	/* cfg.allow_dirs, or the mmap_dir */
	size_t n_allow_dirs;
	uint32_t session;
	char area_tag[16];		/* session in hex: names our areas */
	pthread_mutex_t dir_lock;	/* the mmap_dir, made on first use: */
	int dir_lockfd;			/* dir_lock: our flock there, or -1 */
	uid_t uid;			/* the mounting user: owns the top */
	gid_t gid;
	mode_t top_mode;		/* -o mkdir=: 0755, 01777 or 01775 */
	gid_t top_gid;
	bool debug;
	struct timespec mounted;
	struct fuse_session *se;
	pthread_t ticker;
	uint32_t kick;			/* the ticker's futex word (atomic) */
	struct watcher *watchers[WATCHERS_MAX];	/* lock: more words to wait on */
	unsigned nwatchers;		/* lock */
	/* the pump (fifo.c) */
	char *fifo_dir;			/* fixed: where the FIFOs are */
	int fifo_dirfd;			/* fixed: it, locked; -1 none */
	struct fifo *fifos;		/* lock: the FIFO ends in use */
	pthread_t pump;
	int pump_ep, pump_ev;		/* its epoll set, its eventfd */
	int pump_mid[2];		/* its pipe from a send FIFO to the
					 * ring (fifo.c, send_take); -1 none */
	/* doorbells (ivshmem.c): fixed after start-up, or NULL */
	struct ivshmem *ivshmem;
};

extern const struct fuse_lowlevel_ops mmfs_ops;

/* The handle a waiter is the `wait` of (a poll's, a FIFO end's). */
static inline struct handle *handle_of_wait(struct waiter *w)
{
	return (struct handle *)(void *)((char *)w - offsetof(struct handle, wait));
}

static inline struct mmfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

uint64_t mmfs_now_ms(void);

#define trace(fs, ...) \
	do { if ((fs)->debug) fuse_log(FUSE_LOG_DEBUG, "mmapfs: " __VA_ARGS__); } while (0)

/* tree.c */
int mmfs_mmap_dir(struct mmfs *fs, struct mm_err *err);
int mmfs_add_declared(struct mmfs *fs, const struct mm_chan_decl *d, struct mm_err *err);
void mmfs_close_all(struct mmfs *fs);
struct chan *chan_get(struct mmfs *fs, fuse_ino_t ino, enum file_kind *kind);
void chan_put(struct mmfs *fs, struct chan *ch);
void mm_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void mm_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void mm_readlink(fuse_req_t req, fuse_ino_t ino);
void mm_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		struct fuse_file_info *fi);
void mm_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi);
void mm_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void mm_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void mm_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	      dev_t rdev);
void mm_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void mm_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
	       fuse_ino_t newparent, const char *newname, unsigned int flags);
void mm_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
	       struct fuse_file_info *fi);

/* files.c */
/* The end of an open (r: 0 or -errno): h listed and answered, or freed
 * with the error. */
void open_finish(fuse_req_t req, struct handle *h, struct fuse_file_info *fi, int r);
int file_text(struct chan *ch, enum file_kind k, char *buf, size_t len);
void handle_free(struct handle *h);
void mm_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void mm_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	     struct fuse_file_info *fi);
void mm_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
	      off_t off, struct fuse_file_info *fi);
void mm_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void mm_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void mm_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
	      struct fuse_file_info *fi, unsigned flags, const void *in_buf,
	      size_t in_bufsz, size_t out_bufsz);

/* data.c */
/* Open data for h: 1 if answered later (parked: the reply is data.c's),
 * 0 (opened) or -errno. */
int data_open(fuse_req_t req, struct chan *ch, struct handle *h, struct fuse_file_info *fi);
void data_read(fuse_req_t req, struct handle *h, size_t size, struct fuse_file_info *fi);
void data_write(fuse_req_t req, struct handle *h, const char *buf, size_t size,
		struct fuse_file_info *fi);
void data_release(struct mmfs *fs, struct handle *h);
/* A library's ioctls on its claim: MM_IOC_BYTES, MM_IOC_WAIT, MM_IOC_RING. */
void data_ioctl(fuse_req_t req, struct handle *h, unsigned cmd, const void *in, size_t in_len);
/* Is h a library's claim (it said so with MM_IOC_BYTES)? */
bool data_is_library(struct mmfs *fs, const struct handle *h);
/* Is dir of ch's stream held by a library (whose chunk lists are its own)? */
bool data_library_holds(struct mmfs *fs, struct chan *ch, unsigned dir);
/* Wait in this thread (a little, interruptibly) while the holders of ch's
 * stream are handles already closed whose release is on its way, or the
 * daemon dropping an abandoned stream (which end_drop ends at once): true
 * once free. */
bool data_wait_released(fuse_req_t req, struct chan *ch, bool end_drop);
void data_init_chan(struct chan *ch);
/* ch's reader `owner` let go (a release, a FIFO reader gone): in the middle
 * of a stream (in_stream: it took bytes of one not yet ended; or, unless
 * at_end, bytes or an end of stream wait), the daemon takes its claim and
 * drops the rest of that stream; else the claim is given back. Either way
 * what waited for it is served. */
void data_reader_left(struct mmfs *fs, struct chan *ch, const void *owner, bool in_stream,
		      bool at_end);
/* Answer what ch has parked that can be answered now (the waiter's fire,
 * and after a release or an rmdir). No lock held. */
void data_serve(struct mmfs *fs, struct chan *ch);
/* At the end: answer every parked request (ENOTCONN). No other thread
 * serves any more. */
void data_cancel_all(struct mmfs *fs);
void trace_rings(struct mmfs *fs, struct chan *ch, const char *what);

/* fifo.c */
fuse_ino_t chan_ino(const struct chan *ch, enum file_kind k);
/* The target of ch's FIFO entry `which` into buf: 0 or -errno. From the
 * first on, the daemon keeps its ends of that FIFO. */
int fifo_readlink(fuse_req_t req, struct chan *ch, int which, char *buf, size_t len);
/* The target as it stands, without side effects: its length. */
int fifo_target(struct mmfs *fs, struct chan *ch, int which, char *buf, size_t len);
/* Look at ch's FIFO ends again (a claim was given back, its state
 * changed), at every one (states changed), or let go of ch's (it is gone). */
void fifo_poke(struct mmfs *fs, struct chan *ch);
void fifo_poke_all(struct mmfs *fs);
void fifo_remove(struct mmfs *fs, struct chan *ch);
/* The read claim back from recv while no reader took a byte of its
 * stream: 1 done, 0 not recv's to give, -EAGAIN try again later. */
int fifo_yield(struct mmfs *fs, struct chan *ch);
/* ch's owner, group or g+w changed: who may open its FIFOs too. */
void fifo_access(struct mmfs *fs, struct chan *ch);
void fifo_free(struct fifo *f);
int mmfs_pump_start(struct mmfs *fs);
void mmfs_pump_stop(struct mmfs *fs);

/* poll.c */
void mm_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	     struct fuse_pollhandle *ph);
/* h's poll handle, forgotten at its release. No lock held. */
void poll_forget(struct mmfs *fs, struct handle *h);

/* event.c */
/* Arm w (fs->lock held): it fires once the stream's state for w->events
 * is no longer `state` (loaded before the caller's last look at the
 * stream), or what it is now if state is NULL: the caller then looks again
 * after arming, so that no move falls in between. */
void waiter_arm(struct mmfs *fs, struct waiter *w, const uint32_t *state);
/* Disarm w, waiting for a fire() under way to return (fs->lock held; so
 * never from w's own fire(), nor holding a lock that fire() takes: a
 * fire() takes fs->lock, and a channel's (data_serve) its rd_lock and
 * wr_lock). */
void waiter_disarm(struct mmfs *fs, struct waiter *w);
/* Disarm w without waiting for a fire() under way (fs->lock held): for
 * a waiter that may be firing in this very thread, and whose memory stays. */
void waiter_cancel(struct mmfs *fs, struct waiter *w);
int mmfs_ticker_start(struct mmfs *fs);
void mmfs_ticker_stop(struct mmfs *fs);
/* Room in the wheel for n channels: 0 or -ENOMEM. fs->lock held. */
int mmfs_tick_room(struct mmfs *fs, unsigned n);
/* Tick ch at the next beat (a handshake or a claim may change what it
 * needs), or never again (it is gone). fs->lock held. */
void mmfs_tick_soon(struct mmfs *fs, struct chan *ch);
void mmfs_tick_forget(struct mmfs *fs, struct chan *ch);
void mmfs_tick_free(struct mmfs *fs);
/* Log a change of ch's state or of its peer's liveness. */
void chan_log_change(struct chan *ch);

/* Wake the ticker: it looks at the armed waiters again (a doorbell rang). */
void mmfs_ticker_kick(struct mmfs *fs);

/* ivshmem.c: doorbells across a VM (docs/ivshmem.md, "Doorbells") */
/* From the configuration (ivshmem_server and ivshmem_memory on a host,
 * ivshmem_device in a guest): open what they name, before the declared
 * channels are made. 0 (also when none is set) or -errno, err says why. */
int mmfs_ivshmem_setup(struct mmfs *fs, struct mm_err *err);
/* The server's thread (a host's), after daemonizing; stop: at the end,
 * and after a failed setup. 0 or -errno. */
int mmfs_ivshmem_start(struct mmfs *fs);
void mmfs_ivshmem_stop(struct mmfs *fs);
/* The doorbell of a declared area's file (the memory the server hands
 * out, a BAR of the guest's device), or NULL. */
const struct mm_bell *mmfs_ivshmem_bell(struct mmfs *fs, const char *file);
/* The vector that rings the next channel with a doorbell: the vectors
 * this daemon hears, shared out in turn. */
unsigned mmfs_ivshmem_vector(struct mmfs *fs);
/* status lines of a channel with a doorbell, appended at buf: their
 * length (0 without one). */
int mmfs_ivshmem_status(const struct mm_channel *mc, char *buf, size_t len);

/* Where fs->lock must not be held. It is an error-checking mutex (main.c)
 * unless NDEBUG, so locking it again in its holder fails: a cheap check. */
#ifdef NDEBUG
#define assert_unlocked(fs) ((void)(fs))
#else
#include <assert.h>
#define assert_unlocked(fs) do { \
	int r_ = pthread_mutex_lock(&(fs)->lock); \
	assert(r_ == 0); \
	pthread_mutex_unlock(&(fs)->lock); \
} while (0)
#endif

#endif
