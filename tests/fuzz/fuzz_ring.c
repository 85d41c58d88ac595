/* libFuzzer harness: the ring under a hostile peer.
 *
 * Input: 2 bytes choose where the ring ends (the area claims 4096 + 64
 * bytes, the ring may stop short of that for a trailer), 8 bytes are the
 * two header words as the peer left them, then operations of 3 bytes (what,
 * 16-bit length), some followed by a 4-byte value the peer pokes into a
 * header word. With the working window on (a bit of the input), the writer
 * may start again at 8 behind a mark, and the peer may poke the mark.
 *
 * Only the ring's bytes are allocated, exactly, so ASan reports any access
 * past ring_end; every user buffer is allocated to its exact length too.
 * While the peer behaves (the ring started empty and nothing was poked),
 * the bytes read must be the bytes written, in order. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"
#include "fuzz.h"

#define AREA (4096 + 64)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t stream_byte(uint64_t pos)
{
	return (uint8_t)(pos * 131 + (pos >> 8) * 7 + 1);
}

/* Behind a mark the bytes between it and the ring's end are neither used
 * nor free. */
static void check_pos(const struct mm_ring *r, const struct mm_ring_pos *p)
{
	size_t both = mm_ring_used(r, p) + mm_ring_free(r, p);

	if (p->start < MM_RING_HEADER || p->start >= r->end ||
	    p->end < MM_RING_HEADER || p->end >= r->end ||
	    p->lap <= MM_RING_HEADER || p->lap > r->end || p->lap < p->start)
		abort();
	if (mm_ring_used(r, p) > mm_ring_capacity(r) || both > mm_ring_capacity(r) ||
	    (p->lap == r->end && both != mm_ring_capacity(r)) ||
	    (p->lap != r->end && both != p->lap - p->again - 1))
		abort();
}

static void check_iov(const struct mm_ring *r, const struct iovec *iov, int n,
		      size_t len, size_t max)
{
	size_t total = 0;

	if (n < 0 || n > 2 || len > max || (n == 0) != (len == 0))
		abort();
	for (int i = 0; i < n; i++) {
		const uint8_t *b = iov[i].iov_base;

		if (iov[i].iov_len == 0 || b < r->base + MM_RING_HEADER ||
		    b + iov[i].iov_len > r->base + r->end)
			abort();
		total += iov[i].iov_len;
	}
	if (total != len)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };
	uint32_t ring_end = 10 + take(&in, 2) % (AREA - 10 + 1);
	uint8_t *area = malloc(ring_end);
	uint64_t wpos = 0, rpos = 0;
	uint32_t mark = 0, mark_on = 0;
	struct mm_ring r;
	struct mm_ring_pos p;
	bool clean;

	if (!area)
		return 0;
	memset(area, 0, ring_end);
	memcpy(area, (uint32_t[]){ take(&in, 4) }, 4);
	memcpy(area + 4, (uint32_t[]){ take(&in, 4) }, 4);
	if (mm_ring_init(&r, area, AREA, ring_end) != 0)
		abort();
	if (take(&in, 1) & 1)
		mm_ring_set_mark(&r, &mark, &mark_on);
	clean = mm_ring_load(&r, &p) == 0 && mm_ring_used(&r, &p) == 0;

	for (int ops = 0; in.left && ops < 256; ops++) {
		unsigned what = take(&in, 1) % 9;
		size_t len = take(&in, 2);
		uint8_t *buf = malloc(len ? len : 1);
		struct iovec iov[2];
		size_t n = 0, used = 0;
		bool loaded = mm_ring_load(&r, &p) == 0;
		ssize_t got;
		uint32_t s, e;
		int np;

		if (loaded) {
			check_pos(&r, &p);
			used = mm_ring_used(&r, &p);
			/* a writer clears a mark its reader has passed before it
			 * writes (ring.h): ours does so at each step */
			if (mm_ring_restart(&r, &p, 0) != 0)
				abort();
		}
		switch (what) {
		case 0:		/* write */
			for (size_t i = 0; i < len; i++)
				buf[i] = stream_byte(wpos + i);
			got = mm_ring_write(&r, buf, len);
			if (got == -EPROTO && !loaded)
				break;
			if (got < 0 || (size_t)got > len || !loaded ||
			    (size_t)got != (len < mm_ring_free(&r, &p) ? len : mm_ring_free(&r, &p)))
				abort();
			wpos += (size_t)got;
			break;
		case 1:		/* read */
			got = mm_ring_read(&r, buf, len);
			if (got == -EPROTO && !loaded)
				break;
			if (got < 0 || !loaded || (size_t)got != (len < used ? len : used))
				abort();
			for (size_t i = 0; clean && i < (size_t)got; i++)
				if (buf[i] != stream_byte(rpos + i))
					abort();
			rpos += (size_t)got;
			break;
		case 2:		/* write through the pieces */
			if (!loaded)
				break;
			np = mm_ring_write_iov(&r, &p, len, iov, &n);
			check_iov(&r, iov, np, n, len);
			for (int i = 0, off = 0; i < np; off += (int)iov[i].iov_len, i++)
				for (size_t k = 0; k < iov[i].iov_len; k++)
					((uint8_t *)iov[i].iov_base)[k] = stream_byte(wpos + (size_t)off + k);
			if (mm_ring_commit(&r, &p, n) != 0)
				abort();
			wpos += n;
			break;
		case 3:		/* read through the pieces */
			if (!loaded)
				break;
			np = mm_ring_read_iov(&r, &p, len, iov, &n);
			check_iov(&r, iov, np, n, len);
			for (int i = 0, off = 0; i < np; off += (int)iov[i].iov_len, i++)
				for (size_t k = 0; k < iov[i].iov_len; k++)
					if (clean && ((uint8_t *)iov[i].iov_base)[k] !=
					    stream_byte(rpos + (size_t)off + k))
						abort();
			if (mm_ring_consume(&r, &p, n) != 0)
				abort();
			rpos += n;
			break;
		case 4:		/* the peer pokes a header word */
		case 5:
			memcpy(area + 4 * (what - 4), (uint32_t[]){ take(&in, 4) }, 4);
			clean = false;
			break;
		case 6:
			if (mm_ring_raw(&r, &s, &e) != 0)
				abort();
			break;
		case 7:		/* the writer's working window of len bytes,
				 * starting again at 8 or at MM_RING_AGAIN */
			if (!loaded)
				break;
			s = take(&in, 1) & 1 ? MM_RING_AGAIN : MM_RING_HEADER;
			if (mm_ring_restart(&r, &p, mm_ring_restart_due(&r, &p, len, s) ? s : 0) != 0)
				abort();
			check_pos(&r, &p);
			if (mm_ring_used(&r, &p) != used)
				abort();
			break;
		case 8:		/* the peer pokes the mark, or the word that says it counts */
			*(take(&in, 1) & 1 ? &mark : &mark_on) = take(&in, 4);
			clean = false;
			break;
		}
		free(buf);
		if (clean && loaded && (mm_ring_load(&r, &p) != 0 ||
					mm_ring_used(&r, &p) != wpos - rpos))
			abort();
	}
	free(area);
	return 0;
}
