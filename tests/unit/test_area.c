/* Unit tests for core/area.h: creating, opening and closing areas, and the
 * attacher's rules. They expect to run as root (to chown files to another
 * user); as another user those checks are skipped. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "area.h"
#include "tap.h"

#define K64 (UINT64_C(64) * 1024)
#define K128 (UINT64_C(128) * 1024)
#define OTHER_UID 12345

static char top[PATH_MAX];	/* this run's private temporary directory */
static struct mm_area a;
static struct mm_err err;

static const char *path_in(const char *name)
{
	static char buf[16][PATH_MAX];
	static int i;

	i = (i + 1) % 16;
	if (snprintf(buf[i], sizeof(buf[i]), "%s/%s", top, name) >= (int)sizeof(buf[i]))
		abort();
	return buf[i];
}

static bool make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	bool ok = fd >= 0 && ftruncate(fd, (off_t)size) == 0;

	if (fd >= 0)
		close(fd);
	if (!ok)
		printf("#     cannot make %s: %s\n", path, strerror(errno));
	return ok;
}

static bool make_dir(const char *path, mode_t mode)
{
	bool ok = mkdir(path, 0700) == 0 && chmod(path, mode) == 0;

	if (!ok)
		printf("#     cannot make %s: %s\n", path, strerror(errno));
	return ok;
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* How many descriptors are open: unchanged if nothing leaked. */
static int open_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

/* Whether path is mapped in this process. */
static bool mapped(const char *path)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[PATH_MAX + 128];
	bool found = false;

	while (f && fgets(line, sizeof(line), f))
		found |= strstr(line, path) != NULL;
	if (f)
		fclose(f);
	return found;
}

static void test_size_for(void)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);

	CHECK_U64(mm_area_size_for(0), ==, page);
	CHECK_U64(mm_area_size_for(page - 8), ==, page);
	CHECK_U64(mm_area_size_for(page - 7), ==, 2 * page);
	CHECK_U64(mm_area_size_for(UINT64_C(64) << 20), ==, (UINT64_C(64) << 20) + page);
	CHECK_U64(mm_area_size_for((UINT64_C(4) << 30) - page - 8), ==,
		  (UINT64_C(4) << 30) - page);
	CHECK_U64(mm_area_size_for((UINT64_C(4) << 30) - page - 7), ==, 0);
	CHECK_U64(mm_area_size_for(MM_AREA_MAX), ==, 0);
	CHECK_U64(mm_area_size_for(UINT64_MAX), ==, 0);
}

