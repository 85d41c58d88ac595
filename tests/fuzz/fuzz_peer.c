/* libFuzzer harness: the peer text path (mm_channel_peer, and the framing
 * of mm_peer_text_complete).
 *
 * One creator channel C lives across inputs, its areas in a private
 * directory that is also the only one offered files may come from. Each
 * input drives:
 *   (a) a fresh attacher A, given text_a (an offer, as written to peer);
 *   (b) C, given text_b (an answer);
 *   (c) if byte 0 says so, A given text_a again (an offer handed over twice);
 * and mm_peer_text_complete on every text. A is then destroyed. C is not
 * declared, so it would take an offer; but the only files it could open are
 * its own, and text naming those is an answer, so C stays the creator.
 *
 * Input: byte 0 chooses how the texts are made (bits 0-1 text_a, bits 2-3
 * text_b, bit 4 step c), bytes 1 and 2 are arguments for text_a and text_b,
 * and the rest is split at the first "\n%%\n" into part_a and part_b (without
 * the separator, both parts are the whole rest). A text is:
 *   0  the part alone
 *   1  the base text with the part appended
 *   2  the base text with the value of line (arg % lines) replaced by the part
 *   3  the base text with the part inserted at byte arg * length / 256
 * where the base of text_a is C's real offer, that of text_b A's real answer
 * (after step a). In the parts, placeholders expand to this run's values, so
 * that a seed can name the real files and tokens:
 *   $R $W  C's read.file, write.file       $S     their size
 *   $r $w  C's read.token, write.token     $i $j  their token_index
 *   $a $b  A's read.token, write.token     $k $l  their token_index
 *   $$     a '$'
 *
 * Invariants: a refusal is one of the documented errors with a reason, and
 * leaves the channel's state, role and texts (capabilities, token, peer) as
 * they were; an acceptance leaves a consistent state for the role; every
 * text still formats; C stays the creator; no descriptor outlives the
 * attacher. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "caps.h"
#include "channel.h"
#include "guard.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TEXT_MAX (MM_CAPS_MAX + 1024)	/* a little past what is accepted */
#define SHOW_MAX (16 * 1024)		/* any text of a channel fits */

static char dir[256];
static const char *dirs[1] = { dir };
static struct mm_chan_opts opts;
static struct mm_channel C;
static char offer[SHOW_MAX];
static size_t offer_len;
static int fd_mark;
static uint64_t now_ms;
static bool verbose;		/* FUZZ_VERBOSE=1: say what each call did */

/* Placeholder values, by letter. */
static char vals[128][PATH_MAX];

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_peer: %s\n", what);
	abort();
}

/* The values of an area of caps text: file, token, index (and size). */
static void take_vals(const char *text, size_t len, char file_r, char file_w, char tok_r,
		      char tok_w, char idx_r, char idx_w)
{
	struct mm_caps *c = calloc(1, sizeof(*c));
	const struct mm_caps_area *a[2];
	const char l[3][2] = { { file_r, file_w }, { tok_r, tok_w }, { idx_r, idx_w } };
	char hex[MM_TOKEN_HEX_MAX];

	if (!c)
		fail("out of memory");
	a[0] = &c->read;
	a[1] = &c->write;
	if (mm_caps_parse(text, len, c, NULL) < 0)
		memset(c, 0, sizeof(*c));	/* no areas: A refused every offer */
	for (int i = 0; i < 2; i++) {
		if (l[0][i])
			snprintf(vals[(int)l[0][i]], PATH_MAX, "%s", a[i]->file);
		mm_token_format(&a[i]->token, hex);
		snprintf(vals[(int)l[1][i]], PATH_MAX, "%s", hex);
		snprintf(vals[(int)l[2][i]], PATH_MAX, "%llu",
			 (unsigned long long)a[i]->token_index);
	}
	if (file_r)
		snprintf(vals['S'], PATH_MAX, "%llu", (unsigned long long)c->read.size);
	free(c);
}

