/* xpra's chunk lists: chunks.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"
#include "ext.h"
#include "internal.h"

/* A queue of pieces, on the reading side pending for the next reads, on
 * the writing side logged since the last look. `lock` guards it all: the
 * `chunks` file's user and the data thread both reach it. */
struct mm_chunks {
	pthread_mutex_t lock;
	struct mm_chunk q[MM_CHUNKS_MAX];
	unsigned head, n;
	bool overflow;			/* writing side: pieces were lost */
};

int mm_chunks_new(struct mm_dir *d)
{
	d->chunks = calloc(1, sizeof(*d->chunks));
	if (!d->chunks)
		return -ENOMEM;
	pthread_mutex_init(&d->chunks->lock, NULL);
	return 0;
}

void mm_chunks_free(struct mm_dir *d)
{
	if (d->chunks) {
		pthread_mutex_destroy(&d->chunks->lock);
		free(d->chunks);
		d->chunks = NULL;
	}
}

static struct mm_chunk *nth(struct mm_chunks *c, unsigned i)
{
	return &c->q[(c->head + i) % MM_CHUNKS_MAX];
}

/* Which queue a file's call works on: -EOPNOTSUPP between two mmapfs ends,
 * -ENOTCONN before the handshake, -ENXIO without that direction. */
static int queue_of(struct mm_channel *ch, struct mm_dir *d, struct mm_chunks **c)
{
	int r = 0;

	pthread_mutex_lock(&ch->lock);
	if (mm_channel_state(ch) != MM_STATE_READY && mm_channel_state(ch) != MM_STATE_ERROR)
		r = -ENOTCONN;
	else if (ch->ext)
		r = -EOPNOTSUPP;
	else if (!d->usable || !d->chunks)
		r = -ENXIO;
	else
		*c = d->chunks;
	pthread_mutex_unlock(&ch->lock);
	return r;
}

/* One "OFFSET LENGTH" line (NUL-terminated, no newline) into k. */
static int parse_line(const char *line, unsigned no, uint32_t ring_end, struct mm_chunk *k,
		      struct mm_err *err)
{
	unsigned long long off, n;
	char extra;

	if (sscanf(line, " %llu %llu %c", &off, &n, &extra) != 2 || strchr(line, '-'))
		return mm_fail(err, -EINVAL, "chunks line %u: expected OFFSET LENGTH", no);
	if (off < MM_RING_HEADER || off > ring_end || n > ring_end - off)
		return mm_fail(err, -EINVAL,
			       "chunks line %u: %llu+%llu is not inside the ring 8..%u",
			       no, off, n, ring_end);
	*k = (struct mm_chunk){ (uint32_t)off, (uint32_t)n };
	return 0;
}

int mm_channel_chunks_add(struct mm_channel *ch, const char *text, size_t len,
			  struct mm_err *err)
{
	struct mm_chunk add[MM_CHUNKS_LINES_MAX];
	struct mm_chunks *c = NULL;
	unsigned nadd = 0, line = 0;
	const char *p = text, *end = text + len;
	int r = queue_of(ch, &ch->rd, &c);

	if (r == -EOPNOTSUPP)
		return mm_fail(err, r, "chunks: the peer is mmapfs, whose writer always wraps: "
			       "chunk lists are for xpra peers");
	if (r < 0)
		return mm_fail(err, r, "chunks: no readable area from an xpra peer: %s",
			       strerror(-r));
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		char buf[MM_CHUNKS_LINE_MAX];

