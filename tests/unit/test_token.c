/* Unit tests for core/token.h: xpra's mmap tokens. */
#include <errno.h>

#include "tap.h"
#include "token.h"

#define AREA 4096

static uint8_t area[AREA];
static uint8_t copy[AREA];

static void fill_area(void)
{
	for (size_t i = 0; i < AREA; i++)
		area[i] = (uint8_t)(0xa0 ^ (i * 7));
	memcpy(copy, area, AREA);
}

static void random_token(struct mm_token *t, size_t nbytes)
{
	memset(t, 0, sizeof(*t));
	for (size_t i = 0; i < nbytes; i++)
		t->v[i] = (uint8_t)tap_rand();
}

/* Decimal text of t, by repeated division by 10 (most significant first). */
static void to_decimal(const struct mm_token *t, char *out)
{
	struct mm_token q = *t;
	char rev[MM_TOKEN_MAX_BYTES * 3 + 2];
	size_t n = 0;

	do {
		unsigned rem = 0;

		for (size_t i = MM_TOKEN_MAX_BYTES; i-- > 0;) {
			unsigned cur = rem * 256 + q.v[i];

			q.v[i] = (uint8_t)(cur / 10);
			rem = cur % 10;
		}
		rev[n++] = (char)('0' + rem);
	} while (mm_token_len(&q) > 0);
	for (size_t i = 0; i < n; i++)
		out[i] = rev[n - 1 - i];
	out[n] = '\0';
}

static void test_random(void)
{
	static const size_t sizes[] = { 1, 2, 16, 128, 511, 512 };
	struct mm_token a, b;

	for (size_t s = 0; s < TAP_COUNT(sizes); s++) {
		/* 300 draws: a zero top byte would come up about once in 256 */
		for (int k = 0; k < 300; k++) {
			size_t n = sizes[s];

			memset(&a, 0xee, sizeof(a));
			if (!CHECK_INT(mm_token_random(&a, n), ==, 0))
				return;
			if (!CHECK_U64(mm_token_len(&a), ==, n))
				return;
			for (size_t i = n; i < MM_TOKEN_MAX_BYTES; i++)
				if (!CHECK_INT(a.v[i], ==, 0))
					return;
		}
	}
	CHECK_INT(mm_token_random(&a, 128), ==, 0);
	CHECK_INT(mm_token_random(&b, 128), ==, 0);
	CHECK(!mm_token_equal(&a, &b));
	CHECK(mm_token_equal(&a, &a));
	CHECK_INT(mm_token_random(&a, 0), ==, -EINVAL);
	CHECK_INT(mm_token_random(&a, 513), ==, -EINVAL);
}

/* Write, read and check a token at index; nothing else in the area moves. */
static void round_trip_at(uint64_t index, uint64_t nbytes)
{
	struct mm_token t, back;

	fill_area();
	CHECK_INT(mm_token_random(&t, nbytes), ==, 0);
	CHECK_INT(mm_token_write(area, AREA, index, nbytes, &t), ==, 0);
	CHECK_MEM(area + index, t.v, nbytes);
	CHECK_MEM(area, copy, index);
	CHECK_MEM(area + index + nbytes, copy + index + nbytes, AREA - index - nbytes);
	memset(&back, 0xee, sizeof(back));
	CHECK_INT(mm_token_read(area, AREA, index, nbytes, &back), ==, 0);
	CHECK(mm_token_equal(&t, &back));
	CHECK_INT(mm_token_check(area, AREA, index, nbytes, &t), ==, 0);
}

static void test_round_trip(void)
{
	round_trip_at(0, 128);
	round_trip_at(AREA - 128, 128);
	round_trip_at(AREA - 512, 512);
	round_trip_at(AREA - 1, 1);
	round_trip_at(0, 1);
	round_trip_at(5013 % AREA, 77);
}

/* Every bad place is refused by all four functions, without touching the
 * area or the output token. */
