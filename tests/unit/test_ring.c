/* Unit tests for core/ring.h: the data ring of an xpra mmap area. */
#include <endian.h>
#include <errno.h>
#include <sys/mman.h>

#include "ring.h"
#include "tap.h"

#define CANARY 0xc5

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void set_ptrs(uint8_t *area, uint32_t start, uint32_t end)
{
	put32(area, start);
	put32(area + 4, end);
}

/* The reference stream: byte number pos of everything ever written. */
static uint8_t stream_byte(uint64_t pos)
{
	uint64_t z = (pos + 1) * UINT64_C(0x9e3779b97f4a7c15);

	return (uint8_t)(z >> 56 ^ z >> 29);
}

/* An area allocated to its exact size (ASan sees any overrun), header zero,
 * ring filled with junk and the trailer after ring_end with a canary. */
static uint8_t *new_area(size_t size, size_t ring_end)
{
	uint8_t *a = malloc(size);

	if (!a)
		abort();
	memset(a, 0, 8);
	for (size_t i = 8; i < ring_end; i++)
		a[i] = (uint8_t)(i * 13);
	memset(a + ring_end, CANARY, size - ring_end);
	return a;
}

static bool trailer_intact(const uint8_t *a, size_t size, size_t ring_end)
{
	for (size_t i = ring_end; i < size; i++)
		if (a[i] != CANARY)
			return tap_fail(__FILE__, __LINE__, "trailer canary intact");
	return true;
}

static void test_init(void)
{
	uint8_t *a = new_area(4096, 4096);
	struct mm_ring r;

	CHECK_INT(mm_ring_init(&r, NULL, 4096, 4096), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, UINT64_C(1) << 32, 4096), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, UINT64_MAX, 4096), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, 4096, 4097), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, 4096, 8), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, 4096, 0), ==, -EINVAL);
	CHECK_INT(mm_ring_init(&r, a, 8, 8), ==, -EINVAL);
	/* init only records; it never touches the memory */
	CHECK_INT(mm_ring_init(&r, a, (UINT64_C(1) << 32) - 1, 100), ==, 0);
	CHECK_INT(mm_ring_init(&r, a, 4096, 10), ==, 0);
	CHECK_U64(mm_ring_capacity(&r), ==, 1);
	CHECK_INT(mm_ring_init(&r, a, 4096, 4096), ==, 0);
	CHECK(r.base == a && r.end == 4096);
	CHECK_U64(mm_ring_capacity(&r), ==, 4096 - 8 - 1);
	CHECK_INT(mm_ring_init(&r, a, 4096, 4000), ==, 0);
	CHECK_U64(mm_ring_capacity(&r), ==, 4000 - 8 - 1);
	free(a);
}

static void expect_load(struct mm_ring *r, uint32_t start, uint32_t end, int want,
			uint32_t want_start, uint32_t want_end)
{
	struct mm_ring_pos p = { 12345, 54321, 0, 0, 0 };
	int ret;

	set_ptrs(r->base, start, end);
	ret = mm_ring_load(r, &p);
	if (!CHECK_INT(ret, ==, want))
		printf("#     start %u end %u, ring end %u\n", start, end, r->end);
	if (want == 0) {
		CHECK_U64(p.start, ==, want_start);
		CHECK_U64(p.end, ==, want_end);
	} else {
		CHECK(p.start == 12345 && p.end == 54321);	/* untouched */
	}
}

static void test_load(void)
{
	uint8_t *a = new_area(4096, 4096);
	struct mm_ring r;

	mm_ring_init(&r, a, 4096, 4096);
	expect_load(&r, 0, 0, 0, 8, 8);
	expect_load(&r, 8, 8, 0, 8, 8);
	expect_load(&r, 4096, 4096, 0, 8, 8);	/* the end means 8 again */
	expect_load(&r, 100, 4095, 0, 100, 4095);
	expect_load(&r, 4095, 0, 0, 4095, 8);
	expect_load(&r, 7, 8, -EPROTO, 0, 0);
	expect_load(&r, 8, 7, -EPROTO, 0, 0);
	expect_load(&r, 1, 8, -EPROTO, 0, 0);
	expect_load(&r, 4097, 8, -EPROTO, 0, 0);
	expect_load(&r, 8, 4097, -EPROTO, 0, 0);
	expect_load(&r, 0xffffffff, 8, -EPROTO, 0, 0);
	expect_load(&r, 8, 0xffffffff, -EPROTO, 0, 0);
	expect_load(&r, 0x80000008, 8, -EPROTO, 0, 0);

	/* little-endian words, whatever the host */
	a[0] = 0x10;
	a[1] = 0x01;
	a[2] = a[3] = 0;
	put32(a + 4, 0x0200);
	{
		struct mm_ring_pos p;

		CHECK_INT(mm_ring_load(&r, &p), ==, 0);
		CHECK_U64(p.start, ==, 0x110);
		CHECK_U64(p.end, ==, 0x200);
	}

	/* a ring that stops before the area's end: a trailer follows */
	mm_ring_init(&r, a, 4096, 4000);
	expect_load(&r, 4000, 4000, 0, 8, 8);
	expect_load(&r, 3999, 8, 0, 3999, 8);
	expect_load(&r, 4001, 8, -EPROTO, 0, 0);
	expect_load(&r, 8, 4096, -EPROTO, 0, 0);	/* the area size is not the ring end */
	free(a);
}

