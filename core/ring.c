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


int mm_ring_init(struct mm_ring *r, uint8_t *base, uint64_t area_size,
		 uint64_t ring_end)
{
	if (!base || area_size >= (UINT64_C(1) << 32) || ring_end > area_size ||
	    ring_end <= MM_RING_HEADER + 1)
		return -EINVAL;
	r->base = base;
	r->end = (uint32_t)ring_end;
	r->mark = r->mark_on = NULL;
	return 0;
}

void mm_ring_set_mark(struct mm_ring *r, uint32_t *word, uint32_t *on)
{
	r->mark = word;
	r->mark_on = on;
}

static uint32_t load_at(const uint32_t *w)
{
	return le32toh(__atomic_load_n(w, __ATOMIC_ACQUIRE));
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
	uint32_t start, end, mark, again;
};

/* The mark after end, the writer's word saying it leaves marks (and where
 * it goes on) after the mark: each is stored before what is loaded ahead
 * of it. A mark from a writer that never said so is none. */
static int do_load(void *arg)
{
	struct load_args *l = arg;
	uint32_t on;

	l->start = load_at(word(l->r, 0));
	l->end = load_at(word(l->r, 1));
	l->mark = l->r->mark ? load_at(l->r->mark) : 0;
	on = l->mark ? load_at(l->r->mark_on) : 0;
	l->again = on == 2 ? MM_RING_AGAIN : MM_RING_HEADER;
	if (on != 1 && on != 2)
		l->mark = 0;
	return 0;
}

/* The mark holds while the reader has yet to reach it, behind a writer
 * that started again (again <= end < start <= mark); a mark saying
 * anything else is not one (the writer clears it). */
static bool in_effect(const struct mm_ring *r, const struct mm_ring_pos *p, uint32_t again)
{
	uint32_t m = p->mark;

	return m > MM_RING_HEADER && m < r->end && again <= p->end && p->end < p->start &&
	       p->start <= m;
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
	v.mark = l.mark;
	v.lap = r->end;
	v.again = MM_RING_HEADER;
	if (in_effect(r, &v, l.again)) {
		v.lap = v.mark;
		v.again = l.again;
	}
	*p = v;
	return 0;
}

size_t mm_ring_used(const struct mm_ring *r, const struct mm_ring_pos *p)
{
	(void)r;
	if (p->end >= p->start)
		return p->end - p->start;
	return (p->lap - p->start) + (p->end - p->again);
}

/* Behind a mark the space between it and the ring's end is not free: the
 * writer's next bytes go before the reader's start. */
size_t mm_ring_free(const struct mm_ring *r, const struct mm_ring_pos *p)
{
	if (p->end >= p->start)
		return mm_ring_capacity(r) - (p->end - p->start);
	return p->start - p->end - 1;
}

size_t mm_ring_dist(const struct mm_ring *r, const struct mm_ring_pos *p, uint32_t b)
{
	(void)r;
	if (b >= p->start && b <= (p->end >= p->start ? p->end : p->lap))
		return b - p->start;
	if (p->end < p->start && b <= p->end && b >= p->again)
		return (p->lap - p->start) + (b - p->again);
	return SIZE_MAX;
}

/* At the lap's end (the ring's, or the mark) the next lap begins. */
static uint32_t lap_start(const struct mm_ring_pos *p, uint32_t at)
{
	return at >= p->lap ? p->again : at;
}

/* Split n bytes from offset at into at most two pieces, wrapping at p's
 * lap. */
static int span(const struct mm_ring *r, const struct mm_ring_pos *p, uint32_t at, size_t n,
		struct iovec iov[2])
{
	size_t first;

	if (n == 0)
		return 0;
	at = lap_start(p, at);
	first = p->lap - at;
	iov[0].iov_base = r->base + at;
	if (n <= first) {
		iov[0].iov_len = n;
		return 1;
	}
	iov[0].iov_len = first;
	iov[1].iov_base = r->base + p->again;
	iov[1].iov_len = n - first;
	return 2;
}

int mm_ring_read_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		     size_t max, struct iovec iov[2], size_t *len)
{
	size_t n = mm_ring_used(r, p);

	*len = n < max ? n : max;
	return span(r, p, p->start, *len, iov);
}

int mm_ring_write_iov(const struct mm_ring *r, const struct mm_ring_pos *p,
		      size_t max, struct iovec iov[2], size_t *len)
{
	size_t n = mm_ring_free(r, p);

	*len = n < max ? n : max;
	return span(r, p, p->end, *len, iov);
}

/* n bytes on from at, in p's lap (n: at most what is unread or free
 * there). */
static uint32_t advance(const struct mm_ring_pos *p, uint32_t at, size_t n)
{
	size_t first;

	at = lap_start(p, at);
	first = p->lap - at;
	return (uint32_t)(n < first ? at + n : p->again + (n - first));
}

struct store_args {
	uint32_t *w;
	uint32_t v;
};

static int do_store(void *arg)
{
	struct store_args *s = arg;

	__atomic_store_n(s->w, htole32(s->v), __ATOMIC_RELEASE);
	return 0;
}

static int store(uint32_t *w, uint32_t v)
{
	struct store_args s = { w, v };

	return mm_guard_run(do_store, &s);
}

int mm_ring_consume(const struct mm_ring *r, struct mm_ring_pos *p, size_t n)
{
	p->start = advance(p, p->start, n);
	return store(word(r, 0), p->start);
}

int mm_ring_commit(const struct mm_ring *r, struct mm_ring_pos *p, size_t n)
{
	p->end = advance(p, p->end, n);
	return store(word(r, 1), p->end);
}

bool mm_ring_past_window(const struct mm_ring *r, const struct mm_ring_pos *p, size_t window)
{
	return r->mark && p->lap == r->end && p->end >= p->start &&
	       p->end - MM_RING_HEADER >= window;
}

/* Half a window from again to the reader's start. */
static bool room_before(const struct mm_ring_pos *p, size_t window, uint32_t again)
{
	return window / 2 > 0 && p->start > again && p->start - again >= window / 2;
}

bool mm_ring_restart_due(const struct mm_ring *r, const struct mm_ring_pos *p,
			 size_t window, uint32_t again)
{
	return mm_ring_past_window(r, p, window) && room_before(p, window, again);
}

bool mm_ring_at_edge(const struct mm_ring *r, const struct mm_ring_pos *p, size_t window,
		     uint32_t again)
{
	return mm_ring_past_window(r, p, window) && !room_before(p, window, again);
}

int mm_ring_restart(const struct mm_ring *r, struct mm_ring_pos *p, uint32_t again)
{
	int ret = 0;

	if (again) {
		ret = store(r->mark_on, again == MM_RING_AGAIN ? 2 : 1);
		if (ret == 0)
			ret = store(r->mark, p->end);
		if (ret == 0) {
			p->mark = p->lap = p->end;
			p->end = again;
			p->again = again;
		}
	} else if (r->mark && p->mark && p->lap == r->end) {
		ret = store(r->mark, 0);
		if (ret == 0)
			p->mark = 0;
	}
	return ret;
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
