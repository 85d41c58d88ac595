/* Unit tests for the channel API (core/channel.h, stream.h, chunks.h): two
 * channels in one process over a private temporary directory, no FUSE. The
 * creator C and the attacher A are what two mounts would be; each test
 * drives them through the same calls the daemon makes. */
#include <endian.h>
#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chunks.h"
#include "ext.h"
#include "guard.h"
#include "stream.h"
#include "tap.h"

#define RING (UINT64_C(64) * 1024)
#define TEXT 8192

static char top[PATH_MAX];		/* this run's private directory */
static const char *dirs[1];
static struct mm_channel C, A;
static char text[TEXT];
static struct mm_err err;
static uint64_t now = 1000;
static uint64_t ring_size = RING;	/* of the channels the next pair makes */

static struct mm_chan_opts opts(uint32_t session)
{
	return (struct mm_chan_opts){
		.mmap_dir = top,
		.size = ring_size,
		.rules = { .dirs = dirs, .ndirs = 1 },
		.area_tag = NULL,
	};
}

static bool open_pair(void)
{
	struct mm_chan_opts c = opts(0x1111), a = opts(0x2222);

	return CHECK_INT(mm_channel_open(&C, MM_CREATOR, false, &c, &err), ==, 0) &&
	       CHECK_INT(mm_channel_open(&A, MM_CREATOR, false, &a, &err), ==, 0);
}

static void close_pair(void)
{
	mm_channel_destroy(&A);
	mm_channel_destroy(&C);
}

/* Remove the line starting with `key` from text (an xpra peer's half has
 * no mmapfs=1). */
static void drop_line(char *t, const char *key)
{
	char *p = strstr(t, key), *nl;

	if (p && (nl = strchr(p, '\n')))
		memmove(p, nl + 1, strlen(nl + 1) + 1);
}

static int give(struct mm_channel *to, const char *t)
{
	return mm_channel_peer(to, t, strlen(t), now, &err);
}

/* The whole handshake, as `cat capabilities > peer` both ways. */
static bool handshake(bool ext)
{
	if (!open_pair())
		return false;
	mm_channel_caps_text(&C, text, sizeof(text));
	if (!ext)
		drop_line(text, "mmapfs=");
	if (!CHECK_INT(give(&A, text), ==, 0))
		return false;
	mm_channel_caps_text(&A, text, sizeof(text));
	if (!CHECK_INT(give(&C, text), ==, 0))
		return false;
	mm_channel_tick(&A, now, NULL);	/* sees the creator's go-ahead */
	return CHECK_INT(mm_channel_state(&C), ==, MM_STATE_READY) &&
	       CHECK_INT(mm_channel_state(&A), ==, MM_STATE_READY) &&
	       CHECK_INT(mm_channel_claim(&C, MM_RD | MM_WR, &C), ==, MM_RD | MM_WR) &&
	       CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
}

static void fill(uint8_t *b, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)((seed + i) * 2654435761u >> 13);
}

/* Move n bytes from `from` to `to` in random pieces, checking each byte. */
static bool stream(struct mm_channel *from, struct mm_channel *to, size_t n)
{
	static uint8_t out[3 * RING], in[3 * RING];
	size_t sent = 0, got = 0;

	if (n > sizeof(out))
		abort();
	fill(out, n, n);
	while (got < n) {
		if (sent < n) {
			size_t k = tap_range(1, n - sent);
			ssize_t w = mm_stream_write(from, out + sent, k);

			if (w != -EAGAIN && !CHECK_INT(w, >, 0))
				return false;
			sent += w > 0 ? (size_t)w : 0;
		}
		ssize_t r = mm_stream_read(to, in + got, tap_range(1, n - got));

		if (r != -EAGAIN && !CHECK_INT(r, >, 0))
			return false;
		got += r > 0 ? (size_t)r : 0;
	}
	return CHECK_MEM(in, out, n) && CHECK_INT(mm_stream_read(to, in, 1), ==, -EAGAIN);
}

static void test_handshake_extension(void)
{
	char st[TEXT];

	if (!handshake(true))
		goto out;
	CHECK_HAS(text, "mmapfs=2");
	mm_channel_status_text(&C, st, sizeof(st));
	CHECK_HAS(st, "state=ready\nrole=creator\npeer=alive\n");
	CHECK_HAS(st, "mmapfs=2\nstreams_failed=0\n");
	/* version 2's trailer: 128 bytes, version 1's words last */
	CHECK_INT(C.wr.ring.end, ==, mm_ext_offset(C.wr.area.size) - MM_EXT2_SIZE);
	CHECK(C.wr.ext2 + MM_EXT2_SIZE == C.wr.ext);
	mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "role=attacher");
	stream(&C, &A, 2 * RING + 17);
	stream(&A, &C, 3 * RING - 5);
	/* between two mmapfs ends there are no chunk lists */
	CHECK_INT(mm_channel_chunks_add(&A, "8 16\n", 5, &err), ==, -EOPNOTSUPP);
	CHECK_INT(mm_channel_chunks_text(&C, st, sizeof(st)), ==, -EOPNOTSUPP);
out:
	close_pair();
}

static void test_handshake_xpra(void)
{
	char st[TEXT];

	if (!handshake(false))
		goto out;
	CHECK(strstr(text, "mmapfs=") == NULL);
	mm_channel_status_text(&C, st, sizeof(st));
	CHECK_HAS(st, "peer=unknown");
	/* no trailer: the whole area is ring */
	CHECK_INT(C.wr.ring.end, ==, C.wr.area.size);
	stream(&C, &A, 2 * RING + 1);
	stream(&A, &C, RING);
	/* our writes are logged for the xpra reader */
	CHECK_INT(mm_channel_chunks_text(&A, st, sizeof(st)), >, 0);
	CHECK_HAS(st, " ");
out:
	close_pair();
}

/* A refused half changes nothing: same state, role, texts. */
static void refused(struct mm_channel *ch, const char *t, int want, const char *why)
{
	char before[TEXT], after[TEXT];
	enum mm_state st = mm_channel_state(ch);
	enum mm_chan_role role = mm_channel_role(ch);

	mm_channel_caps_text(ch, before, sizeof(before));
	memset(&err, 0, sizeof(err));
	CHECK_INT(give(ch, t), ==, want);
	CHECK_HAS(err.msg, why);
	mm_channel_caps_text(ch, after, sizeof(after));
	CHECK_STR(after, before);
	CHECK_INT(mm_channel_state(ch), ==, st);
	CHECK_INT(mm_channel_role(ch), ==, role);
	mm_channel_status_text(ch, after, sizeof(after));
	CHECK_HAS(after, why);
}

/* text with the value of key replaced */
static const char *with(const char *t, const char *key, const char *value)
{
	static char bufs[2][TEXT];
	static int i;
	char *out = bufs[i = !i];	/* with(with(...)) reads the other one */
	const char *p = strstr(t, key), *nl = p ? strchr(p, '\n') : NULL;

	if (!nl)
		abort();
	snprintf(out, TEXT, "%.*s%s=%s%s", (int)(p - t), t, key, value, nl);
	return out;
}

