/* mmapfs core: the data ring of an xpra mmap area.
 *
 *   0        4        8                                         end
 *   +--------+--------+------------------------------------------+
 *   | start  |  end   |  data ring                               |
 *   +--------+--------+------------------------------------------+
 *
 * start (data_start) is written only by the reader: how far it has read.
 * end (data_end) is written only by the writer: how far it has written.
 * Both are little-endian uint32 offsets from the start of the area; 0 means 8
 * and the ring's end means 8 again. [start, end) modulo the ring is what is
 * unread; one byte always stays free so that full and empty differ.
 *
 * Every pointer is loaded from shared memory once into a struct mm_ring_pos
 * and validated there: the peer may change the memory at any time, and a
 * value it corrupted is -EPROTO, never an access outside the area.
 *
 * The working window (docs/PROTOCOL.md, "The working window"): between
 * mmapfs ends of version 2, a writer whose reader follows the rule may start
 * again before the ring's end, leaving a mark (a word of the trailer) where
 * it left off; the reader, at the mark, goes on where the writer did: at 8,
 * or at MM_RING_AGAIN for a reader that says it follows there too. So a
 * stream whose reader keeps up walks the first MM_RING_WINDOW bytes of the
 * ring, which stay in the cache, not the whole ring; and from the first
 * restart at MM_RING_AGAIN on, blocks of a multiple of 64 bytes lie at the
 * same offsets in a cache line as in a page-aligned buffer (copies whose
 * source and destination differ there can be ten times slower). */
#ifndef MMAPFS_RING_H
#define MMAPFS_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define MM_RING_HEADER 8
#define MM_RING_WINDOW (1024 * 1024)
#define MM_RING_AGAIN 4096	/* the aligned place to start again */

struct mm_ring {
	uint8_t *base;		/* the area */
	uint32_t end;		/* end of the data ring: the area size, or less
				 * when a trailer follows it (docs/PROTOCOL.md) */
	uint32_t *mark;		/* the writer's mark, where it left the ring
				 * to start again (in the trailer), or NULL:
				 * none */
	uint32_t *mark_on;	/* the writer's word saying it leaves marks:
				 * a mark counts only when it holds 1 (the
				 * writer goes on at 8) or 2 (at MM_RING_AGAIN) */
};

/* One validated snapshot of the two pointers, both in [8, end), and of the
 * mark: the unread bytes are [start, lap) then [again, end) when end <
 * start, else [start, end). */
struct mm_ring_pos {
	uint32_t start;
	uint32_t end;
	uint32_t lap;		/* where this lap's data stops: the mark while
				 * the reader has yet to reach it, else r->end */
	uint32_t mark;		/* the mark word as loaded (0: none) */
	uint32_t again;		/* where the next lap begins: 8 at the ring's
				 * end, 8 or MM_RING_AGAIN at a mark */
};

/* Set up r over an area of area_size bytes whose ring stops at ring_end,
 * with no mark. -EINVAL unless 8 < ring_end <= area_size < 4 GiB. */
int mm_ring_init(struct mm_ring *r, uint8_t *base, uint64_t area_size,
		 uint64_t ring_end);

/* The writer's mark lives at word, and the word saying that it leaves marks
 * at on: loads see them from now on. */
void mm_ring_set_mark(struct mm_ring *r, uint32_t *word, uint32_t *on);

/* Bytes the ring can hold at most (its length minus the one kept free). */
size_t mm_ring_capacity(const struct mm_ring *r);

/* Load and validate both pointers. 0, -EPROTO (corrupt), -EFAULT (the
 * mapping faulted). */
int mm_ring_load(const struct mm_ring *r, struct mm_ring_pos *p);

size_t mm_ring_used(const struct mm_ring *r, const struct mm_ring_pos *p);
size_t mm_ring_free(const struct mm_ring *r, const struct mm_ring_pos *p);

/* Where the next max bytes (at most) of unread data lie, as up to two
 * pieces of the area (two when they wrap). Returns the number of pieces and
 * fills *len with the total. No memory of the ring is touched. */
int mm_ring_read_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		     size_t max, struct iovec iov[2], size_t *len);

/* Where up to max bytes of free space lie, as with mm_ring_read_iov. */
int mm_ring_write_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		      size_t max, struct iovec iov[2], size_t *len);

/* How many unread bytes lie before the pointer value b (a writer's end at
 * an end of stream): more than mm_ring_used() if b is not among them. */
size_t mm_ring_dist(const struct mm_ring *r, const struct mm_ring_pos *p, uint32_t b);

/* Is the writer, about to write at p, in the same lap as its reader and
 * `window` bytes or more into the ring, with marks in use: where it may be
 * due to start again, or be at the window's edge (below)? */
bool mm_ring_past_window(const struct mm_ring *r, const struct mm_ring_pos *p, size_t window);

/* The writer's working window, as it is about to write at p: is it due to
 * start again at `again` (8 or MM_RING_AGAIN: the first `window` bytes of
 * the ring behind its end, and half a window from there to the reader's
 * start, with no mark of its own the reader has yet to reach)? The caller
 * checks what the ring cannot: that the reader follows marks (and to
 * where), and that no end of stream waits at the writer's end. */
bool mm_ring_restart_due(const struct mm_ring *r, const struct mm_ring_pos *p,
			 size_t window, uint32_t again);

/* Is the writer at the window's edge, unable to start again at `again`
 * yet: its end `window` bytes or more into the ring, its reader's start
 * less than half a window beyond `again`? (Where a reader slower than its
 * writer would let the writer walk on through the whole ring.) */
bool mm_ring_at_edge(const struct mm_ring *r, const struct mm_ring_pos *p, size_t window,
		     uint32_t again);

/* Then, with `again` (8 or MM_RING_AGAIN), say that the writer leaves marks
 * and goes on there, leave a mark at its end and start again there (p
 * follows); with 0, only clear a mark the reader has passed, before the
 * writer can pass it again. 0 or -EFAULT. */
int mm_ring_restart(const struct mm_ring *r, struct mm_ring_pos *p, uint32_t again);

/* Publish n bytes read (start moves) or written (end moves) since p was
 * loaded. n must not exceed what mm_ring_used/free said. 0 or -EFAULT. */
int mm_ring_consume(const struct mm_ring *r, struct mm_ring_pos *p, size_t n);
int mm_ring_commit(const struct mm_ring *r, struct mm_ring_pos *p, size_t n);

/* Copy up to len bytes into the ring (put) or out of it (get) at p, loaded
 * by the caller, under the guard, and publish the move: the number of bytes
 * moved (0 if full/empty), or -EFAULT. p follows. */
ssize_t mm_ring_put(const struct mm_ring *r, struct mm_ring_pos *p, const void *buf,
		    size_t len);
ssize_t mm_ring_get(const struct mm_ring *r, struct mm_ring_pos *p, void *buf, size_t len);

/* Load, then put or get: the number of bytes moved, -EPROTO, -EFAULT. */
ssize_t mm_ring_read(const struct mm_ring *r, void *buf, size_t len);
ssize_t mm_ring_write(const struct mm_ring *r, const void *buf, size_t len);

/* The raw pointer words, for status and tracing (not validated).
 * 0 or -EFAULT. */
int mm_ring_raw(const struct mm_ring *r, uint32_t *start, uint32_t *end);

#endif
