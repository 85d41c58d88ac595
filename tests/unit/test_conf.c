/* Unit tests for conf/config.h: sizes, allowed directories and the
 * libconfig file. */
#include <errno.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

static char conf_path[64];
static struct mm_config c;
static struct mm_err err;

static void expect_size(const char *s, int want, uint64_t value)
{
	uint64_t out = 777;
	int r;

	strcpy(err.msg, "(unset)");
	r = mm_config_parse_size(s, &out, &err);
	if (!CHECK_INT(r, ==, want))
		printf("#     size \"%s\"\n", s);
	if (want == 0) {
		CHECK_U64(out, ==, value);
	} else {
		CHECK_U64(out, ==, 777);
		if (s[0])
			CHECK_HAS(err.msg, s);
	}
}

static void test_parse_size(void)
{
	expect_size("64K", 0, 65536);
	expect_size("64k", 0, 65536);
	expect_size("65536", 0, 65536);
	expect_size("0x10000", 0, 65536);
	expect_size("64M", 0, UINT64_C(64) << 20);
	expect_size("64m", 0, UINT64_C(64) << 20);
	expect_size("1G", 0, UINT64_C(1) << 30);
	expect_size("3G", 0, UINT64_C(3) << 30);
	expect_size("4095M", 0, UINT64_C(4095) << 20);
	expect_size("4G", -EINVAL, 0);
	expect_size("4096M", -EINVAL, 0);
	expect_size("4194304K", -EINVAL, 0);
	expect_size("4294967295", -EINVAL, 0);
	expect_size("63K", -EINVAL, 0);
	expect_size("65535", -EINVAL, 0);
	expect_size("0", -EINVAL, 0);
	expect_size("0K", -EINVAL, 0);
	expect_size("lots", -EINVAL, 0);
	expect_size("", -EINVAL, 0);
	expect_size("K", -EINVAL, 0);
	expect_size("12Q", -EINVAL, 0);
	expect_size("-1", -EINVAL, 0);
	expect_size("-64M", -EINVAL, 0);
	expect_size("1.5G", -EINVAL, 0);
	expect_size(" 64M", -EINVAL, 0);
	expect_size("64M ", -EINVAL, 0);
	expect_size("64MB", -EINVAL, 0);
	expect_size("64KK", -EINVAL, 0);
	expect_size("99999999999999999999999999G", -EINVAL, 0);
	expect_size("18446744073709551616K", -EINVAL, 0);
	CHECK_INT(mm_config_parse_size("lots", &(uint64_t){ 0 }, NULL), ==, -EINVAL);
}

static void test_defaults(void)
{
	char want[64];

	CHECK_INT(mm_config_defaults(&c), ==, 0);
	snprintf(want, sizeof(want), "/dev/shm/mmapfs-%u", (unsigned)geteuid());
	CHECK_STR(c.mmap_dir, want);
	CHECK_U64(c.size, ==, MM_DEFAULT_SIZE);
	CHECK_U64(c.size, ==, UINT64_C(64) << 20);
	CHECK_U64(c.n_allow_dirs, ==, 0);
	CHECK_U64(c.n_channels, ==, 0);
	CHECK(c.mmap_dir_default);
	CHECK_U64(c.user_max.channels, ==, 64);
	CHECK_U64(c.user_max.bytes, ==, MM_LIMIT_AUTO);
	CHECK_U64(c.owner_max.channels, ==, 0);
	CHECK_U64(c.owner_max.bytes, ==, 0);
	mm_config_free(&c);
	CHECK(c.mmap_dir == NULL);
}