static void test_refusals(void)
{
	char idx[32], own[MM_TOKEN_HEX_MAX], tok[TEXT];
	struct mm_token t;
	uint64_t at;

	if (!open_pair())
		goto out;
	mm_channel_caps_text(&C, text, sizeof(text));
	refused(&A, "read.file=x\nread.size=zz\n", -EINVAL, "not a number");
	refused(&A, with(text, "read.token", "0x1234567890abcdef1234"), -EBADMSG, "not found");
	refused(&A, with(with(text, "read.token", "0x1234567890abcdef"), "read.token_bytes", "8"),
		-EINVAL, "below 16");
	refused(&A, with(text, "read.token", "0xff"), -EINVAL, "fewer than 64");
	refused(&A, with(text, "read.token_index", "0"), -EINVAL, "header");
	refused(&A, with(text, "read.file", "/etc/passwd"), -EACCES, "not found in the allowed");
	refused(&A, with(text, "read.size", "1"), -EINVAL, "size");
	/* the offer still works after all that */
	CHECK_INT(give(&A, text), ==, 0);
	mm_channel_caps_text(&A, text, sizeof(text));
	/* an answer whose token lies over the creator's own token: known to
	 * anyone who can read `capabilities` */
	snprintf(idx, sizeof(idx), "%llu", (unsigned long long)C.wr.token_index);
	memset(&t, 0, sizeof(t));
	memcpy(t.v, C.wr.token, sizeof(C.wr.token));
	mm_token_format(&t, own);
	snprintf(tok, sizeof(tok), "%s", with(with(text, "read.token_index", idx), "read.token", own));
	refused(&C, tok, -EINVAL, "this end's own token");
	/* over the trailer, once both speak the extension (and past our own
	 * token, which may lie just before it) */
	at = mm_ext_offset(C.wr.area.size) - 100;
	if (at < C.wr.token_index + MM_TOKEN_DEFAULT_BYTES)
		at = C.wr.token_index + MM_TOKEN_DEFAULT_BYTES;
	snprintf(idx, sizeof(idx), "%llu", (unsigned long long)at);
	refused(&C, with(text, "read.token_index", idx), -EINVAL, "trailer");
	CHECK_INT(give(&C, text), ==, 0);
	CHECK_INT(mm_channel_state(&C), ==, MM_STATE_READY);
out:
	close_pair();
}

/* xpra 6's server answers with file and size too: still an answer. */
static void test_answer_with_file_keys(void)
{
	char offer[TEXT], line[PATH_MAX + 64];

	if (!open_pair())
		goto out;
	mm_channel_caps_text(&C, offer, sizeof(offer));
	CHECK_INT(give(&A, offer), ==, 0);
	mm_channel_caps_text(&A, text, sizeof(text));
	snprintf(line, sizeof(line), "read.file=%s\nread.size=%llu\n", C.wr.area.path,
		 (unsigned long long)C.wr.area.size);
	strncat(text, line, sizeof(text) - strlen(text) - 1);
	CHECK_INT(give(&C, text), ==, 0);
	CHECK_INT(mm_channel_role(&C), ==, MM_CREATOR);
	CHECK_INT(mm_channel_state(&C), ==, MM_STATE_READY);
	/* and a failing one naming our own files is a failed answer, not an
	 * offer that would make us attach our own areas */
	refused(&C, with(text, "read.token", "0x1234567890abcdef1234"), -EBADMSG, "not found");
out:
	close_pair();
}

static void test_claims(void)
{
	struct mm_channel B;
	struct mm_chan_opts b = opts(0x3333);
	int owner2;

	if (!open_pair())
		goto out;
	CHECK_INT(mm_channel_claim(&C, MM_RD, &C), ==, -ENOTCONN);
	close_pair();
	if (!handshake(true))
		goto out;
	CHECK_INT(mm_channel_claim(&C, MM_RD, &owner2), ==, -EBUSY);
	CHECK_INT(mm_channel_claim(&C, MM_WR, &owner2), ==, -EBUSY);
	CHECK(mm_channel_owner(&C, MM_RD) == &C);
	/* no handshake, no close under a claim */
	mm_channel_caps_text(&A, text, sizeof(text));
	CHECK_INT(give(&C, text), ==, -EBUSY);
	CHECK_INT(mm_channel_close(&C), ==, -EBUSY);
	mm_channel_unclaim(&C, &C);
	CHECK(!mm_channel_owner(&C, MM_RD) && !mm_channel_owner(&C, MM_WR));
	CHECK_INT(mm_channel_claim(&C, MM_WR, &owner2), ==, MM_WR);
	mm_channel_unclaim(&C, &owner2);
	CHECK_INT(mm_channel_close(&C), ==, 0);
	CHECK_INT(mm_channel_state(&C), ==, MM_STATE_CLOSED);
	CHECK_INT(mm_channel_claim(&C, MM_RD, &owner2), ==, -ENOTCONN);
	close_pair();

	/* a peer offering one direction: the other is ENXIO */
	if (!open_pair() || !CHECK_INT(mm_channel_open(&B, MM_CREATOR, false, &b, &err), ==, 0))
		goto out;
	mm_channel_caps_text(&C, text, sizeof(text));
	{
		char *w = strstr(text, "write.");

		while (w && strncmp(w, "write.", 6) == 0) {
			drop_line(w, "write.");
			w = strstr(text, "write.");
		}
	}
	drop_line(text, "mmapfs=");
	CHECK_INT(give(&B, text), ==, 0);
	CHECK_INT(mm_channel_state(&B), ==, MM_STATE_READY);
	CHECK_INT(mm_channel_claim(&B, MM_RD, &B), ==, -ENXIO);
	CHECK_INT(mm_channel_claim(&B, MM_RD | MM_WR, &B), ==, MM_WR);
	mm_channel_destroy(&B);
out:
	close_pair();
}

/* Six unread ends of stream: the seventh writer waits. */
static void test_end_of_stream(void)
{
	uint8_t b[16];
	struct mm_slice s;

	if (!handshake(true))
		goto out;
	mm_channel_unclaim(&C, &C);	/* an empty stream: its end is the first */
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&A, MM_RD, &A), ==, MM_RD);
	CHECK_INT(mm_stream_read_begin(&A, sizeof(b), &s), ==, 0);
	for (int i = 0; i < MM_EXT_EOF_SLOTS; i++) {
		CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR);
		CHECK_INT(mm_stream_write(&C, "ab", 2), ==, 2);
		mm_channel_unclaim(&C, &C);
	}
	CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, -EAGAIN);
	for (int i = 0; i < MM_EXT_EOF_SLOTS; i++) {
		CHECK_INT(mm_stream_read(&A, b, 1), ==, 1);
		CHECK_INT(mm_stream_read(&A, b + 1, sizeof(b)), ==, 1);	/* not past the end */
		CHECK_MEM(b, "ab", 2);
		CHECK_INT(mm_stream_read_begin(&A, sizeof(b), &s), ==, 0);	/* end of file */
	}
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR);
	CHECK_INT(mm_stream_write(&C, "c", 1), ==, 1);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 1);
out:
	close_pair();
}

/* The peer stops beating: a reader gets what it wrote, then ECONNRESET;
 * a writer gets EPIPE at once. */
/* Version 2: a stall past the limit fails the streams of every claim taken
 * before it, for good and on both ends: a reader first gets every byte
 * written before the death, then ECONNRESET; a writer gets EPIPE and ends
 * its stream there with an abort mark, where the peer's reader gets
 * ECONNRESET after the bytes before it; what comes later of a failed
 * stream is never delivered; new claims start clean. */