static void bad_place(uint64_t index, uint64_t nbytes, int want)
{
	struct mm_token t, before;

	fill_area();
	memset(&t, 0, sizeof(t));
	t.v[0] = 1;
	CHECK_INT(mm_token_place_check(AREA, index, nbytes), ==, want);
	CHECK_INT(mm_token_write(area, AREA, index, nbytes, &t), ==, want);
	CHECK_MEM(area, copy, AREA);
	memset(&t, 0x5a, sizeof(t));
	before = t;
	CHECK_INT(mm_token_read(area, AREA, index, nbytes, &t), ==, want);
	CHECK(mm_token_equal(&t, &before));
	CHECK_INT(mm_token_check(area, AREA, index, nbytes, &t), ==, want);
}

static void test_bad_places(void)
{
	bad_place(0, 0, -EINVAL);
	bad_place(0, 513, -EINVAL);
	bad_place(0, UINT64_C(1) << 63, -EINVAL);
	bad_place(0, UINT64_MAX, -EINVAL);
	bad_place(AREA - 127, 128, -ERANGE);	/* one byte past the end */
	bad_place(AREA, 1, -ERANGE);
	bad_place(AREA + 1, 1, -ERANGE);
	bad_place(UINT64_MAX - 10, 128, -ERANGE);	/* index + bytes wraps */
	bad_place(UINT64_MAX, 1, -ERANGE);
	bad_place(UINT64_C(1) << 63, 512, -ERANGE);
	CHECK_INT(mm_token_place_check(0, 0, 1), ==, -ERANGE);
	CHECK_INT(mm_token_place_check(512, 0, 512), ==, 0);
	CHECK_INT(mm_token_place_check(UINT64_MAX, UINT64_MAX - 512, 512), ==, 0);
	CHECK_INT(mm_token_place_check(UINT64_MAX, UINT64_MAX - 511, 512), ==, -ERANGE);
}

static void test_overflow(void)
{
	struct mm_token t;

	fill_area();
	memset(&t, 0, sizeof(t));
	t.v[2] = 1;		/* 0x10000 needs 3 bytes */
	CHECK_INT(mm_token_write(area, AREA, 100, 2, &t), ==, -EOVERFLOW);
	CHECK_MEM(area, copy, AREA);
	CHECK_INT(mm_token_write(area, AREA, 100, 3, &t), ==, 0);
	CHECK_INT(mm_token_check(area, AREA, 100, 3, &t), ==, 0);

	memset(&t, 0, sizeof(t));	/* zero fits anywhere */
	CHECK_INT(mm_token_write(area, AREA, 200, 1, &t), ==, 0);
	CHECK_INT(area[200], ==, 0);
	CHECK_INT(mm_token_check(area, AREA, 200, 1, &t), ==, 0);
}

static void test_mismatch(void)
{
	struct mm_token t;

	fill_area();
	CHECK_INT(mm_token_random(&t, 128), ==, 0);
	CHECK_INT(mm_token_write(area, AREA, 1000, 128, &t), ==, 0);
	area[1000] ^= 1;	/* least significant byte */
	CHECK_INT(mm_token_check(area, AREA, 1000, 128, &t), ==, -EBADMSG);
	area[1000] ^= 1;
	area[1127] ^= 0x80;	/* most significant byte */
	CHECK_INT(mm_token_check(area, AREA, 1000, 128, &t), ==, -EBADMSG);
	area[1127] ^= 0x80;
	CHECK_INT(mm_token_check(area, AREA, 1000, 128, &t), ==, 0);
	/* fewer bytes than the token has: the top byte is missing */
	CHECK_INT(mm_token_check(area, AREA, 1000, 127, &t), ==, -EBADMSG);
	/* one more byte, not zero in the area */
	area[1128] = 7;
	CHECK_INT(mm_token_check(area, AREA, 1000, 129, &t), ==, -EBADMSG);
	area[1128] = 0;
	CHECK_INT(mm_token_check(area, AREA, 1000, 129, &t), ==, 0);
}