static void test_used_free(void)
{
	uint8_t *a = new_area(4096, 4096);
	struct mm_ring r;
	struct mm_ring_pos p;
	size_t cap;

	mm_ring_init(&r, a, 4096, 4096);
	cap = mm_ring_capacity(&r);
	p.lap = 4096, p.mark = 0, p.again = 8;	/* no mark: the lap is the ring */
	p.start = 8, p.end = 8;
	CHECK_U64(mm_ring_used(&r, &p), ==, 0);
	CHECK_U64(mm_ring_free(&r, &p), ==, cap);
	p.start = 50, p.end = 100;
	CHECK_U64(mm_ring_used(&r, &p), ==, 50);
	CHECK_U64(mm_ring_free(&r, &p), ==, cap - 50);
	p.start = 100, p.end = 50;	/* wrapped */
	CHECK_U64(mm_ring_used(&r, &p), ==, 4088 - 50);
	CHECK_U64(mm_ring_free(&r, &p), ==, 49);
	p.start = 9, p.end = 8;		/* full */
	CHECK_U64(mm_ring_used(&r, &p), ==, cap);
	CHECK_U64(mm_ring_free(&r, &p), ==, 0);
	p.start = 8, p.end = 4095;	/* full too */
	CHECK_U64(mm_ring_used(&r, &p), ==, cap);
	CHECK_U64(mm_ring_free(&r, &p), ==, 0);
	free(a);
}

static void test_fill_drain(void)
{
	enum { SIZE = 4096 };
	uint8_t *a = new_area(SIZE, SIZE);
	static uint8_t in[3 * SIZE], out[3 * SIZE];
	struct mm_ring r;
	struct mm_ring_pos p;
	size_t cap;

	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = stream_byte(i);
	mm_ring_init(&r, a, SIZE, SIZE);
	cap = mm_ring_capacity(&r);
	CHECK_INT(mm_ring_read(&r, out, sizeof(out)), ==, 0);	/* empty */
	CHECK_INT(mm_ring_write(&r, in, 0), ==, 0);
	CHECK_INT(mm_ring_write(&r, in, 100), ==, 100);
	CHECK_U64(get32(a + 4), ==, 108);
	CHECK_U64(get32(a), ==, 0);		/* the writer never moves start */
	CHECK_INT(mm_ring_write(&r, in + 100, sizeof(in)), ==, (int)cap - 100);
	CHECK_INT(mm_ring_write(&r, in, 1), ==, 0);		/* full */
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(mm_ring_used(&r, &p), ==, cap);
	CHECK_U64(mm_ring_free(&r, &p), ==, 0);
	CHECK_U64(p.end, ==, SIZE - 1);		/* one byte stays free */

	CHECK_INT(mm_ring_read(&r, out, 0), ==, 0);
	CHECK_INT(mm_ring_read(&r, out, 10), ==, 10);
	CHECK_INT(mm_ring_read(&r, out + 10, sizeof(out)), ==, (int)cap - 10);
	CHECK_MEM(out, in, cap);
	CHECK_INT(mm_ring_read(&r, out, sizeof(out)), ==, 0);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.start, ==, p.end);
	CHECK_U64(mm_ring_used(&r, &p), ==, 0);

	/* again, across the wrap: one byte at 4095, ten from 8 */
	CHECK_INT(mm_ring_write(&r, in, 11), ==, 11);
	CHECK_U64(get32(a + 4), ==, 18);
	CHECK_INT(a[4095], ==, in[0]);
	CHECK_MEM(a + 8, in + 1, 10);
	CHECK_INT(mm_ring_read(&r, out, sizeof(out)), ==, 11);
	CHECK_MEM(out, in, 11);
	CHECK_U64(get32(a), ==, get32(a + 4));
	free(a);
}