static void test_dead_peer(void)
{
	uint8_t b[64];
	char st[TEXT];

	if (!handshake(true))
		goto out;
	CHECK_INT(mm_stream_write(&A, "whole", 5), ==, 5);
	mm_channel_unclaim(&A, &A);	/* ends it */
	CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
	CHECK_INT(mm_stream_write(&A, "open", 4), ==, 4);
	CHECK_INT(mm_stream_write(&C, "to A", 4), ==, 4);
	mm_channel_tick(&C, now, NULL);
	mm_channel_tick(&C, now + MM_DEAD_MS / 2, NULL);
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_ALIVE);
	CHECK(mm_channel_tick(&C, now + MM_DEAD_MS + MM_BEAT_MS, NULL));
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_DEAD);
	CHECK_INT(mm_stream_write(&C, "x", 1), ==, -EPIPE);	/* "to A" ends there */
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 5);
	CHECK_MEM(b, "whole", 5);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 0);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 4);
	CHECK_MEM(b, "open", 4);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, -ECONNRESET);
	CHECK(mm_stream_poll(&C, MM_RD | MM_WR) & POLLHUP);
	mm_channel_status_text(&C, st, sizeof(st));
	CHECK_HAS(st, "streams_failed=1\nstream_failed_at=");
	/* a beat again: it only stalled; what failed stays failed */
	mm_channel_tick(&A, now + 2 * MM_DEAD_MS, NULL);
	mm_channel_tick(&C, now + 2 * MM_DEAD_MS, NULL);
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_ALIVE);
	CHECK_INT(mm_stream_write(&C, "x", 1), ==, -EPIPE);
	/* the stalled end learns it when it looks: its writer (whose stream
	 * the reader abandoned) EPIPE, its reader the bytes before the cut */
	CHECK_INT(mm_stream_write(&A, "late", 4), ==, -EPIPE);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 4);
	CHECK_MEM(b, "to A", 4);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -ECONNRESET);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, -ECONNRESET);
	CHECK(mm_stream_poll(&C, MM_RD | MM_WR) & POLLERR);
	mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "streams_failed=1\n");
	/* new claims: the next streams carry no old byte */
	mm_channel_unclaim(&A, &A);
	mm_channel_unclaim(&C, &C);
	CHECK_INT(mm_channel_claim(&C, MM_RD | MM_WR, &C), ==, MM_RD | MM_WR);
	CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	stream(&A, &C, RING + 5);
	stream(&C, &A, 2 * RING - 3);
out:
	close_pair();
}

/* A reader that leaves in the middle of a stream abandons it: its writer
 * gets EPIPE, the rest is dropped up to the writer's close, and the next
 * stream is whole. */
static void test_reader_abandons(void)
{
	uint8_t b[8];

	if (!handshake(true))
		goto out;
	CHECK_INT(mm_stream_write(&A, "abcdef", 6), ==, 6);
	CHECK_INT(mm_stream_read(&C, b, 2), ==, 2);
	mm_stream_abandon(&C);
	CHECK_INT(mm_stream_write(&A, "g", 1), ==, -EPIPE);
	CHECK(mm_stream_poll(&A, MM_WR) & POLLERR);
	/* told, the writer ended its stream there: nothing more to drop */
	CHECK_INT(mm_stream_drop(&C), ==, 0);
	CHECK_INT(mm_stream_write(&A, "h", 1), ==, -EPIPE);
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
	CHECK_INT(mm_stream_write(&A, "next", 4), ==, 4);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 4);
	CHECK_MEM(b, "next", 4);
out:
	close_pair();
}

/* A writer told that its stream failed, with bytes still unread: they
 * reach a reader that takes the direction later, then ECONNRESET where an
 * end of file would be; and the stream after it is whole. */
static void test_abort_mark(void)
{
	uint8_t b[8];

	if (!handshake(true))
		goto out;
	CHECK_INT(mm_stream_write(&C, "ab", 2), ==, 2);
	mm_channel_tick(&C, now, NULL);
	mm_channel_tick(&C, now + MM_DEAD_MS + MM_BEAT_MS, NULL);
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_DEAD);
	CHECK_INT(mm_stream_write(&C, "c", 1), ==, -EPIPE);
	mm_channel_unclaim(&C, &C);
	mm_channel_tick(&A, now + 2 * MM_DEAD_MS, NULL);
	mm_channel_tick(&C, now + 2 * MM_DEAD_MS, NULL);
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&A, MM_RD, &A), ==, MM_RD);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 2);
	CHECK_MEM(b, "ab", 2);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -ECONNRESET);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR);
	CHECK_INT(mm_stream_write(&C, "next", 4), ==, 4);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 4);
	CHECK_MEM(b, "next", 4);
out:
	close_pair();
}

/* A version-1 peer (its half says mmapfs=1) gets version 1: a 64-byte
 * trailer, and no word for abandonment (the writer is not told). */
static void test_version_1_peer(void)
{
	uint8_t b[8];
	char *v;

	if (!open_pair())
		goto out;
	mm_channel_caps_text(&C, text, sizeof(text));
	v = strstr(text, "mmapfs=2");
	if (!CHECK(v != NULL))
		goto out;
	v[7] = '1';
	if (!CHECK_INT(give(&A, text), ==, 0))
		goto out;
	mm_channel_caps_text(&A, text, sizeof(text));
	CHECK_HAS(text, "mmapfs=1");
	if (!CHECK_INT(give(&C, text), ==, 0))
		goto out;
	mm_channel_tick(&A, now, NULL);
	CHECK_INT(C.ext, ==, 1);
	CHECK_INT(A.ext, ==, 1);
	CHECK(C.wr.ext2 == NULL && A.rd.ext2 == NULL);
	CHECK_INT(C.wr.ring.end, ==, mm_ext_offset(C.wr.area.size));
	CHECK_INT(mm_channel_claim(&C, MM_RD | MM_WR, &C), ==, MM_RD | MM_WR);
	CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
	stream(&C, &A, RING + 7);
	CHECK_INT(mm_stream_write(&A, "abcdef", 6), ==, 6);
	CHECK_INT(mm_stream_read(&C, b, 2), ==, 2);
	mm_stream_abandon(&C);
	CHECK_INT(mm_stream_write(&A, "g", 1), ==, 1);	/* not told */
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_stream_drop(&C), ==, 0);	/* this end drops alone */
	CHECK_INT(mm_channel_claim(&A, MM_RD | MM_WR, &A), ==, MM_RD | MM_WR);
	CHECK_INT(mm_stream_write(&A, "next", 4), ==, 4);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 4);
	CHECK_MEM(b, "next", 4);
out:
	close_pair();
}

/* How often a channel wants its ticks: every MM_TICK_MS while it waits
 * for the go-ahead, every MM_BEAT_MS once handshaken, in use or not, never
 * without an mmapfs peer. */
static void test_tick_every(void)
{
	unsigned every = 1;

	if (!open_pair())
		goto out;
	mm_channel_tick(&C, now, &every);
	CHECK_INT(every, ==, 0);		/* an offer out: nobody to beat for */
	mm_channel_caps_text(&C, text, sizeof(text));
	CHECK_INT(give(&A, text), ==, 0);
	mm_channel_tick(&A, now, &every);
	CHECK_INT(every, ==, MM_TICK_MS);	/* waiting for the go-ahead */
	mm_channel_caps_text(&A, text, sizeof(text));
	CHECK_INT(give(&C, text), ==, 0);
	mm_channel_tick(&A, now, &every);
	CHECK_INT(every, ==, MM_BEAT_MS);	/* ready, idle */
	mm_channel_tick(&C, now, &every);
	CHECK_INT(every, ==, MM_BEAT_MS);
	CHECK_INT(mm_channel_claim(&C, MM_RD, &C), ==, MM_RD);
	mm_channel_tick(&C, now, &every);
	CHECK_INT(every, ==, MM_BEAT_MS);	/* in use: the same */
	mm_channel_unclaim(&C, &C);
	mm_channel_tick(&C, now, &every);
	CHECK_INT(every, ==, MM_BEAT_MS);
	CHECK_INT(mm_channel_close(&C), ==, 0);
	mm_channel_tick(&C, now, &every);
	CHECK_INT(every, ==, 0);
out:
	close_pair();
	/* an xpra peer has no heartbeat */
	if (handshake(false)) {
		mm_channel_tick(&C, now, &every);
		CHECK_INT(every, ==, 0);
	}
	close_pair();
}

