#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "area.h"
#include "caps.h"

void mm_area_init(struct mm_area *a)
{
	memset(a, 0, sizeof(*a));
	a->fd = -1;
}

uint64_t mm_area_size_for(uint64_t ring_bytes)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t size;

	if (ring_bytes > MM_AREA_MAX)
		return 0;
	size = (ring_bytes + 8 + page - 1) / page * page;
	return size > MM_AREA_MAX ? 0 : size;
}

int mm_fd_length(int fd, uint64_t *len)
{
	struct stat st;
	off_t end;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		*len = (uint64_t)st.st_size;
		return 0;
	}
	if (S_ISBLK(st.st_mode)) {
		uint64_t n;

		if (ioctl(fd, BLKGETSIZE64, &n) < 0)
			return -errno;
		*len = n;
		return 0;
	}
	end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		return -errno;
	*len = (uint64_t)end;
	return 0;
}

/* Is fd ordinary memory, which the kernel can copy from when mapped? */
static bool kernel_can_copy(int fd)
{
	struct statfs sfs;
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       fstatfs(fd, &sfs) == 0 && sfs.f_type != SYSFS_MAGIC;
}

/* Map size bytes of fd at offset as the area a, named path. The caller
 * closes fd either way: the mapping is all an area keeps. */
static int map_area(struct mm_area *a, int fd, uint64_t offset, uint64_t size,
		    const char *path, struct mm_err *err)
{
	struct stat st;
	char *name;
	void *p;

	if (size < MM_AREA_MIN || size > MM_AREA_MAX)
		return mm_fail(err, -EINVAL, "%s: size %llu is outside %llu..%llu",
			       path, (unsigned long long)size,
			       (unsigned long long)MM_AREA_MIN,
			       (unsigned long long)MM_AREA_MAX);
	if (fstat(fd, &st) < 0)
		return mm_fail(err, -errno, "%s: %s", path, strerror(errno));
	name = strdup(path);
	if (!name)
		return mm_fail(err, -ENOMEM, "%s: out of memory", path);
	p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
	if (p == MAP_FAILED) {
		free(name);
		return mm_fail(err, -errno, "%s: mmap: %s", path, strerror(errno));
	}
	a->base = p;
	a->offset = offset;
	a->kernel_copy = kernel_can_copy(fd);
	a->size = size;
	a->dev = st.st_dev;
	a->ino = st.st_ino;
	a->path = name;
	return 0;
}

/* Is st a private directory of uid's: a directory, owned by uid, that
 * neither group nor others may write? 0 or -errno, err names dir. */
static int dir_private(const struct stat *st, const char *dir, uid_t uid, struct mm_err *err)
{
	if (S_ISLNK(st->st_mode))
		return mm_fail(err, -ELOOP, "%s: a symbolic link (owned by uid %u)", dir,
			       (unsigned)st->st_uid);
	if (!S_ISDIR(st->st_mode))
		return mm_fail(err, -ENOTDIR, "%s: not a directory (owned by uid %u)", dir,
			       (unsigned)st->st_uid);
	if (st->st_uid != uid)
		return mm_fail(err, -EACCES, "%s: owned by uid %u, not by uid %u", dir,
			       (unsigned)st->st_uid, (unsigned)uid);
	if (st->st_mode & (S_IWGRP | S_IWOTH))
		return mm_fail(err, -EACCES, "%s: writable by group or others (owned by uid %u)",
			       dir, (unsigned)st->st_uid);
	return 0;
}