/* Pieces are split exactly at the ring's end. */
static void test_iov_split(void)
{
	enum { SIZE = 64 };	/* ring 8..64: 56 bytes, capacity 55 */
	uint8_t *a = new_area(SIZE, SIZE);
	struct mm_ring r;
	struct mm_ring_pos p;
	struct iovec iov[2];
	size_t len;

	mm_ring_init(&r, a, SIZE, SIZE);
	p.lap = SIZE, p.mark = 0, p.again = 8;
	p.start = 60, p.end = 60;
	CHECK_INT(mm_ring_write_iov(&r, &p, 10, iov, &len), ==, 2);
	CHECK_U64(len, ==, 10);
	CHECK(iov[0].iov_base == a + 60 && iov[0].iov_len == 4);
	CHECK(iov[1].iov_base == a + 8 && iov[1].iov_len == 6);
	CHECK_INT(mm_ring_write_iov(&r, &p, 4, iov, &len), ==, 1);	/* ends at the end */
	CHECK(iov[0].iov_base == a + 60 && iov[0].iov_len == 4 && len == 4);
	CHECK_INT(mm_ring_write_iov(&r, &p, 5, iov, &len), ==, 2);
	CHECK(iov[0].iov_len == 4 && iov[1].iov_base == a + 8 && iov[1].iov_len == 1);
	CHECK_INT(mm_ring_write_iov(&r, &p, 1000, iov, &len), ==, 2);
	CHECK_U64(len, ==, 55);
	CHECK(iov[0].iov_len == 4 && iov[1].iov_len == 51);
	CHECK_INT(mm_ring_write_iov(&r, &p, 0, iov, &len), ==, 0);
	CHECK_U64(len, ==, 0);
	CHECK_INT(mm_ring_read_iov(&r, &p, 1000, iov, &len), ==, 0);	/* empty */
	CHECK_U64(len, ==, 0);

	set_ptrs(a, 60, 60);
	CHECK_INT(mm_ring_commit(&r, &p, 4), ==, 0);	/* lands on the end: 8 */
	CHECK_U64(p.end, ==, 8);
	CHECK_U64(get32(a + 4), ==, 8);
	CHECK_INT(mm_ring_commit(&r, &p, 6), ==, 0);
	CHECK_U64(get32(a + 4), ==, 14);
	CHECK_U64(get32(a), ==, 60);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_INT(mm_ring_read_iov(&r, &p, 1000, iov, &len), ==, 2);
	CHECK(len == 10 && iov[0].iov_base == a + 60 && iov[0].iov_len == 4 &&
	      iov[1].iov_base == a + 8 && iov[1].iov_len == 6);
	CHECK_INT(mm_ring_read_iov(&r, &p, 4, iov, &len), ==, 1);
	CHECK(len == 4 && iov[0].iov_len == 4);
	CHECK_INT(mm_ring_read_iov(&r, &p, 7, iov, &len), ==, 2);
	CHECK(len == 7 && iov[1].iov_len == 3);
	CHECK_INT(mm_ring_consume(&r, &p, 4), ==, 0);
	CHECK_U64(get32(a), ==, 8);
	CHECK_INT(mm_ring_consume(&r, &p, 6), ==, 0);
	CHECK_U64(get32(a), ==, 14);
	CHECK_U64(p.start, ==, 14);

	/* full ring: no room at all */
	p.start = 9, p.end = 8;
	CHECK_INT(mm_ring_write_iov(&r, &p, 1000, iov, &len), ==, 0);
	CHECK_U64(len, ==, 0);
	CHECK_INT(mm_ring_read_iov(&r, &p, 1000, iov, &len), ==, 1);
	CHECK(len == 55 && iov[0].iov_base == a + 9 && iov[0].iov_len == 55);
	free(a);
}

/* The iov functions and used/free work on the snapshot only: a ring over
 * memory nobody may touch still answers. */
