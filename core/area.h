/* mmapfs core: shared memory areas.
 *
 * An area is one file mapped MAP_SHARED by both ends: a tmpfs file this
 * process created, a file a peer offered (opened under the attach rules of
 * DESIGN.md), or a path an administrator chose (an ivshmem BAR, a device, a
 * symlink), used as given. */
#ifndef MMAPFS_AREA_H
#define MMAPFS_AREA_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define MM_AREA_MIN (UINT64_C(64) * 1024)
#define MM_AREA_MAX (UINT64_C(4) * 1024 * 1024 * 1024 - 1)	/* below 4 GiB */

/* An area keeps no descriptor: the mapping outlives it. What needs the file
 * again (mm_area_fault, mm_area_reserve, deleting what we created) finds it
 * by its path and checks that it is still the file mapped (dev, ino). The
 * one exception is an offered file its maker may delete while we map it
 * (an xpra client's, once answered): its descriptor is kept, for a library
 * that maps the area later (status's fd). */
struct mm_area {
	int fd;				/* kept (see above), else -1 */
	uint8_t *base;			/* MAP_SHARED mapping of size bytes, or
					 * NULL when closed */
	uint64_t offset;		/* in the file (a window) */
	uint64_t size;
	bool created;			/* made by us: deleted on close */
	bool kernel_copy;		/* ordinary memory (a regular file, not
					 * sysfs): the kernel may copy from the
					 * mapping, e.g. into a FUSE reply. Not
					 * so a PCI BAR or a device. */
	dev_t dev;			/* identity of the file mapped, */
	ino_t ino;			/* checked before it is used by path */
	char *path;			/* as opened (malloc'd), or NULL */
};

/* A part of a file that is the whole area (header and ring), so one device
 * carries several areas: offset page-aligned; size 0 means the whole file. */
struct mm_window {
	uint64_t offset;
	uint64_t size;
};

/* A user the daemon acts for (a channel of another user's, when it runs as
 * root): the files it makes for them are theirs. */
struct mm_owner {
	uid_t uid;
	gid_t gid;
};

/* Where a peer's offered files may be opened from. */
struct mm_attach_rules {
	const char *const *dirs;	/* allowed directories */
	size_t ndirs;
	const uid_t *uids;		/* owners accepted besides our euid */
	size_t nuids;
	const struct mm_owner *user;	/* or, for a user's channel, that user
					 * alone: neither our euid nor uids */
};

void mm_area_init(struct mm_area *a);

/* The area size that holds a ring of at least ring_bytes: xpra's rule,
 * ring_bytes + the 8-byte header, rounded up to a page. 0 if it would reach
 * 4 GiB. */
uint64_t mm_area_size_for(uint64_t ring_bytes);

/* Make sure dir exists as a private directory of ours: create it (mode
 * 0700) if missing; refuse a symlink, a non-directory, another owner, or
 * one that group or others may write. 0 or -errno, err names the path and
 * its owner. */
int mm_area_dir_prepare(const char *dir, struct mm_err *err);

/* The same for a default directory in a place anyone may write to
 * (/dev/shm/mmapfs-UID): if someone else holds that name, a directory of
 * ours beside it, "DIR.XXXXXX", is used instead: the one a daemon of ours
 * made before (after a crash, for its leftovers), or a new one (mkdtemp,
 * an unguessable name). The directory chosen (malloc'd) in *chosen; if
 * the name was taken, its holder in *squatter and why in why (else
 * *squatter is -1). 0 or -errno. */
int mm_area_dir_claim(const char *dir, char **chosen, uid_t *squatter, char *why, size_t n,
		      struct mm_err *err);

/* A user's directory for the areas of their channels, "uUID" inside our
 * dir, where only we create (nobody can take its name first or swap it):
 * made if missing and given to them (mode 0700), or checked to be theirs
 * and private. dir is made searchable by all (0711) for their programs to
 * reach it. Its path goes to path. 0 or -errno. */
int mm_area_user_dir(const char *dir, const struct mm_owner *user, char *path, size_t n,
		     struct mm_err *err);