static void creator_open(void)
{
	struct mm_err err;
	int n;

	if (mm_channel_open(&C, MM_CREATOR, false, &opts, &err) < 0)
		fail(err.msg);
	n = mm_channel_caps_text(&C, offer, sizeof(offer));
	if (n <= 0)
		fail("no offer");
	offer_len = (size_t)n;
	take_vals(offer, offer_len, 'R', 'W', 'r', 'w', 'i', 'j');
}

static void cleanup(void)
{
	mm_channel_destroy(&C);
	rmdir(dir);
}

static int lowest_fd(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		fail("open /dev/null");
	close(fd);
	return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (mm_guard_init() < 0)
		fail("mm_guard_init");
	if (fuzz_area_dir(dir, sizeof(dir), "fuzz-peer", &opts, dirs) < 0)
		fail("mkdtemp");
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	creator_open();
	strcpy(vals['$'], "$");
	atexit(cleanup);
	fd_mark = lowest_fd();
	return 0;
}

/* part with its placeholders expanded, into out (cap bytes); its length. */
static size_t expand(char *out, size_t cap, const char *p, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n && o < cap; i++) {
		unsigned char k = i + 1 < n ? (unsigned char)p[i + 1] : 0;
		const char *v;
		size_t vl;

		if (p[i] != '$' || k == 0 || k >= 128 || !vals[k][0]) {
			out[o++] = p[i];
			continue;
		}
		v = vals[k];
		vl = strlen(v);
		if (vl > cap - o)
			vl = cap - o;
		memcpy(out + o, v, vl);
		o += vl;
		i++;
	}
	return o;
}

/* Append n bytes to out (cap bytes) at *o, as much as fits. */
static void put(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
	if (n > cap - *o)
		n = cap - *o;
	memcpy(out + *o, s, n);
	*o += n;
}

/* A text made from base and part as `mode` says (see the top). */
static size_t compose(char *out, size_t cap, unsigned mode, unsigned arg, const char *base,
		      size_t blen, const char *part, size_t plen)
{
	size_t o = 0, at, to;

	switch (mode) {
	case 0:
		put(out, cap, &o, part, plen);
		break;
	case 1:
		put(out, cap, &o, base, blen);
		put(out, cap, &o, part, plen);
		break;
	case 2: {
		unsigned lines = 0, want;

		for (size_t i = 0; i < blen; i++)
			lines += base[i] == '\n';
		want = arg % (lines ? lines : 1);
		at = 0;
		for (unsigned l = 0; l < want; l++)
			at = (size_t)((const char *)memchr(base + at, '\n', blen - at) - base) + 1;
		to = at;
		while (to < blen && base[to] != '\n' && base[to] != '=')
			to++;
		if (to < blen && base[to] == '=')
			at = ++to;
		while (to < blen && base[to] != '\n')
			to++;
		put(out, cap, &o, base, at);
		put(out, cap, &o, part, plen);
		put(out, cap, &o, base + to, blen - to);
		break;
	}
	default:
		at = blen * arg / 256;
		put(out, cap, &o, base, at);
		put(out, cap, &o, part, plen);
		put(out, cap, &o, base + at, blen - at);
		break;
	}
	return o;
}

struct view {
	enum mm_state state;
	enum mm_chan_role role;
	int ncaps, ntoken, npeer;
	char caps[SHOW_MAX], token[SHOW_MAX], peer[SHOW_MAX];
};

static void look(struct mm_channel *ch, struct view *v)
{
	static char status[SHOW_MAX];

	v->state = mm_channel_state(ch);
	v->role = mm_channel_role(ch);
	v->ncaps = mm_channel_caps_text(ch, v->caps, sizeof(v->caps));
	v->ntoken = mm_channel_token_text(ch, v->token, sizeof(v->token));
	v->npeer = mm_channel_peer_text(ch, v->peer, sizeof(v->peer));
	if (v->ncaps < 0 || v->ntoken < 0 || v->npeer < 0 ||
	    mm_channel_status_text(ch, status, sizeof(status)) <= 0)
		fail("a text does not format");
}