static void test_iov_no_touch(void)
{
	size_t sz = 65536;
	uint8_t *a = mmap(NULL, sz, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct mm_ring r;
	struct mm_ring_pos p = { 100, 50, 65536, 0, MM_RING_HEADER };
	struct iovec iov[2];
	size_t len;

	if (!CHECK(a != MAP_FAILED))
		return;
	CHECK_INT(mm_ring_init(&r, a, sz, sz), ==, 0);
	CHECK_U64(mm_ring_used(&r, &p), ==, sz - 8 - 50);
	CHECK_INT(mm_ring_read_iov(&r, &p, SIZE_MAX, iov, &len), ==, 2);
	CHECK_INT(mm_ring_write_iov(&r, &p, SIZE_MAX, iov, &len), ==, 1);
	CHECK_U64(len, ==, 49);
	munmap(a, sz);
}

/* Random reads and writes, through both APIs, checked byte for byte. */
static void stress(size_t size, size_t ring_end, int rounds, size_t max_chunk)
{
	uint8_t *a = new_area(size, ring_end);
	uint8_t *buf = malloc(max_chunk + 1);
	uint64_t wpos = 0, rpos = 0, wraps = 0;
	struct mm_ring r;
	size_t cap;

	if (!CHECK_INT(mm_ring_init(&r, a, size, ring_end), ==, 0))
		goto out;
	cap = mm_ring_capacity(&r);
	CHECK_U64(cap, ==, ring_end - 9);
	for (int k = 0; k < rounds; k++) {
		size_t len = (size_t)tap_range(0, max_chunk), want, n = 0;
		int how = (int)(tap_rand() % 4);
		struct mm_ring_pos p;
		struct iovec iov[2];
		uint32_t s, e;

		if (how < 2) {
			want = len < cap - (wpos - rpos) ? len : cap - (size_t)(wpos - rpos);
			for (size_t i = 0; i < len; i++)
				buf[i] = stream_byte(wpos + i);
			if (how == 0) {
				ssize_t got = mm_ring_write(&r, buf, len);

				n = got < 0 ? SIZE_MAX : (size_t)got;
			} else if (CHECK_INT(mm_ring_load(&r, &p), ==, 0)) {
				int np = mm_ring_write_iov(&r, &p, len, iov, &n);
				size_t off = 0;

				wraps += np == 2;
				for (int i = 0; i < np; i++) {
					uint8_t *b = iov[i].iov_base;

					CHECK(b >= a + 8 && b + iov[i].iov_len <= a + ring_end);
					memcpy(b, buf + off, iov[i].iov_len);
					off += iov[i].iov_len;
				}
				CHECK_U64(off, ==, n);
				CHECK_INT(mm_ring_commit(&r, &p, n), ==, 0);
			}
			if (!CHECK_U64(n, ==, want))
				break;
			wpos += n;
		} else {
			want = len < wpos - rpos ? len : (size_t)(wpos - rpos);
			memset(buf, 0, max_chunk);
			if (how == 2) {
				ssize_t got = mm_ring_read(&r, buf, len);

				n = got < 0 ? SIZE_MAX : (size_t)got;
			} else if (CHECK_INT(mm_ring_load(&r, &p), ==, 0)) {
				int np = mm_ring_read_iov(&r, &p, len, iov, &n);
				size_t off = 0;

				wraps += np == 2;
				for (int i = 0; i < np; i++) {
					uint8_t *b = iov[i].iov_base;

					CHECK(b >= a + 8 && b + iov[i].iov_len <= a + ring_end);
					memcpy(buf + off, b, iov[i].iov_len);
					off += iov[i].iov_len;
				}
				CHECK_U64(off, ==, n);
				CHECK_INT(mm_ring_consume(&r, &p, n), ==, 0);
			}
			if (!CHECK_U64(n, ==, want))
				break;
			for (size_t i = 0; i < n; i++)
				if (buf[i] != stream_byte(rpos + i)) {
					CHECK_U64(rpos + i, ==, UINT64_MAX);	/* report where */
					goto out;
				}
			rpos += n;
		}
		CHECK_INT(mm_ring_raw(&r, &s, &e), ==, 0);
		s = s ? s : 8;	/* 0 means 8 until the first move */
		e = e ? e : 8;
		if (!CHECK(s >= 8 && s < ring_end && e >= 8 && e < ring_end) ||
		    !CHECK_U64((e + (ring_end - 8) - s) % (ring_end - 8), ==, wpos - rpos) ||
		    !trailer_intact(a, size, ring_end))
			break;
	}
	printf("#     area %zu ring_end %zu: %llu bytes through, %llu split iovs\n",
	       size, ring_end, (unsigned long long)wpos, (unsigned long long)wraps);
	CHECK_U64(wpos, >, 10 * cap);
	if (cap > 1)
		CHECK_U64(wraps, >, 10);
out:
	free(buf);
	free(a);
}

static void test_stress_64k(void)
{
	stress(65536, 65536, 6000, 65536 / 3);
}

static void test_stress_64k_trailer(void)
{
	stress(65536 + 4096, 65536 + 5, 6000, 65536 / 2);
}

static void test_stress_tiny(void)
{
	stress(17, 17, 20000, 12);
	stress(17 + 16, 17, 20000, 12);
	stress(10, 10, 2000, 3);	/* capacity 1 */
}

static void test_trailer(void)
{
	enum { SIZE = 164, END = 100 };
	uint8_t *a = new_area(SIZE, END);
	uint8_t in[300], out[300];
	struct mm_ring r;

	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)~i;
	mm_ring_init(&r, a, SIZE, END);
	for (int k = 0; k < 50; k++) {
		ssize_t w = mm_ring_write(&r, in, 37 + k % 60);
		ssize_t n = mm_ring_read(&r, out, sizeof(out));

		CHECK_INT(n, ==, w);
		CHECK_MEM(out, in, (size_t)w);
		CHECK(get32(a) < END && get32(a + 4) < END);
	}
	CHECK_INT(mm_ring_write(&r, in, sizeof(in)), ==, END - 9);
	trailer_intact(a, SIZE, END);
	free(a);
}

