/* libFuzzer harness: mm_caps_parse on arbitrary bytes.
 *
 * A refusal must be -EINVAL with a reason and leave the output untouched.
 * Text that parses must format, and the formatted text must parse back to
 * the same capabilities and format to the same text. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "caps.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool area_equal(const struct mm_caps_area *a, const struct mm_caps_area *b)
{
	return a->have == b->have && strcmp(a->file, b->file) == 0 &&
	       a->size == b->size && mm_token_equal(&a->token, &b->token) &&
	       a->token_index == b->token_index && a->token_bytes == b->token_bytes;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mm_caps c, c2, before;
	static char buf[MM_CAPS_MAX + 1], buf2[MM_CAPS_MAX + 1];
	struct mm_err err;
	int r, n, n2;

	memset(&c, 0xa5, sizeof(c));
	memcpy(&before, &c, sizeof(c));
	err.msg[0] = '\0';
	r = mm_caps_parse((const char *)data, size, &c, &err);
	if (r != 0) {
		if (r != -EINVAL || err.msg[0] == '\0' ||
		    !memchr(err.msg, '\0', sizeof(err.msg)) ||
		    memcmp(&c, &before, sizeof(c)) != 0)
			abort();
		return 0;
	}
	/* what was parsed is within the documented limits */
	for (int i = 0; i < 2; i++) {
		const struct mm_caps_area *a = i ? &c.write : &c.read;

		if (a->have & ~(unsigned)MM_CAP_ALL)
			abort();
		if ((a->have & MM_CAP_TOKEN_BYTES) &&
		    (a->token_bytes < 1 || a->token_bytes > MM_TOKEN_MAX_BYTES))
			abort();
		if ((a->have & MM_CAP_FILE) && a->file[0] == '\0')
			abort();
	}

	n = mm_caps_format(&c, buf, sizeof(buf));
	if (n < 0 || (size_t)n >= sizeof(buf) || strlen(buf) != (size_t)n)
		abort();
	memset(&c2, 0x5a, sizeof(c2));
	if (mm_caps_parse(buf, (size_t)n, &c2, &err) != 0)
		abort();
	if (!area_equal(&c.read, &c2.read) || !area_equal(&c.write, &c2.write) ||
	    c.mmapfs != c2.mmapfs)
		abort();
	n2 = mm_caps_format(&c2, buf2, sizeof(buf2));
	if (n2 != n || memcmp(buf, buf2, (size_t)n) != 0)
		abort();
	return 0;
}
