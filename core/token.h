/* mmapfs core: xpra's mmap tokens.
 *
 * A token is a random integer written into an area at token_index over
 * token_bytes bytes, least significant byte first, one byte at a time, as
 * xpra's write_mmap_token() does. A peer proves it maps the same memory by
 * reading it back. Values are kept as little-endian byte strings so that the
 * full 512-byte range of xpra's integers is representable. */
#ifndef MMAPFS_TOKEN_H
#define MMAPFS_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define MM_TOKEN_MAX_BYTES 512
#define MM_TOKEN_DEFAULT_BYTES 128	/* the token_bytes we write */
#define MM_TOKEN_RANDOM_BYTES 16	/* 128 random bits in them, as xpra's
					 * uuid4, so the value fits an xpra hello */
/* A token an outsider could guess proves nothing (docs/PROTOCOL.md). */
#define MM_TOKEN_MIN_BYTES 16
#define MM_TOKEN_MIN_BITS 64
/* "0x" + two digits a byte + NUL */
#define MM_TOKEN_HEX_MAX (2 + 2 * MM_TOKEN_MAX_BYTES + 1)

struct mm_token {
	uint8_t v[MM_TOKEN_MAX_BYTES];	/* value, least significant byte first */
};

/* A fresh random token filling exactly nbytes (its top byte is never 0, so
 * it is never mistaken for untouched, zeroed memory). 0 or -errno. */
int mm_token_random(struct mm_token *t, size_t nbytes);

/* Number of significant bytes (0 for the value 0), and of bits. */
size_t mm_token_len(const struct mm_token *t);
size_t mm_token_bits(const struct mm_token *t);

/* Check that [index, index + nbytes) is a valid token place in an area of
 * area_size bytes: 1 <= nbytes <= 512 and the whole token inside the area.
 * Returns 0, or -EINVAL for a bad size and -ERANGE for a bad position. */
int mm_token_place_check(uint64_t area_size, uint64_t index, uint64_t nbytes);

/* Write t at index over nbytes bytes of area (area_size bytes long).
 * -EINVAL/-ERANGE as mm_token_place_check, -EOVERFLOW if t does not fit in
 * nbytes, -EFAULT if the mapping faulted. */
int mm_token_write(uint8_t *area, uint64_t area_size, uint64_t index,
		   uint64_t nbytes, const struct mm_token *t);

/* Read the nbytes-byte token at index into t. Same errors. */
int mm_token_read(const uint8_t *area, uint64_t area_size, uint64_t index,
		  uint64_t nbytes, struct mm_token *t);

/* 0 if the token at index equals t, -EBADMSG if it differs; else as above. */
int mm_token_check(const uint8_t *area, uint64_t area_size, uint64_t index,
		   uint64_t nbytes, const struct mm_token *t);

int mm_token_equal(const struct mm_token *a, const struct mm_token *b);

/* Parse a non-negative integer, decimal or 0x-hexadecimal, of up to 512
 * bytes. The whole string must be the number. -EINVAL if it is not a number,
 * -ERANGE if it needs more than 512 bytes. */
int mm_token_parse(const char *s, struct mm_token *t);

/* Format as lower-case hex with 0x, no leading zeros ("0x0" for zero).
 * buf must hold MM_TOKEN_HEX_MAX bytes. */
void mm_token_format(const struct mm_token *t, char buf[MM_TOKEN_HEX_MAX]);

#endif
