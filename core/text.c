/* The texts of a channel's files: capabilities (this end's half of the
 * handshake), token, peer (what was accepted) and status. Each is made
 * under ch->lock from one consistent view. */
#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ext.h"
#include "internal.h"

static void caps_of_dir(const struct mm_dir *d, bool offer, struct mm_caps_area *c)
{
	memset(c, 0, sizeof(*c));
	if (!d->present)
		return;
	c->have = MM_CAP_TOKEN_ALL;
	mm_dir_token(d, &c->token);
	c->token_index = d->token_index;
	c->token_bytes = d->token_bytes;
	if (offer) {
		c->have |= MM_CAP_FILE | MM_CAP_SIZE;
		snprintf(c->file, sizeof(c->file), "%s", d->area.path);
		c->size = d->area.size;
	}
}

int mm_channel_caps_text(struct mm_channel *ch, char *buf, size_t len)
{
	struct mm_caps *c = calloc(1, sizeof(*c));
	bool offer;
	int r;

	if (!c)
		return -ENOMEM;
	pthread_mutex_lock(&ch->lock);
	offer = ch->role == MM_CREATOR;
	caps_of_dir(&ch->rd, offer, &c->read);
	caps_of_dir(&ch->wr, offer, &c->write);
	/* A creator always offers the extension; an attacher answers with it
	 * only if the creator offered it. */
	c->mmapfs = offer ? MM_EXT_VERSION : ch->ext;
	if (!ch->rd.present && !ch->wr.present)
		c->mmapfs = 0;
	pthread_mutex_unlock(&ch->lock);
	r = mm_caps_format(c, buf, len);
	free(c);
	return r;
}

static int token_line(const char *name, const struct mm_dir *d, char *buf,
		      size_t len, size_t *pos)
{
	char hex[MM_TOKEN_HEX_MAX];
	struct mm_token t;

	if (!d->present)
		return 0;
	mm_dir_token(d, &t);
	mm_token_format(&t, hex);
	return mm_text_append(buf, len, pos, "%s %s %llu %llu\n", name, hex,
		      (unsigned long long)d->token_index,
		      (unsigned long long)d->token_bytes);
}

int mm_channel_token_text(struct mm_channel *ch, char *buf, size_t len)
{
	size_t pos = 0;
	int r;

	if (len == 0)
		return -ENOSPC;
	buf[0] = '\0';
	pthread_mutex_lock(&ch->lock);
	r = token_line(RD_NAME, &ch->rd, buf, len, &pos);
	if (r == 0)
		r = token_line(WR_NAME, &ch->wr, buf, len, &pos);
	pthread_mutex_unlock(&ch->lock);
	return r < 0 ? r : (int)pos;
}

int mm_channel_peer_text(struct mm_channel *ch, char *buf, size_t len)
{
	size_t n = 0;
	int r = 0;

	if (len == 0)
		return -ENOSPC;
	pthread_mutex_lock(&ch->lock);
	if (ch->accepted)
		n = strlen(ch->accepted);
	if (n >= len)
		r = -ENOSPC;
	else
		memcpy(buf, ch->accepted ? ch->accepted : "", n + 1);
	pthread_mutex_unlock(&ch->lock);
	return r < 0 ? r : (int)n;
}

/* The failure record as text. ch->lock held. */
static void failure_text(struct mm_channel *ch, char *buf, size_t len)
{
	const struct mm_failure *f = &ch->fail;
	const struct mm_dir *d = f->dir == MM_RD ? &ch->rd : &ch->wr;

	switch (f->why) {
	case MM_WHY_FAULT:
		snprintf(buf, len, "%s area %s: the mapping faulted (file truncated?)",
			 dir_name(f->dir), d->area.path ? d->area.path : "(closed)");
		break;
	case MM_WHY_CORRUPT:
		snprintf(buf, len,
			 "%s area: corrupt pointers data_start=%u data_end=%u (ring 8..%u)",
			 dir_name(f->dir), f->a, f->b, d->ring.end);
		break;
	case MM_WHY_EOF_CORRUPT:
		snprintf(buf, len, "%s area: corrupt end-of-stream words in the trailer",
			 dir_name(f->dir));
		break;
	case MM_WHY_SETUP:
		snprintf(buf, len, "%s", ch->error);
		break;
	case MM_WHY_RESTARTED:
		snprintf(buf, len, "the peer restarted (session %08x, was %08x)", f->a, f->b);
		break;
	default:
		snprintf(buf, len, "%s", strerror(-mm_channel_failed(ch)));
		break;
	}
}

/* What an administrator does about a dead peer or a broken channel
 * (docs/PROTOCOL.md, "Restarts"). */