/* xpra's mmap_write() (xpra/net/mmap_pipe.py), transcribed: returns the
 * number of chunks used, 0 if it refused. */
struct chunk {
	uint32_t off, len;
};

static int xpra_mmap_write(uint8_t *area, uint32_t size, const uint8_t *data,
			   uint32_t l, struct chunk ch[2])
{
	uint32_t start = get32(area) > 8 ? get32(area) : 8;
	uint32_t end = get32(area + 4) > 8 ? get32(area + 4) : 8;
	int64_t available, chunk;

	if (end < start) {
		available = start - end;
		chunk = available;
	} else {
		chunk = size - end;
		available = chunk + (start - 8);
	}
	if (l > size - 8 || available - l <= 0)
		return 0;
	if (l < chunk) {
		memcpy(area + end, data, l);
		ch[0] = (struct chunk){ end, l };
		put32(area + 4, end + l);
		return 1;
	}
	if (2 * available >= size && available >= 3 * (int64_t)l && l < start - 8) {
		memcpy(area + 8, data, l);
		ch[0] = (struct chunk){ 8, l };
		put32(area + 4, 8 + l);
		return 1;
	}
	memcpy(area + end, data, (size_t)chunk);
	memcpy(area + 8, data + chunk, l - (size_t)chunk);
	ch[0] = (struct chunk){ end, (uint32_t)chunk };
	ch[1] = (struct chunk){ 8, l - (uint32_t)chunk };
	put32(area + 4, 8 + ch[1].len);
	return 2;
}

/* Would xpra restart at offset 8 instead of wrapping contiguously? */
static bool xpra_restarts(const uint8_t *area, uint32_t size, uint32_t l)
{
	uint32_t start = get32(area) > 8 ? get32(area) : 8;
	uint32_t end = get32(area + 4) > 8 ? get32(area + 4) : 8;
	int64_t available = end < start ? start - end : size - end + start - 8;
	int64_t chunk = end < start ? available : size - end;

	return l >= chunk && 2 * available >= size && available >= 3 * (int64_t)l &&
	       l < start - 8;
}

static void xpra_interop(uint32_t size, int rounds)
{
	uint8_t *a = new_area(size, size);
	uint8_t *buf = malloc(size);
	uint64_t wpos = 0, rpos = 0, splits = 0, refused = 0;
	struct mm_ring r;

	mm_ring_init(&r, a, size, size);
	for (int k = 0; k < rounds; k++) {
		struct mm_ring_pos p;

		if (!CHECK_INT(mm_ring_load(&r, &p), ==, 0))
			break;
		if (tap_rand() % 2) {
			uint32_t l = (uint32_t)tap_range(1, size / 2);
			uint32_t expect_at = p.end;
			struct chunk ch[2];
			int nch;

			/* keep xpra on the contiguous paths: a restart at 8
			 * can only be read with the chunk list */
			if (xpra_restarts(a, size, l))
				l = get32(a) - 8;
			for (uint32_t i = 0; i < l; i++)
				buf[i] = stream_byte(wpos + i);
			nch = xpra_mmap_write(a, size, buf, l, ch);
			/* xpra and mmapfs agree on what fits */
			if (!CHECK_INT(nch == 0, ==, l > mm_ring_free(&r, &p)))
				break;
			if (nch == 0) {
				refused++;
				continue;
			}
			if (!CHECK_U64(ch[0].off, ==, expect_at))
				break;
			splits += nch == 2;
			wpos += l;
		} else {
			size_t len = (size_t)tap_range(1, size);
			ssize_t n = mm_ring_read(&r, buf, len);
			size_t want = len < wpos - rpos ? len : (size_t)(wpos - rpos);

			if (!CHECK_INT(n, ==, (ssize_t)want))
				break;
			for (ssize_t i = 0; i < n; i++)
				if (buf[i] != stream_byte(rpos + (uint64_t)i)) {
					CHECK_U64(rpos + (uint64_t)i, ==, UINT64_MAX);
					goto out;
				}
			rpos += (uint64_t)n;
		}
	}
	printf("#     xpra writer, area %u: %llu bytes, %llu split writes, %llu refused\n",
	       size, (unsigned long long)wpos, (unsigned long long)splits,
	       (unsigned long long)refused);
	CHECK_U64(splits, >, 10);
out:
	free(buf);
	free(a);
}

static void test_xpra_writer(void)
{
	xpra_interop(65536, 8000);
	xpra_interop(4096, 8000);
	xpra_interop(64, 8000);
}

/* ---- the working window: a writer that starts again behind a mark ---- */

/* The writer's step before a write, as core/stream.c takes it: 1 if it
 * started again (at `to`). */