int mm_area_dir_prepare(const char *dir, struct mm_err *err)
{
	struct stat st;

	if (dir[0] != '/')
		return mm_fail(err, -EINVAL, "%s: not an absolute path", dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return mm_fail(err, -errno, "%s: mkdir: %s", dir, strerror(errno));
	if (lstat(dir, &st) < 0)
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	return dir_private(&st, dir, geteuid(), err);
}

/* The 6-letter suffixes mkdtemp(3) makes: "DIR.XXXXXX" for base "DIR". */
static bool is_beside(const char *name, const char *base)
{
	size_t n = strlen(base);

	return strncmp(name, base, n) == 0 && name[n] == '.' && strlen(name + n + 1) == 6 &&
	       strspn(name + n + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				    "0123456789") == 6;
}

/* A directory of ours beside dir ("DIR.XXXXXX", private, ours): its path
 * (malloc'd) in *found, or NULL if there is none. 0 or -errno. */
static int find_beside(const char *dir, char **found, struct mm_err *err)
{
	char parent[PATH_MAX];
	const char *base = strrchr(dir, '/') + 1;
	struct dirent *e;
	struct stat st;
	DIR *d;
	int r = 0;

	*found = NULL;
	snprintf(parent, sizeof(parent), "%.*s", (int)(base - dir), dir);
	d = opendir(parent);
	if (!d)
		return mm_fail(err, -errno, "%s: %s", parent, strerror(errno));
	while (!*found && (e = readdir(d))) {
		if (!is_beside(e->d_name, base) ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    dir_private(&st, e->d_name, geteuid(), NULL) < 0)
			continue;
		if (asprintf(found, "%s%s", parent, e->d_name) < 0) {
			*found = NULL;
			r = mm_fail(err, -ENOMEM, "out of memory");
			break;
		}
	}
	closedir(d);
	return r;
}

int mm_area_dir_claim(const char *dir, char **chosen, uid_t *squatter, char *why, size_t n,
		      struct mm_err *err)
{
	struct mm_err taken;
	struct stat st;
	int r;

	*chosen = NULL;
	*squatter = (uid_t)-1;
	r = mm_area_dir_prepare(dir, &taken);
	if (r == 0) {
		*chosen = strdup(dir);
		return *chosen ? 0 : mm_fail(err, -ENOMEM, "out of memory");
	}
	/* someone else's name: anything but a missing parent or a limit */
	if (r != -EACCES && r != -ENOTDIR && r != -ELOOP)
		return mm_fail(err, r, "%s", taken.msg);
	if (lstat(dir, &st) < 0)
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	*squatter = st.st_uid;
	snprintf(why, n, "%s", taken.msg);
	r = find_beside(dir, chosen, err);
	if (r < 0 || *chosen)
		return r;
	if (asprintf(chosen, "%s.XXXXXX", dir) < 0) {
		*chosen = NULL;
		return mm_fail(err, -ENOMEM, "out of memory");
	}
	if (!mkdtemp(*chosen)) {
		r = mm_fail(err, -errno, "%s: mkdtemp: %s", *chosen, strerror(errno));
		free(*chosen);
		*chosen = NULL;
	}
	return r;
}

int mm_area_user_dir(const char *dir, const struct mm_owner *user, char *path, size_t n,
		     struct mm_err *err)
{
	char name[32];
	struct stat st;
	int dfd, r = 0;

	snprintf(name, sizeof(name), "u%u", (unsigned)user->uid);
	if (snprintf(path, n, "%s/%s", dir, name) >= (int)n)
		return mm_fail(err, -ENAMETOOLONG, "%s: path too long", dir);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	/* the user crosses our directory (never lists it) to reach theirs */
	if (fstat(dfd, &st) < 0 || (r = dir_private(&st, dir, geteuid(), err)) < 0 ||
	    ((st.st_mode & 0111) != 0111 && fchmod(dfd, (st.st_mode & 07777) | 0111) < 0)) {
		r = r ? r : mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
		goto out;
	}
	/* made here, where only we create: theirs now */
	if (mkdirat(dfd, name, 0700) == 0) {
		if (fchownat(dfd, name, user->uid, user->gid, AT_SYMLINK_NOFOLLOW) < 0) {
			r = mm_fail(err, -errno, "%s: cannot give it to uid %u: %s", path,
				    (unsigned)user->uid, strerror(errno));
			unlinkat(dfd, name, AT_REMOVEDIR);
			goto out;
		}
	} else if (errno != EEXIST) {
		r = mm_fail(err, -errno, "%s: mkdir: %s", path, strerror(errno));
		goto out;
	}
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		r = mm_fail(err, -errno, "%s: %s", path, strerror(errno));
	else
		r = dir_private(&st, path, user->uid, err);
out:
	close(dfd);
	return r;
}

/* Create a file named "mmapfs.TAG.XXXXXX.mmap" (six random letters) in dfd,
 * as mkostemps(3) would; its name goes to name. The descriptor or -errno. */
static int create_unique(int dfd, const char *tag, char *name, size_t n)
{
	static const char letters[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char rnd[6];
	char x[7];
	int fd = -EEXIST;

	for (int tries = 0; tries < 100 && fd == -EEXIST; tries++) {
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			return -errno;
		for (int i = 0; i < 6; i++)
			x[i] = letters[rnd[i] % (sizeof(letters) - 1)];
		x[6] = '\0';
		if (snprintf(name, n, "mmapfs.%s%s%s.mmap", tag ? tag : "", tag ? "." : "", x) >=
		    (int)n)
			return -ENAMETOOLONG;
		fd = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0)
			fd = -errno;
	}
	return fd;
}

int mm_area_create(struct mm_area *a, const char *dir, const char *tag, uint64_t size,
		   const struct mm_owner *user, struct mm_err *err)
{
	char name[NAME_MAX + 1], path[PATH_MAX];
	int dfd, fd, r;

	if (size < MM_AREA_MIN || size > MM_AREA_MAX)
		return mm_fail(err, -EINVAL, "area size %llu is outside %llu..%llu",
			       (unsigned long long)size,
			       (unsigned long long)MM_AREA_MIN,
			       (unsigned long long)MM_AREA_MAX);
	/* dir is not followed if it is a symlink: a user's own directory may
	 * be swapped for one under our feet */
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	fd = create_unique(dfd, tag, name, sizeof(name));
	if (fd < 0) {
		close(dfd);
		return mm_fail(err, fd, "%s: cannot create a file: %s", dir, strerror(-fd));
	}
	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		r = mm_fail(err, -ENAMETOOLONG, "%s: path too long", dir);
	else if (user && fchown(fd, user->uid, user->gid) < 0)
		r = mm_fail(err, -errno, "%s: cannot give it to uid %u: %s", path,
			    (unsigned)user->uid, strerror(errno));
	else if (ftruncate(fd, (off_t)size) < 0)
		r = mm_fail(err, -errno, "%s: %s", path, strerror(errno));
	else
		r = map_area(a, fd, 0, size, path, err);
	if (r < 0)
		unlinkat(dfd, name, 0);
	else
		a->created = true;
	close(fd);
	close(dfd);
	return r;
}

static bool owner_allowed(uid_t uid, const struct mm_attach_rules *rules)
{
	if (rules->user)
		return uid == rules->user->uid;
	if (uid == geteuid())
		return true;
	for (size_t i = 0; i < rules->nuids; i++)
		if (rules->uids[i] == uid)
			return true;
	return false;
}

/* Open an allowed directory, itself no symbolic link, owned by us or an
 * allowed owner, and not writable by everyone without the sticky bit: its
 * descriptor (its owner in *uid), -ENOENT if it is missing, else -errno
 * with err set. */
static int open_allowed_dir(const char *dir, const struct mm_attach_rules *rules, uid_t *uid,
			    struct mm_err *err)
{
	struct stat st;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (dfd < 0 && errno == ENOENT)
		return -ENOENT;
	if (dfd < 0 && (errno == EMFILE || errno == ENFILE))	/* a limit, not a refusal */
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	if (dfd < 0 && (errno == ELOOP || errno == ENOTDIR))
		return mm_fail(err, -EACCES, "%s: not a directory (a symbolic link?)", dir);
	if (dfd < 0)
		return mm_fail(err, -EACCES, "%s: %s", dir, strerror(errno));
	if (fstat(dfd, &st) < 0) {
		close(dfd);
		return mm_fail(err, -EACCES, "%s: %s", dir, strerror(errno));
	}
	*uid = st.st_uid;
	if (st.st_uid != geteuid() && !owner_allowed(st.st_uid, rules)) {
		close(dfd);
		return mm_fail(err, -EACCES, "%s: owned by uid %u, not an allowed owner", dir,
			       (unsigned)st.st_uid);
	}
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX)) {
		close(dfd);
		return mm_fail(err, -EACCES,
			       "%s: writable by everyone without the sticky bit", dir);
	}
	return dfd;
}

