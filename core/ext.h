/* mmapfs core: the mmapfs extension to xpra's area format.
 *
 * Between two mmapfs ends (both advertise "mmapfs=N" in their capabilities,
 * and speak the lower of their two versions) the last bytes of each area
 * hold a trailer, and the data ring stops before it. An xpra peer never
 * advertises the key, so it never sees one. Version 1's trailer is the last
 * 64 bytes; version 2 adds 64 more just before them, so that the words of
 * version 1 stay where a version-1 peer looks for them.
 * Little-endian uint32 words, offsets in words (docs/PROTOCOL.md):
 *
 *   0  magic "MMFS"        creator, at creation
 *   1  version (1)         creator, at creation
 *   2  flags               creator: MM_EXT_VERIFIED once it checked the
 *                          attacher's tokens (data may flow)
 *   3  close_seq           writer: streams closed so far
 *   4  eof_ack             reader: ends of stream delivered so far
 *   5..10 eof_pos[6]       writer: data_end at each close, by close_seq % 6
 *   11 creator_session     creator: random at each daemon start
 *   12 creator_beat        creator: incremented every 500 ms
 *                          (docs/PROTOCOL.md, "Liveness")
 *   13 attacher_session    attacher, likewise
 *   14 attacher_beat
 *   15 waiters             both: how many may sleep on the area's end (low
 *                          16 bits) and on its start (high 16 bits)
 *
 * Version 2's words, the 64 bytes before those (stream numbers count from
 * 0: stream s is the one the (s+1)th close ends; "below n" is modulo 2^32):
 *
 *   0  open_seq            writer: streams begun (close_seq, or close_seq
 *                          + 1 while one is open)
 *   1  eof_abort           writer: bit i set when eof_pos[i] ends a cut
 *                          stream (its reader gets ECONNRESET there)
 *   2  abandoned           reader: the stream (its number + 1) the reader's
 *                          end left or was told failed: readers drop it, and
 *                          its writer gets EPIPE
 *   3  creator_epoch       creator: times it failed the channel's streams
 *   4  attacher_epoch      attacher, likewise
 *   5  mark                writer: where it left the ring (the working window)
 *   6  follows             reader: 1, it follows the mark
 *   7  mark_on             writer: 1, it leaves marks (on at 8), 2 (at 4096)
 *   8  aligned             reader: 1, it follows a mark to 4096 too
 *   9  bell_end            reader: 1 + the doorbell vector that wakes it
 *                          (an ivshmem-doorbell device), 0: vector 0
 *   10 bell_start          writer: likewise
 *   11..15                 0 (reserved)
 */
#ifndef MMAPFS_EXT_H
#define MMAPFS_EXT_H

#include <endian.h>
#include <stdbool.h>
#include <stdint.h>

#define MM_EXT_VERSION 2		/* the highest this end speaks */
#define MM_EXT_SIZE 64			/* version 1's words */
#define MM_EXT2_SIZE 64			/* version 2's, before them */
#define MM_EXT_MAGIC 0x53464d4du	/* "MMFS" little-endian */
#define MM_EXT_EOF_SLOTS 6

enum mm_ext_word {
	MM_EXT_W_MAGIC = 0,
	MM_EXT_W_VERSION = 1,
	MM_EXT_W_FLAGS = 2,
	MM_EXT_W_CLOSE_SEQ = 3,
	MM_EXT_W_EOF_ACK = 4,
	MM_EXT_W_EOF_POS = 5,
	MM_EXT_W_SESSION = 11,		/* + 2 * role: session, then beat */
	MM_EXT_W_BEAT = 12,
	MM_EXT_W_WAITERS = 15,
};

enum mm_ext2_word {
	MM_EXT2_W_OPEN_SEQ = 0,
	MM_EXT2_W_EOF_ABORT = 1,
	MM_EXT2_W_ABANDONED = 2,
	MM_EXT2_W_EPOCH = 3,		/* + role */
	MM_EXT2_W_MARK = 5,		/* the writer's: where it left the ring */
	MM_EXT2_W_FOLLOWS = 6,		/* the reader's: 1, it follows the mark */
	MM_EXT2_W_MARK_ON = 7,		/* the writer's: 1, it leaves marks (and
					 * goes on at 8), 2 (at MM_RING_AGAIN) */
	MM_EXT2_W_ALIGNED = 8,		/* the reader's: 1, it follows a mark to
					 * MM_RING_AGAIN too */
	MM_EXT2_W_BELL_END = 9,		/* the reader's: 1 + the doorbell vector
					 * it is rung on (0: vector 0) */
	MM_EXT2_W_BELL_START = 10,	/* the writer's, likewise */
};