static void test_create(void)
{
	const char *dir = path_in("create");
	uint64_t size = K64 + 4096;
	struct stat st;
	char path[PATH_MAX];
	uint8_t byte = 0;
	bool zero = true;
	int fd, fd0 = open_fds();

	if (!make_dir(dir, 0700))
		return;
	mm_area_init(&a);
	CHECK(a.base == NULL && a.path == NULL);
	if (!CHECK_INT(mm_area_create(&a, dir, NULL, size, NULL, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		return;
	}
	CHECK(a.base != NULL && a.created);
	CHECK_INT(open_fds(), ==, fd0);	/* the mapping keeps no descriptor */
	CHECK_U64(a.size, ==, size);
	CHECK(strncmp(a.path, dir, strlen(dir)) == 0);
	CHECK_HAS(a.path, "/mmapfs.");
	CHECK_INT(strlen(a.path), ==, strlen(dir) + strlen("/mmapfs.XXXXXX.mmap"));
	CHECK_STR(a.path + strlen(a.path) - 5, ".mmap");
	CHECK_INT(lstat(a.path, &st), ==, 0);
	CHECK(S_ISREG(st.st_mode));
	CHECK_INT(st.st_mode & 07777, ==, 0600);
	CHECK_INT(st.st_uid, ==, geteuid());
	CHECK_U64(st.st_size, ==, size);
	for (uint64_t i = 0; i < size; i++)
		zero &= a.base[i] == 0;
	CHECK(zero);
	/* shared with the file */
	a.base[size - 1] = 0x42;
	fd = open(a.path, O_RDONLY | O_CLOEXEC);
	CHECK_INT(pread(fd, &byte, 1, (off_t)size - 1), ==, 1);
	CHECK_INT(byte, ==, 0x42);
	close(fd);
	/* a fault on a file still whole is a full filesystem; truncated, not */
	CHECK_INT(mm_area_fault(&a), ==, -ENOSPC);
	CHECK_INT(truncate(a.path, 4096), ==, 0);
	CHECK_INT(mm_area_fault(&a), ==, -EIO);
	CHECK_INT(mm_area_reserve(&a, &err), ==, 0);	/* by its path */
	CHECK_INT(stat(a.path, &st), ==, 0);
	CHECK_U64(st.st_size, ==, size);
	CHECK_INT(mm_area_fault(&a), ==, -ENOSPC);

	snprintf(path, sizeof(path), "%s", a.path);
	mm_area_close(&a);
	CHECK(a.base == NULL && a.path == NULL && !a.created);
	CHECK_INT(access(path, F_OK), ==, -1);
	CHECK_INT(count_entries(dir), ==, 0);
	mm_area_close(&a);	/* closing a closed area is fine */

	/* two areas get two files */
	{
		struct mm_area b;

		mm_area_init(&b);
		CHECK_INT(mm_area_create(&a, dir, NULL, K64, NULL, NULL), ==, 0);
		CHECK_INT(mm_area_create(&b, dir, NULL, K64, NULL, NULL), ==, 0);
		CHECK(strcmp(a.path, b.path) != 0);
		CHECK_INT(count_entries(dir), ==, 2);
		mm_area_close(&a);
		mm_area_close(&b);
		CHECK_INT(count_entries(dir), ==, 0);
	}
	CHECK_INT(open_fds(), ==, fd0);
}

static void test_create_refused(void)
{
	const char *dir = path_in("create-refused");

	if (!make_dir(dir, 0700))
		return;
	mm_area_init(&a);
	CHECK_INT(mm_area_create(&a, dir, NULL, K64 - 1, NULL, &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "65535");
	CHECK_INT(mm_area_create(&a, dir, NULL, MM_AREA_MAX + 1, NULL, &err), ==, -EINVAL);
	CHECK_INT(mm_area_create(&a, path_in("missing"), NULL, K64, NULL, &err), ==, -ENOENT);
	CHECK_HAS(err.msg, "missing");
	CHECK(a.base == NULL && a.path == NULL);
	CHECK_INT(count_entries(dir), ==, 0);
}

/* A file replaced under the same name is not ours to delete. */
static void test_create_replaced(void)
{
	const char *dir = path_in("replaced");
	const char *other = path_in("replaced/other");
	char path[PATH_MAX];
	struct stat st;

	if (!make_dir(dir, 0700))
		return;
	mm_area_init(&a);
	if (!CHECK_INT(mm_area_create(&a, dir, NULL, K64, NULL, &err), ==, 0))
		return;
	snprintf(path, sizeof(path), "%s", a.path);
	if (!make_file(other, 1234))
		return;
	CHECK_INT(rename(other, path), ==, 0);
	/* another file under its name: not the one mapped */
	CHECK_INT(mm_area_fault(&a), ==, -EIO);
	CHECK_INT(mm_area_reserve(&a, &err), ==, -ESTALE);
	CHECK_HAS(err.msg, path);
	mm_area_close(&a);
	CHECK_INT(stat(path, &st), ==, 0);
	CHECK_U64(st.st_size, ==, 1234);

	/* and one already deleted by someone else is no error */
	CHECK_INT(mm_area_create(&a, dir, NULL, K64, NULL, &err), ==, 0);
	CHECK_INT(unlink(a.path), ==, 0);
	CHECK_INT(mm_area_fault(&a), ==, -EIO);	/* its path names nothing */
	CHECK_INT(mm_area_reserve(&a, &err), ==, -ENOENT);
	mm_area_close(&a);
	CHECK(a.base == NULL);
	CHECK_INT(count_entries(dir), ==, 1);
}

static void test_dir_prepare(void)
{
	const char *fresh = path_in("fresh");
	const char *grp = path_in("grp");
	const char *oth = path_in("oth");
	const char *link = path_in("link");
	const char *file = path_in("plain");
	const char *owned = path_in("owned");
	struct stat st;

	CHECK_INT(mm_area_dir_prepare(fresh, &err), ==, 0);
	CHECK_INT(lstat(fresh, &st), ==, 0);
	CHECK(S_ISDIR(st.st_mode));
	CHECK_INT(st.st_mode & 07777, ==, 0700);
	CHECK_INT(mm_area_dir_prepare(fresh, &err), ==, 0);	/* again */

	CHECK_INT(mm_area_dir_prepare("relative/dir", &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "relative/dir");
	CHECK_INT(mm_area_dir_prepare(path_in("no/such/parent"), &err), ==, -ENOENT);
	CHECK_HAS(err.msg, "no/such/parent");

	CHECK_INT(symlink(fresh, link), ==, 0);
	CHECK_INT(mm_area_dir_prepare(link, &err), <, 0);
	CHECK_HAS(err.msg, link);
	CHECK_INT(make_file(file, 0), ==, true);
	CHECK_INT(mm_area_dir_prepare(file, &err), ==, -ENOTDIR);
	CHECK_HAS(err.msg, file);

	if (make_dir(grp, 0770)) {
		CHECK_INT(mm_area_dir_prepare(grp, &err), ==, -EACCES);
		CHECK_HAS(err.msg, grp);
	}
	if (make_dir(oth, 0702)) {
		CHECK_INT(mm_area_dir_prepare(oth, &err), ==, -EACCES);
		CHECK_HAS(err.msg, oth);
	}
	if (geteuid() == 0 && make_dir(owned, 0700)) {
		CHECK_INT(chown(owned, OTHER_UID, (gid_t)-1), ==, 0);
		CHECK_INT(mm_area_dir_prepare(owned, &err), ==, -EACCES);
		CHECK_HAS(err.msg, owned);
	}
}

/* The default directory, whose name someone else may hold first. */
static void test_dir_claim(void)
{
	const char *want = path_in("shm/mmapfs-0");
	char why[512], *dir, *again;
	uid_t who;

	if (!make_dir(path_in("shm"), 01777))
		return;
	/* free: taken as it is */
	CHECK_INT(mm_area_dir_claim(want, &dir, &who, why, sizeof(why), &err), ==, 0);
	CHECK_STR(dir, want);
	CHECK_INT(who, ==, (uid_t)-1);
	free(dir);
	CHECK_INT(rmdir(want), ==, 0);
	/* a file, a symlink, a directory of another user or open to others:
	 * a directory of ours beside it, the same one each time (found again
	 * after a crash), whatever holds the name */
	CHECK_INT(make_file(want, 0), ==, true);
	CHECK_INT(mm_area_dir_claim(want, &dir, &who, why, sizeof(why), &err), ==, 0);
	CHECK_HAS(why, "not a directory");
	CHECK_INT(who, ==, geteuid());
	CHECK(strncmp(dir, want, strlen(want)) == 0 && dir[strlen(want)] == '.' &&
	      strlen(dir) == strlen(want) + 7);
	CHECK_INT(mm_area_dir_prepare(dir, &err), ==, 0);	/* ours, private */
	CHECK_INT(unlink(want), ==, 0);
	CHECK_INT(symlink("/etc", want), ==, 0);
	CHECK_INT(mm_area_dir_claim(want, &again, &who, why, sizeof(why), &err), ==, 0);
	CHECK_HAS(why, "symbolic link");
	CHECK_STR(again, dir);
	free(again);
	CHECK_INT(unlink(want), ==, 0);
	if (make_dir(want, 0777)) {
		CHECK_INT(mm_area_dir_claim(want, &again, &who, why, sizeof(why), &err), ==, 0);
		CHECK_HAS(why, "writable by group or others");
		CHECK_STR(again, dir);
		free(again);
	}
	if (geteuid() == 0 && chmod(want, 0700) == 0 && chown(want, OTHER_UID, 0) == 0) {
		CHECK_INT(mm_area_dir_claim(want, &again, &who, why, sizeof(why), &err), ==, 0);
		CHECK_INT(who, ==, OTHER_UID);
		CHECK_HAS(why, "owned by uid 12345");
		CHECK_STR(again, dir);
		free(again);
		/* one beside it that is not ours is not taken */
		CHECK_INT(chown(dir, OTHER_UID, 0), ==, 0);
		CHECK_INT(mm_area_dir_claim(want, &again, &who, why, sizeof(why), &err), ==, 0);
		CHECK(strcmp(again, dir) != 0);
		free(again);
	}
	free(dir);
	/* a missing parent is no squatter */
	CHECK_INT(mm_area_dir_claim(path_in("none/mmapfs-0"), &dir, &who, why, sizeof(why), &err),
		  ==, -ENOENT);
}

/* A dead daemon's areas, in its mmap_dir and in its users' directories. */
static void test_sweep(void)
{
	const struct mm_owner user = { OTHER_UID, OTHER_UID };
	const char *dir = path_in("sweep");
	char udir[PATH_MAX], name[PATH_MAX + 64];
	unsigned swept;
	int lockfd, dead;

	if (geteuid() != 0) {
		printf("#     skipped: not root\n");
		return;
	}
	CHECK_INT(mm_area_dir_prepare(dir, &err), ==, 0);
	CHECK_INT(mm_area_user_dir(dir, &user, udir, sizeof(udir), &err), ==, 0);
	/* the dead one's: its lock file, locked by nobody, and its areas */
	snprintf(name, sizeof(name), "%s/mmapfs.dead.lock", dir);
	dead = open(name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	CHECK(dead >= 0);
	close(dead);
	snprintf(name, sizeof(name), "%s/mmapfs.dead.AAAAAA.mmap", dir);
	CHECK(make_file(name, K64));
	snprintf(name, sizeof(name), "%s/mmapfs.dead.BBBBBB.mmap", udir);
	CHECK(make_file(name, K64));
	CHECK_INT(chown(name, OTHER_UID, OTHER_UID), ==, 0);
	/* not the user's in their directory: left alone */
	snprintf(name, sizeof(name), "%s/mmapfs.dead.CCCCCC.mmap", udir);
	CHECK(make_file(name, K64));
	CHECK_INT(mm_area_dir_lock(dir, "live", &lockfd, &swept, &err), ==, 0);
	CHECK_INT(swept, ==, 2);
	CHECK_INT(count_entries(udir), ==, 1);
	CHECK_INT(access(name, F_OK), ==, 0);
	CHECK_INT(count_entries(dir), ==, 2);	/* our lock file, the user's directory */
	mm_area_dir_unlock(dir, "live", lockfd);
}

static const char *allowed;	/* the allowed directory, with file "f" */
static const char *allowed_dirs[1];
static const struct mm_attach_rules rules = { allowed_dirs, 1, NULL, 0, NULL };

static bool setup_allowed(void)
{
	if (allowed)
		return true;
	allowed = strdup(path_in("allowed"));
	allowed_dirs[0] = allowed;
	return make_dir(allowed, 0700) && make_file(path_in("allowed/f"), K128);
}

static void expect_refused(const char *file, uint64_t size,
			   const struct mm_attach_rules *rl, int want,
			   const char *mention)
{
	int fd0 = open_fds(), r;

	mm_area_init(&a);
	strcpy(err.msg, "(unset)");
	alarm(10);	/* a FIFO must not hang us */
	r = mm_area_open_offered(&a, file, size, rl, false, &err);
	alarm(0);
	if (!CHECK_INT(r, ==, want))
		printf("#     offered %s size %llu: %s\n", file,
		       (unsigned long long)size, err.msg);
	CHECK_HAS(err.msg, mention);
	CHECK(a.base == NULL && a.path == NULL);
	CHECK_INT(open_fds(), ==, fd0);
	if (r == 0)
		mm_area_close(&a);
}

static void test_offered_ok(void)
{
	char want[PATH_MAX];
	uint8_t byte = 0;
	int fd, fd0 = open_fds();

	if (!setup_allowed())
		return;
	snprintf(want, sizeof(want), "%s/f", allowed);
	mm_area_init(&a);
	if (!CHECK_INT(mm_area_open_offered(&a, want, K64, &rules, false, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		return;
	}
	CHECK(a.base != NULL && !a.created && a.fd == -1);
	CHECK_INT(open_fds(), ==, fd0);
	CHECK_U64(a.size, ==, K64);
	CHECK_STR(a.path, want);
	/* the same memory as the file */
	fd = open(want, O_RDWR | O_CLOEXEC);
	CHECK_INT(pwrite(fd, "\x99", 1, 1000), ==, 1);
	CHECK_INT(a.base[1000], ==, 0x99);
	a.base[2000] = 0x77;
	CHECK_INT(pread(fd, &byte, 1, 2000), ==, 1);
	CHECK_INT(byte, ==, 0x77);
	close(fd);
	CHECK(mapped(want));
	mm_area_close(&a);
	CHECK(!mapped(want));
	CHECK_INT(access(want, F_OK), ==, 0);	/* never deleted */

	/* the whole file */
	CHECK_INT(mm_area_open_offered(&a, want, K128, &rules, false, &err), ==, 0);
	mm_area_close(&a);
	/* a file its maker may delete: the descriptor is kept, closed with it */
	CHECK_INT(mm_area_open_offered(&a, want, K64, &rules, true, &err), ==, 0);
	CHECK(a.fd >= 0);
	CHECK_INT(open_fds(), ==, fd0 + 1);
	mm_area_close(&a);
	CHECK_INT(open_fds(), ==, fd0);

	/* only the basename counts */
	CHECK_INT(mm_area_open_offered(&a, "/some/other/dir/f", K64, &rules, false, &err), ==, 0);
	CHECK_STR(a.path, want);
	mm_area_close(&a);
	CHECK_INT(mm_area_open_offered(&a, "f", K64, &rules, false, &err), ==, 0);
	CHECK_STR(a.path, want);
	mm_area_close(&a);
	CHECK_INT(mm_area_open_offered(&a, "../../f", K64, &rules, false, &err), ==, 0);
	CHECK_STR(a.path, want);
	mm_area_close(&a);

	/* looked up in each allowed directory in turn */
	{
		const char *dirs[] = { path_in("missing-dir"), path_in("fresh"), allowed };
		struct mm_attach_rules rl = { dirs, 3, NULL, 0, NULL };

		CHECK_INT(mm_area_open_offered(&a, "/x/f", K64, &rl, false, &err), ==, 0);
		CHECK_STR(a.path, want);
		mm_area_close(&a);
	}
}

static void test_offered_refused(void)
{
	const char *elsewhere = path_in("elsewhere");
	static const struct mm_attach_rules none = { NULL, 0, NULL, 0, NULL };
	char offer[PATH_MAX];

	if (!setup_allowed())
		return;
	/* present elsewhere, not in the allowed directory */
	if (make_dir(elsewhere, 0700) && make_file(path_in("elsewhere/g"), K128)) {
		snprintf(offer, sizeof(offer), "%s/g", elsewhere);
		expect_refused(offer, K64, &rules, -EACCES, "g");
		expect_refused(offer, K64, &rules, -EACCES, "not found");
	}
	expect_refused("f", K64, &none, -EACCES, "f");

	/* a symbolic link, even to a good file */
	CHECK_INT(symlink("f", path_in("allowed/sym")), ==, 0);
	expect_refused("sym", K64, &rules, -EACCES, "sym");
	expect_refused("sym", K64, &rules, -EACCES, "symbolic link");

	/* a hard link: both names now have two links */
	CHECK_INT(link(path_in("allowed/f"), path_in("allowed/hard")), ==, 0);
	expect_refused("hard", K64, &rules, -EACCES, "hard");
	expect_refused("f", K64, &rules, -EACCES, "links");
	CHECK_INT(unlink(path_in("allowed/hard")), ==, 0);

	/* not regular files */
	CHECK_INT(mkfifo(path_in("allowed/fifo"), 0600), ==, 0);
	expect_refused("fifo", K64, &rules, -EACCES, "fifo");
	CHECK_INT(mkdir(path_in("allowed/sub"), 0700), ==, 0);
	expect_refused("sub", K64, &rules, -EACCES, "sub");
	if (mknod(path_in("allowed/null"), S_IFCHR | 0600, makedev(1, 3)) == 0)
		expect_refused("null", K64, &rules, -EACCES, "null");
	else
		printf("#     skipped the device check: mknod: %s\n", strerror(errno));

	/* no file name at all */
	expect_refused("/x/y/", K64, &rules, -EINVAL, "/x/y/");
	expect_refused("..", K64, &rules, -EINVAL, "..");
	expect_refused(".", K64, &rules, -EINVAL, ".");
	expect_refused("", K64, &rules, -EINVAL, "name");
}

static void test_offered_sizes(void)
{
	if (!setup_allowed())
		return;
	expect_refused("f", 0, &rules, -EINVAL, "f");
	expect_refused("f", K64 - 1, &rules, -EINVAL, "65535");
	expect_refused("f", UINT64_C(1) << 32, &rules, -EINVAL, "4294967296");
	expect_refused("f", UINT64_MAX, &rules, -EINVAL, "f");
	expect_refused("f", K128 + 1, &rules, -EINVAL, "allowed/f");	/* beyond the file */
	expect_refused("f", MM_AREA_MAX, &rules, -EINVAL, "beyond");
}

static void test_offered_owner(void)
{
	const uid_t ok_uids[] = { 1, OTHER_UID };
	struct mm_attach_rules with = { allowed_dirs, 1, ok_uids, 2, NULL };

	if (geteuid() != 0) {
		printf("#     skipped: not root\n");
		return;
	}
	if (!setup_allowed() || !make_file(path_in("allowed/theirs"), K128))
		return;
	CHECK_INT(chown(path_in("allowed/theirs"), OTHER_UID, (gid_t)-1), ==, 0);
	expect_refused("theirs", K64, &rules, -EACCES, "theirs");
	expect_refused("theirs", K64, &rules, -EACCES, "12345");
	mm_area_init(&a);
	CHECK_INT(mm_area_open_offered(&a, "theirs", K64, &with, false, &err), ==, 0);
	mm_area_close(&a);
}

/* A user's channel (the daemon as root acting for another user): its
 * directory and areas are the user's, and it takes that user's files only. */
static void test_user(void)
{
	const struct mm_owner user = { OTHER_UID, OTHER_UID + 1 };
	const char *base = path_in("base");
	const char *link = path_in("user-link");
	char dir[PATH_MAX], name[PATH_MAX + 16];
	const char *dirs[] = { dir };
	struct mm_attach_rules rl = { dirs, 1, NULL, 0, &user };
	struct stat st;

	if (geteuid() != 0) {
		printf("#     skipped: not root\n");
		return;
	}
	/* made in our own directory, which becomes searchable */
	CHECK_INT(mm_area_dir_prepare(base, &err), ==, 0);
	CHECK_INT(mm_area_user_dir(base, &user, dir, sizeof(dir), &err), ==, 0);
	snprintf(name, sizeof(name), "%s/u%u", base, (unsigned)OTHER_UID);
	CHECK_STR(dir, name);
	CHECK_INT(lstat(dir, &st), ==, 0);
	CHECK_INT(st.st_mode & 07777, ==, 0700);
	CHECK_INT(st.st_uid, ==, OTHER_UID);
	CHECK_INT(st.st_gid, ==, OTHER_UID + 1);
	CHECK_INT(lstat(base, &st), ==, 0);
	CHECK_INT(st.st_mode & 07777, ==, 0711);
	CHECK_INT(mm_area_user_dir(base, &user, dir, sizeof(dir), &err), ==, 0);	/* again */
	/* theirs is not ours; a directory not ours holds no user's */
	CHECK_INT(mm_area_dir_prepare(dir, &err), ==, -EACCES);
	CHECK_HAS(err.msg, "owned by uid 12345");
	CHECK_INT(mm_area_user_dir(dir, &user, name, sizeof(name), &err), ==, -EACCES);
	/* a user directory someone else made under that name is refused */
	CHECK_INT(chown(dir, 0, 0), ==, 0);
	CHECK_INT(mm_area_user_dir(base, &user, dir, sizeof(dir), &err), ==, -EACCES);
	CHECK_HAS(err.msg, "not by uid 12345");
	CHECK_INT(chown(dir, OTHER_UID, OTHER_UID + 1), ==, 0);

	mm_area_init(&a);
	if (!CHECK_INT(mm_area_create(&a, dir, "tag", K64, &user, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		return;
	}
	CHECK_INT(lstat(a.path, &st), ==, 0);
	CHECK_INT(st.st_mode & 07777, ==, 0600);
	CHECK_INT(st.st_uid, ==, OTHER_UID);
	CHECK_INT(st.st_gid, ==, OTHER_UID + 1);
	CHECK_HAS(a.path, "/mmapfs.tag.");
	snprintf(name, sizeof(name), "%s", strrchr(a.path, '/') + 1);
	mm_area_close(&a);
	CHECK_INT(count_entries(dir), ==, 0);

	/* a directory swapped for a symlink is not followed */
	CHECK_INT(symlink(dir, link), ==, 0);
	CHECK_INT(mm_area_create(&a, link, NULL, K64, &user, &err), <, 0);
	CHECK_HAS(err.msg, link);
	CHECK_INT(count_entries(dir), ==, 0);

	/* offered: the user's file only, not ours */
	snprintf(name, sizeof(name), "%s/mine", dir);
	if (!make_file(name, K64))
		return;
	snprintf(name, sizeof(name), "%s/theirs", dir);
	if (!make_file(name, K64))
		return;
	CHECK_INT(chown(name, OTHER_UID, (gid_t)-1), ==, 0);
	expect_refused("mine", K64, &rl, -EACCES, "owned by uid 0");
	mm_area_init(&a);
	CHECK_INT(mm_area_open_offered(&a, "theirs", K64, &rl, false, &err), ==, 0);
	mm_area_close(&a);

	/* in a directory not theirs, whatever is refused is "not found": the
	 * user cannot look there, and learns nothing */
	{
		const char *ours[] = { base };
		struct mm_attach_rules in_ours = { ours, 1, NULL, 0, &user };

		CHECK(make_file(path_in("base/rootfile"), K64));
		CHECK_INT(mkfifo(path_in("base/fifo"), 0600), ==, 0);
		CHECK_INT(symlink(name, path_in("base/sym")), ==, 0);
		expect_refused("rootfile", K64, &in_ours, -EACCES, "rootfile: not found in the");
		expect_refused("fifo", K64, &in_ours, -EACCES, "fifo: not found in the");
		expect_refused("sym", K64, &in_ours, -EACCES, "sym: not found in the");
		expect_refused("nothing", K64, &in_ours, -EACCES, "nothing: not found in the");
	}
	/* their own directory swapped for a symlink (where they may): not
	 * followed, whatever it leads to */
	{
		const char *swapped = path_in("swapped");
		const char *sw[] = { swapped };
		struct mm_attach_rules via = { sw, 1, NULL, 0, &user };

		CHECK_INT(symlink(dir, swapped), ==, 0);
		expect_refused("theirs", K64, &via, -EACCES, "not found in the");
	}
}

static void test_offered_world_writable(void)
{
	const char *w = path_in("world");
	const char *dirs[] = { w };
	struct mm_attach_rules rl = { dirs, 1, NULL, 0, NULL };

	if (!make_dir(w, 0777) || !make_file(path_in("world/f"), K128))
		return;
	expect_refused("f", K64, &rl, -EACCES, w);
	expect_refused("f", K64, &rl, -EACCES, "sticky");
	CHECK_INT(chmod(w, 01777), ==, 0);
	mm_area_init(&a);
	CHECK_INT(mm_area_open_offered(&a, "f", K64, &rl, false, &err), ==, 0);
	mm_area_close(&a);
	/* writable by the group only is not refused by this rule */
	CHECK_INT(chmod(w, 0770), ==, 0);
	CHECK_INT(mm_area_open_offered(&a, "f", K64, &rl, false, &err), ==, 0);
	mm_area_close(&a);
}

static void test_open_path(void)
{
	const char *f = path_in("admin");
	const char *sym = path_in("admin-link");
	const char *fresh = path_in("admin-new");
	const char *small = path_in("admin-small");
	int fd0 = open_fds();
	struct stat st;

	if (!make_file(f, K128) || symlink(f, sym) < 0)
		return;
	mm_area_init(&a);
	if (CHECK_INT(mm_area_open_path(&a, sym, false, 0, 0, NULL, &err), ==, 0)) {
		CHECK_U64(a.size, ==, K128);
		CHECK(!a.created && a.base != NULL);
		CHECK_INT(open_fds(), ==, fd0);
		a.base[K128 - 1] = 5;
		mm_area_close(&a);
	}
	CHECK_INT(lstat(sym, &st), ==, 0);
	CHECK(S_ISLNK(st.st_mode));
	CHECK_INT(stat(f, &st), ==, 0);

	CHECK_INT(mm_area_open_path(&a, f, false, 0, K64, NULL, &err), ==, 0);
	CHECK_U64(a.size, ==, K64);
	mm_area_close(&a);
	CHECK_INT(mm_area_open_path(&a, f, false, 0, K128 + 1, NULL, &err), ==, -EINVAL);
	CHECK_HAS(err.msg, f);
	CHECK(a.base == NULL);

	CHECK_INT(mm_area_open_path(&a, fresh, false, K128, 0, NULL, &err), ==, -ENOENT);
	CHECK_HAS(err.msg, fresh);
	CHECK_INT(access(fresh, F_OK), ==, -1);
	if (CHECK_INT(mm_area_open_path(&a, fresh, true, K64 + 4096, 0, NULL, &err), ==, 0)) {
		CHECK_U64(a.size, ==, K64 + 4096);
		CHECK(!a.created);
		mm_area_close(&a);
	}
	CHECK_INT(stat(fresh, &st), ==, 0);	/* created, and kept */
	CHECK_INT(st.st_mode & 07777, ==, 0600);
	CHECK_U64(st.st_size, ==, K64 + 4096);
	/* an existing file is used at its size even with create set */
	CHECK_INT(mm_area_open_path(&a, f, true, K64 + 4096, 0, NULL, &err), ==, 0);
	CHECK_U64(a.size, ==, K128);
	mm_area_close(&a);

	if (make_file(small, 4096)) {
		CHECK_INT(mm_area_open_path(&a, small, false, 0, 0, NULL, &err), ==, -EINVAL);
		CHECK_HAS(err.msg, small);
	}
	CHECK_INT(open_fds(), ==, fd0);	/* nothing leaked, refused or closed */
}

static void test_fd_length(void)
{
	const char *f = path_in("length");
	uint64_t len = 0;
	int fd, p[2];

	if (!make_file(f, 12345))
		return;
	fd = open(f, O_RDONLY | O_CLOEXEC);
	CHECK_INT(mm_fd_length(fd, &len), ==, 0);
	CHECK_U64(len, ==, 12345);
	close(fd);
	CHECK_INT(pipe(p), ==, 0);
	len = 7;
	CHECK_INT(mm_fd_length(p[0], &len), ==, -ESPIPE);
	CHECK_U64(len, ==, 7);
	close(p[0]);
	close(p[1]);
	CHECK_INT(mm_fd_length(-1, &len), ==, -EBADF);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_size_for),
		TAP_TEST(test_create),
		TAP_TEST(test_create_refused),
		TAP_TEST(test_create_replaced),
		TAP_TEST(test_dir_prepare),
		TAP_TEST(test_dir_claim),
		TAP_TEST(test_sweep),
		TAP_TEST(test_offered_ok),
		TAP_TEST(test_offered_refused),
		TAP_TEST(test_offered_sizes),
		TAP_TEST(test_offered_owner),
		TAP_TEST(test_user),
		TAP_TEST(test_offered_world_writable),
		TAP_TEST(test_open_path),
		TAP_TEST(test_fd_length),
	};
	const char *tmp = getenv("TMPDIR");
	int ret;

	umask(022);
	snprintf(top, sizeof(top), "%s/mmapfs-test-area.XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(top)) {
		printf("Bail out! mkdtemp %s: %s\n", top, strerror(errno));
		return 1;
	}
	ret = tap_main(tests, TAP_COUNT(tests));
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free((void *)allowed);
	return ret;
}
