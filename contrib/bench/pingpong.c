/* Round-trip latency of 64-byte messages, one direction each way.
 *
 *   pingpong pipe COUNT                      over two pipes (the baseline)
 *   pingpong files COUNT A_DATA B_DATA       over an mmapfs channel: this end
 *                                            writes A_DATA, the echo end reads
 *                                            B_DATA and writes it back
 *   pingpong lib COUNT A_CHAN B_CHAN         the same through libmmapfs at
 *                                            both ends (channel directories)
 *   pingpong libfiles COUNT A_CHAN B_CHAN    libmmapfs at this end, the files
 *                                            (B_CHAN/data) at the echo end
 *   pingpong fifos COUNT A_CHAN B_CHAN       the FIFO entries: this end writes
 *                                            A_CHAN/send and reads A_CHAN/recv,
 *                                            the echo end B_CHAN's
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

#include <mmapfs.h>

#define MSG 64

/* One end: a way to read and a way to write, by descriptors or a handle;
 * a recv entry is opened at the first read (its open waits for bytes). */
struct end {
	int rfd, wfd;
	struct mmapfs_chan *c;
	char rpath[4096];
};

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int full(struct end *e, char *buf, int wr)
{
	size_t done = 0;

	while (done < MSG) {
		ssize_t n;

		if (!e->c && !wr && e->rfd < 0 && (e->rfd = open(e->rpath, O_RDONLY)) < 0)
			return -1;
		if (e->c)
			n = wr ? mmapfs_write(e->c, buf + done, MSG - done)
			       : mmapfs_read(e->c, buf + done, MSG - done);
		else
			n = wr ? write(e->wfd, buf + done, MSG - done)
			       : read(e->rfd, buf + done, MSG - done);
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* A channel end through the FIFO entries (dir/send, dir/recv). */
static struct end open_fifos(const char *chan)
{
	struct end e = { -1, -1, NULL, "" };
	char path[4096];

	snprintf(path, sizeof(path), "%s/send", chan);
	snprintf(e.rpath, sizeof(e.rpath), "%s/recv", chan);
	e.wfd = open(path, O_WRONLY);
	if (e.wfd < 0) {
		fprintf(stderr, "pingpong: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return e;
}

/* A channel end through the files (dir/data) or the library. */
static struct end open_end(const char *chan, int lib, int files_are_paths)
{
	struct end e = { -1, -1, NULL, "" };
	char path[4096];

	if (lib) {
		e.c = mmapfs_open(chan, O_RDWR);
		if (!e.c) {
			fprintf(stderr, "pingpong: %s: %s\n", chan, strerror(errno));
			exit(1);
		}
		return e;
	}
	snprintf(path, sizeof(path), files_are_paths ? "%s" : "%s/data", chan);
	e.wfd = open(path, O_WRONLY);
	e.rfd = open(path, O_RDONLY);
	if (e.rfd < 0 || e.wfd < 0) {
		fprintf(stderr, "pingpong: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return e;
}

int main(int argc, char **argv)
{
	int to_echo[2], from_echo[2], status, sync[2];
	const char *mode = argc > 1 ? argv[1] : "";
	int pipes = strcmp(mode, "pipe") == 0, paths = strcmp(mode, "files") == 0;
	int lib = strcmp(mode, "lib") == 0, libfiles = strcmp(mode, "libfiles") == 0;
	int fifos = strcmp(mode, "fifos") == 0;
	struct end me, echo;
	long count;
	double *rt, sum = 0;
	char buf[MSG];
	pid_t pid;

	if (argc < 3 || (!pipes && argc != 5) || !(pipes || paths || lib || libfiles || fifos)) {
		fprintf(stderr, "usage: %s pipe COUNT | {files,lib,libfiles,fifos} COUNT A B\n",
			argv[0]);
		return 2;
	}
	count = atol(argv[2]);
	rt = calloc((size_t)count, sizeof(*rt));
	if (!rt || count <= 0 || pipe(sync) < 0)
		return 2;
	if (pipes) {
		if (pipe(to_echo) < 0 || pipe(from_echo) < 0)
			return perror("pipe"), 1;
		me = (struct end){ .rfd = from_echo[0], .wfd = to_echo[1] };
		echo = (struct end){ .rfd = to_echo[0], .wfd = from_echo[1] };
	}
	pid = fork();
	if (pid == 0) {
		/* the echo end: B's data, read and written back */
		if (fifos)
			echo = open_fifos(argv[4]);
		else if (!pipes)
			echo = open_end(argv[4], lib, paths);
		if (write(sync[1], "", 1) != 1)
			_exit(1);
		for (long i = 0; i < count; i++)
			if (full(&echo, buf, 0) < 0 || full(&echo, buf, 1) < 0)
				_exit(1);
		if (echo.c)
			mmapfs_close(echo.c);
		_exit(0);
	}
	if (fifos)
		me = open_fifos(argv[3]);
	else if (!pipes)
		me = open_end(argv[3], lib || libfiles, paths);
	if (read(sync[0], buf, 1) != 1)
		return 1;
	memset(buf, 'p', sizeof(buf));
	for (long i = 0; i < count; i++) {
		double t0 = now_us();

		if (full(&me, buf, 1) < 0 || full(&me, buf, 0) < 0)
			return perror("pingpong"), 1;
		rt[i] = now_us() - t0;
		sum += rt[i];
	}
	waitpid(pid, &status, 0);
	if (me.c)
		mmapfs_close(me.c);
	qsort(rt, (size_t)count, sizeof(*rt), cmp);
	printf("%s: %ld round trips of %d bytes: mean %.1f us, median %.1f us\n",
	       mode, count, MSG, sum / count, rt[count / 2]);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
