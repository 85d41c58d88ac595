/* mmapfs daemon: what its files share. The filesystem is split by concern:
 *
 *   main.c    options, configuration, mount, the session loop
 *   tree.c    the channel table, inodes, lookup/getattr/readdir,
 *             mkdir/rmdir
 *   files.c   open/read/write/flush/release of the text files (capabilities,
 *             peer, token, status, chunks); dispatch of data to data.c
 *   data.c    the stream file `data`: claims, blocking reads and writes
 *   pipe.c    the stream file `pipe`: a FIFO the kernel serves, and the
 *             pump thread between FIFOs and rings
 *   poll.c    poll on `data`, and the ticker thread (heartbeats, liveness,
 *             poll notifications, and the pump's waits on rings): it
 *             visits only the channels due
 *
 * Locks: fs->lock guards the channel table, the handles and the pollers,
 * and is only ever held briefly: never across a call that may block, nor
 * across a handshake. Each channel's core state has its own locks
 * (core/channel.h); fs->lock may be held while calling into a channel,
 * never the other way round. */
#ifndef MMAPFS_FS_H
#define MMAPFS_FS_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
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
	F_PIPE,				/* `pipe` to its writers: the FIFO out */
	F_NKINDS,			/* (the files listed) */
	F_PIPE_IN = F_NKINDS,		/* `pipe` to its readers: the FIFO in */
	F_NINOS,
};

#define INO_SHIFT 4
#define WATCHERS_MAX 128		/* poll.c: 127 waits' words each */
/* The ticker's wheel: a slot for each of the next beats (poll.c). */
#define TICK_SLOTS 4
#define TEXT_MAX (32 * 1024)		/* any of our text files fits */
#define DATA_MAX_IO (1024 * 1024)	/* the largest read or write of data */

/* What the table finds a channel by (the first member of struct chan). */
struct chan_key {
	uint64_t id;
	char name[256];
};

struct chan {
	/* fixed */
	struct chan_key key;
	/* fs->lock: where it is in the ticker's wheel (poll.c) while it
	 * needs ticks, else tick_slot -1 */
	int tick_slot;
	unsigned tick_idx;
	/* its own locks */
	struct mm_channel mc;
	pthread_mutex_t rd_lock;	/* one data read at a time */
	pthread_mutex_t wr_lock;	/* one data write at a time */
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
	bool polling;			/* in fs->pollers: */
	struct fuse_pollhandle *ph;	/* a poll waiting for a change, or */
	bool moved;			/* a pump's wait for ring_seen to move */
	uint32_t ring_seen[2];		/* (else for ph_events to come true) */
	unsigned ph_events;
	struct handle *poll_next;	/* in fs->pollers while polling */
	struct handle *next;		/* in fs->handles */
};

struct mmfs {
	pthread_mutex_t lock;
	struct chan *chans, *last;	/* lock: every channel, oldest first */
	void *by_name, *by_id;		/* lock: the same in tsearch(3) trees */
	uint64_t next_id;		/* lock */
	struct handle *handles;		/* lock: every open handle */
	struct handle *pollers;		/* lock: handles with a poll handle */
	bool polls_changed;		/* lock: one of them went */
	struct tick_slot {		/* lock: the channels due at each of the */
		struct chan **chans;	/* next ticks, the next at wheel_at; */
		unsigned n;		/* each has room for every channel */
	} wheel[TICK_SLOTS];
	unsigned wheel_at;		/* lock */
	unsigned wheel_room;		/* lock */
	unsigned nchans;		/* lock: in the table */
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
	/* the pump (pipe.c) */
	char *mountpoint;		/* fixed: absolute, for the pump's opens */
	struct pipe_sess *pipes;	/* lock: the sessions of `pipe` */
	pthread_t pump;
	int pump_ep, pump_ev;		/* its epoll set, its eventfd */
};

extern const struct fuse_lowlevel_ops mmfs_ops;

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
int data_open(fuse_req_t req, struct chan *ch, struct handle *h, struct fuse_file_info *fi);
void data_read(fuse_req_t req, struct handle *h, size_t size, struct fuse_file_info *fi);
void data_write(fuse_req_t req, struct handle *h, const char *buf, size_t size,
		struct fuse_file_info *fi);
void data_release(struct mmfs *fs, struct handle *h);
/* Claim `dirs` of ch's stream for owner as an open does: waits for a
 * release on its way, or for the reader to take earlier ends of stream,
 * unless nonblock. The mask taken, or -errno. */
int claim_wait(fuse_req_t req, struct chan *ch, unsigned dirs, const void *owner,
	       bool nonblock);
void data_ioctl(fuse_req_t req, struct handle *h, unsigned cmd, const void *in, size_t in_len);
/* Is dir of ch's stream held by a library (whose chunk lists are its own)? */
bool data_library_holds(struct mmfs *fs, struct chan *ch, unsigned dir);
/* Wait (a little, interruptibly) while the holders of ch's stream are
 * handles already closed whose release is on its way: true once free. */
bool data_wait_released(fuse_req_t req, struct chan *ch);
void trace_rings(struct mmfs *fs, struct chan *ch, const char *what);

/* pipe.c */
fuse_ino_t chan_ino(const struct chan *ch, enum file_kind k);
int pipe_lookup(fuse_req_t req, struct chan *ch, enum file_kind *k);
fuse_ino_t pipe_end_ino(fuse_req_t req, const char *name);
bool pipe_gone(const struct handle *h);
/* A pump's wait for the ring's words to move (h->moved): over? */
bool pipe_ring_moved(struct handle *h, const uint32_t *v, unsigned n);
void pipe_wake(struct mmfs *fs, struct handle *h);
int mmfs_pump_start(struct mmfs *fs);
void mmfs_pump_stop(struct mmfs *fs);

/* poll.c */
void mm_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	     struct fuse_pollhandle *ph);
/* Watch h's stream for `events` (h->ph set: a poll's, else a pump's wait).
 * fs->lock held. */
void poll_add(struct mmfs *fs, struct handle *h, unsigned events);
void poll_drop(struct mmfs *fs, struct handle *h, bool notify);
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

#endif