static bool same(const struct view *a, const struct view *b)
{
	return a->state == b->state && a->role == b->role && a->ncaps == b->ncaps &&
	       a->ntoken == b->ntoken && a->npeer == b->npeer &&
	       memcmp(a->caps, b->caps, (size_t)a->ncaps) == 0 &&
	       memcmp(a->token, b->token, (size_t)a->ntoken) == 0 &&
	       memcmp(a->peer, b->peer, (size_t)a->npeer) == 0;
}

/* Hand text to ch's peer file and check what it did. */
static int peer(struct mm_channel *ch, const char *text, size_t len)
{
	static struct view before, after;
	struct mm_err err = { "" };
	char reason[512];
	int r;

	(void)mm_peer_text_complete(text, len);
	look(ch, &before);
	r = mm_channel_peer(ch, text, len, ++now_ms, &err);
	look(ch, &after);
	if (verbose)
		fprintf(stderr, "%s <- %zu bytes: %d %s (%s)\n", ch == &C ? "C" : "A", len, r,
			mm_state_name(after.state), err.msg);
	if (r < 0) {
		if (r != -EINVAL && r != -EACCES && r != -EBADMSG && r != -EBUSY)
			fail("a refusal with an undocumented errno");
		if (err.msg[0] == '\0' || !memchr(err.msg, '\0', sizeof(err.msg)))
			fail("a refusal without a reason");
		if (!same(&before, &after))
			fail("a refusal changed the channel");
		mm_channel_reason(ch, reason, sizeof(reason));
		if (reason[0] == '\0')
			fail("a refusal left no reason in the status");
	} else if (r > 0) {
		fail("mm_channel_peer returned > 0");
	} else if (after.role == MM_CREATOR ? after.state != MM_STATE_READY
		   : after.state != MM_STATE_READY && after.state != MM_STATE_ATTACHED) {
		fail("accepted, but the state does not fit the role");
	}
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char part_a[TEXT_MAX], part_b[TEXT_MAX], text_a[TEXT_MAX], text_b[TEXT_MAX];
	static char answer[SHOW_MAX];
	const char *rest, *sep;
	size_t rlen, la, lb, pa, pb, na;
	unsigned ctl, arg_a, arg_b;
	struct mm_channel A;
	struct mm_err err;
	int n;

	if (size < 3)
		return 0;
	ctl = data[0];
	arg_a = data[1];
	arg_b = data[2];
	rest = (const char *)data + 3;
	rlen = size - 3;
	(void)mm_peer_text_complete(rest, rlen);
	sep = memmem(rest, rlen, "\n%%\n", 4);
	la = sep ? (size_t)(sep - rest) + 1 : rlen;	/* keep the newline */
	lb = sep ? rlen - la - 3 : rlen;
	pa = expand(part_a, sizeof(part_a), rest, la);

	if (mm_channel_open(&A, MM_ATTACHER, false, &opts, &err) < 0)
		fail(err.msg);
	na = compose(text_a, sizeof(text_a), ctl & 3, arg_a, offer, offer_len, part_a, pa);
	peer(&A, text_a, na);

	/* A's answer, and its values for the placeholders */
	n = mm_channel_caps_text(&A, answer, sizeof(answer));
	if (n < 0)
		fail("no answer text");
	take_vals(answer, (size_t)n, 0, 0, 'a', 'b', 'k', 'l');
	pb = expand(part_b, sizeof(part_b), sep ? sep + 4 : rest, lb);
	peer(&C, text_b, compose(text_b, sizeof(text_b), (ctl >> 2) & 3, arg_b, answer,
				 (size_t)n, part_b, pb));
	if (ctl & 16)
		peer(&A, text_a, na);
	mm_channel_destroy(&A);

	/* The allowed directory holds C's files only: any offer C could take
	 * names its own areas, and that is a failed answer, never an offer. */
	if (mm_channel_role(&C) != MM_CREATOR)
		fail("the creator took an offer of its own areas");
	if (lowest_fd() != fd_mark)
		fail("a descriptor leaked");
	return 0;
}
