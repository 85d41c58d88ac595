/* mmapfs core: xpra's out-of-band chunk lists (docs/xpra.md).
 *
 * An xpra writer may restart at offset 8 instead of wrapping, and tells its
 * reader where the bytes are in its packets: "OFFSET LENGTH" pieces. On our
 * reading side the `pending` queue holds the pieces the next reads return;
 * on our writing side the queue logs where the bytes written since the last
 * look went. Between two mmapfs ends there is no such list: the writer
 * always wraps, and these calls answer -EOPNOTSUPP. The queues exist only
 * for a channel whose peer is xpra. */
#ifndef MMAPFS_CHUNKS_H
#define MMAPFS_CHUNKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"

#define MM_CHUNKS_MAX 1024
#define MM_CHUNKS_LINES_MAX 64		/* lines taken by one write */
#define MM_CHUNKS_LINE_MAX 64		/* bytes in one line */

struct mm_chunk {
	uint32_t off;
	uint32_t len;
};

/* Give dir an (empty) queue, or drop it. */
int mm_chunks_new(struct mm_dir *d);
void mm_chunks_free(struct mm_dir *d);

/* Reading side: queue pieces ("OFFSET LENGTH" lines) for the next reads,
 * each inside the ring (a zero length is fine, as xpra's mmap_write(b"")
 * gives (8, 0)). All or nothing: -EINVAL with the line at fault, -ENOSPC
 * past MM_CHUNKS_MAX pending, -EOPNOTSUPP between two mmapfs ends. */
int mm_channel_chunks_add(struct mm_channel *ch, const char *text, size_t len,
			  struct mm_err *err);

/* Writing side: the pieces written since the last call, one "OFFSET
 * LENGTH" line each, and forget them. Length, -ENOSPC, -EOVERFLOW if more
 * than MM_CHUNKS_MAX pieces piled up unread (they are dropped), or
 * -EOPNOTSUPP between two mmapfs ends. */
int mm_channel_chunks_text(struct mm_channel *ch, char *buf, size_t len);

/* For the stream (claim holder): the head piece (1), none (0), or -EFAULT;
 * take n bytes of it, publishing data_start past it once it is all read
 * (as xpra's reader does). Empty pieces are dropped on the way. */
int mm_chunks_head(struct mm_dir *d, struct mm_chunk *k);
int mm_chunks_take(struct mm_dir *d, size_t n);
bool mm_chunks_pending(struct mm_dir *d);

/* For the stream: note where n bytes written at ring offset `at` went. */
void mm_chunks_log(struct mm_dir *d, uint32_t at, size_t n);

#endif