/* Create a new file "mmapfs.TAG.XXXXXX.mmap" in dir (without ".TAG" if tag
 * is NULL; dir itself not a symlink), mode 0600, size bytes, mapped shared
 * and zero-filled; given to user at once if not NULL. */
int mm_area_create(struct mm_area *a, const char *dir, const char *tag, uint64_t size,
		   const struct mm_owner *user, struct mm_err *err);

/* Leftovers. A daemon holds an flock on "mmapfs.TAG.lock" in its mmap_dir
 * for as long as it runs and tags the areas it creates there and in its
 * users' directories; a lock file that can be locked by someone else
 * belongs to a daemon that died, and its areas are leftovers. Take our own
 * lock (its descriptor in *lockfd), then delete every dead daemon's tagged
 * areas (files of ours only, and in each user's directory files of that
 * user only) and its lock file; *swept counts the areas. 0 or -errno, err
 * names the file. */
int mm_area_dir_lock(const char *dir, const char *tag, int *lockfd, unsigned *swept,
		     struct mm_err *err);
/* At a clean exit: delete our lock file and close it. */
void mm_area_dir_unlock(const char *dir, const char *tag, int lockfd);

/* Open a file a peer offered: only the basename of file is used, looked up
 * in rules->dirs in turn. Each directory is opened with O_NOFOLLOW and must
 * be owned by us or an allowed owner, and not writable by everyone without
 * the sticky bit; the name in it is looked up with O_PATH | O_NOFOLLOW,
 * so nothing is followed and nothing opened for I/O until the file passes:
 * a regular file (no device, FIFO or socket) with one link owned by us (or
 * rules->uids; or rules->user alone, if set); it is then opened read-write
 * through /proc/self/fd. size must be within [MM_AREA_MIN, MM_AREA_MAX]
 * and not beyond the file. For a user's channel (rules->user), a refusal in
 * a directory that is not the user's says only "not found", as a missing
 * file does: the user learns nothing they could not see for themselves.
 * The first size bytes are mapped; the descriptor is kept in a->fd if
 * keep_fd (the peer may delete the file), else closed. -EACCES for a
 * refused file, -EINVAL for a bad size. */
int mm_area_open_offered(struct mm_area *a, const char *file, uint64_t size,
			 const struct mm_attach_rules *rules, bool keep_fd,
			 struct mm_err *err);

/* Open an administrator's path as given (symlinks, devices, sysfs files
 * allowed). If it is missing and create is set, it is created (mode 0600,
 * create_size bytes). With a window (win not NULL, win->size not 0), that
 * part of the file is the area, which must lie within the file, and size
 * (if not 0) must equal the window's; else size 0 maps the file's own
 * length, and other sizes must not exceed it. Such a file is never
 * deleted. */
int mm_area_open_path(struct mm_area *a, const char *path, bool create,
		      uint64_t create_size, uint64_t size, const struct mm_window *win,
		      struct mm_err *err);
/* The same for a file already open read-write (fd, which is taken: kept
 * in a, or closed on failure), named path in messages. */
int mm_area_open_fd(struct mm_area *a, int fd, const char *path, uint64_t size,
		    const struct mm_window *win, struct mm_err *err);

/* A store into the area faulted (SIGBUS): why? -ENOSPC when the file is
 * still as long as the mapping (its filesystem had no page to give: the
 * area is sparse), -EIO when it was truncated, is not a regular file, or
 * its path no longer names it. */
int mm_area_fault(const struct mm_area *a);

/* Give every page of a created area its space now (-o reserve), so that a
 * full filesystem fails here and not in the middle of a stream: the file is
 * opened again by its path for that. 0 or -errno (-ENOSPC; -ESTALE if the
 * path names another file now), err names the file. */
int mm_area_reserve(struct mm_area *a, struct mm_err *err);

/* Unmap (and close a kept descriptor); delete the file if we created it
 * and it is still ours. Accepts a closed area. */
void mm_area_close(struct mm_area *a);

/* The usable length of what fd refers to: st_size for a regular file (which
 * includes sysfs resource files), the device size for a block device, else
 * what lseek(SEEK_END) says. 0 or -errno. */
int mm_fd_length(int fd, uint64_t *len);

#endif