/* The attacher restarts: a new daemon takes the same offer. The creator's
 * channel fails with ECONNRESET and says why; asked for its offer again,
 * it starts a new session (fresh tokens, empty rings), which the new
 * attacher takes, and nothing of the old session is read. */
static void test_restarted_peer(void)
{
	struct mm_channel A2;
	struct mm_chan_opts o = opts(0x4444);
	char st[TEXT], old[TEXT];
	uint64_t dropped = 0;
	uint8_t b[16];

	if (!handshake(true))
		goto out;
	CHECK_INT(mm_stream_write(&C, "stale", 5), ==, 5);
	CHECK_INT(mm_stream_write(&A, "old", 3), ==, 3);
	mm_channel_tick(&C, now, NULL);
	mm_channel_caps_text(&C, old, sizeof(old));
	if (!CHECK_INT(mm_channel_open(&A2, MM_ATTACHER, false, &o, &err), ==, 0))
		goto out;
	CHECK_INT(give(&A2, old), ==, 0);
	CHECK(mm_channel_tick(&C, now + MM_TICK_MS, NULL));
	CHECK_INT(mm_channel_state(&C), ==, MM_STATE_ERROR);
	CHECK_INT(mm_stream_write(&C, "x", 1), ==, -ECONNRESET);
	mm_channel_status_text(&C, st, sizeof(st));
	CHECK_HAS(st, "error=the peer restarted (session ");
	CHECK_HAS(st, "read capabilities");
	/* not while data is open */
	CHECK_INT(mm_channel_renew(&C, &dropped, &err), ==, -EBUSY);
	mm_channel_unclaim(&C, &C);
	CHECK_INT(mm_channel_renew(&C, &dropped, &err), ==, 1);
	CHECK_U64(dropped, ==, 8);
	CHECK_INT(mm_channel_state(&C), ==, MM_STATE_OFFERED);
	mm_channel_caps_text(&C, text, sizeof(text));
	CHECK(strcmp(text, old) != 0);
	CHECK_INT(mm_channel_renew(&C, &dropped, &err), ==, 0);	/* once is enough */
	CHECK_INT(give(&A2, text), ==, 0);
	mm_channel_caps_text(&A2, text, sizeof(text));
	CHECK_INT(give(&C, text), ==, 0);
	mm_channel_tick(&A2, now + 2 * MM_TICK_MS, NULL);
	CHECK_INT(mm_channel_claim(&C, MM_RD | MM_WR, &C), ==, MM_RD | MM_WR);
	CHECK_INT(mm_channel_claim(&A2, MM_RD | MM_WR, &A2), ==, MM_RD | MM_WR);
	CHECK_INT(mm_stream_read(&A2, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(mm_stream_write(&C, "new", 3), ==, 3);
	CHECK_INT(mm_stream_read(&A2, b, sizeof(b)), ==, 3);
	CHECK_MEM(b, "new", 3);
	mm_channel_destroy(&A2);
out:
	close_pair();
}

/* The race of issue 9: a read's begin takes bytes from the ring, a chunk
 * is queued before its end; the end must give back exactly the ring bytes
 * it was handed, and leave the chunk whole for the next read. */
static void test_chunk_race(void)
{
	struct mm_slice s;
	uint8_t b[64];
	ssize_t n;

	if (!handshake(false))
		goto out;
	CHECK_INT(mm_stream_write(&C, "0123456789", 10), ==, 10);
	n = mm_stream_read_begin(&A, 4, &s);
	CHECK_INT(n, ==, 4);
	CHECK(!s.chunk);
	CHECK_INT(mm_channel_chunks_add(&A, "8 6\n", 4, &err), ==, 0);
	CHECK_INT(mm_stream_read_end(&A, &s, 4), ==, 0);
	/* the ring's reader moved by 4: data_start = 8 + 4 */
	CHECK_INT(le32toh(*(uint32_t *)(void *)A.rd.area.base), ==, 12);
	/* the chunk is whole: 6 bytes from offset 8, "012345" */
	n = mm_stream_read_begin(&A, sizeof(b), &s);
	CHECK_INT(n, ==, 6);
	CHECK(s.chunk);
	CHECK(s.iov[0].iov_base == A.rd.area.base + 8);
	CHECK_INT(mm_stream_read_end(&A, &s, 6), ==, 0);
	/* xpra's reader: data_start past the chunk */
	CHECK_INT(le32toh(*(uint32_t *)(void *)A.rd.area.base), ==, 14);
	/* a slice cannot be ended for more than it held */
	CHECK_INT(mm_stream_write(&C, "ab", 2), ==, 2);
	n = mm_stream_read_begin(&A, 1, &s);
	CHECK_INT(n, ==, 1);
	CHECK_INT(mm_stream_read_end(&A, &s, 2), ==, -EINVAL);
out:
	close_pair();
}

/* xpra's mmap_write(b"") gives the chunk (8, 0): accepted, and skipped,
 * moving data_start as xpra's reader does. */
static void test_zero_length_chunk(void)
{
	const char *lines = "8 0\n8 3\n";
	uint8_t b[8];

	if (!handshake(false))
		goto out;
	CHECK_INT(mm_channel_chunks_add(&A, "8 0\n", 4, &err), ==, 0);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	CHECK_INT(le32toh(*(uint32_t *)(void *)A.rd.area.base), ==, 8);
	CHECK_INT(mm_stream_write(&C, "abc", 3), ==, 3);
	CHECK_INT(mm_channel_chunks_add(&A, lines, strlen(lines), &err), ==, 0);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 3);
	CHECK_MEM(b, "abc", 3);
	CHECK_INT(le32toh(*(uint32_t *)(void *)A.rd.area.base), ==, 11);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	/* still refused: outside the ring, negative, garbage */
	CHECK_INT(mm_channel_chunks_add(&A, "7 1\n", 4, &err), ==, -EINVAL);
	CHECK_INT(mm_channel_chunks_add(&A, "8 -1\n", 5, &err), ==, -EINVAL);
	CHECK_INT(mm_channel_chunks_add(&A, "8 x\n", 4, &err), ==, -EINVAL);
out:
	close_pair();
}

/* Corrupt pointers from the peer: error with the values, never a touch
 * outside the area. */
static void test_corrupt_pointers(void)
{
	uint8_t b[8];
	char st[TEXT];

	if (!handshake(true))
		goto out;
	*(uint32_t *)(void *)(A.rd.area.base + 4) = htole32(0xfffffff0u);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EPROTO);
	CHECK_INT(mm_channel_state(&A), ==, MM_STATE_ERROR);
	CHECK_INT(mm_stream_write(&A, b, 1), ==, -EPROTO);
	mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "error=read area: corrupt pointers data_start=0 data_end=4294967280");
