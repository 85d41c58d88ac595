#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "caps.h"

int mm_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	unsigned base = 10;
	uint64_t v = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (*s == '\0')
		return -EINVAL;
	for (; *s; s++) {
		unsigned d;

		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (base == 16 && isxdigit((unsigned char)*s))
			d = (unsigned)(tolower((unsigned char)*s) - 'a' + 10);
		else
			return -EINVAL;
		if (v > (UINT64_MAX - d) / base)
			return -ERANGE;
		v = v * base + d;
	}
	if (v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

static char *trim(char *s, char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		end--;
	*end = '\0';
	return s;
}

static const char *const area_keys[] = {
	"file", "size", "token", "token_index", "token_bytes",
};

static int set_area_key(struct mm_caps_area *a, unsigned bit, const char *key,
			const char *val, unsigned line, struct mm_err *err)
{
	int r = 0;

	if (a->have & bit)
		return mm_fail(err, -EINVAL, "line %u: %s: given twice", line, key);
	switch (bit) {
	case MM_CAP_FILE:
		if (val[0] == '\0')
			return mm_fail(err, -EINVAL, "line %u: %s: empty", line, key);
		if (strlen(val) >= sizeof(a->file))
			return mm_fail(err, -EINVAL, "line %u: %s: path too long", line, key);
		strcpy(a->file, val);
		break;
	case MM_CAP_SIZE:
		r = mm_parse_u64(val, UINT64_MAX, &a->size);
		break;
	case MM_CAP_TOKEN:
		r = mm_token_parse(val, &a->token);
		if (r == -ERANGE)
			return mm_fail(err, -EINVAL, "line %u: %s: larger than %d bytes",
				       line, key, MM_TOKEN_MAX_BYTES);
		break;
	case MM_CAP_TOKEN_INDEX:
		r = mm_parse_u64(val, UINT64_MAX, &a->token_index);
		break;
	case MM_CAP_TOKEN_BYTES:
		r = mm_parse_u64(val, UINT64_MAX, &a->token_bytes);
		if (r == 0 && (a->token_bytes < 1 || a->token_bytes > MM_TOKEN_MAX_BYTES))
			return mm_fail(err, -EINVAL, "line %u: %s: %s is not between 1 and %d",
				       line, key, val, MM_TOKEN_MAX_BYTES);
		break;
	}
	if (r == -ERANGE)
		return mm_fail(err, -EINVAL, "line %u: %s: number too large", line, key);
	if (r < 0)
		return mm_fail(err, -EINVAL, "line %u: %s: not a number: '%.40s'", line, key, val);
	a->have |= bit;
	return 0;
}

static int set_key(struct mm_caps *c, const char *key, const char *val,
		   unsigned line, struct mm_err *err)
{
	struct mm_caps_area *a = NULL;
	const char *sub = NULL;

	if (strncmp(key, "read.", 5) == 0) {
		a = &c->read;
		sub = key + 5;
	} else if (strncmp(key, "write.", 6) == 0) {
		a = &c->write;
		sub = key + 6;
	} else if (strcmp(key, "mmapfs") == 0) {
		int r = mm_parse_u64(val, UINT32_MAX, &c->mmapfs);

		if (r < 0)
			return mm_fail(err, -EINVAL, "line %u: %s: not a version number: '%.40s'",
				       line, key, val);
		return 0;
	}
	if (!a)
		return 0;	/* unknown key: the peer's own business */
	for (unsigned i = 0; i < sizeof(area_keys) / sizeof(area_keys[0]); i++)
		if (strcmp(sub, area_keys[i]) == 0)
			return set_area_key(a, 1u << i, key, val, line, err);
	return 0;
}

int mm_caps_parse(const char *text, size_t len, struct mm_caps *out,
		  struct mm_err *err)
{
	struct mm_caps *c = NULL;
	char *copy = NULL, *p, *end;
	unsigned line = 0;
	int r;

	if (len > MM_CAPS_MAX)
		return mm_fail(err, -EINVAL, "capabilities longer than %d bytes", MM_CAPS_MAX);
	c = calloc(1, sizeof(*c));
	copy = malloc(len + 1);
	if (!c || !copy) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(copy, text, len);
	copy[len] = '\0';
	end = copy + len;

	for (r = 0, p = copy; p < end && r == 0; ) {
		char *eol = memchr(p, '\n', (size_t)(end - p));
		char *next, *eq, *key, *val;

		if (!eol)
			eol = end;
		next = eol + (eol < end);
		line++;
		for (char *q = p; q < eol; q++) {
			if (((unsigned char)*q < 0x20 || *q == 0x7f) && *q != '\t' &&
			    !(*q == '\r' && q + 1 == eol)) {
				r = mm_fail(err, -EINVAL, "line %u: control character 0x%02x",
					    line, (unsigned char)*q);
				goto out;
			}
		}
		key = trim(p, eol);
		p = next;
		if (key[0] == '\0' || key[0] == '#')
			continue;
		eq = strchr(key, '=');
		if (!eq) {
			r = mm_fail(err, -EINVAL, "line %u: expected key=value, got '%.40s'",
				    line, key);
			goto out;
		}
		val = trim(eq + 1, eq + 1 + strlen(eq + 1));
		key = trim(key, eq);
		if (key[0] == '\0') {
			r = mm_fail(err, -EINVAL, "line %u: empty key", line);
			goto out;
		}
		r = set_key(c, key, val, line, err);
	}
	if (r == 0)
		*out = *c;
out:
	free(copy);
	free(c);
	return r;
}

int mm_text_append(char *buf, size_t buflen, size_t *pos, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *pos, buflen - *pos, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= buflen - *pos)
		return -ENOSPC;
	*pos += (size_t)n;
	return 0;
}

