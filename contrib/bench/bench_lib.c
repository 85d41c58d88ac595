/* Throughput through libmmapfs, every byte checked.
 *
 *   bench_lib W_CHAN R_CHAN BYTES BS zc|copy
 *
 * A child reads R_CHAN to the end of the stream, zero copy (mmapfs_read_begin
 * of up to BS bytes, compared where they lie in the shared area) or copying
 * (mmapfs_read into a BS-byte buffer, then compared); this process writes
 * BYTES to W_CHAN in BS-byte mmapfs_write calls. The bytes are a pattern
 * of 1 MiB of random data over and over; the reader compares each piece
 * with the pattern at its offset in the stream, so a byte lost, doubled,
 * moved or damaged fails the run. Prints the rate from the first write to
 * the reader's end of stream. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mmapfs.h>

#define PAT (1u << 20)

static uint8_t pat[2 * PAT];	/* the pattern, twice: any piece <= 1 MiB is whole */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int reader(const char *chan, uint64_t bytes, size_t bs, int zc)
{
	struct mmapfs_chan *c = mmapfs_open(chan, O_RDONLY);
	uint8_t *buf = zc ? NULL : malloc(bs);
	uint64_t got = 0;
	ssize_t n;

	if (!c || (!zc && !buf))
		return fprintf(stderr, "bench_lib: %s: %s\n", chan, strerror(errno)), 1;
	for (;;) {
		const void *p = buf;

		n = zc ? mmapfs_read_begin(c, &p, bs) : mmapfs_read(c, buf, bs);
		if (n <= 0)
			break;
		if (memcmp(p, pat + got % PAT, (size_t)n) != 0) {
			fprintf(stderr, "bench_lib: wrong bytes at %llu\n", (unsigned long long)got);
			return 3;
		}
		if (zc && mmapfs_read_end(c, (size_t)n) < 0)
			break;
		got += (uint64_t)n;
	}
	if (n < 0 || got != bytes)
		return fprintf(stderr, "bench_lib: read %llu of %llu bytes: %s\n",
			       (unsigned long long)got, (unsigned long long)bytes,
			       n < 0 ? strerror(errno) : "short"), 1;
	mmapfs_close(c);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	struct mmapfs_chan *c;
	uint64_t bytes, sent = 0;
	size_t bs;
	int zc, status;
	double t0, t;
	pid_t pid;

	if (argc != 6 || (strcmp(argv[5], "zc") && strcmp(argv[5], "copy"))) {
		fprintf(stderr, "usage: bench_lib W_CHAN R_CHAN BYTES BS zc|copy\n");
		return 2;
	}
	bytes = strtoull(argv[3], NULL, 0);
	bs = strtoul(argv[4], NULL, 0);
	zc = strcmp(argv[5], "zc") == 0;
	if (bs == 0 || bs > PAT)
		return 2;
	srand(1);
	for (size_t i = 0; i < PAT; i++)
		pat[i] = pat[PAT + i] = (uint8_t)(rand() >> 7);
	pid = fork();
	if (pid == 0)
		_exit(reader(argv[2], bytes, bs, zc));
	c = mmapfs_open(argv[1], O_WRONLY);
	if (!c)
		return fprintf(stderr, "bench_lib: %s: %s\n", argv[1], strerror(errno)), 1;
	t0 = now_s();
	while (sent < bytes) {
		size_t n = bytes - sent < bs ? (size_t)(bytes - sent) : bs;

		if (mmapfs_write(c, pat + sent % PAT, n) != (ssize_t)n)
			return perror("bench_lib: write"), 1;
		sent += n;
	}
	mmapfs_close(c);
	waitpid(pid, &status, 0);
	t = now_s() - t0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return fprintf(stderr, "bench_lib: the reader failed\n"), 1;
	printf("library %s bs=%zu: %llu bytes in %.3f s, %.3f GB/s\n", zc ? "zero-copy" : "copy",
	       bs, (unsigned long long)bytes, t, bytes / t / 1e9);
	return 0;
}