#define MM_EXT_VERIFIED 1u

/* The waiters word holds two 16-bit counts: of sleepers on `end` (the
 * area's reader side, waiting for data) and on `start` (its writer side,
 * waiting for room). Each side moves only its own count. */
#define MM_EXT_WAIT_END_SHIFT 0
#define MM_EXT_WAIT_START_SHIFT 16

/* Offset of version 1's words in an area of size bytes (8-byte aligned);
 * version 2's start MM_EXT2_SIZE before. */
static inline uint64_t mm_ext_offset(uint64_t size)
{
	return (size - MM_EXT_SIZE) & ~UINT64_C(7);
}

/* Where the trailer of `version` starts (the ring's end): the area's size
 * for version 0 (an xpra peer, no trailer). */
static inline uint64_t mm_ext_start(uint64_t size, unsigned version)
{
	if (version == 0)
		return size;
	return mm_ext_offset(size) - (version >= 2 ? MM_EXT2_SIZE : 0);
}

/* Is stream a below stream b, modulo 2^32 (counts that wrap)? */
static inline bool mm_seq_below(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) < 0;
}

/* The 32-bit word `word` of a trailer (or of an area's header: word 0 is
 * data_start, 1 data_end), as it lies in memory: for a futex. */
static inline uint32_t *mm_ext_word(const uint8_t *ext, unsigned word)
{
	return (uint32_t *)(uintptr_t)(ext + 4 * word);
}

/* Word access as such, for code that runs under mm_guard_run() itself:
 * a release store, an acquire load. */
static inline void mm_ext_put(uint8_t *ext, unsigned word, uint32_t v)
{
	__atomic_store_n(mm_ext_word(ext, word), htole32(v), __ATOMIC_RELEASE);
}

static inline uint32_t mm_ext_get(const uint8_t *ext, unsigned word)
{
	return le32toh(__atomic_load_n((const uint32_t *)(const void *)(ext + 4 * word),
				       __ATOMIC_ACQUIRE));
}

/* Guarded word access: 0 or -EFAULT. */
int mm_ext_load(const uint8_t *ext, unsigned word, uint32_t *v);
int mm_ext_store(uint8_t *ext, unsigned word, uint32_t v);
/* Move the 16-bit count at bit `shift` of a word by delta, kept within
 * 0..0xffff (a count a process took to its grave, or a peer's nonsense,
 * never wraps): guarded, atomic, a full barrier. 0 or -EFAULT. */
int mm_ext_count(uint8_t *ext, unsigned word, unsigned shift, int delta);

/* The futex on a shared word: wake everyone waiting on it, or wait while it
 * still holds `seen`, at most timeout_us. mm_futex_wait returns 0 (woken or
 * changed), -ETIMEDOUT, -EINTR, or -ENOSYS where futexes do not work on the
 * mapping (an ivshmem BAR): the caller then sleeps instead. */
#define MM_FUTEX_WAITV_MAX 128

int mm_futex_wake(uint32_t *word);	/* -EFAULT: no futex on that mapping */
int mm_futex_wait(uint32_t *word, uint32_t seen, unsigned timeout_us);

/* The same over several words at once (futex_waitv, Linux 5.16): returns
 * when any of words[i] is woken or no longer holds seen[i], at the latest
 * after timeout_us. words[0] may be private (this process only). 0, or
 * -ETIMEDOUT, or -ENOSYS where the kernel or a mapping cannot (the caller
 * then sleeps). */
int mm_futex_waitv(uint32_t *const *words, const uint32_t *seen, unsigned n,
		   bool first_private, unsigned timeout_us);
void mm_futex_wake_private(uint32_t *word);

#endif
