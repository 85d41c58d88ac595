/* mmapfs core: the capabilities text of DESIGN.md.
 *
 *   read.file=/dev/shm/mmapfs-0/mmapfs.V1cK2x.mmap
 *   read.size=67112960
 *   read.token=0x7c3e...
 *   read.token_index=5013342
 *   read.token_bytes=128
 *   write.(same keys)
 *   mmapfs=1                  (our extension marker, see docs/PROTOCOL.md)
 *
 * Input: blank lines, '#' comments and spaces around '=' are ignored, unknown
 * keys are ignored, integers are decimal or 0x-hex. Anything else is refused
 * with the line and key at fault. */
#ifndef MMAPFS_CAPS_H
#define MMAPFS_CAPS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "token.h"

/* The largest capabilities text we accept. */
#define MM_CAPS_MAX (64 * 1024)

enum {
	MM_CAP_FILE = 1 << 0,
	MM_CAP_SIZE = 1 << 1,
	MM_CAP_TOKEN = 1 << 2,
	MM_CAP_TOKEN_INDEX = 1 << 3,
	MM_CAP_TOKEN_BYTES = 1 << 4,
	MM_CAP_TOKEN_ALL = MM_CAP_TOKEN | MM_CAP_TOKEN_INDEX | MM_CAP_TOKEN_BYTES,
	MM_CAP_ALL = MM_CAP_FILE | MM_CAP_SIZE | MM_CAP_TOKEN_ALL,
};

/* One area's half of the handshake. */
struct mm_caps_area {
	unsigned have;			/* MM_CAP_* present */
	char file[PATH_MAX];
	uint64_t size;
	struct mm_token token;
	uint64_t token_index;
	uint64_t token_bytes;
};

struct mm_caps {
	struct mm_caps_area read;
	struct mm_caps_area write;
	uint64_t mmapfs;		/* extension version, 0 if absent */
};

/* Parse text (len bytes, need not be NUL-terminated) into c. On error c is
 * untouched, err says "line N: key: reason", and the result is -EINVAL. */
int mm_caps_parse(const char *text, size_t len, struct mm_caps *c,
		  struct mm_err *err);

/* Format the keys present in c. Returns the length written (not counting
 * the NUL) or -ENOSPC if buf is too small. */
int mm_caps_format(const struct mm_caps *c, char *buf, size_t buflen);

/* The same in a string of its own length (malloc'd), or NULL (ENOMEM). */
char *mm_caps_text(const struct mm_caps *c);

/* Append printf-style text to buf (len bytes) at *pos, which moves past
 * it; -ENOSPC (and *pos unmoved) when it does not fit. */
int mm_text_append(char *buf, size_t len, size_t *pos, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Parse an unsigned decimal or 0x-hex integer that fills all of s.
 * 0 or -EINVAL (not a number) / -ERANGE (above max). */
int mm_parse_u64(const char *s, uint64_t max, uint64_t *out);

#endif
