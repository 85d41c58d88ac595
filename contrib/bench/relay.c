/* relay: standard input to standard output (both pipes) with the copies of
 * the FIFO entries' way and nothing else: read(2) into a ring of buffers
 * (as the send pump reads its FIFO into the area), vmsplice(2) of those
 * bytes into the output (as the recv pump hands the area's pages to its
 * FIFO, no copy). Both pipes are made 1 MiB, as the pumps' FIFOs.
 *
 *   dd if=/dev/zero bs=64K count=16384 | relay | dd of=/dev/null bs=64K
 *
 * is three copies (into the first pipe, out of it, out of the second) by
 * three processes, against dd | dd's two copies by two: the floor of the
 * FIFO entries' rate on a machine, without mmapfs's ring, claims and
 * pumps (contrib/bench/bench.sh, section f). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#define PIPE_SIZE (1 << 20)
#define STEP (1 << 20)		/* the most one read takes */
#define RING (8 * PIPE_SIZE)	/* a page is used again only once the
				 * output pipe (1 MiB) cannot hold it */

int main(void)
{
	char *ring = aligned_alloc(4096, RING);
	size_t pos = 0;

	if (!ring)
		return perror("relay: memory"), 1;
	fcntl(STDIN_FILENO, F_SETPIPE_SZ, PIPE_SIZE);
	fcntl(STDOUT_FILENO, F_SETPIPE_SZ, PIPE_SIZE);
	for (;;) {
		ssize_t n = read(STDIN_FILENO, ring + pos, STEP);
		struct iovec iov;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return perror("relay: read"), 1;
		if (n == 0)
			return 0;
		iov = (struct iovec){ ring + pos, (size_t)n };
		while (iov.iov_len > 0) {
			ssize_t w = vmsplice(STDOUT_FILENO, &iov, 1, 0);

			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return perror("relay: vmsplice"), 1;
			iov.iov_base = (char *)iov.iov_base + w;
			iov.iov_len -= (size_t)w;
		}
		pos += (size_t)n;
		if (pos + STEP > RING)
			pos = 0;
	}
}