out:
	close_pair();
}

/* A creator reusing a file (an administrator's path) starts on an empty
 * ring and a fresh trailer, whatever the file held. */
static void test_reused_file(void)
{
	struct mm_chan_opts o = opts(0x5555);
	char path[PATH_MAX + 16];
	uint8_t *base;

	snprintf(path, sizeof(path), "%s/reused", top);
	o.write_file = path;
	if (!CHECK_INT(mm_channel_open(&C, MM_CREATOR, true, &o, &err), ==, 0))
		return;
	base = C.wr.area.base;
	*(uint32_t *)(void *)(base + 4) = htole32(5000);
	*(uint32_t *)(void *)(base + mm_ext_offset(C.wr.area.size) + 8) = htole32(MM_EXT_VERIFIED);
	mm_channel_destroy(&C);
	CHECK_INT(access(path, F_OK), ==, 0);	/* never deleted */
	if (!CHECK_INT(mm_channel_open(&C, MM_CREATOR, true, &o, &err), ==, 0))
		return;
	base = C.wr.area.base;
	CHECK_INT(*(uint32_t *)(void *)(base + 4), ==, 0);
	CHECK_INT(*(uint32_t *)(void *)(base + mm_ext_offset(C.wr.area.size) + 8), ==, 0);
	mm_channel_destroy(&C);
	unlink(path);
}

/* A view (view.c): the library's channel, made from the status text of A
 * after A gave its claim up, moves bytes with C, takes ends of stream that
 * A then knows, and follows C's heartbeat without beating itself. */
static void test_view(void)
{
	struct mm_channel V;
	struct mm_slice s;
	char st[TEXT];
	uint8_t b[16];
	uint32_t beat;
	int n;

	if (!handshake(true))
		goto out;
	mm_channel_unclaim(&A, &A);	/* as a file closes: an empty stream */
	CHECK_INT(mm_stream_read_begin(&C, sizeof(b), &s), ==, 0);
	n = mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "mmapfs=2\n");
	if (!CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD | MM_WR, now, &err), ==,
		       MM_RD | MM_WR))
		goto out;
	CHECK_INT(V.rd.ring.end, ==, A.rd.ring.end);
	CHECK(V.rd.local && V.wr.local);
	CHECK_INT(mm_stream_wait_max(&V, MM_RD), ==, MM_TICK_MS * 1000);
	CHECK(V.rd.area.base != A.rd.area.base);
	stream(&C, &V, 2 * RING + 5);
	stream(&V, &C, RING + 3);
	/* C's stream ends: V takes the end, A knows it at its next claim */
	mm_channel_unclaim(&C, &C);
	CHECK_INT(mm_stream_read_begin(&V, sizeof(b), &s), ==, 0);
	mm_channel_destroy(&V);
	CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR);
	CHECK_INT(mm_stream_write(&C, "x", 1), ==, 1);
	mm_channel_unclaim(&C, &C);
	CHECK_INT(mm_channel_claim(&A, MM_RD, &A), ==, MM_RD);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 1);
	CHECK_INT(mm_stream_read_begin(&A, sizeof(b), &s), ==, 0);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, -EAGAIN);
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR);
	/* no beat of its own; C's standing still for a second is a death */
	if (!CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD | MM_WR, now, &err), >, 0))
		goto out;
	beat = A.beat;
	mm_channel_tick(&C, now + MM_TICK_MS, NULL);
	CHECK(mm_channel_watch(&V, now + MM_TICK_MS) == false);
	CHECK(mm_channel_watch(&V, now + MM_TICK_MS + MM_DEAD_MS + 1));
	CHECK_INT(mm_channel_peer_state(&V), ==, MM_PEER_DEAD);
	CHECK_INT(mm_stream_write(&V, "y", 1), ==, -EPIPE);
	CHECK_INT(mm_stream_read(&V, b, sizeof(b)), ==, -ECONNRESET);
	CHECK_INT(A.beat, ==, beat);
	/* both daemons beat again (C would find A dead otherwise, and cut
	 * the streams: test_dead_peer) */
	mm_channel_tick(&A, now + 3 * MM_DEAD_MS, NULL);
	mm_channel_tick(&C, now + 3 * MM_DEAD_MS, NULL);
	mm_channel_watch(&V, now + 3 * MM_DEAD_MS);
	CHECK_INT(mm_channel_peer_state(&V), ==, MM_PEER_ALIVE);
	CHECK_INT(mm_stream_write(&V, "y", 1), ==, 1);
	/* a daemon's word for it (poll's POLLHUP) */
	CHECK(mm_channel_peer_dead(&V));
	CHECK_INT(mm_stream_write(&V, "y", 1), ==, -EPIPE);
	/* and a new session is a restart (version 2: the attacher's beats,
	 * both ends', are in its write area) */
	mm_ext_store(V.wr.ext, MM_EXT_W_SESSION, 0x9999);
	CHECK(mm_channel_watch(&V, now + 3 * MM_DEAD_MS));
	CHECK_INT(mm_stream_read(&V, b, sizeof(b)), ==, -ECONNRESET);
	mm_channel_destroy(&V);
	/* one direction only: the other is not mapped */
	CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD, now, &err), ==, MM_RD);
	/* without the area of the beats: it asks its daemon, and its own
	 * look neither sees the peer dead nor fails */
	CHECK(V.beats_unmapped);
	CHECK(mm_channel_watch(&V, now + 10 * MM_DEAD_MS) == false);
	CHECK_INT(mm_channel_state(&V), ==, MM_STATE_READY);
	CHECK(mm_channel_peer_dead(&V));
	CHECK_INT(mm_stream_read(&V, b, sizeof(b)), ==, -ECONNRESET);
	mm_channel_destroy(&V);
	CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_WR, now, &err), ==, MM_WR);
	CHECK(!V.beats_unmapped);
	CHECK(!V.rd.present);
	CHECK_INT(mm_stream_read(&V, b, sizeof(b)), ==, -ENXIO);
	mm_channel_destroy(&V);
	/* a status that lies about the extension (the ring would run over the
	 * trailer), or without the keys */
	st[strstr(st, "mmapfs=2") - st + 7] = '0';
	CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD, now, &err), ==, -EPROTO);
	CHECK_INT(mm_channel_view(&V, "role=creator\n", 13, MM_RD, now, &err), ==, -EPROTO);
out:
	close_pair();
}

/* A view of a channel without the extension (an xpra peer): chunk lists of
 * its own, which the library's calls fill and empty, carry the bytes both
 * ways with the other end's; the daemon's own lists see none of it. */