		eol = eol ? eol : end;
		line++;
		if ((size_t)(eol - p) >= sizeof(buf))
			return mm_fail(err, -EINVAL, "chunks line %u: too long", line);
		memcpy(buf, p, (size_t)(eol - p));
		buf[eol - p] = '\0';
		p = eol + 1;
		if (buf[strspn(buf, " \t\r")] == '\0' || buf[0] == '#')
			continue;
		if (nadd == MM_CHUNKS_LINES_MAX)
			return mm_fail(err, -EINVAL, "chunks: more than %d lines in one write",
				       MM_CHUNKS_LINES_MAX);
		r = parse_line(buf, line, ch->rd.ring.end, &add[nadd++], err);
		if (r < 0)
			return r;
	}
	pthread_mutex_lock(&c->lock);
	if (c->n + nadd > MM_CHUNKS_MAX) {
		r = mm_fail(err, -ENOSPC, "chunks: more than %d pending", MM_CHUNKS_MAX);
	} else {
		for (unsigned i = 0; i < nadd; i++)
			*nth(c, c->n++) = add[i];
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

int mm_channel_chunks_text(struct mm_channel *ch, char *buf, size_t len)
{
	struct mm_chunks *c = NULL;
	size_t pos = 0;
	int r;

	if (len == 0)
		return -ENOSPC;
	buf[0] = '\0';
	r = queue_of(ch, &ch->wr, &c);
	if (r == -ENOTCONN || r == -ENXIO)
		return 0;	/* nothing written yet */
	if (r < 0)
		return r;
	pthread_mutex_lock(&c->lock);
	if (c->overflow)
		r = -EOVERFLOW;
	for (unsigned i = 0; i < c->n && r == 0; i++) {
		const struct mm_chunk *k = nth(c, i);
		int w = snprintf(buf + pos, len - pos, "%u %u\n", k->off, k->len);

		if (w < 0 || (size_t)w >= len - pos)
			r = -ENOSPC;
		else
			pos += (size_t)w;
	}
	if (r != -ENOSPC) {
		c->head = 0;
		c->n = 0;
		c->overflow = false;
	}
	pthread_mutex_unlock(&c->lock);
	return r < 0 ? r : (int)pos;
}

bool mm_chunks_pending(struct mm_dir *d)
{
	bool any;

	pthread_mutex_lock(&d->chunks->lock);
	any = d->chunks->n > 0;
	pthread_mutex_unlock(&d->chunks->lock);
	return any;
}

/* Drop the empty pieces at the head, publishing data_start past each as
 * xpra's reader does. c->lock held. 0 or -EFAULT. */
static int drop_empty(struct mm_dir *d, struct mm_chunks *c)
{
	while (c->n && nth(c, 0)->len == 0) {
		if (mm_ext_store(d->area.base, 0, nth(c, 0)->off) < 0)
			return -EFAULT;
		c->head = (c->head + 1) % MM_CHUNKS_MAX;
		c->n--;
	}
	return 0;
}

int mm_chunks_head(struct mm_dir *d, struct mm_chunk *k)
{
	struct mm_chunks *c = d->chunks;
	int r;

	pthread_mutex_lock(&c->lock);
	r = drop_empty(d, c);
	if (r == 0 && c->n > 0) {
		*k = *nth(c, 0);
		r = 1;
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

int mm_chunks_take(struct mm_dir *d, size_t n)
{
	struct mm_chunks *c = d->chunks;
	struct mm_chunk *k;
	int r = 0;

	pthread_mutex_lock(&c->lock);
	/* only the reader takes from the head, so it is the piece that
	 * mm_chunks_head() handed out; later writes only add at the tail */
	k = nth(c, 0);
	if (c->n == 0 || n > k->len) {
		r = -EPROTO;
	} else {
		k->off += (uint32_t)n;
		k->len -= (uint32_t)n;
		r = drop_empty(d, c);
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* Note one piece, merging with the one before when they touch. c->lock held. */
static void log_piece(struct mm_chunks *c, uint32_t off, size_t len)
{
	struct mm_chunk *last = c->n ? nth(c, c->n - 1) : NULL;

	if (len == 0)
		return;
	if (last && last->off + last->len == off && last->len + len <= UINT32_MAX)
		last->len += (uint32_t)len;
	else if (c->n < MM_CHUNKS_MAX)
		*nth(c, c->n++) = (struct mm_chunk){ off, (uint32_t)len };
	else
		c->overflow = true;
}

void mm_chunks_log(struct mm_dir *d, uint32_t at, size_t n)
{
	struct mm_chunks *c = d->chunks;
	size_t first = d->ring.end - at;

	pthread_mutex_lock(&c->lock);
	log_piece(c, at, n < first ? n : first);
	if (n > first)
		log_piece(c, MM_RING_HEADER, n - first);
	pthread_mutex_unlock(&c->lock);
}
