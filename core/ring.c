#include <endian.h>
#include <errno.h>
#include <string.h>

#include "guard.h"
#include "ring.h"

/* The pointer words are naturally aligned 32-bit words at offsets 0 and 4 of
 * a page-aligned mapping, so single atomic loads and stores suffice: the
 * writer stores its data and then end (release); the reader loads end
 * (acquire) before the data, and publishes start the same way. */
static uint32_t *word(const struct mm_ring *r, unsigned i)
{
	return (uint32_t *)(void *)(r->base + 4 * i);
}

static uint32_t load_word(const struct mm_ring *r, unsigned i)
{
	return le32toh(__atomic_load_n(word(r, i), __ATOMIC_ACQUIRE));
}

static void store_word(const struct mm_ring *r, unsigned i, uint32_t v)
{
	__atomic_store_n(word(r, i), htole32(v), __ATOMIC_RELEASE);
}


int mm_ring_init(struct mm_ring *r, uint8_t *base, uint64_t area_size,
		 uint64_t ring_end)
{
	if (!base || area_size >= (UINT64_C(1) << 32) || ring_end > area_size ||
	    ring_end <= MM_RING_HEADER + 1)
		return -EINVAL;
	r->base = base;
	r->end = (uint32_t)ring_end;
	return 0;
}

size_t mm_ring_capacity(const struct mm_ring *r)
{
	return r->end - MM_RING_HEADER - 1;
}

/* 0 means 8, the ring's end means 8 again; anything else outside is corrupt. */
static int normalize(const struct mm_ring *r, uint32_t v, uint32_t *out)
{
	if (v == 0 || v == r->end)
		v = MM_RING_HEADER;
	if (v < MM_RING_HEADER || v > r->end)
		return -EPROTO;
	*out = v;
	return 0;
}

struct load_args {
	const struct mm_ring *r;
	uint32_t start, end;
};

static int do_load(void *arg)
{
	struct load_args *l = arg;

	l->start = load_word(l->r, 0);
	l->end = load_word(l->r, 1);
	return 0;
}

int mm_ring_load(const struct mm_ring *r, struct mm_ring_pos *p)
{
	struct load_args l = { .r = r };
	struct mm_ring_pos v;
	int ret;

	ret = mm_guard_run(do_load, &l);
	if (ret < 0)
		return ret;
	if (normalize(r, l.start, &v.start) < 0 || normalize(r, l.end, &v.end) < 0)
		return -EPROTO;
	*p = v;
	return 0;
}

size_t mm_ring_used(const struct mm_ring *r, const struct mm_ring_pos *p)
{
	size_t len = r->end - MM_RING_HEADER;

	return (p->end + len - p->start) % len;
}

size_t mm_ring_free(const struct mm_ring *r, const struct mm_ring_pos *p)
{
	return mm_ring_capacity(r) - mm_ring_used(r, p);
}

/* Split n bytes from offset at into at most two pieces, wrapping at end. */
static int span(const struct mm_ring *r, uint32_t at, size_t n,
		struct iovec iov[2])
{
	size_t first = r->end - at;

	if (n == 0)
		return 0;
	iov[0].iov_base = r->base + at;
	if (n <= first) {
		iov[0].iov_len = n;
		return 1;
	}
	iov[0].iov_len = first;
	iov[1].iov_base = r->base + MM_RING_HEADER;
	iov[1].iov_len = n - first;
	return 2;
}

int mm_ring_read_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		     size_t max, struct iovec iov[2], size_t *len)
{
	size_t n = mm_ring_used(r, p);

	*len = n < max ? n : max;
	return span(r, p->start, *len, iov);
}

int mm_ring_write_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		      size_t max, struct iovec iov[2], size_t *len)
{
	size_t n = mm_ring_free(r, p);

	*len = n < max ? n : max;
	return span(r, p->end, *len, iov);
}

static uint32_t advance(const struct mm_ring *r, uint32_t at, size_t n)
{
	size_t len = r->end - MM_RING_HEADER;

	return (uint32_t)(MM_RING_HEADER + (at - MM_RING_HEADER + n) % len);
}

struct store_args {
	const struct mm_ring *r;
	unsigned i;
	uint32_t v;
};

static int do_store(void *arg)
{
	struct store_args *s = arg;

	store_word(s->r, s->i, s->v);
	return 0;
}

int mm_ring_consume(const struct mm_ring *r, struct mm_ring_pos *p, size_t n)
{
	struct store_args s = { r, 0, advance(r, p->start, n) };

	p->start = s.v;
	return mm_guard_run(do_store, &s);
}

int mm_ring_commit(const struct mm_ring *r, struct mm_ring_pos *p, size_t n)
{
	struct store_args s = { r, 1, advance(r, p->end, n) };

	p->end = s.v;
	return mm_guard_run(do_store, &s);
}

int mm_ring_raw(const struct mm_ring *r, uint32_t *start, uint32_t *end)
{
	struct load_args l = { .r = r };
	int ret = mm_guard_run(do_load, &l);

	if (ret == 0) {
		*start = l.start;
		*end = l.end;
	}
	return ret;
}

ssize_t mm_ring_put(const struct mm_ring *r, struct mm_ring_pos *p, const void *buf,
		    size_t len)
{
	struct iovec iov[2];
	size_t n;
	int niov = mm_ring_write_iov(r, p, len, iov, &n);
	int ret = mm_guard_copy_iov((void *)buf, iov, niov, true);

	if (ret == 0 && n)
		ret = mm_ring_commit(r, p, n);
	return ret < 0 ? ret : (ssize_t)n;
}

ssize_t mm_ring_get(const struct mm_ring *r, struct mm_ring_pos *p, void *buf, size_t len)
{
	struct iovec iov[2];
	size_t n;
	int niov = mm_ring_read_iov(r, p, len, iov, &n);
	int ret = mm_guard_copy_iov(buf, iov, niov, false);

	if (ret == 0 && n)
		ret = mm_ring_consume(r, p, n);
	return ret < 0 ? ret : (ssize_t)n;
}

ssize_t mm_ring_read(const struct mm_ring *r, void *buf, size_t len)
{
	struct mm_ring_pos p;
	int ret = mm_ring_load(r, &p);

	return ret < 0 ? ret : mm_ring_get(r, &p, buf, len);
}

ssize_t mm_ring_write(const struct mm_ring *r, const void *buf, size_t len)
{
	struct mm_ring_pos p;
	int ret = mm_ring_load(r, &p);

	return ret < 0 ? ret : mm_ring_put(r, &p, buf, len);
}
