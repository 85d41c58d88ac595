/* mmapfs core: what the channel's files share among themselves, and nobody
 * else uses. */
#ifndef MMAPFS_INTERNAL_H
#define MMAPFS_INTERNAL_H

#include <string.h>

#include "channel.h"

/* The direction names used in capabilities, from this end's side. */
#define RD_NAME "read"
#define WR_NAME "write"

static inline const char *dir_name(unsigned dir)
{
	return dir == MM_RD ? RD_NAME : WR_NAME;
}

/* Our token in d as a whole value (the bytes above d->token are zero). */
static inline void mm_dir_token(const struct mm_dir *d, struct mm_token *t)
{
	memset(t, 0, sizeof(*t));
	memcpy(t->v, d->token, sizeof(d->token));
}

void mm_set_state(struct mm_channel *ch, enum mm_state s);
void mm_set_peer(struct mm_channel *ch, enum mm_peer p);
void mm_fail_clear(struct mm_channel *ch);
void mm_dir_init(struct mm_dir *d);
void mm_dir_close(struct mm_dir *d);

/* handshake.c: a creator's areas, tokens and session. ch->lock not needed
 * (the channel is not shared yet). */
int mm_creator_setup(struct mm_channel *ch, struct mm_err *err);
/* Should a declared creator whose setup failed with r wait for its file? */
bool mm_setup_later(const struct mm_channel *ch, int r);
/* Set up d's ring (and trailer, with the extension) over its mapped area:
 * 0, or -EINVAL for an area too small. */
int mm_dir_setup_ring(struct mm_dir *d, unsigned version);

/* live.c: write our session and heartbeat into a direction's trailer; the
 * direction whose trailer tells the peer's (NULL without the extension).
 * ch->lock held. */
void mm_publish_session(struct mm_channel *ch, struct mm_dir *d);
struct mm_dir *mm_ext_dir(struct mm_channel *ch);
void mm_note_peer(struct mm_channel *ch, uint64_t now_ms);

/* stream.c: start and end a stream on the writing side; ch->lock held.
 * begin: 0, or -EAGAIN while the reader has yet to take six earlier ends
 * of stream. */
int mm_writer_begin(struct mm_channel *ch);
void mm_writer_end(struct mm_channel *ch);
/* A new claim of dirs: the sleepers this end counted in the trailer were
 * its last holder's, who is gone (it may have died asleep). ch->lock held. */
void mm_sleepers_reset(struct mm_channel *ch, unsigned dirs);
/* d was just claimed (or viewed): the epoch its stream starts in. */
void mm_dir_claimed(struct mm_dir *d);
/* The same for a reading direction, whose reader (version 2) tells the
 * writer that it follows the writer's mark (ring.h, the working window). */
void mm_reader_claimed(struct mm_dir *d);

#endif