static int writer_window(struct mm_ring *r, struct mm_ring_pos *p, size_t window, uint32_t to)
{
	uint32_t again = mm_ring_restart_due(r, p, window, to) ? to : 0;

	if (!CHECK_INT(mm_ring_restart(r, p, again), ==, 0))
		return -1;
	return again != 0;
}

/* A reader that keeps up: the writer never goes further than the window
 * and one write past it, and every byte arrives in order. Starting again
 * at MM_RING_AGAIN, writes of a multiple of 64 bytes begin at a multiple
 * of 64 from the first restart on. */
static void window_keeps_up(uint32_t to, size_t unit)
{
	enum { SIZE = 1 << 20, WINDOW = 64 << 10, MAX = 5000 };
	uint8_t *a = new_area(SIZE, SIZE), in[MAX], out[MAX];
	uint32_t mark = 0, mark_on = 0, top = 0;
	uint64_t wpos = 0, rpos = 0, restarts = 0, aligned = 0;
	struct mm_ring r;

	mm_ring_init(&r, a, SIZE, SIZE);
	mm_ring_set_mark(&r, &mark, &mark_on);
	for (int k = 0; k < 20000; k++) {
		size_t len = (size_t)tap_range(1, MAX / unit) * unit;
		struct mm_ring_pos p;
		ssize_t n;
		int ret;

		for (size_t i = 0; i < len; i++)
			in[i] = stream_byte(wpos + i);
		if (!CHECK_INT(mm_ring_load(&r, &p), ==, 0) ||
		    (ret = writer_window(&r, &p, WINDOW, to)) < 0)
			break;
		restarts += (unsigned)ret;
		if (restarts && p.end % 64 == to % 64)
			aligned++;
		if (!CHECK_INT(mm_ring_put(&r, &p, in, len), ==, (ssize_t)len))
			break;
		wpos += len;
		if (p.end > top)
			top = p.end;
		n = mm_ring_read(&r, out, sizeof(out));
		if (!CHECK_INT(n, ==, (ssize_t)len))
			break;
		for (size_t i = 0; i < len; i++)
			if (out[i] != stream_byte(rpos + i)) {
				CHECK_U64(rpos + i, ==, UINT64_MAX);
				goto out;
			}
		rpos += len;
	}
	printf("#     again at %u, blocks of %zu: %llu bytes, %llu restarts, furthest end %u, "
	       "%llu writes at the restart's offset in a cache line\n", to, unit,
	       (unsigned long long)wpos, (unsigned long long)restarts, top,
	       (unsigned long long)aligned);
	CHECK_U64(top, <=, 8 + WINDOW + MAX);
	CHECK_U64(restarts, >, wpos / (WINDOW + MAX) - 1);
	CHECK_U64(mark_on, ==, htole32(to == MM_RING_AGAIN ? 2 : 1));
	if (unit % 64 == 0)
		CHECK_U64(aligned, >, 19000);
out:
	free(a);
}

static void test_window_keeps_up(void)
{
	window_keeps_up(MM_RING_HEADER, 1);
	window_keeps_up(MM_RING_AGAIN, 1);
	window_keeps_up(MM_RING_AGAIN, 64);
}

/* Random reads and writes through both APIs, the writer taking its
 * window before each write: the stream stays exact and the pointers say
 * what is in flight. */
static void test_window_stress(void)
{
	enum { SIZE = 65536 };
	uint8_t *a = new_area(SIZE, SIZE), buf[SIZE / 3];
	uint32_t mark = 0, mark_on = 0;
	uint64_t wpos = 0, rpos = 0, restarts = 0;
	struct mm_ring r;

	mm_ring_init(&r, a, SIZE, SIZE);
	mm_ring_set_mark(&r, &mark, &mark_on);
	for (int k = 0; k < 40000; k++) {
		size_t len = (size_t)tap_range(0, sizeof(buf)), n;
		size_t window = (size_t)tap_range(2, SIZE / 2);
		struct mm_ring_pos p;
		struct iovec iov[2];
		int np, ret;

		if (!CHECK_INT(mm_ring_load(&r, &p), ==, 0) ||
		    !CHECK_U64(mm_ring_used(&r, &p), ==, wpos - rpos))
			break;
		if (tap_rand() % 2) {
			uint32_t to = tap_rand() % 2 ? MM_RING_AGAIN : MM_RING_HEADER;

			if ((ret = writer_window(&r, &p, window, to)) < 0)
				break;
			restarts += (unsigned)ret;
			np = mm_ring_write_iov(&r, &p, len, iov, &n);
			for (int i = 0, off = 0; i < np; off += (int)iov[i].iov_len, i++) {
				uint8_t *b = iov[i].iov_base;

				CHECK(b >= a + 8 && b + iov[i].iov_len <= a + SIZE);
				for (size_t j = 0; j < iov[i].iov_len; j++)
					b[j] = stream_byte(wpos + (size_t)off + j);
			}
			CHECK_INT(mm_ring_commit(&r, &p, n), ==, 0);
			wpos += n;
		} else {
			ssize_t got = mm_ring_get(&r, &p, buf, len);

			if (!CHECK_INT(got, >=, 0))
				break;
			for (size_t i = 0; i < (size_t)got; i++)
				if (buf[i] != stream_byte(rpos + i)) {
					CHECK_U64(rpos + i, ==, UINT64_MAX);
					goto out;
				}
			rpos += (size_t)got;
		}
	}
	printf("#     %llu bytes, %llu restarts\n", (unsigned long long)wpos,
	       (unsigned long long)restarts);
	CHECK_U64(restarts, >, 100);
out:
	free(a);
}