/* xpra's write_mmap_token: area[index + i] = (token >> 8i) & 255. */
static void test_byte_order(void)
{
	struct mm_token t;
	char hex[MM_TOKEN_HEX_MAX], want[32];

	fill_area();
	CHECK_INT(mm_token_parse("0x0102", &t), ==, 0);
	CHECK_INT(mm_token_write(area, AREA, 10, 2, &t), ==, 0);
	CHECK_INT(area[10], ==, 0x02);
	CHECK_INT(area[11], ==, 0x01);
	CHECK_INT(mm_token_write(area, AREA, 20, 4, &t), ==, 0);
	CHECK_MEM(area + 20, "\x02\x01\x00\x00", 4);
	CHECK_INT(mm_token_parse("16909060", &t), ==, 0);	/* 0x01020304 */
	CHECK_INT(mm_token_write(area, AREA, 30, 4, &t), ==, 0);
	CHECK_MEM(area + 30, "\x04\x03\x02\x01", 4);

	/* xpra's read_mmap_token, for 8-byte tokens, as a uint64 */
	for (int k = 0; k < 200; k++) {
		uint64_t v = 0;

		CHECK_INT(mm_token_random(&t, 8), ==, 0);
		CHECK_INT(mm_token_write(area, AREA, 40, 8, &t), ==, 0);
		for (int i = 0; i < 8; i++)
			v = (v << 8) + area[40 + 8 - 1 - i];
		mm_token_format(&t, hex);
		snprintf(want, sizeof(want), "0x%" PRIx64, v);
		if (!CHECK_STR(hex, want))
			return;
	}
}

static void expect_parse(const char *s, int want)
{
	struct mm_token t, before;
	int r;

	memset(&t, 0x5a, sizeof(t));
	before = t;
	r = mm_token_parse(s, &t);
	if (!CHECK_INT(r, ==, want))
		printf("#     input: \"%.80s\"\n", s);
	if (r < 0)
		CHECK(mm_token_equal(&t, &before));
}

static void test_parse(void)
{
	static char big[2 + 2 * 2048 + 2];
	struct mm_token t;

	CHECK_INT(mm_token_parse("0", &t), ==, 0);
	CHECK_U64(mm_token_len(&t), ==, 0);
	CHECK_INT(mm_token_parse("255", &t), ==, 0);
	CHECK_INT(t.v[0], ==, 255);
	CHECK_U64(mm_token_len(&t), ==, 1);
	CHECK_INT(mm_token_parse("256", &t), ==, 0);
	CHECK(t.v[0] == 0 && t.v[1] == 1 && mm_token_len(&t) == 2);
	CHECK_INT(mm_token_parse("18446744073709551616", &t), ==, 0);	/* 2^64 */
	CHECK(t.v[8] == 1 && mm_token_len(&t) == 9 && t.v[0] == 0);
	CHECK_INT(mm_token_parse("0xAbC", &t), ==, 0);
	CHECK(t.v[0] == 0xbc && t.v[1] == 0x0a && mm_token_len(&t) == 2);
	CHECK_INT(mm_token_parse("0XfF", &t), ==, 0);
	CHECK(t.v[0] == 0xff && mm_token_len(&t) == 1);
	CHECK_INT(mm_token_parse("0x000001", &t), ==, 0);
	CHECK(t.v[0] == 1 && mm_token_len(&t) == 1);
	CHECK_INT(mm_token_parse("007", &t), ==, 0);	/* decimal, not octal */
	CHECK(t.v[0] == 7 && mm_token_len(&t) == 1);

	/* 512 bytes of 0xff: the largest token */
	strcpy(big, "0x");
	memset(big + 2, 'f', 1024);
	big[2 + 1024] = '\0';
	CHECK_INT(mm_token_parse(big, &t), ==, 0);
	CHECK_U64(mm_token_len(&t), ==, 512);
	CHECK(t.v[0] == 0xff && t.v[511] == 0xff);
	/* 513 bytes */
	strcpy(big, "0x1");
	memset(big + 3, '0', 1024);
	big[3 + 1024] = '\0';
	expect_parse(big, -ERANGE);
	/* many leading zeros are still a small number */
	strcpy(big, "0x");
	memset(big + 2, '0', 2048);
	strcpy(big + 2 + 2048, "1");
	CHECK_INT(mm_token_parse(big, &t), ==, 0);
	CHECK(t.v[0] == 1 && mm_token_len(&t) == 1);

	expect_parse("", -EINVAL);
	expect_parse("0x", -EINVAL);
	expect_parse("0X", -EINVAL);
	expect_parse("-1", -EINVAL);
	expect_parse("+1", -EINVAL);
	expect_parse(" 1", -EINVAL);
	expect_parse("1 ", -EINVAL);
	expect_parse("12a", -EINVAL);
	expect_parse("0xg", -EINVAL);
	expect_parse("0x-1", -EINVAL);
	expect_parse("0x 1", -EINVAL);
	expect_parse("0x0x1", -EINVAL);
	expect_parse("x12", -EINVAL);
	expect_parse("garbage", -EINVAL);
	expect_parse("1e5", -EINVAL);
}