/* Check what fd (name, found in dir) is, against the attach rules. */
static int file_allowed(int fd, const char *dir, const char *name, uint64_t size,
			const struct mm_attach_rules *rules, struct mm_err *err)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return mm_fail(err, -errno, "%s/%s: %s", dir, name, strerror(errno));
	if (S_ISLNK(st.st_mode))
		return mm_fail(err, -EACCES, "%s/%s: is a symbolic link", dir, name);
	if (!S_ISREG(st.st_mode))
		return mm_fail(err, -EACCES, "%s/%s: not a regular file", dir, name);
	if (st.st_nlink != 1)
		return mm_fail(err, -EACCES, "%s/%s: has %lu links, expected 1", dir,
			       name, (unsigned long)st.st_nlink);
	if (!owner_allowed(st.st_uid, rules))
		return mm_fail(err, -EACCES, "%s/%s: owned by uid %u, not an allowed owner",
			       dir, name, (unsigned)st.st_uid);
	if (size > (uint64_t)st.st_size)
		return mm_fail(err, -EINVAL, "%s/%s: size %llu is beyond the file's %lld bytes",
			       dir, name, (unsigned long long)size, (long long)st.st_size);
	return 0;
}

/* Look name up in dfd (dir) without following anything: the basename
 * alone, a symbolic link itself (O_PATH | O_NOFOLLOW), nothing opened for
 * I/O. If it passes file_allowed(), open that very file read-write through
 * /proc/self/fd: the descriptor, -ENOENT if it is not there, else -errno. */