static const char *next_step(struct mm_channel *ch)
{
	if (mm_channel_failed(ch) && ch->fail.why == MM_WHY_SETUP)
		return "once the file is ready (its VM started), read capabilities";
	if (ch->role == MM_CREATOR)
		return "close data, then read capabilities: a new offer, for the peer's peer file";
	return "close data, then write the creator's new offer into peer";
}

/* The reason of the failure record, or the last refusal, with what to do
 * next when the channel cannot go on. ch->lock held. */
static void reason_locked(struct mm_channel *ch, char *buf, size_t len)
{
	bool dead = mm_channel_state(ch) == MM_STATE_READY &&
		    mm_channel_peer_state(ch) == MM_PEER_DEAD;
	size_t n;

	if (mm_channel_failed(ch) == 0 && !dead) {
		snprintf(buf, len, "%s", ch->error);
		return;
	}
	if (dead)
		snprintf(buf, len, "the peer is dead (no heartbeat for over %d ms)", MM_DEAD_MS);
	else
		failure_text(ch, buf, len);
	n = strlen(buf);
	snprintf(buf + n, len - n, ": %s", next_step(ch));
}

void mm_channel_reason(struct mm_channel *ch, char *buf, size_t len)
{
	pthread_mutex_lock(&ch->lock);
	reason_locked(ch, buf, len);
	pthread_mutex_unlock(&ch->lock);
}

static int status_dir(const char *name, const struct mm_dir *d, char *buf,
		      size_t len, size_t *pos)
{
	struct mm_ring_pos p = { .start = 0 };
	uint32_t s = 0, e = 0;
	unsigned long long used = 0, fr = 0;
	int r;

	if (!d->present)
		return 0;
	if (mm_ring_raw(&d->ring, &s, &e) == 0 && mm_ring_load(&d->ring, &p) == 0) {
		used = mm_ring_used(&d->ring, &p);
		fr = mm_ring_free(&d->ring, &p);
	}
	r = mm_text_append(buf, len, pos,
		      "%s.size=%llu\n%s.data_start=%u\n%s.data_end=%u\n"
		      "%s.used=%llu\n%s.free=%llu\n%s.bytes=%llu\n",
		      name, (unsigned long long)d->area.size, name, s, name, e,
		      name, used, name, fr, name,
		      (unsigned long long)__atomic_load_n(&d->bytes, __ATOMIC_RELAXED));
	/* where a library finds an area the handshake made usable (view.c):
	 * its path and the identity of the file we map, and that file itself
	 * where its peer may delete the path (as xpra's clients do) */
	if (r == 0 && d->usable)
		r = mm_text_append(buf, len, pos,
				   "%s.file=%s\n%s.offset=%llu\n%s.ring_end=%u\n%s.local=%d\n"
				   "%s.dev=%llu\n%s.ino=%llu\n",
				   name, d->area.path, name, (unsigned long long)d->area.offset,
				   name, d->ring.end, name, d->local,
				   name, (unsigned long long)d->area.dev, name,
				   (unsigned long long)d->area.ino);
	/* a doorbell on it, which the daemon rings (and hears) for a library */
	if (r == 0 && d->usable && d->bell)
		r = mm_text_append(buf, len, pos, "%s.doorbell=%s\n", name,
				   d->bell->hears ? "hears" : "rings");
	if (r == 0 && d->usable && d->area.fd >= 0)
		r = mm_text_append(buf, len, pos, "%s.fd=/proc/%d/fd/%d\n", name, (int)getpid(),
				   d->area.fd);
	return r;
}

int mm_channel_status_text(struct mm_channel *ch, char *buf, size_t len)
{
	char reason[sizeof(ch->error)];
	size_t pos = 0;
	int r;

	pthread_mutex_lock(&ch->lock);
	mm_channel_refresh_locked(ch);
	reason_locked(ch, reason, sizeof(reason));
	r = mm_text_append(buf, len, &pos, "state=%s\nrole=%s\npeer=%s\nerror=%s\nmmapfs=%u\n"
			   "streams_failed=%u\n",
		   mm_state_name(mm_channel_state(ch)), mm_role_name(ch->role),
		   mm_peer_name(mm_channel_peer_state(ch)), reason, ch->ext, ch->failures);
	if (r == 0 && ch->failures) {
		struct tm tm;
		char when[32];
		time_t t = (time_t)ch->failed_at;

		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
		r = mm_text_append(buf, len, &pos, "stream_failed_at=%s\n", when);
	}
	if (r == 0)
		r = status_dir(RD_NAME, &ch->rd, buf, len, &pos);
	if (r == 0)
		r = status_dir(WR_NAME, &ch->wr, buf, len, &pos);
	pthread_mutex_unlock(&ch->lock);
	return r < 0 ? r : (int)pos;
}