static void test_view_chunks(void)
{
	struct mm_channel V;
	char st[TEXT], list[TEXT];
	uint8_t b[16];
	int n;

	if (!handshake(false))
		goto out;
	mm_channel_unclaim(&A, &A);
	n = mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "mmapfs=0\n");
	if (!CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD | MM_WR, now, &err), ==,
		       MM_RD | MM_WR))
		goto out;
	CHECK(V.rd.chunks && V.wr.chunks && !V.rd.ext && !V.wr.ext);
	CHECK_INT(V.rd.ring.end, ==, A.rd.ring.end);
	CHECK_INT(mm_channel_peer_state(&V), ==, MM_PEER_UNKNOWN);
	/* C writes; its list goes into V, which reads exactly that */
	CHECK_INT(mm_stream_write(&C, "hello", 5), ==, 5);
	n = mm_channel_chunks_text(&C, list, sizeof(list));
	CHECK_STR(list, "8 5\n");
	CHECK_INT(mm_channel_chunks_add(&V, list, (size_t)n, &err), ==, 0);
	CHECK_INT(mm_stream_read(&V, b, sizeof(b)), ==, 5);
	CHECK_MEM(b, "hello", 5);
	/* V writes; C takes V's list */
	CHECK_INT(mm_stream_write(&V, "world!", 6), ==, 6);
	n = mm_channel_chunks_text(&V, list, sizeof(list));
	CHECK_STR(list, "8 6\n");
	CHECK_INT(mm_channel_chunks_add(&C, list, (size_t)n, &err), ==, 0);
	CHECK_INT(mm_stream_read(&C, b, sizeof(b)), ==, 6);
	CHECK_MEM(b, "world!", 6);
	CHECK_INT(mm_channel_chunks_text(&A, list, sizeof(list)), ==, 0);
	/* a list the peer made up is checked in the view too */
	CHECK_INT(mm_channel_chunks_add(&V, "4 1\n", 4, &err), ==, -EINVAL);
	CHECK_HAS(err.msg, "chunks line 1");
	mm_channel_destroy(&V);
out:
	close_pair();
}

/* The waiters word (trailer word 15): a sleeper counts itself in, the
 * other side wakes it because of that, and a claim forgets the counts of
 * the holders before it. */
static uint32_t waiters(struct mm_dir *d)
{
	uint32_t v = 0;

	mm_ext_load(d->ext, MM_EXT_W_WAITERS, &v);
	return v;
}

static double waited;

static void *sleeper(void *arg)
{
	struct timespec t0, t1;
	uint8_t b[8];

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (mm_stream_read(&A, b, sizeof(b)) == -EAGAIN)
		mm_stream_wait(&A, MM_RD, 5000000);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	waited = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	return NULL;
}

static void test_waiters(void)
{
	pthread_t th;

	if (!handshake(true))
		goto out;
	CHECK_U64(waiters(&A.rd), ==, 0);
	mm_stream_sleepers(&A, POLLIN | POLLOUT, true);
	CHECK_U64(waiters(&A.rd), ==, 1);			/* on its end */
	CHECK_U64(waiters(&A.wr), ==, 1u << 16);		/* on its start */
	CHECK_U64(waiters(&C.wr), ==, 1);			/* the same area */
	mm_stream_sleepers(&A, POLLIN | POLLOUT, false);
	mm_stream_sleepers(&A, POLLIN, false);			/* never below 0 */
	CHECK_U64(waiters(&A.rd), ==, 0);
	CHECK_U64(waiters(&A.wr), ==, 0);
	/* a reader asleep is counted, and woken by the next write */
	if (!CHECK_INT(pthread_create(&th, NULL, sleeper, NULL), ==, 0))
		goto out;
	for (int i = 0; i < 1000 && waiters(&A.rd) == 0; i++)
		usleep(1000);
	CHECK_U64(waiters(&A.rd), ==, 1);
	CHECK_INT(mm_stream_write(&C, "wake", 4), ==, 4);
	pthread_join(th, NULL);
	CHECK(waited < 1);
	CHECK_U64(waiters(&A.rd), ==, 0);
	/* a holder that died asleep: the next claim starts from none */
	mm_ext_count(A.rd.ext, MM_EXT_W_WAITERS, MM_EXT_WAIT_END_SHIFT, 3);
	mm_ext_count(A.rd.ext, MM_EXT_W_WAITERS, MM_EXT_WAIT_START_SHIFT, 2);
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&A, MM_RD, &A), ==, MM_RD);
	CHECK_U64(waiters(&A.rd), ==, 2u << 16);		/* the peer's count stays */
out:
	close_pair();
}

/* Doorbells across a VM (docs/PROTOCOL.md, "Waking"): a sleeper with a
 * doorbell names in the trailer the vector that wakes it; the other side
 * rings that vector, and only while someone sleeps. */
struct fake_bell {
	struct mm_bell b;		/* first */
	unsigned rang, vector;
};

static void fake_ring(const struct mm_bell *b, unsigned vector)
{
	struct fake_bell *f = (struct fake_bell *)(void *)b;

	f->rang++;
	f->vector = vector;
}

static uint32_t word2(struct mm_dir *d, unsigned w)
{
	uint32_t v = 0;

	mm_ext_load(d->ext2, w, &v);
	return v;
}

static void test_bell_vectors(void)
{
	struct fake_bell to_a = { .b.ring = fake_ring }, to_c = { .b.ring = fake_ring };
	uint8_t b[8];

	if (!handshake(true))
		goto out;
	A.rd.bell = A.wr.bell = &to_c.b;	/* A rings C, */
	C.rd.bell = C.wr.bell = &to_a.b;	/* C rings A */
	A.rd.bell_vector = A.wr.bell_vector = 3;
	C.rd.bell_vector = C.wr.bell_vector = 1;
	/* A's reader sleeps: it names vector 3; C's write rings it there */
	mm_stream_sleepers(&A, POLLIN, true);
	CHECK_U64(word2(&C.wr, MM_EXT2_W_BELL_END), ==, 4);
	CHECK_U64(word2(&C.wr, MM_EXT2_W_BELL_START), ==, 0);
	CHECK_INT(mm_stream_write(&C, "x", 1), ==, 1);
	CHECK_INT(to_a.rang, ==, 1);
	CHECK_INT(to_a.vector, ==, 3);
	/* nobody asleep: no ring */
	mm_stream_sleepers(&A, POLLIN, false);
	CHECK_INT(mm_stream_write(&C, "y", 1), ==, 1);
	CHECK_INT(to_a.rang, ==, 1);
	/* C's writer sleeps for room: vector 1, rung by A's read */
	mm_stream_sleepers(&C, POLLOUT, true);
	CHECK_U64(word2(&A.rd, MM_EXT2_W_BELL_START), ==, 2);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 2);
	CHECK_INT(to_c.rang, ==, 1);
	CHECK_INT(to_c.vector, ==, 1);
	/* a word that says nothing is vector 0; any other value goes to
	 * ring() as it is, to be checked there */
	mm_ext_store(A.rd.ext2, MM_EXT2_W_BELL_START, 0);
	CHECK_INT(mm_stream_write(&C, "z", 1), ==, 1);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 1);
	CHECK_INT(to_c.vector, ==, 0);
	mm_ext_store(A.rd.ext2, MM_EXT2_W_BELL_START, 0xffffffffu);
	CHECK_INT(mm_stream_write(&C, "z", 1), ==, 1);
	CHECK_INT(mm_stream_read(&A, b, sizeof(b)), ==, 1);
	CHECK_U64(to_c.vector, ==, 0xfffffffeu);
	mm_stream_sleepers(&C, POLLOUT, false);
	/* without a doorbell nothing is named */
	C.rd.bell = NULL;
	mm_stream_sleepers(&C, POLLIN, true);
	CHECK_U64(word2(&A.wr, MM_EXT2_W_BELL_END), ==, 0);
	mm_stream_sleepers(&C, POLLIN, false);
out:
	close_pair();
}

/* status names each area's doorbell, and a view (the library) takes it:
 * whether its daemon only rings for it or hears too, and the vector a
 * sleep of its names; what it cannot read means no doorbell. */
