/* Unit tests for core/caps.h: the capabilities text. */
#include <errno.h>

#include "caps.h"
#include "tap.h"

static const char offer[] =
	"read.file=/dev/shm/mmapfs-0/mmapfs.V1cK2x.mmap\n"
	"read.size=67112960\n"
	"read.token=0x7c3e5a0011223344556677889900aabb\n"
	"read.token_index=5013342\n"
	"read.token_bytes=128\n"
	"write.file=/dev/shm/mmapfs-0/mmapfs.Q9zz0a.mmap\n"
	"write.size=65536\n"
	"write.token=0x1\n"
	"write.token_index=0\n"
	"write.token_bytes=512\n"
	"mmapfs=1\n";

static struct mm_caps c;	/* large: keep them off the stack */
static struct mm_caps c2;
static struct mm_caps before;

static void test_full_offer(void)
{
	static char buf[MM_CAPS_MAX];
	struct mm_err err = { "" };
	struct mm_token t;
	int n;

	memset(&c, 0x5a, sizeof(c));
	if (!CHECK_INT(mm_caps_parse(offer, strlen(offer), &c, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		return;
	}
	CHECK_INT(c.read.have, ==, MM_CAP_ALL);
	CHECK_INT(c.write.have, ==, MM_CAP_ALL);
	CHECK_STR(c.read.file, "/dev/shm/mmapfs-0/mmapfs.V1cK2x.mmap");
	CHECK_STR(c.write.file, "/dev/shm/mmapfs-0/mmapfs.Q9zz0a.mmap");
	CHECK_U64(c.read.size, ==, 67112960);
	CHECK_U64(c.write.size, ==, 65536);
	CHECK_U64(c.read.token_index, ==, 5013342);
	CHECK_U64(c.write.token_index, ==, 0);
	CHECK_U64(c.read.token_bytes, ==, 128);
	CHECK_U64(c.write.token_bytes, ==, 512);
	CHECK_U64(c.mmapfs, ==, 1);
	CHECK_INT(mm_token_parse("0x7c3e5a0011223344556677889900aabb", &t), ==, 0);
	CHECK(mm_token_equal(&c.read.token, &t));
	CHECK_INT(c.read.token.v[0], ==, 0xbb);
	CHECK_INT(c.write.token.v[0], ==, 1);
	CHECK_U64(mm_token_len(&c.write.token), ==, 1);

	n = mm_caps_format(&c, buf, sizeof(buf));
	CHECK_INT(n, ==, (int)strlen(offer));
	CHECK_STR(buf, offer);
}

static void test_format_nospace(void)
{
	char buf[sizeof(offer) + 8];
	size_t len = strlen(offer);

	memset(&c, 0, sizeof(c));
	CHECK_INT(mm_caps_parse(offer, len, &c, NULL), ==, 0);
	for (size_t b = 0; b <= len; b++)
		if (!CHECK_INT(mm_caps_format(&c, buf, b), ==, -ENOSPC))
			printf("#     buflen %zu\n", b);
	CHECK_INT(mm_caps_format(&c, buf, len + 1), ==, (int)len);
	CHECK_STR(buf, offer);

	/* nothing present: empty text */
	memset(&c, 0, sizeof(c));
	buf[0] = 'x';
	CHECK_INT(mm_caps_format(&c, buf, sizeof(buf)), ==, 0);
	CHECK_STR(buf, "");
}

static void test_lenient_syntax(void)
{
	static const char text[] =
		"\n"
		"# a comment = with an equals sign\n"
		"   \t\n"
		"  read.file =  /x/y z  \r\n"
		"\tread.size\t=\t0x10000\r\n"
		"    # an indented comment\n"
		"foo.bar=baz\n"
		"unknown=1\n"
		"read.unknown=whatever\n"
		"write.bogus=\n"
		"write.token = 1234567890123456789012345678901234567890\n"
		"write.token_index=  42\n"
		"write.token_bytes = 0x80\n"
		"mmapfs = 1\r\n"
		"read.token_index=7";	/* no final newline */
	struct mm_err err = { "" };
	char hex[MM_TOKEN_HEX_MAX];

	memset(&c, 0x5a, sizeof(c));
	if (!CHECK_INT(mm_caps_parse(text, strlen(text), &c, &err), ==, 0)) {
		printf("#     %s\n", err.msg);
		return;
	}
	CHECK_INT(c.read.have, ==, MM_CAP_FILE | MM_CAP_SIZE | MM_CAP_TOKEN_INDEX);
	CHECK_INT(c.write.have, ==, MM_CAP_TOKEN_ALL);
	CHECK_STR(c.read.file, "/x/y z");
	CHECK_U64(c.read.size, ==, 65536);
	CHECK_U64(c.read.token_index, ==, 7);
	CHECK_U64(c.write.token_index, ==, 42);
	CHECK_U64(c.write.token_bytes, ==, 128);
	CHECK_U64(c.mmapfs, ==, 1);
	mm_token_format(&c.write.token, hex);
	/* 1234567890123456789012345678901234567890 in hex */
	CHECK_STR(hex, "0x3a0c92075c0dbf3b8acbc5f96ce3f0ad2");
	/* fields that were not given are zero, not left over */
	CHECK_U64(c.write.size, ==, 0);
	CHECK_STR(c.write.file, "");

	/* empty text is an empty offer */
	memset(&c, 0x5a, sizeof(c));
	CHECK_INT(mm_caps_parse("", 0, &c, &err), ==, 0);
	CHECK_INT(c.read.have, ==, 0);
	CHECK_INT(c.write.have, ==, 0);
	CHECK_U64(c.mmapfs, ==, 0);
}

/* len is honoured: the text need not be NUL-terminated */
static void test_length_bounded(void)
{
	static const char text[] = "read.size=65536999";
	char buf[sizeof(text) - 1];

	memcpy(buf, text, sizeof(buf));	/* no NUL */
	memset(&c, 0, sizeof(c));
	CHECK_INT(mm_caps_parse(buf, 15, &c, NULL), ==, 0);
	CHECK_U64(c.read.size, ==, 65536);
	CHECK_INT(mm_caps_parse(buf, sizeof(buf), &c, NULL), ==, 0);
	CHECK_U64(c.read.size, ==, 65536999);
}

/* xpra's server answer: token keys only */
static void test_answer(void)
{
	static const char text[] =
		"read.token=0xabc\nread.token_index=1024\nread.token_bytes=128\n";
	char buf[256];

	memset(&c, 0, sizeof(c));
	CHECK_INT(mm_caps_parse(text, strlen(text), &c, NULL), ==, 0);
	CHECK_INT(c.read.have, ==, MM_CAP_TOKEN_ALL);
	CHECK_INT(c.write.have, ==, 0);
	CHECK_INT(mm_caps_format(&c, buf, sizeof(buf)), ==, (int)strlen(text));
	CHECK_STR(buf, text);
}

struct bad_case {
	const char *text;
	size_t len;		/* 0: strlen(text) */
	const char *want[2];	/* strings the reason must contain */
};

static void test_malformed(void)
{
	static const struct bad_case cases[] = {
		{ "read.size=65536\nnoequals\n", 0, { "line 2", "noequals" } },
		{ "read.size=65536\n  = 5\n", 0, { "line 2", "empty key" } },
		{ "read.size=lots\n", 0, { "line 1", "read.size" } },
		{ "\n\nread.size=-1\n", 0, { "line 3", "read.size" } },
		{ "read.size=\n", 0, { "line 1", "read.size" } },
		{ "read.size=12 34\n", 0, { "line 1", "read.size" } },
		{ "read.size=0x0x5\n", 0, { "line 1", "read.size" } },
		{ "read.size=1.5\n", 0, { "line 1", "read.size" } },
		{ "write.size=18446744073709551616\n", 0, { "line 1", "write.size" } },
		{ "write.token_index=99999999999999999999999\n", 0,
		  { "line 1", "write.token_index" } },
		{ "# c\nwrite.token_bytes=0\n", 0, { "line 2", "write.token_bytes" } },
		{ "write.token_bytes=513\n", 0, { "line 1", "write.token_bytes" } },
		{ "write.token_bytes=0x\n", 0, { "line 1", "write.token_bytes" } },
		{ "read.token=xyz\n", 0, { "line 1", "read.token" } },
		{ "read.token=-5\n", 0, { "line 1", "read.token" } },
		{ "read.file=\n", 0, { "line 1", "read.file" } },
		{ "read.size=65536\nread.file=/a\nread.size=65536\n", 0,
		  { "line 3", "read.size" } },
		{ "write.token=0x1\nwrite.token=0x1\n", 0, { "line 2", "write.token" } },
		{ "mmapfs=yes\n", 0, { "line 1", "mmapfs" } },
		{ "mmapfs=4294967296\n", 0, { "line 1", "mmapfs" } },
		/* a NUL byte and control characters: no key to name yet */
		{ "read.size=65536\nread.file=/a\0b\n", 29, { "line 2", "0x00" } },
		{ "read.file=/a\x01" "b\n", 0, { "line 1", "0x01" } },
		{ "read.file=/a\x1b[31m\n", 0, { "line 1", "0x1b" } },
		{ "read.size=65536\n\nread.size=1\x7f\nx\x02\n", 0, { "line 3", "0x7f" } },
		{ "\nread.size=65536\nx\x02\n", 0, { "line 3", "0x02" } },
		/* a CR is only accepted as the end of a CRLF line */
		{ "read.size=65536\r\nread.file=/a\rb\r\n", 0, { "line 2", "0x0d" } },
		{ "read.size=65536\r\r\n", 0, { "line 1", "0x0d" } },
	};
	struct mm_err err;

	for (size_t i = 0; i < TAP_COUNT(cases); i++) {
		const struct bad_case *k = &cases[i];
		size_t len = k->len ? k->len : strlen(k->text);
		bool ok = true;

		memset(&c, 0xa5, sizeof(c));
		before = c;
		strcpy(err.msg, "(unset)");
		ok &= CHECK_INT(mm_caps_parse(k->text, len, &c, &err), ==, -EINVAL);
		ok &= CHECK_MEM(&c, &before, sizeof(c));
		for (int w = 0; w < 2; w++)
			ok &= CHECK_HAS(err.msg, k->want[w]);
		if (!ok)
			printf("#     case %zu: \"%.60s\"\n", i, k->text);
		/* a NULL err is allowed */
		CHECK_INT(mm_caps_parse(k->text, len, &c, NULL), ==, -EINVAL);
	}
}

static void test_too_long(void)
{
	static char text[MM_CAPS_MAX + 2];
	struct mm_err err = { "" };

	/* comment lines up to exactly MM_CAPS_MAX bytes are fine */
	memset(text, '#', sizeof(text));
	for (size_t i = 99; i < sizeof(text); i += 100)
		text[i] = '\n';
	strcpy(text, "read.size=65536\n");
	text[strlen(text)] = '#';
	memset(&c, 0, sizeof(c));
	CHECK_INT(mm_caps_parse(text, MM_CAPS_MAX, &c, &err), ==, 0);
	CHECK_U64(c.read.size, ==, 65536);

	memset(&c, 0xa5, sizeof(c));
	before = c;
	CHECK_INT(mm_caps_parse(text, MM_CAPS_MAX + 1, &c, &err), ==, -EINVAL);
	CHECK_MEM(&c, &before, sizeof(c));
	CHECK_HAS(err.msg, "65536");
}

static void expect_u64(const char *s, uint64_t max, int want, uint64_t value)
{
	uint64_t out = 0xdeadbeef;
	int r = mm_parse_u64(s, max, &out);

	if (!CHECK_INT(r, ==, want))
		printf("#     input \"%s\"\n", s);
	if (want == 0)
		CHECK_U64(out, ==, value);
	else
		CHECK_U64(out, ==, 0xdeadbeef);
}

static void test_parse_u64(void)
{
	expect_u64("0", UINT64_MAX, 0, 0);
	expect_u64("0x0", UINT64_MAX, 0, 0);
	expect_u64("08", UINT64_MAX, 0, 8);
	expect_u64("0XfF", UINT64_MAX, 0, 255);
	expect_u64("18446744073709551615", UINT64_MAX, 0, UINT64_MAX);
	expect_u64("0xffffffffffffffff", UINT64_MAX, 0, UINT64_MAX);
	expect_u64("0x00000000000000000000ff", UINT64_MAX, 0, 255);
	expect_u64("18446744073709551616", UINT64_MAX, -ERANGE, 0);
	expect_u64("99999999999999999999", UINT64_MAX, -ERANGE, 0);
	expect_u64("0x10000000000000000", UINT64_MAX, -ERANGE, 0);
	expect_u64("255", 255, 0, 255);
	expect_u64("256", 255, -ERANGE, 0);
	expect_u64("0x100", 255, -ERANGE, 0);
	expect_u64("", UINT64_MAX, -EINVAL, 0);
	expect_u64("0x", UINT64_MAX, -EINVAL, 0);
	expect_u64("0x0x5", UINT64_MAX, -EINVAL, 0);
	expect_u64("-1", UINT64_MAX, -EINVAL, 0);
	expect_u64("+1", UINT64_MAX, -EINVAL, 0);
	expect_u64(" 1", UINT64_MAX, -EINVAL, 0);
	expect_u64("1 ", UINT64_MAX, -EINVAL, 0);
	expect_u64("12ab", UINT64_MAX, -EINVAL, 0);
	expect_u64("0xfg", UINT64_MAX, -EINVAL, 0);
	expect_u64("x5", UINT64_MAX, -EINVAL, 0);
}

static void random_area(struct mm_caps_area *a)
{
	a->have = (unsigned)tap_rand() & MM_CAP_ALL;
	if (a->have & MM_CAP_FILE) {
		size_t n = (size_t)tap_range(1, 300);

		for (size_t i = 0; i < n; i++) {
			a->file[i] = (char)tap_range(0x21, 0xff);	/* no blanks */
			if (a->file[i] == 0x7f)				/* nor DEL */
				a->file[i] = '~';
		}
		a->file[n] = '\0';
	}
	if (a->have & MM_CAP_SIZE)
		a->size = tap_rand() >> tap_range(0, 63);
	if (a->have & MM_CAP_TOKEN) {
		size_t n = (size_t)tap_range(0, MM_TOKEN_MAX_BYTES);

		for (size_t i = 0; i < n; i++)
			a->token.v[i] = (uint8_t)tap_rand();
	}
	if (a->have & MM_CAP_TOKEN_INDEX)
		a->token_index = tap_rand() >> tap_range(0, 63);
	if (a->have & MM_CAP_TOKEN_BYTES)
		a->token_bytes = tap_range(1, MM_TOKEN_MAX_BYTES);
}

/* Field by field: struct copies need not preserve padding. */
static bool area_equal(const struct mm_caps_area *a, const struct mm_caps_area *b)
{
	return a->have == b->have && strcmp(a->file, b->file) == 0 &&
	       a->size == b->size && mm_token_equal(&a->token, &b->token) &&
	       a->token_index == b->token_index && a->token_bytes == b->token_bytes;
}

static void test_random_round_trip(void)
{
	static char buf[MM_CAPS_MAX], buf2[MM_CAPS_MAX];
	struct mm_err err = { "" };

	for (int k = 0; k < 300; k++) {
		int n, n2;

		memset(&c, 0, sizeof(c));
		random_area(&c.read);
		random_area(&c.write);
		c.mmapfs = tap_range(0, 3);
		n = mm_caps_format(&c, buf, sizeof(buf));
		if (!CHECK_INT(n, >=, 0))
			return;
		memset(&c2, 0x5a, sizeof(c2));
		if (!CHECK_INT(mm_caps_parse(buf, (size_t)n, &c2, &err), ==, 0)) {
			printf("#     %s\n", err.msg);
			return;
		}
		if (!CHECK(area_equal(&c.read, &c2.read)) ||
		    !CHECK(area_equal(&c.write, &c2.write)) ||
		    !CHECK_U64(c.mmapfs, ==, c2.mmapfs))
			return;
		n2 = mm_caps_format(&c2, buf2, sizeof(buf2));
		if (!CHECK_INT(n2, ==, n) || !CHECK_STR(buf2, buf))
			return;
	}
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_full_offer),
		TAP_TEST(test_format_nospace),
		TAP_TEST(test_lenient_syntax),
		TAP_TEST(test_length_bounded),
		TAP_TEST(test_answer),
		TAP_TEST(test_malformed),
		TAP_TEST(test_too_long),
		TAP_TEST(test_parse_u64),
		TAP_TEST(test_random_round_trip),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