static void test_parse_decimal_limits(void)
{
	static char dec[MM_TOKEN_MAX_BYTES * 3 + 2];
	struct mm_token t, back;
	size_t n;

	/* 2^4096 - 1 is the largest; 2^4096 (its last digit + 1, as
	 * 2^4096 - 1 ends in 5) is one too many */
	memset(&t, 0xff, sizeof(t));
	to_decimal(&t, dec);
	n = strlen(dec);
	CHECK_INT(dec[n - 1], ==, '5');
	CHECK_INT(mm_token_parse(dec, &back), ==, 0);
	CHECK(mm_token_equal(&t, &back));
	dec[n - 1] = '6';
	expect_parse(dec, -ERANGE);
	/* far too many digits */
	memset(dec, '9', sizeof(dec) - 1);
	dec[sizeof(dec) - 1] = '\0';
	expect_parse(dec, -ERANGE);
}

static void test_format(void)
{
	char hex[MM_TOKEN_HEX_MAX];
	struct mm_token t;

	memset(&t, 0, sizeof(t));
	mm_token_format(&t, hex);
	CHECK_STR(hex, "0x0");
	t.v[0] = 1;
	mm_token_format(&t, hex);
	CHECK_STR(hex, "0x1");
	t.v[0] = 2;
	t.v[1] = 1;
	mm_token_format(&t, hex);
	CHECK_STR(hex, "0x102");
	t.v[0] = 0;
	t.v[1] = 0xab;
	mm_token_format(&t, hex);
	CHECK_STR(hex, "0xab00");
	t.v[1] = 0x0a;
	t.v[0] = 0x05;
	mm_token_format(&t, hex);
	CHECK_STR(hex, "0xa05");

	memset(&t, 0xff, sizeof(t));
	mm_token_format(&t, hex);
	CHECK_U64(strlen(hex), ==, MM_TOKEN_HEX_MAX - 1);
	CHECK(hex[2] == 'f' && hex[MM_TOKEN_HEX_MAX - 2] == 'f');
}

static void test_format_parse_random(void)
{
	static char dec[MM_TOKEN_MAX_BYTES * 3 + 2];
	char hex[MM_TOKEN_HEX_MAX];
	struct mm_token t, back;

	for (int k = 0; k < 300; k++) {
		size_t n = (size_t)tap_range(0, MM_TOKEN_MAX_BYTES);

		random_token(&t, n);
		mm_token_format(&t, hex);
		if (!CHECK(hex[0] == '0' && hex[1] == 'x'))
			return;
		/* no leading zeros unless the value is zero */
		if (mm_token_len(&t) > 0 && !CHECK_INT(hex[2], !=, '0'))
			return;
		for (const char *p = hex + 2; *p; p++)
			if (!CHECK(strchr("0123456789abcdef", *p)))
				return;
		memset(&back, 0x5a, sizeof(back));
		if (!CHECK_INT(mm_token_parse(hex, &back), ==, 0) ||
		    !CHECK(mm_token_equal(&t, &back)))
			return;
		if (k % 10 == 0) {
			to_decimal(&t, dec);
			memset(&back, 0x5a, sizeof(back));
			if (!CHECK_INT(mm_token_parse(dec, &back), ==, 0) ||
			    !CHECK(mm_token_equal(&t, &back)))
				return;
		}
	}
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_random),
		TAP_TEST(test_round_trip),
		TAP_TEST(test_bad_places),
		TAP_TEST(test_overflow),
		TAP_TEST(test_mismatch),
		TAP_TEST(test_byte_order),
		TAP_TEST(test_parse),
		TAP_TEST(test_parse_decimal_limits),
		TAP_TEST(test_format),
		TAP_TEST(test_format_parse_random),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