static void test_view_bells(void)
{
	struct fake_bell hears = { .b = { .ring = fake_ring, .hears = true } };
	struct fake_bell rings = { .b.ring = fake_ring };
	struct mm_channel V;
	char st[TEXT];
	char *at;
	int n;

	if (!handshake(true))
		goto out;
	mm_channel_unclaim(&A, &A);
	A.rd.bell = &hears.b;
	A.wr.bell = &rings.b;
	n = mm_channel_status_text(&A, st, sizeof(st));
	CHECK_HAS(st, "read.doorbell=hears\n");
	CHECK_HAS(st, "write.doorbell=rings\n");
	n += snprintf(st + n, sizeof(st) - (size_t)n, "doorbell.vector=3\n");
	if (!CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD | MM_WR, now, &err), ==,
		       MM_RD | MM_WR))
		goto out;
	CHECK_INT(V.rd.view_bell, ==, MM_VIEW_HEARS);
	CHECK_INT(V.wr.view_bell, ==, MM_VIEW_RINGS);
	CHECK_INT(V.rd.bell_vector, ==, 3);
	CHECK(V.rd.bell == NULL);	/* the library's own, if it wants one */
	mm_channel_destroy(&V);
	/* a word it does not know, a vector past the Doorbell register's */
	at = strstr(st, "read.doorbell=hears");
	memcpy(at + strlen("read.doorbell="), "heard", 5);
	at = strstr(st, "doorbell.vector=3");
	n = (int)(at - st) + snprintf(at, sizeof(st) - (size_t)(at - st), "doorbell.vector=65536\n");
	if (!CHECK_INT(mm_channel_view(&V, st, (size_t)n, MM_RD | MM_WR, now, &err), ==,
		       MM_RD | MM_WR))
		goto out;
	CHECK_INT(V.rd.view_bell, ==, 0);
	CHECK_INT(V.wr.bell_vector, ==, 0);
	mm_channel_destroy(&V);
	/* no doorbell: no line */
	A.rd.bell = A.wr.bell = NULL;
	mm_channel_status_text(&A, st, sizeof(st));
	CHECK(strstr(st, "doorbell") == NULL);
out:
	close_pair();
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* Looks at the peer come from threads that read the time before they take
 * the channel's lock (the ticker, a status read): one a moment behind
 * another that saw the beat move is no silence. */
static void test_look_behind(void)
{
	if (!handshake(true))
		goto out;
	mm_channel_tick(&A, now + 500, NULL);	/* the attacher beats */
	CHECK(mm_channel_tick(&C, now + 510, NULL) == false);	/* seen at 510 */
	mm_channel_watch(&C, now + 505);	/* a look that read the time first */
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_ALIVE);
	CHECK_INT(mm_channel_failures(&C), ==, 0);
	/* a real silence still is one */
	mm_channel_tick(&C, now + 510 + MM_DEAD_MS + 1, NULL);
	CHECK_INT(mm_channel_peer_state(&C), ==, MM_PEER_DEAD);
out:
	close_pair();
}

/* ---- the working window (ring.h): between two mmapfs ends ---- */

#define BIG (UINT64_C(4) << 20)

static uint32_t data_end_of(struct mm_channel *ch)
{
	uint32_t s = 0, e = 0;

	mm_ring_raw(&ch->wr.ring, &s, &e);
	return e;
}

static uint32_t mark_of(struct mm_channel *ch)
{
	uint32_t m = 0;

	mm_ext_load(ch->wr.ext2, MM_EXT2_W_MARK, &m);
	return m;
}

/* C writes n bytes in pieces of up to `piece`, A reading each piece whole
 * before the next: 0 and the furthest data_end, or -1. */
static int keep_up(size_t n, size_t piece, uint64_t seed, uint32_t *top_end, unsigned *marks)
{
	static uint8_t out[256 << 10], in[256 << 10];
	size_t done = 0;

	while (done < n) {
		size_t k = n - done < piece ? n - done : piece, got = 0;
		ssize_t w;

		fill(out, k, seed + done);
		w = mm_stream_write(&C, out, k);
		if (!CHECK_INT(w, >, 0))
			return -1;
		while (got < (size_t)w) {
			ssize_t r = mm_stream_read(&A, in + got, sizeof(in) - got);

			if (!CHECK_INT(r, >, 0))
				return -1;
			got += (size_t)r;
		}
		if (!CHECK_U64(got, ==, (size_t)w) || !CHECK_MEM(in, out, got))
			return -1;
		if (data_end_of(&C) > *top_end)
			*top_end = data_end_of(&C);
		*marks += mark_of(&C) != 0;
		done += (size_t)w;
	}
	return 0;
}

static bool hold_yes(void *arg)
{
	(*(unsigned *)arg)++;
	return true;
}

static bool hold_no(void *arg)
{
	(*(unsigned *)arg)++;
	return false;
}

/* A reader slower than its writer: a writer that blocks holds at the
 * window's edge while its reader moves (the stream stays within the
 * window, as in a ring of that size); once the reader is said to have
 * stopped, it writes on through the ring. */
static void test_window_hold(void)
{
	static uint8_t out[8 << 20], in[64 << 10];
	size_t sent = 0, got = 0, n = sizeof(out);
	uint32_t top_end = 0;
	unsigned asked = 0, held = 0;

	ring_size = BIG;
	if (!handshake(true))
		goto out;
	fill(out, n, 11);
	while (got < n) {
		/* the writer twice as fast as its reader */
		for (int k = 0; k < 2 && sent < n; k++) {
			size_t len = n - sent < (32 << 10) ? n - sent : (32 << 10);
			ssize_t w = mm_stream_write_hold(&C, out + sent, len, hold_yes, &asked);

			if (w == -EAGAIN) {
				held++;
				break;
			}
			if (!CHECK_INT(w, >, 0))
				goto out;
			sent += (size_t)w;
		}
		if (data_end_of(&C) > top_end)
			top_end = data_end_of(&C);
		ssize_t r = mm_stream_read(&A, in, 16 << 10);

		if (r != -EAGAIN && !CHECK_INT(r, >, 0))
			goto out;
		if (r > 0 && !CHECK_MEM(in, out + got, (size_t)r))
			goto out;
		got += r > 0 ? (size_t)r : 0;
	}
	printf("#     held %u times (asked %u), furthest data_end %u\n", held, asked, top_end);
	CHECK_U64(held, >, 0);
	CHECK_U64(top_end, <=, 8 + MM_RING_WINDOW + (32 << 10));

	/* a reader that stopped before half a window (here, before its
	 * first byte): the writer uses the ring */
	close_pair();
	if (!handshake(true))
		goto out;
	sent = 0;
	asked = 0;
	while (sent < (3 << 20)) {
		ssize_t w = mm_stream_write_hold(&C, out, 64 << 10, hold_no, &asked);

		if (!CHECK_INT(w, >, 0))
			goto out;
		sent += (size_t)w;
	}
	CHECK_U64(data_end_of(&C), >, 8 + MM_RING_WINDOW * 2);
	CHECK_U64(asked, >, 0);
out:
	close_pair();
	ring_size = RING;
}

/* A reader that keeps up: the writer stays within the window and a piece
 * past it, on a 4 MiB ring; one whose reader never said it follows the
 * mark (an mmapfs of the format's version 2 before the window) walks the
 * whole ring, and still gets every byte. */