/* A mark that says nothing the rule allows is no mark: the reader reads
 * as if it were not there, within the ring; one behind a writer that
 * started again sends it on at 8, also when it is at the mark already. */
static void test_window_hostile(void)
{
	enum { SIZE = 1000 };
	uint8_t *a = new_area(SIZE, SIZE);
	uint32_t mark, mark_on = htole32(1);
	struct mm_ring r;
	struct mm_ring_pos p;
	struct iovec iov[2];
	size_t len;
	static const struct {
		uint32_t start, end, mark, lap;
	} cases[] = {
		{ 100, 200, 150, SIZE },	/* end >= start: not in effect */
		{ 100, 200, 100, SIZE },
		{ 500, 200, 400, SIZE },	/* the reader past the mark */
		{ 500, 200, SIZE, SIZE },	/* at or beyond the ring's end */
		{ 500, 200, 4000, SIZE },
		{ 500, 200, 8, SIZE },		/* at the ring's start */
		{ 500, 200, 0, SIZE },
		{ 500, 200, 700, 700 },		/* in effect */
		{ 500, 200, 500, 500 },		/* the reader at the mark */
	};

	mm_ring_init(&r, a, SIZE, SIZE);
	mm_ring_set_mark(&r, &mark, &mark_on);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		set_ptrs(a, cases[i].start, cases[i].end);
		mark = htole32(cases[i].mark);
		if (!CHECK_INT(mm_ring_load(&r, &p), ==, 0))
			continue;
		if (!CHECK_U64(p.lap, ==, cases[i].lap))
			printf("#     case %zu\n", i);
		CHECK_INT(mm_ring_read_iov(&r, &p, SIZE, iov, &len), >=, 1);
		CHECK_U64(len, ==, mm_ring_used(&r, &p));
		for (int k = 0; k < 2 && k * iov[0].iov_len < len; k++)
			CHECK(iov[k].iov_len > 0 && (uint8_t *)iov[k].iov_base >= a + 8 &&
			      (uint8_t *)iov[k].iov_base + iov[k].iov_len <= a + cases[i].lap);
		/* the writer clears a mark not in effect, keeps one in effect */
		CHECK_INT(mm_ring_restart(&r, &p, 0), ==, 0);
		CHECK_U64(le32toh(mark), ==, cases[i].lap == SIZE ? 0 : cases[i].mark);
		/* reading it all leaves the reader where the writer is */
		CHECK_INT(mm_ring_consume(&r, &p, len), ==, 0);
		CHECK_U64(p.start, ==, cases[i].end);
	}
	/* a mark from a writer that never said it leaves marks is none */
	set_ptrs(a, 500, 200);
	mark = htole32(700);
	mark_on = 0;
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, SIZE);
	CHECK_U64(p.mark, ==, 0);
	mark_on = htole32(2);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, SIZE);
	mark_on = htole32(1);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, 700);
	/* the reader at the mark, nothing after it yet: empty, and no jump */
	set_ptrs(a, 500, 500);
	mark = htole32(500);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(mm_ring_used(&r, &p), ==, 0);
	/* no mark where the rule is off (an xpra peer, version 1) */
	mm_ring_set_mark(&r, NULL, NULL);
	set_ptrs(a, 500, 200);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, SIZE);
	CHECK(!mm_ring_restart_due(&r, &p, 10, MM_RING_HEADER));
	free(a);
}

/* A writer that goes on at MM_RING_AGAIN (mark_on 2): the second piece
 * begins there, a mark whose writer's end lies below it is none, and no
 * end of stream lies below it. */
