/* libFuzzer harness: xpra's chunk lists against the stream.
 *
 * One channel pair lives across inputs, in a private directory: a creator C
 * and an attacher A that took C's offer without its mmapfs=1 line, so both
 * ends are xpra-style and have chunk queues. Both hold their stream (MM_RD
 * and MM_WR). The bytes flow C -> A: C writes, A reads, A is given chunk
 * lines, C's log of where its bytes went is read.
 *
 * Input: operations, one byte each and their arguments:
 *   0  chunks_add(A, text): 2 bytes of length, then that many bytes of text
 *   1  chunks_add(A, "OFF LEN\n"): 3 bytes each, anywhere near the ring
 *   2  stream_write(C): 2 bytes of length
 *   3  read_begin(A): 2 bytes of max; ends a slice still out (n = 0) first
 *   4  read_end(A) of the slice out: 1 byte, n = len * b / 128 (over len
 *      when b > 128; -EINVAL then)
 *   5  stream_read(A): 2 bytes of length
 *   6  chunks_text(C): 1 byte of buffer size (small ones: -ENOSPC)
 *   7  relay: chunks_text(C) into chunks_add(A), as an xpra peer would
 *   8  poll both ends
 *   9  as 1, the line COUNT times (1 byte first): too many lines at once,
 *      too many pending
 * Writes, chunk lines and chunk texts may fall between a begin and its end,
 * as they would from other threads.
 *
 * Invariants: no sanitizer report; every piece read_begin hands out lies in
 * A's ring [base + 8, base + ring.end); read_end with n <= len succeeds or
 * fails with a negative errno, with n > len it is -EINVAL; the pointers our
 * own calls publish stay valid (mm_ring_load succeeds), and so the channel
 * never goes to error. Between inputs the queues are drained and the ring
 * emptied, so each input starts from the same state. */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "chunks.h"
#include "guard.h"
#include "stream.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TEXT_MAX (16 * 1024)
#define BUF_MAX (64 * 1024)

static char dir[256];
static const char *dirs[1] = { dir };
static struct mm_chan_opts opts;
static struct mm_channel C, A;
static bool up;
static uint64_t now_ms;
static bool verbose;		/* FUZZ_VERBOSE=1: say what each operation did */

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_chunks: %s\n", what);
	abort();
}

/* Remove the line "key...\n" starting with key from text (len bytes). */
static size_t drop_line(char *text, size_t len, const char *key)
{
	char *p = memmem(text, len, key, strlen(key));
	char *eol;

	if (!p || (p != text && p[-1] != '\n'))
		return len;
	eol = memchr(p, '\n', len - (size_t)(p - text));
	eol = eol ? eol + 1 : text + len;
	memmove(p, eol, len - (size_t)(eol - text));
	return len - (size_t)(eol - p);
}

static void pair_open(void)
{
	static char text[TEXT_MAX];
	struct mm_err err;
	int n;

	if (mm_channel_open(&C, MM_CREATOR, true, &opts, &err) < 0 ||
	    mm_channel_open(&A, MM_ATTACHER, true, &opts, &err) < 0)
		fail(err.msg);
	n = mm_channel_caps_text(&C, text, sizeof(text));
	if (n <= 0)
		fail("no offer");
	n = (int)drop_line(text, (size_t)n, "mmapfs=");
	if (mm_channel_peer(&A, text, (size_t)n, ++now_ms, &err) < 0)
		fail(err.msg);
	n = mm_channel_caps_text(&A, text, sizeof(text));
	if (n <= 0 || memmem(text, (size_t)n, "mmapfs=", 7))
		fail("no answer, or one with the extension");
	if (mm_channel_peer(&C, text, (size_t)n, ++now_ms, &err) < 0)
		fail(err.msg);
	if (mm_channel_state(&C) != MM_STATE_READY || mm_channel_state(&A) != MM_STATE_READY ||
	    !A.rd.chunks || !C.wr.chunks)
		fail("the pair is not ready, or has no chunk queues");
	if (mm_channel_claim(&C, MM_RD | MM_WR, &C) != (MM_RD | MM_WR) ||
	    mm_channel_claim(&A, MM_RD | MM_WR, &A) != (MM_RD | MM_WR))
		fail("cannot claim the streams");
	up = true;
}

static void pair_close(void)
{
	if (!up)
		return;
	mm_channel_unclaim(&C, &C);
	mm_channel_unclaim(&A, &A);
	mm_channel_destroy(&A);
	mm_channel_destroy(&C);
	up = false;
}

static void cleanup(void)
{
	pair_close();
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (mm_guard_init() < 0)
		fail("mm_guard_init");
	if (fuzz_area_dir(dir, sizeof(dir), "fuzz-chunks", &opts, dirs) < 0)
		fail("mkdtemp");
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	pair_open();
	atexit(cleanup);
	return 0;
}

/* Our own calls publish only valid pointers. */
static void check_ring(void)
{
	struct mm_ring_pos p;

	if (mm_ring_load(&A.rd.ring, &p) != 0 || mm_ring_load(&C.wr.ring, &p) != 0)
		fail("a published pointer is outside the ring");
	if (mm_channel_failed(&A) || mm_channel_failed(&C))
		fail("the channel went to error");
}

