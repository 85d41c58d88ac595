/* mmapfs daemon: shared state between main.c and ops.c. */
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
 * 1 is the root, channel `id` is id * 8, its files id * 8 + kind. */
enum file_kind {
	F_DIR = 0,
	F_CAPABILITIES,
	F_PEER,
	F_TOKEN,
	F_STATUS,
	F_DATA,
	F_CHUNKS,			/* xpra interoperability: docs/xpra.md */
	F_NKINDS,
};

#define INO_SHIFT 3

struct handle;

struct chan {
	struct chan *next;		/* fs->lock */
	uint64_t id;
	char name[256];
	unsigned refs;			/* fs->lock: list + handles */
	bool removed;			/* fs->lock */
	struct mm_channel mc;		/* fs->lock, except the data path */
	struct timespec ctime;
	struct timespec mtime;		/* fs->lock: last handshake change */
	/* data users, all fs->lock */
	struct handle *reader;
	struct handle *writer;
	unsigned data_handles;		/* open handles on data */
	unsigned io_busy;		/* read/write calls in progress */
	pthread_mutex_t rd_lock;	/* one data read at a time */
	pthread_mutex_t wr_lock;	/* one data write at a time */
};

struct mmfs {
	pthread_mutex_t lock;
	struct chan *chans;		/* lock */
	uint64_t next_id;		/* lock */
	struct mm_config cfg;
	const char **allow_dirs;	/* cfg.allow_dirs, or the mmap_dir */
	size_t n_allow_dirs;
	uint32_t session;
	uid_t uid;
	gid_t gid;
	bool debug;
	struct timespec mounted;
	struct fuse_session *se;
	pthread_t ticker;
	bool stop;			/* lock */
	uint32_t kick;			/* the ticker's futex word (atomic) */
	struct handle *pollers;		/* lock: handles with a poll handle */
	struct handle *handles;		/* lock: every open handle */
};

extern const struct fuse_lowlevel_ops mmfs_ops;

uint64_t mmfs_now_ms(void);

/* Channels at start-up (declared ones) and at the end. */
int mmfs_add_declared(struct mmfs *fs, const struct mm_chan_decl *d, struct mm_err *err);
void mmfs_close_all(struct mmfs *fs);

/* The heartbeat and poll-notification thread. */
int mmfs_ticker_start(struct mmfs *fs);
void mmfs_ticker_stop(struct mmfs *fs);

#define trace(fs, ...) \
	do { if ((fs)->debug) fuse_log(FUSE_LOG_DEBUG, "mmapfs: " __VA_ARGS__); } while (0)

#endif