static void test_window_aligned(void)
{
	enum { SIZE = 8192 };
	uint8_t *a = new_area(SIZE, SIZE);
	uint32_t mark = htole32(7000), mark_on = htole32(2);
	struct mm_ring r;
	struct mm_ring_pos p;
	struct iovec iov[2];
	size_t len;

	mm_ring_init(&r, a, SIZE, SIZE);
	mm_ring_set_mark(&r, &mark, &mark_on);
	set_ptrs(a, 6000, 5000);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, 7000);
	CHECK_U64(p.again, ==, MM_RING_AGAIN);
	CHECK_U64(mm_ring_used(&r, &p), ==, 1000 + 904);
	CHECK_U64(mm_ring_free(&r, &p), ==, 999);
	CHECK_INT(mm_ring_read_iov(&r, &p, SIZE, iov, &len), ==, 2);
	CHECK(iov[0].iov_base == a + 6000 && iov[0].iov_len == 1000);
	CHECK(iov[1].iov_base == a + MM_RING_AGAIN && iov[1].iov_len == 904);
	CHECK_U64(mm_ring_dist(&r, &p, MM_RING_AGAIN), ==, 1000);
	CHECK_U64(mm_ring_dist(&r, &p, 5000), ==, 1904);
	CHECK_U64(mm_ring_dist(&r, &p, 100), >, 1904);	/* below it: none */
	CHECK_INT(mm_ring_consume(&r, &p, 1000), ==, 0);
	CHECK_U64(p.start, ==, MM_RING_AGAIN);
	/* the same words with the writer's end below MM_RING_AGAIN: no mark */
	set_ptrs(a, 6000, 200);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(p.lap, ==, SIZE);
	CHECK_U64(p.again, ==, MM_RING_HEADER);
	CHECK_U64(mm_ring_used(&r, &p), ==, (SIZE - 6000) + (200 - 8));
	/* the writer starts again there only with room before its reader */
	mark = 0;
	set_ptrs(a, MM_RING_AGAIN + 100, 7000);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK(!mm_ring_restart_due(&r, &p, 1000, MM_RING_AGAIN));
	CHECK(mm_ring_at_edge(&r, &p, 1000, MM_RING_AGAIN));
	CHECK(mm_ring_restart_due(&r, &p, 1000, MM_RING_HEADER));
	CHECK(mm_ring_restart_due(&r, &p, 200, MM_RING_AGAIN));
	CHECK_INT(mm_ring_restart(&r, &p, MM_RING_AGAIN), ==, 0);
	CHECK_U64(p.end, ==, MM_RING_AGAIN);
	CHECK_U64(le32toh(mark), ==, 7000);
	CHECK_U64(le32toh(mark_on), ==, 2);
	CHECK_INT(mm_ring_commit(&r, &p, 50), ==, 0);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(mm_ring_used(&r, &p), ==, (7000 - (MM_RING_AGAIN + 100)) + 50);
	free(a);
}

/* Where an end of stream lies among the unread bytes, across a mark. */
static void test_window_dist(void)
{
	enum { SIZE = 1000 };
	uint8_t *a = new_area(SIZE, SIZE);
	uint32_t mark = htole32(700), mark_on = htole32(1);
	struct mm_ring r;
	struct mm_ring_pos p;

	mm_ring_init(&r, a, SIZE, SIZE);
	mm_ring_set_mark(&r, &mark, &mark_on);
	set_ptrs(a, 500, 200);
	CHECK_INT(mm_ring_load(&r, &p), ==, 0);
	CHECK_U64(mm_ring_used(&r, &p), ==, 200 + 192);
	CHECK_U64(mm_ring_dist(&r, &p, 500), ==, 0);
	CHECK_U64(mm_ring_dist(&r, &p, 650), ==, 150);
	CHECK_U64(mm_ring_dist(&r, &p, 700), ==, 200);	/* at the mark ... */
	CHECK_U64(mm_ring_dist(&r, &p, 8), ==, 200);	/* ... is at 8 */
	CHECK_U64(mm_ring_dist(&r, &p, 200), ==, 392);
	CHECK_U64(mm_ring_dist(&r, &p, 800), >, 392);	/* past the mark: none of them */
	CHECK_U64(mm_ring_dist(&r, &p, 300), >, 392);
	CHECK_U64(mm_ring_dist(&r, &p, 400), >, 392);
	free(a);
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_init),
		TAP_TEST(test_load),
		TAP_TEST(test_used_free),
		TAP_TEST(test_fill_drain),
		TAP_TEST(test_iov_split),
		TAP_TEST(test_iov_no_touch),
		TAP_TEST(test_stress_64k),
		TAP_TEST(test_stress_64k_trailer),
		TAP_TEST(test_stress_tiny),
		TAP_TEST(test_trailer),
		TAP_TEST(test_xpra_writer),
		TAP_TEST(test_window_keeps_up),
		TAP_TEST(test_window_stress),
		TAP_TEST(test_window_hostile),
		TAP_TEST(test_window_dist),
		TAP_TEST(test_window_aligned),
	};

	return tap_main(tests, TAP_COUNT(tests));
}
