/* libmmapfs: an mmapfs channel's stream through the shared memory itself.
 *
 * The files of an mmapfs mount are the interface for every language; a
 * program that wants memory speed links this library (pkg-config mmapfs)
 * and uses the same channel directory. mmapfs_open() takes its directions
 * of CHAN/data as an open() does, then maps the channel's areas and moves
 * bytes through them with the daemon's own format, checks and wake-ups, so
 * either end may be the library, the files, or another program speaking
 * the format, xpra's own included. Errors are -1 (or NULL) with errno,
 * and mmapfs_reason(). See libmmapfs(3).
 *
 * Threads. A handle has two directions, each with its own calls: reading
 * (mmapfs_read, mmapfs_read_begin, mmapfs_read_end) and writing
 * (mmapfs_write). One call per direction at a time: a thread may read
 * while another writes through the same O_RDWR handle, but two reads (or
 * two writes, or a read_begin and a read_end) must not overlap; the calls
 * of a direction may come from different threads in turn, ordered by the
 * program (a mutex, a join). mmapfs_chunks_put and mmapfs_chunks_get take
 * a lock and may run beside any call but mmapfs_close (a list is put
 * before the reads of its bytes begin). mmapfs_fd may be called, and its
 * descriptor polled, from any thread at any time. mmapfs_close runs alone:
 * no other call on the handle during or after it, and no use of a pointer
 * read_begin gave. mmapfs_open and mmapfs_reason (this thread's own) are
 * safe from any thread; different handles are independent. No call is
 * async-signal-safe. A child of fork(2) must not use the handle.
 *
 * SIGBUS. A peer may truncate an area: touching its pages then raises
 * SIGBUS. The first mmapfs_open installs a SIGBUS handler (sigaction,
 * SA_SIGINFO) that takes only the faults of the library's own guarded
 * accesses (its copies into and out of the areas, its reads and writes of
 * their pointers): the calling thread inside such an access, a kernel
 * fault (si_code BUS_ADRERR and the like) and si_addr in the area memory
 * that access touches. Such a call fails with EIO. Every other SIGBUS (a
 * fault of the program's own memory, even a buffer given to mmapfs_read,
 * one sent by kill(2)) goes to the handler the program had installed
 * before (called as the kernel would: SA_SIGINFO or plain, its sa_mask
 * blocked), or gets the default action (the process dies of SIGBUS) if it
 * had none. A program with a SIGBUS handler of its own installs it before
 * the first mmapfs_open, or, later, calls the previous action sigaction(2)
 * returns for the faults that are not its own. The bytes mmapfs_read_begin
 * hands out are the area itself, not guarded: a program that must survive
 * a hostile peer reads with mmapfs_read. */
#ifndef MMAPFS_H
#define MMAPFS_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mmapfs_chan;

/* chan_dir: a channel directory of a mount (MOUNTPOINT/NAME). flags:
 * O_RDONLY, O_WRONLY or O_RDWR, optionally | O_NONBLOCK (| O_CLOEXEC,
 * which is always on). */
struct mmapfs_chan *mmapfs_open(const char *chan_dir, int flags);

/* As read(2) and write(2) on data: a read returns what is there (at least
 * a byte), 0 at the end of a stream; a write blocks until all is written
 * (O_NONBLOCK: what fits, or EAGAIN). */
ssize_t mmapfs_read(struct mmapfs_chan *c, void *buf, size_t len);
ssize_t mmapfs_write(struct mmapfs_chan *c, const void *buf, size_t len);

/* Zero copy: *p points at up to max bytes of the stream in the shared
 * area (the count is returned; 0 at the end of a stream); they stay
 * there until mmapfs_read_end(c, n) gives back the first n of them. */
ssize_t mmapfs_read_begin(struct mmapfs_chan *c, const void **p, size_t max);
int mmapfs_read_end(struct mmapfs_chan *c, size_t n);

/* An xpra peer (the channel's status says mmapfs=0) describes its data
 * with chunk lists that travel in its own packets (docs/xpra.md), as
 * "OFFSET LENGTH" lines, the text of the channel's chunks file. Reading:
 * give the list an xpra writer sent, then read that many bytes: the reads
 * return exactly those pieces, in order. Writing: after writing, take the
 * list of where the bytes went (NUL-terminated in buf, its length
 * returned; MMAPFS_CHUNKS_TEXT_MAX always suffices) and send it to the
 * xpra reader. EOPNOTSUPP with an mmapfs peer, whose writer needs none. */
#define MMAPFS_CHUNKS_TEXT_MAX 22529
int mmapfs_chunks_put(struct mmapfs_chan *c, const char *text);
ssize_t mmapfs_chunks_get(struct mmapfs_chan *c, char *buf, size_t len);

/* A descriptor for poll(2)/epoll(7): readable, writable, hang-up. Never
 * read or write it; mmapfs_close() closes it. */
int mmapfs_fd(struct mmapfs_chan *c);

/* Why this thread's last failed call failed, one line naming the file or
 * the value at fault (a line of a chunk list, an area's path), or the
 * errno's text: as errno, meaningful only after a failure. */
const char *mmapfs_reason(void);

/* End the stream (the reader sees end of file after the bytes written),
 * as close(2) on data does, and free c. */
int mmapfs_close(struct mmapfs_chan *c);

#ifdef __cplusplus
}
#endif

#endif
