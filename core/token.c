#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "guard.h"
#include "token.h"

int mm_token_random(struct mm_token *t, size_t nbytes)
{
	size_t got = 0;

	if (nbytes < 1 || nbytes > MM_TOKEN_MAX_BYTES)
		return -EINVAL;
	memset(t, 0, sizeof(*t));
	while (got < nbytes) {
		ssize_t n = getrandom(t->v + got, nbytes - got, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	if (t->v[nbytes - 1] == 0)
		t->v[nbytes - 1] = 1;
	return 0;
}

size_t mm_token_len(const struct mm_token *t)
{
	size_t n = MM_TOKEN_MAX_BYTES;

	while (n > 0 && t->v[n - 1] == 0)
		n--;
	return n;
}

size_t mm_token_bits(const struct mm_token *t)
{
	size_t n = mm_token_len(t);

	return n ? 8 * (n - 1) + (size_t)(32 - __builtin_clz(t->v[n - 1])) : 0;
}

int mm_token_equal(const struct mm_token *a, const struct mm_token *b)
{
	return memcmp(a->v, b->v, sizeof(a->v)) == 0;
}

int mm_token_place_check(uint64_t area_size, uint64_t index, uint64_t nbytes)
{
	if (nbytes < 1 || nbytes > MM_TOKEN_MAX_BYTES)
		return -EINVAL;
	if (index > area_size || nbytes > area_size - index)
		return -ERANGE;
	return 0;
}

int mm_token_write(uint8_t *area, uint64_t area_size, uint64_t index,
		   uint64_t nbytes, const struct mm_token *t)
{
	int r = mm_token_place_check(area_size, index, nbytes);

	if (r < 0)
		return r;
	if (mm_token_len(t) > nbytes)
		return -EOVERFLOW;
	return mm_guard_copy(area + index, t->v, nbytes);
}

int mm_token_read(const uint8_t *area, uint64_t area_size, uint64_t index,
		  uint64_t nbytes, struct mm_token *t)
{
	int r = mm_token_place_check(area_size, index, nbytes);

	if (r < 0)
		return r;
	memset(t, 0, sizeof(*t));
	return mm_guard_copy(t->v, area + index, nbytes);
}

int mm_token_check(const uint8_t *area, uint64_t area_size, uint64_t index,
		   uint64_t nbytes, const struct mm_token *t)
{
	struct mm_token found;
	int r = mm_token_read(area, area_size, index, nbytes, &found);

	if (r < 0)
		return r;
	return mm_token_equal(&found, t) ? 0 : -EBADMSG;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int parse_hex(const char *s, struct mm_token *t)
{
	size_t n = strlen(s), nib = 0;

	if (n == 0)
		return -EINVAL;
	/* walk from the least significant digit */
	for (size_t i = n; i-- > 0; nib++) {
		int d = hex_digit(s[i]);

		if (d < 0)
			return -EINVAL;
		if (d == 0)
			continue;
		if (nib / 2 >= MM_TOKEN_MAX_BYTES)
			return -ERANGE;
		t->v[nib / 2] |= (uint8_t)(d << (4 * (nib % 2)));
	}
	return 0;
}

static int parse_dec(const char *s, struct mm_token *t)
{
	if (*s == '\0')
		return -EINVAL;
	for (; *s; s++) {
		unsigned carry;

		if (*s < '0' || *s > '9')
			return -EINVAL;
		carry = (unsigned)(*s - '0');
		/* t = t * 10 + digit, one byte at a time */
		for (size_t i = 0; i < MM_TOKEN_MAX_BYTES; i++) {
			unsigned x = t->v[i] * 10u + carry;

			t->v[i] = (uint8_t)x;
			carry = x >> 8;
		}
		if (carry)
			return -ERANGE;
	}
	return 0;
}

int mm_token_parse(const char *s, struct mm_token *t)
{
	struct mm_token v;
	int r;

	memset(&v, 0, sizeof(v));
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		r = parse_hex(s + 2, &v);
	else
		r = parse_dec(s, &v);
	if (r == 0)
		*t = v;
	return r;
}

void mm_token_format(const struct mm_token *t, char buf[MM_TOKEN_HEX_MAX])
{
	static const char digits[] = "0123456789abcdef";
	size_t n = mm_token_len(t);
	char *p = buf;

	*p++ = '0';
	*p++ = 'x';
	if (n == 0) {
		*p++ = '0';
	} else {
		uint8_t top = t->v[n - 1];

		if (top >> 4)
			*p++ = digits[top >> 4];
		*p++ = digits[top & 15];
		for (size_t i = n - 1; i-- > 0;) {
			*p++ = digits[t->v[i] >> 4];
			*p++ = digits[t->v[i] & 15];
		}
	}
	*p = '\0';
}
