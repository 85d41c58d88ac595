/* What the libFuzzer harnesses share: reading the input as numbers, and a
 * private directory for the channels' areas. */
#ifndef MMAPFS_FUZZ_H
#define MMAPFS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"

struct input {
	const uint8_t *p;
	size_t left;
};

/* The next nbytes of the input, least significant first; zeros past its end. */
static inline uint32_t take(struct input *in, unsigned nbytes)
{
	uint32_t v = 0;

	for (unsigned i = 0; i < nbytes; i++) {
		uint32_t b = 0;

		if (in->left) {
			b = *in->p++;
			in->left--;
		}
		v |= b << (8 * i);
	}
	return v;
}

/* Make dir (n bytes) a new private directory NAME.XXXXXX under TMPDIR or
 * /tmp, and opts the options of 64 KiB channels that create areas there
 * and attach to files there only (dirs[0] must be dir). 0, or -1. */
static inline int fuzz_area_dir(char *dir, size_t n, const char *name,
				struct mm_chan_opts *opts, const char **dirs)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, n, "%s/%s.XXXXXX", tmp && strlen(tmp) < 200 ? tmp : "/tmp", name);
	if (!mkdtemp(dir))	/* mode 0700 */
		return -1;
	opts->mmap_dir = dir;
	opts->size = 64 * 1024;
	opts->rules.dirs = dirs;
	opts->rules.ndirs = 1;
	return 0;
}

#endif