static void test_window(void)
{
	uint32_t top_end = 0;
	unsigned marks = 0;

	ring_size = BIG;
	if (!handshake(true))
		goto out;
	CHECK_INT(keep_up(24 << 20, 48 << 10, 1, &top_end, &marks), ==, 0);
	printf("#     keeping up: furthest data_end %u, %u writes behind a mark\n", top_end,
	       marks);
	CHECK_U64(top_end, <=, 8 + MM_RING_WINDOW + (48 << 10));
	CHECK_U64(marks, >, 0);

	/* the reader's word says it does not follow */
	CHECK_INT(mm_ext_store(C.wr.ext2, MM_EXT2_W_FOLLOWS, 0), ==, 0);
	top_end = 0, marks = 0;
	CHECK_INT(keep_up(12 << 20, 48 << 10, 2, &top_end, &marks), ==, 0);
	printf("#     a reader that does not follow: furthest data_end %u, %u marks\n",
	       top_end, marks);
	CHECK_U64(top_end, >, BIG / 2);
	/* the last mark, if the first part left one, went at the writer's
	 * next look; none came after */
	CHECK_U64(marks, <=, 1);
	CHECK_U64(mark_of(&C), ==, 0);
	/* its next claim says it follows again */
	mm_channel_unclaim(&A, &A);
	CHECK_INT(mm_channel_claim(&A, MM_RD, &A), ==, MM_RD);
	{
		uint32_t f = 0;

		mm_ext_load(C.wr.ext2, MM_EXT2_W_FOLLOWS, &f);
		CHECK_U64(f, ==, 1);
		mm_ext_load(C.wr.ext2, MM_EXT2_W_ALIGNED, &f);
		CHECK_U64(f, ==, 1);
	}
	/* a reader that follows marks to 8 only (the window's first
	 * version): the writer goes on at 8, and says so */
	CHECK_INT(mm_ext_store(C.wr.ext2, MM_EXT2_W_ALIGNED, 0), ==, 0);
	top_end = 0, marks = 0;
	CHECK_INT(keep_up(12 << 20, 48 << 10, 3, &top_end, &marks), ==, 0);
	printf("#     a reader that follows to 8 only: furthest data_end %u, %u writes behind "
	       "a mark\n", top_end, marks);
	CHECK_U64(top_end, <=, 8 + MM_RING_WINDOW + (48 << 10));
	CHECK_U64(marks, >, 0);
	{
		uint32_t on = 0;

		mm_ext_load(C.wr.ext2, MM_EXT2_W_MARK_ON, &on);
		CHECK_U64(on, ==, 1);
	}
out:
	close_pair();
	ring_size = RING;
}

/* The writer starts again (at MM_RING_AGAIN, its reader following there)
 * in the middle of a stream, with half a window unread behind it; and
 * across many short streams, whose ends of stream come before and after
 * marks. */
static void test_window_restarts(void)
{
	static uint8_t out[1600 << 10], in[1600 << 10];
	size_t sent = 0, got = 0, n = sizeof(out);
	unsigned marks = 0, streams = 0;
	uint32_t top_end = 0;
	uint64_t total = 0;

	ring_size = BIG;
	if (!handshake(true))
		goto out;
	fill(out, n, 7);
	/* 1.2 MiB in, 0.7 MiB out: the writer is past the window, the
	 * reader past half of it */
	while (sent < (1200 << 10))
		sent += (size_t)mm_stream_write(&C, out + sent, (1200 << 10) - sent);
	while (got < (700 << 10))
		got += (size_t)mm_stream_read(&A, in + got, (700 << 10) - got);
	CHECK_U64(mark_of(&C), ==, 0);
	CHECK_INT(mm_stream_write(&C, out + sent, 1000), ==, 1000);
	sent += 1000;
	CHECK_U64(mark_of(&C), ==, 8 + (1200 << 10));	/* where it left off */
	{
		uint32_t on = 0;

		mm_ext_load(C.wr.ext2, MM_EXT2_W_MARK_ON, &on);
		CHECK_U64(on, ==, 2);	/* and it says it leaves marks, and where
					 * it goes on */
	}
	CHECK_U64(data_end_of(&C), ==, MM_RING_AGAIN + 1000);
	while (got < n) {
		ssize_t w = sent < n ? mm_stream_write(&C, out + sent, tap_range(1, n - sent)) : 0;
		ssize_t r = mm_stream_read(&A, in + got, tap_range(1, n - got));

		sent += w > 0 ? (size_t)w : 0;
		if (r != -EAGAIN && !CHECK_INT(r, >, 0))
			goto out;
		got += r > 0 ? (size_t)r : 0;
	}
	CHECK_MEM(in, out, n);

	/* short streams, each read to its end of file */
	mm_channel_unclaim(&C, &C);
	CHECK_INT(mm_stream_read(&A, in, sizeof(in)), ==, 0);	/* the one above's */
	for (int i = 0; i < 6000 && total < (UINT64_C(6) << 20); i++) {
		size_t k = tap_range(1, 4000), have = 0;
		ssize_t r;

		if (!CHECK_INT(mm_channel_claim(&C, MM_WR, &C), ==, MM_WR))
			break;
		fill(out, k, (uint64_t)i);
		if (!CHECK_INT(mm_stream_write(&C, out, k), ==, (ssize_t)k))
			break;
		mm_channel_unclaim(&C, &C);
		while ((r = mm_stream_read(&A, in + have, sizeof(in) - have)) > 0)
			have += (size_t)r;
		if (!CHECK_INT(r, ==, 0) || !CHECK_U64(have, ==, k) || !CHECK_MEM(in, out, k))
			break;
		marks += mark_of(&C) != 0;
		if (data_end_of(&C) > top_end)
			top_end = data_end_of(&C);
		total += k;
		streams++;
	}
	printf("#     %u streams, %llu bytes, furthest data_end %u, %u behind a mark\n", streams,
	       (unsigned long long)total, top_end, marks);
	CHECK_U64(total, >=, UINT64_C(6) << 20);
	CHECK_U64(top_end, <=, 8 + MM_RING_WINDOW + 4000);
out:
	close_pair();
	ring_size = RING;
}

int main(void)
{
	static const struct tap_test tests[] = {
		TAP_TEST(test_handshake_extension),
		TAP_TEST(test_handshake_xpra),
		TAP_TEST(test_refusals),
		TAP_TEST(test_answer_with_file_keys),
		TAP_TEST(test_claims),
		TAP_TEST(test_end_of_stream),
		TAP_TEST(test_dead_peer),
		TAP_TEST(test_reader_abandons),
		TAP_TEST(test_abort_mark),
		TAP_TEST(test_version_1_peer),
		TAP_TEST(test_tick_every),
		TAP_TEST(test_restarted_peer),
		TAP_TEST(test_chunk_race),
		TAP_TEST(test_zero_length_chunk),
		TAP_TEST(test_corrupt_pointers),
		TAP_TEST(test_reused_file),
		TAP_TEST(test_view),
		TAP_TEST(test_view_chunks),
		TAP_TEST(test_waiters),
		TAP_TEST(test_bell_vectors),
		TAP_TEST(test_view_bells),
		TAP_TEST(test_look_behind),
		TAP_TEST(test_window),
		TAP_TEST(test_window_restarts),
		TAP_TEST(test_window_hold),
	};
	const char *tmp = getenv("TMPDIR");
	int ret;

	if (mm_guard_init() < 0)
		return 1;
	snprintf(top, sizeof(top), "%s/mmapfs-test-channel.XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(top)) {
		printf("Bail out! mkdtemp %s: %s\n", top, strerror(errno));
		return 1;
	}
	dirs[0] = top;
	ret = tap_main(tests, TAP_COUNT(tests));
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return ret;
}