static void test_allow_dirs(void)
{
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	CHECK_INT(mm_config_set_allow_dirs(&c, "/a:/b/c", &err), ==, 0);
	if (CHECK_U64(c.n_allow_dirs, ==, 2)) {
		CHECK_STR(c.allow_dirs[0], "/a");
		CHECK_STR(c.allow_dirs[1], "/b/c");
	}
	CHECK_INT(mm_config_set_allow_dirs(&c, "/x::/y:", &err), ==, 0);
	if (CHECK_U64(c.n_allow_dirs, ==, 2)) {
		CHECK_STR(c.allow_dirs[0], "/x");
		CHECK_STR(c.allow_dirs[1], "/y");
	}
	/* refusals keep what was there */
	CHECK_INT(mm_config_set_allow_dirs(&c, "/ok:relative", &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "relative");
	CHECK_INT(mm_config_set_allow_dirs(&c, "", &err), ==, -EINVAL);
	CHECK_INT(mm_config_set_allow_dirs(&c, ":::", &err), ==, -EINVAL);
	if (CHECK_U64(c.n_allow_dirs, ==, 2))
		CHECK_STR(c.allow_dirs[0], "/x");
	CHECK_INT(mm_config_set_allow_dirs(&c, "/only", &err), ==, 0);
	CHECK_U64(c.n_allow_dirs, ==, 1);
	mm_config_free(&c);
}

static bool write_conf(const char *text)
{
	FILE *f = fopen(conf_path, "we");

	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		return tap_fail(__FILE__, __LINE__, "write the configuration file");
	return true;
}

static const char sample[] =
	"# every key is optional; -o options override the file\n"
	"mmap_dir   = \"/dev/shm/mmapfs\";\n"
	"size       = \"64M\";                      # a string with suffix, or an integer\n"
	"allow_dirs = [ \"/dev/shm/mmapfs\", \"/run/user/1000/xpra\" ];\n"
	"channels = (\n"
	"  { name = \"vm0\";                        # appears as MOUNTPOINT/vm0 at mount\n"
	"    role = \"attacher\";                   # or \"creator\" (the default)\n"
	"    write_file = \"/sys/bus/pci/devices/0000:00:05.0/resource2_wc\";\n"
	"  },\n"
	"  { name = \"host\";\n"
	"    read_file = \"/dev/shm/shmem-xpra\";   # an existing file: used, never deleted\n"
	"  }\n"
	");\n";

static void test_load_sample(void)
{
	if (!write_conf(sample))
		return;
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	if (!CHECK_INT(mm_config_load(&c, conf_path, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		goto out;
	}
	CHECK_STR(c.mmap_dir, "/dev/shm/mmapfs");
	CHECK_U64(c.size, ==, UINT64_C(64) << 20);
	if (CHECK_U64(c.n_allow_dirs, ==, 2)) {
		CHECK_STR(c.allow_dirs[0], "/dev/shm/mmapfs");
		CHECK_STR(c.allow_dirs[1], "/run/user/1000/xpra");
	}
	if (!CHECK_U64(c.n_channels, ==, 2))
		goto out;
	CHECK_STR(c.channels[0].name, "vm0");
	CHECK_INT(c.channels[0].role, ==, MM_ATTACHER);
	CHECK(c.channels[0].read_file == NULL);
	CHECK_STR(c.channels[0].write_file,
		  "/sys/bus/pci/devices/0000:00:05.0/resource2_wc");
	CHECK_INT(c.channels[0].line, ==, 6);
	CHECK_STR(c.channels[1].name, "host");
	CHECK_INT(c.channels[1].role, ==, MM_CREATOR);
	CHECK_STR(c.channels[1].read_file, "/dev/shm/shmem-xpra");
	CHECK(c.channels[1].write_file == NULL);
	CHECK_INT(c.channels[1].line, ==, 10);
out:
	mm_config_free(&c);
}

/* Settings the file leaves out keep their values; an integer size works. */
static void test_load_partial(void)
{
	if (!write_conf("size = 131072;\nchannels = ( { name = \"x\"; role = \"creator\"; } );\n"))
		return;
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	CHECK_INT(mm_config_set_allow_dirs(&c, "/kept", &err), ==, 0);
	if (CHECK_INT(mm_config_load(&c, conf_path, &err), ==, 0)) {
		CHECK_U64(c.size, ==, 131072);
		CHECK_HAS(c.mmap_dir, "/dev/shm/mmapfs-");
		CHECK(c.n_allow_dirs == 1 && strcmp(c.allow_dirs[0], "/kept") == 0);
		CHECK(c.n_channels == 1 && strcmp(c.channels[0].name, "x") == 0);
	} else {
		printf("#     %s\n", err.msg);
	}
	mm_config_free(&c);

	/* an empty file changes nothing */
	if (!write_conf("# nothing\n"))
		return;
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	CHECK_INT(mm_config_load(&c, conf_path, &err), ==, 0);
	CHECK_U64(c.size, ==, MM_DEFAULT_SIZE);
	CHECK_U64(c.n_channels, ==, 0);
	mm_config_free(&c);
}

struct bad_conf {
	const char *text;
	int line;
	const char *key;	/* NULL: a syntax error */
	const char *also;	/* another word the reason must hold, or NULL */
};

static void test_load_errors(void)
{
	static const struct bad_conf cases[] = {
		{ "mmap_dir = \"/a\";\nsize = ;\n", 2, NULL, NULL },
		{ "# c\n\nchannels = ( { name = \"a\" } \n", 4, NULL, NULL },
		{ "size = \"64M\";\n\nsize = \"1G\";\n", 3, NULL, NULL },	/* duplicate */
		{ "mmap_dir = 5;\n", 1, "mmap_dir", "string" },
		{ "\n\nmmap_dir = \"relative/dir\";\n", 3, "mmap_dir", "absolute" },
		{ "\nsize = \"lots\";\n", 2, "size", "lots" },
		{ "size = \"64M\";\n\n\nsize2 = 1;\n", 4, "size2", "unknown" },
		{ "\n\nsize = 1.5;\n", 3, "size", NULL },
		{ "size = \"4G\";\n", 1, "size", "4G" },
		{ "size = 1000;\n", 1, "size", NULL },
		{ "size = -65536;\n", 1, "size", "negative" },
		{ "size = true;\n", 1, "size", NULL },
		{ "allow_dirs = \"/x\";\n", 1, "allow_dirs", NULL },
		{ "\nallow_dirs = [ \"/x\", \"rel\" ];\n", 2, "allow_dirs", "absolute" },
		{ "allow_dirs = [ ];\n", 1, "allow_dirs", NULL },
		{ "allow_dirs = [ 1, 2 ];\n", 1, "allow_dirs", "string" },
		{ "mmap_dir = \"/a\";\ncolour = 1;\n", 2, "colour", "unknown" },
		{ "channels = 5;\n", 1, "channels", NULL },
		{ "channels = ( 5 );\n", 1, "channels", NULL },
		{ "channels = (\n  { name = \"a\";\n    role = \"boss\"; }\n);\n", 3, "role", "creator" },
		{ "channels = (\n  { name = \"a\";\n    role = 1; }\n);\n", 3, "role", NULL },
		{ "channels = (\n  { name = \"a\";\n\n    read_file = \"dev/shm/x\"; }\n);\n", 4, "read_file", "absolute" },
		{ "channels = (\n  { name = \"a\";\n    write_file = 7; }\n);\n", 3, "write_file", NULL },
		{ "channels = (\n  { name = \"a\"; },\n  { name = \"b\"; },\n  { name = \"a\"; }\n);\n", 4, "name", "duplicate" },
		{ "channels = (\n  { name = \"a\";\n    colour = 1; }\n);\n", 3, "colour", "unknown" },
		{ "channels = (\n  { name = \"a\";\n    mode = 0770; }\n);\n", 3, "mode", "\"0770\"" },
		{ "channels = (\n  { name = \"a\";\n    mode = \"0778\"; }\n);\n", 3, "mode", NULL },
		{ "channels = (\n  { name = \"a\";\n    mode = \"01770\"; }\n);\n", 3, "mode", NULL },
		{ "channels = (\n  { name = \"a\";\n    mode = \"\"; }\n);\n", 3, "mode", NULL },
		{ "channels = (\n  { name = \"a\";\n    user = \"no-such-user-x\"; }\n);\n", 3, "user", "no such user" },
		{ "channels = (\n  { name = \"a\";\n    group = \"no-such-group-x\"; }\n);\n", 3, "group", "no such group" },
		{ "channels = (\n  { name = \"a\";\n    user = -1; }\n);\n", 3, "user", NULL },
		{ "channels = (\n  { name = \"a\";\n    user = true; }\n);\n", 3, "user", NULL },
		{ "channels = (\n  { name = \"a\";\n    user = 4000000000; }\n);\n", 3, "user", NULL },
		{ "channels = (\n  { name = \"a\";\n    user = 3999999; }\n);\n", 2, "user", "group too" },
		{ "channels = (\n  { role = \"creator\"; }\n);\n", 2, "name", "missing" },
		{ "channels = (\n  { name = \"a/b\"; }\n);\n", 2, "name", NULL },
		{ "channels = (\n  { name = \"..\"; }\n);\n", 2, "name", NULL },
		{ "channels = (\n  { name = \"\"; }\n);\n", 2, "name", NULL },
		{ "channels = (\n  { name = 5; }\n);\n", 2, "name", NULL },
		{ "\nmax_channels = \"lots\";\n", 2, "max_channels", "lots" },
		{ "max_channels = -2;\n", 1, "max_channels", "negative" },
		{ "max_bytes = \"1T\";\n", 1, "max_bytes", "1T" },
		{ "owner_max_bytes = true;\n", 1, "owner_max_bytes", NULL },
		{ "max_colours = 1;\n", 1, "max_colours", "unknown" },
	};

	for (size_t i = 0; i < TAP_COUNT(cases); i++) {
		const struct bad_conf *k = &cases[i];
		char where[128];
		bool ok = true;

		if (!write_conf(k->text))
			return;
		CHECK_INT(mm_config_defaults(&c), ==, 0);
		strcpy(err.msg, "(unset)");
		ok &= CHECK_INT(mm_config_load(&c, conf_path, &err), ==, -EINVAL);
		if (k->key)
			snprintf(where, sizeof(where), "%s:%d: %s", conf_path, k->line, k->key);
		else
			snprintf(where, sizeof(where), "%s:%d: ", conf_path, k->line);
		ok &= CHECK_HAS(err.msg, where);
		if (k->also)
			ok &= CHECK_HAS(err.msg, k->also);
		if (!ok)
			printf("#     case %zu:\n#     %s\n", i, k->text);
		mm_config_free(&c);	/* whatever the file left in it */
	}
}

/* Each user's limits, from the file and from -o's text. */
static void test_limits(void)
{
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	CHECK_INT(mm_config_set_limit(&c, "max_channels", "3", &err), ==, 0);
	CHECK_INT(mm_config_set_limit(&c, "max_bytes", "2G", &err), ==, 0);
	CHECK_INT(mm_config_set_limit(&c, "owner_max_channels", "0", &err), ==, 0);
	CHECK_INT(mm_config_set_limit(&c, "owner_max_bytes", "640K", &err), ==, 0);
	CHECK_U64(c.user_max.channels, ==, 3);
	CHECK_U64(c.user_max.bytes, ==, UINT64_C(2) << 30);
	CHECK_U64(c.owner_max.channels, ==, 0);
	CHECK_U64(c.owner_max.bytes, ==, 640 << 10);
	CHECK_INT(mm_config_set_limit(&c, "max_channels", "many", &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "many");
	CHECK_INT(mm_config_set_limit(&c, "max_bytes", "-1", &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "-1");
	CHECK_INT(mm_config_set_limit(&c, "max_colours", "1", &err), ==, -ENOENT);
	CHECK_U64(c.user_max.channels, ==, 3);
	mm_config_free(&c);

	if (!write_conf("max_channels = 5;\nmax_bytes = \"1G\";\nowner_max_bytes = 1048576;\n"
			"mmap_dir = \"/x\";\n"))
		return;
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	if (CHECK_INT(mm_config_load(&c, conf_path, &err), ==, 0)) {
		CHECK_U64(c.user_max.channels, ==, 5);
		CHECK_U64(c.user_max.bytes, ==, UINT64_C(1) << 30);
		CHECK_U64(c.owner_max.bytes, ==, UINT64_C(1) << 20);
		CHECK_U64(c.owner_max.channels, ==, 0);
		CHECK(!c.mmap_dir_default);
	} else {
		printf("#     %s\n", err.msg);
	}
	mm_config_free(&c);
}

/* A declared channel's owner and mode. */
static void test_load_owner(void)
{
	if (!write_conf("channels = (\n"
			"  { name = \"a\"; },\n"
			"  { name = \"b\"; user = \"root\"; mode = \"0770\"; },\n"
			"  { name = \"c\"; user = 3999999; group = \"12345\"; mode = \"750\"; },\n"
			"  { name = \"d\"; user = \"0\"; group = 7; }\n"
			");\n"))
		return;
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	if (!CHECK_INT(mm_config_load(&c, conf_path, &err), ==, 0) ||
	    !CHECK_U64(c.n_channels, ==, 4)) {
		printf("#     %s\n", err.msg);
		goto out;
	}
	CHECK(c.channels[0].uid == (uid_t)-1 && c.channels[0].gid == (gid_t)-1);
	CHECK(!c.channels[0].group_w);
	CHECK(c.channels[1].uid == 0 && c.channels[1].gid == 0 && c.channels[1].group_w);
	CHECK(c.channels[2].uid == 3999999 && c.channels[2].gid == 12345);
	CHECK(!c.channels[2].group_w);
	CHECK(c.channels[3].uid == 0 && c.channels[3].gid == 7 && !c.channels[3].group_w);
out:
	mm_config_free(&c);
}

static void test_load_missing(void)
{
	CHECK_INT(mm_config_defaults(&c), ==, 0);
	CHECK_INT(mm_config_load(&c, "/nonexistent/mmapfs.conf", &err), ==, -ENOENT);
	CHECK_HAS(err.msg, "/nonexistent/mmapfs.conf");
	mm_config_free(&c);
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_parse_size),
		TAP_TEST(test_defaults),
		TAP_TEST(test_limits),
		TAP_TEST(test_allow_dirs),
		TAP_TEST(test_load_sample),
		TAP_TEST(test_load_partial),
		TAP_TEST(test_load_errors),
		TAP_TEST(test_load_owner),
		TAP_TEST(test_load_missing),
	};
	const char *tmp = getenv("TMPDIR");
	int fd, ret;

	snprintf(conf_path, sizeof(conf_path), "%s/mmapfs-test-conf.XXXXXX",
		 tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	fd = mkstemp(conf_path);
	if (fd < 0) {
		printf("Bail out! mkstemp: %s\n", strerror(errno));
		return 1;
	}
	close(fd);
	ret = tap_main(tests, TAP_COUNT(tests));
	unlink(conf_path);
	return ret;
}