static int open_allowed_file(int dfd, const char *dir, const char *name, uint64_t size,
			     const struct mm_attach_rules *rules, struct mm_err *err)
{
	char proc[32];
	int pfd, fd, r;

	pfd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0 && errno == ENOENT)
		return -ENOENT;
	if (pfd < 0)
		return mm_fail(err, errno == EMFILE || errno == ENFILE ? -errno : -EACCES,
			       "%s/%s: %s", dir, name, strerror(errno));
	r = file_allowed(pfd, dir, name, size, rules, err);
	if (r == 0) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
		fd = open(proc, O_RDWR | O_NOCTTY | O_CLOEXEC);
		r = fd >= 0 ? fd : mm_fail(err, errno == EMFILE || errno == ENFILE ? -errno : -EACCES,
					   "%s/%s: %s", dir, name, strerror(errno));
	}
	close(pfd);
	return r;
}

int mm_area_open_offered(struct mm_area *a, const char *file, uint64_t size,
			 const struct mm_attach_rules *rules, bool keep_fd,
			 struct mm_err *err)
{
	const char *name = strrchr(file, '/');
	struct mm_err why;
	int r;

	name = name ? name + 1 : file;
	if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return mm_fail(err, -EINVAL, "%s: no file name", file);
	if (size < MM_AREA_MIN || size > MM_AREA_MAX)
		return mm_fail(err, -EINVAL, "%s: size %llu is outside %llu..%llu", file,
			       (unsigned long long)size, (unsigned long long)MM_AREA_MIN,
			       (unsigned long long)MM_AREA_MAX);
	for (size_t i = 0; i < rules->ndirs; i++) {
		const char *dir = rules->dirs[i];
		char path[PATH_MAX];
		/* a user learns why only where they could look themselves:
		 * in a directory of theirs; elsewhere a refusal is "not found" */
		bool tell;
		uid_t owner = (uid_t)-1;
		int dfd, fd;

		dfd = open_allowed_dir(dir, rules, &owner, &why);
		tell = !rules->user || (dfd >= 0 && owner == rules->user->uid);
		if (dfd == -ENOENT || (dfd < 0 && !tell && dfd == -EACCES))
			continue;
		if (dfd < 0)
			return mm_fail(err, dfd, "%s", why.msg);
		fd = open_allowed_file(dfd, dir, name, size, rules, &why);
		close(dfd);
		if (fd == -ENOENT || (fd < 0 && !tell && fd != -EMFILE && fd != -ENFILE))
			continue;
		if (fd < 0)
			return mm_fail(err, fd, "%s", why.msg);
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		r = map_area(a, fd, 0, size, path, err);
		if (r == 0 && keep_fd)
			a->fd = fd;
		else
			close(fd);
		return r;
	}
	return mm_fail(err, -EACCES, "%s: not found in the allowed directories", name);
}