static int format_area(const char *name, const struct mm_caps_area *a,
		       char *buf, size_t buflen, size_t *pos)
{
	char hex[MM_TOKEN_HEX_MAX];
	int r = 0;

	if (a->have & MM_CAP_FILE)
		r = mm_text_append(buf, buflen, pos, "%s.file=%s\n", name, a->file);
	if (r == 0 && (a->have & MM_CAP_SIZE))
		r = mm_text_append(buf, buflen, pos, "%s.size=%llu\n", name,
			   (unsigned long long)a->size);
	if (r == 0 && (a->have & MM_CAP_TOKEN)) {
		mm_token_format(&a->token, hex);
		r = mm_text_append(buf, buflen, pos, "%s.token=%s\n", name, hex);
	}
	if (r == 0 && (a->have & MM_CAP_TOKEN_INDEX))
		r = mm_text_append(buf, buflen, pos, "%s.token_index=%llu\n", name,
			   (unsigned long long)a->token_index);
	if (r == 0 && (a->have & MM_CAP_TOKEN_BYTES))
		r = mm_text_append(buf, buflen, pos, "%s.token_bytes=%llu\n", name,
			   (unsigned long long)a->token_bytes);
	return r;
}

/* What any formatted mm_caps fits in: per area a file, a token in hex,
 * three numbers and the keys; then the marker. */
#define CAPS_TEXT_MAX (2 * (PATH_MAX + MM_TOKEN_HEX_MAX + 256) + 64)

char *mm_caps_text(const struct mm_caps *c)
{
	char *buf = malloc(CAPS_TEXT_MAX), *text;
	int n = buf ? mm_caps_format(c, buf, CAPS_TEXT_MAX) : -ENOMEM;

	if (n < 0) {
		free(buf);
		return NULL;
	}
	text = realloc(buf, (size_t)n + 1);
	return text ? text : buf;
}

int mm_caps_format(const struct mm_caps *c, char *buf, size_t buflen)
{
	size_t pos = 0;
	int r;

	if (buflen == 0)
		return -ENOSPC;
	buf[0] = '\0';
	r = format_area("read", &c->read, buf, buflen, &pos);
	if (r == 0)
		r = format_area("write", &c->write, buf, buflen, &pos);
	if (r == 0 && c->mmapfs)
		r = mm_text_append(buf, buflen, &pos, "mmapfs=%llu\n", (unsigned long long)c->mmapfs);
	return r < 0 ? r : (int)pos;
}
