/* Round-trip latency of 64-byte messages, one direction each way.
 *
 *   pingpong pipe COUNT                    over two pipes (the baseline)
 *   pingpong files COUNT A_DATA B_DATA     over an mmapfs channel: this end
 *                                          writes A_DATA, the echo end reads
 *                                          B_DATA and writes it back
 *
 * Prints the mean and median round trip in microseconds. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int full(ssize_t (*op)(int, void *, size_t), int fd, char *buf)
{
	size_t done = 0;

	while (done < MSG) {
		ssize_t n = op(fd, buf + done, MSG - done);

		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static ssize_t do_write(int fd, void *buf, size_t n)
{
	return write(fd, buf, n);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void echo(int in, int out, long count)
{
	char buf[MSG];

	for (long i = 0; i < count; i++)
		if (full(read, in, buf) < 0 || full(do_write, out, buf) < 0)
			exit(1);
	exit(0);
}

int main(int argc, char **argv)
{
	int to_echo[2], from_echo[2], status;
	long count;
	double *rt, sum = 0;
	char buf[MSG];
	pid_t pid;

	if (argc < 3 || (strcmp(argv[1], "files") == 0 && argc != 5)) {
		fprintf(stderr, "usage: %s pipe COUNT | files COUNT A_DATA B_DATA\n", argv[0]);
		return 2;
	}
	count = atol(argv[2]);
	rt = calloc((size_t)count, sizeof(*rt));
	if (!rt || count <= 0)
		return 2;
	if (strcmp(argv[1], "pipe") == 0) {
		if (pipe(to_echo) < 0 || pipe(from_echo) < 0)
			return perror("pipe"), 1;
	} else {
		/* A's data: write goes to B, read comes from B */
		to_echo[1] = open(argv[3], O_WRONLY);
		from_echo[0] = open(argv[3], O_RDONLY);
		to_echo[0] = open(argv[4], O_RDONLY);
		from_echo[1] = open(argv[4], O_WRONLY);
		if (to_echo[0] < 0 || to_echo[1] < 0 || from_echo[0] < 0 || from_echo[1] < 0)
			return perror("open"), 1;
	}
	pid = fork();
	if (pid == 0)
		echo(to_echo[0], from_echo[1], count);
	memset(buf, 'p', sizeof(buf));
	for (long i = 0; i < count; i++) {
		double t0 = now_us();

		if (full(do_write, to_echo[1], buf) < 0 || full(read, from_echo[0], buf) < 0)
			return perror("pingpong"), 1;
		rt[i] = now_us() - t0;
		sum += rt[i];
	}
	waitpid(pid, &status, 0);
	qsort(rt, (size_t)count, sizeof(*rt), cmp);
	printf("%s: %ld round trips of %d bytes: mean %.1f us, median %.1f us\n",
	       argv[1], count, MSG, sum / count, rt[count / 2]);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