int mm_area_open_path(struct mm_area *a, const char *path, bool create,
		      uint64_t create_size, uint64_t size, const struct mm_window *win,
		      struct mm_err *err)
{
	int fd, r;

	fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && create) {
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, 0600);
		if (fd >= 0 && ftruncate(fd, (off_t)create_size) < 0) {
			r = mm_fail(err, -errno, "%s: %s", path, strerror(errno));
			close(fd);
			return r;
		}
	}
	if (fd < 0)
		return mm_fail(err, -errno, "%s: %s", path, strerror(errno));
	return mm_area_open_fd(a, fd, path, size, win, err);
}

int mm_area_open_fd(struct mm_area *a, int fd, const char *path, uint64_t size,
		    const struct mm_window *win, struct mm_err *err)
{
	uint64_t len, off = win ? win->offset : 0;
	int r;

	r = mm_fd_length(fd, &len);
	if (r < 0) {
		mm_fail(err, r, "%s: cannot tell its size: %s", path, strerror(-r));
		goto fail;
	}
	if (win && win->size) {
		if (size && size != win->size) {
			r = mm_fail(err, -EINVAL, "%s: size %llu differs from the window's %llu",
				    path, (unsigned long long)size,
				    (unsigned long long)win->size);
			goto fail;
		}
		if (off > len || win->size > len - off) {
			r = mm_fail(err, -EINVAL, "%s: the window %llu+%llu is beyond its %llu bytes",
				    path, (unsigned long long)off,
				    (unsigned long long)win->size, (unsigned long long)len);
			goto fail;
		}
		size = win->size;
	}
	if (size == 0)
		size = len;
	if (size > len) {
		r = mm_fail(err, -EINVAL, "%s: size %llu is beyond its %llu bytes", path,
			    (unsigned long long)size, (unsigned long long)len);
		goto fail;
	}
	r = map_area(a, fd, off, size > MM_AREA_MAX ? MM_AREA_MAX : size, path, err);
fail:
	close(fd);
	return r;
}

/* Does st describe the file a maps? */
static bool same_file(const struct mm_area *a, const struct stat *st)
{
	return st->st_dev == a->dev && st->st_ino == a->ino;
}

int mm_area_fault(const struct mm_area *a)
{
	struct stat st;
	int r = a->fd >= 0 ? fstat(a->fd, &st) : a->path ? stat(a->path, &st) : -1;

	if (r == 0 && same_file(a, &st) && S_ISREG(st.st_mode) &&
	    (uint64_t)st.st_size >= a->offset + a->size)
		return -ENOSPC;
	return -EIO;
}

int mm_area_reserve(struct mm_area *a, struct mm_err *err)
{
	struct stat st;
	int fd, r;

	fd = open(a->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return mm_fail(err, -errno, "%s: %s", a->path, strerror(errno));
	if (fstat(fd, &st) < 0 || !same_file(a, &st)) {
		close(fd);
		return mm_fail(err, -ESTALE, "%s: no longer the file mapped", a->path);
	}
	r = posix_fallocate(fd, (off_t)a->offset, (off_t)a->size);
	close(fd);
	if (r == ENOSPC)
		return mm_fail(err, -ENOSPC, "%s: no space left for its %llu bytes", a->path,
			       (unsigned long long)a->size);
	if (r)
		return mm_fail(err, -r, "%s: fallocate: %s", a->path, strerror(r));
	return 0;
}

void mm_area_close(struct mm_area *a)
{
	struct stat st;

	if (a->base)
		munmap(a->base, (size_t)a->size);
	if (a->created && lstat(a->path, &st) == 0 && same_file(a, &st))
		unlink(a->path);
	if (a->fd >= 0)
		close(a->fd);
	free(a->path);
	mm_area_init(a);
}

/* "mmapfs.TAG.lock" -> TAG (in tag, of size n); false for other names. */
static bool lock_tag(const char *name, char *tag, size_t n)
{
	size_t len = strlen(name);

	if (strncmp(name, "mmapfs.", 7) != 0 || len <= 12 || strcmp(name + len - 5, ".lock"))
		return false;
	len -= 12;
	if (len >= n || memchr(name + 7, '.', len))
		return false;
	memcpy(tag, name + 7, len);
	tag[len] = '\0';
	return true;
}

/* A stream of dfd's entries, its own open (a dup would share the caller's
 * position in dfd), or NULL. */
static DIR *list_dir(int dfd)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (fd >= 0 && !d)
		close(fd);
	return d;
}