static void check_slice(ssize_t r, size_t max, const struct mm_slice *s)
{
	const uint8_t *lo = A.rd.area.base + MM_RING_HEADER, *hi = A.rd.area.base + A.rd.ring.end;
	size_t total = 0;

	if (r < 0) {
		if (r != -EAGAIN)
			fail("read_begin failed with other than -EAGAIN");
		return;
	}
	if ((size_t)r != s->len || s->len > max || s->niov < 0 || s->niov > 2 ||
	    (s->niov == 0) != (s->len == 0) || (s->chunk && s->niov > 1))
		fail("read_begin: a slice that does not add up");
	for (int i = 0; i < s->niov; i++) {
		const uint8_t *b = s->iov[i].iov_base;

		if (s->iov[i].iov_len == 0 || b < lo || b > hi || s->iov[i].iov_len > (size_t)(hi - b))
			fail("read_begin: a piece outside the ring");
		total += s->iov[i].iov_len;
	}
	if (total != s->len)
		fail("read_begin: pieces do not add up to len");
}

/* Back to the state every input starts from: nothing pending, empty ring. */
static void reset(void)
{
	static char text[TEXT_MAX];
	struct mm_slice s;

	for (int i = 0; i < 2 * MM_CHUNKS_MAX && mm_chunks_pending(&A.rd); i++) {
		ssize_t r = mm_stream_read_begin(&A, SIZE_MAX, &s);

		if (r > 0 && s.chunk)
			r = mm_stream_read_end(&A, &s, s.len);
		else if (r >= 0 || r == -EAGAIN)
			break;	/* the empty pieces left were dropped */
		if (r < 0)
			fail("cannot drain the chunk list");
	}
	if (mm_chunks_pending(&A.rd))
		fail("the chunk list does not drain");
	(void)mm_channel_chunks_text(&C, text, sizeof(text));
	/* both ends are ours: empty the ring as a new session would */
	__atomic_store_n((uint32_t *)(void *)A.rd.area.base, 0, __ATOMIC_RELEASE);
	__atomic_store_n((uint32_t *)(void *)(A.rd.area.base + 4), 0, __ATOMIC_RELEASE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t buf[BUF_MAX];
	static char text[TEXT_MAX];
	struct input in = { data, size };
	struct mm_slice s;
	bool out = false;	/* a slice is out */
	struct mm_err err;

	if (!up)
		pair_open();
	for (int ops = 0; in.left && ops < 256; ops++) {
		unsigned what = take(&in, 1) % 10, len = 0;
		ssize_t r = 0;
		int n = 0;

		switch (what) {
		case 0:
			len = take(&in, 2);
			if (len > in.left)
				len = (unsigned)in.left;
			n = mm_channel_chunks_add(&A, (const char *)in.p, len, &err);
			in.p += len;
			in.left -= len;
			break;
		case 1:
		case 9: {
			unsigned count = what == 9 ? take(&in, 1) : 1;
			uint32_t off = take(&in, 3) % (A.rd.ring.end + 16);
			uint32_t n2 = take(&in, 3) % (A.rd.ring.end + 16);
			size_t at = 0;

			for (unsigned i = 0; i < count; i++)
				at += (size_t)snprintf(text + at, sizeof(text) - at, "%u %u\n", off, n2);
			r = mm_channel_chunks_add(&A, text, at, &err);
			if (r != 0 && r != -EINVAL && r != -ENOSPC)
				fail("chunks_add: an undocumented errno");
			if (r == 0 && count > 0 &&
			    (off < MM_RING_HEADER || off > A.rd.ring.end ||
			     n2 > A.rd.ring.end - off || count > MM_CHUNKS_LINES_MAX))
				fail("chunks_add took a piece outside the ring, or too many lines");
			break;
		}
		case 2:
			len = take(&in, 2);
			memset(buf, 'a' + ops % 26, len);
			r = mm_stream_write(&C, buf, len);
			if (r < 0 && r != -EAGAIN)
				fail("stream_write failed");
			break;
		case 3:
			if (out && mm_stream_read_end(&A, &s, 0) != 0)
				fail("read_end(0) failed");
			len = take(&in, 2);
			r = mm_stream_read_begin(&A, len, &s);
			check_slice(r, len, &s);
			out = r > 0;
			if (verbose && r > 0)
				fprintf(stderr, "  slice %s at %zu, %d pieces\n", s.chunk ? "chunk" : "ring",
					(size_t)((uint8_t *)s.iov[0].iov_base - A.rd.area.base), s.niov);
			break;
		case 4: {
			size_t k = take(&in, 1);

			if (!out)
				break;
			k = s.len * k / 128;
			n = mm_stream_read_end(&A, &s, k);
			if (k > s.len ? n != -EINVAL : n > 0)
				fail("read_end: a wrong result");
			if (n == 0)
				out = false;
			break;
		}
		case 5:
			if (out) {
				mm_stream_read_end(&A, &s, 0);
				out = false;
			}
			len = take(&in, 2);
			r = mm_stream_read(&A, buf, len);
			if ((r < 0 && r != -EAGAIN) || r > (ssize_t)len)
				fail("stream_read: a wrong result");
			break;
		case 6:
			len = take(&in, 1);
			n = mm_channel_chunks_text(&C, text, len);
			if (n < 0 && n != -ENOSPC && n != -EOVERFLOW)
				fail("chunks_text: an undocumented errno");
			if (n >= 0 && (n >= (int)(len ? len : 1) || strlen(text) != (size_t)n))
				fail("chunks_text: a wrong length");
			break;
		case 7:
			n = mm_channel_chunks_text(&C, text, sizeof(text));
			if (n > 0)
				n = mm_channel_chunks_add(&A, text, (size_t)n, &err);
			break;
		case 8:
			if (!(mm_stream_poll(&A, MM_WR) & POLLOUT) && !(mm_stream_poll(&C, MM_WR) & POLLOUT))
				fail("poll: neither end may write");
			break;
		}
		if (verbose)
			fprintf(stderr, "op %u len %u: r %zd n %d\n", what, len, r, n);
		check_ring();
	}
	if (out && mm_stream_read_end(&A, &s, 0) != 0)
		fail("read_end(0) failed");
	reset();
	return 0;
}