/* Delete the areas tagged `tag` in dfd that belong to uid. */
static unsigned sweep_tag(int dfd, const char *tag, uid_t uid)
{
	char prefix[NAME_MAX + 16];
	unsigned n = 0;
	struct dirent *e;
	struct stat st;
	DIR *d = list_dir(dfd);

	if (!d)
		return 0;
	snprintf(prefix, sizeof(prefix), "mmapfs.%s.", tag);
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);

		if (strncmp(e->d_name, prefix, strlen(prefix)) || len < 5 ||
		    strcmp(e->d_name + len - 5, ".mmap"))
			continue;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(st.st_mode) && st.st_uid == uid &&
		    unlinkat(dfd, e->d_name, 0) == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* The same in each user's directory in dfd ("uUID", theirs: mm_area_user_dir),
 * for their areas. */
static unsigned sweep_users(int dfd, const char *tag)
{
	unsigned n = 0;
	struct dirent *e;
	struct stat st;
	uint64_t uid;
	DIR *d = list_dir(dfd);

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		int ufd;

		if (e->d_name[0] != 'u' || mm_parse_u64(e->d_name + 1, UINT32_MAX - 1, &uid) < 0)
			continue;
		ufd = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (ufd < 0)
			continue;
		if (fstat(ufd, &st) == 0 && st.st_uid == (uid_t)uid)
			n += sweep_tag(ufd, tag, (uid_t)uid);
		close(ufd);
	}
	closedir(d);
	return n;
}

int mm_area_dir_lock(const char *dir, const char *tag, int *lockfd, unsigned *swept,
		     struct mm_err *err)
{
	char name[NAME_MAX + 1], other[NAME_MAX + 1];
	struct dirent *e;
	DIR *d;
	int dfd, fd;

	*swept = 0;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return mm_fail(err, -errno, "%s: %s", dir, strerror(errno));
	/* locked before it appears under its name, so no sweeper can take it
	 * for a dead daemon's */
	snprintf(other, sizeof(other), ".mmapfs.%s.new", tag);
	snprintf(name, sizeof(name), "mmapfs.%s.lock", tag);
	fd = openat(dfd, other, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0 || renameat(dfd, other, dfd, name) < 0) {
		int r = mm_fail(err, -errno, "%s/%s: %s", dir, name, strerror(errno));

		if (fd >= 0)
			close(fd);
		close(dfd);
		return r;
	}
	*lockfd = fd;
	d = list_dir(dfd);
	while (d && (e = readdir(d))) {
		int ofd;

		if (!lock_tag(e->d_name, other, sizeof(other)) || strcmp(other, tag) == 0)
			continue;
		ofd = openat(dfd, e->d_name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		if (ofd < 0)
			continue;
		/* locked by nobody: its daemon is gone */
		if (flock(ofd, LOCK_EX | LOCK_NB) == 0) {
			*swept += sweep_tag(dfd, other, geteuid()) + sweep_users(dfd, other);
			unlinkat(dfd, e->d_name, 0);
		}
		close(ofd);
	}
	if (d)
		closedir(d);
	close(dfd);
	return 0;
}

void mm_area_dir_unlock(const char *dir, const char *tag, int lockfd)
{
	char path[PATH_MAX];

	if (lockfd < 0)
		return;
	if (snprintf(path, sizeof(path), "%s/mmapfs.%s.lock", dir, tag) < (int)sizeof(path))
		unlink(path);
	close(lockfd);
}
