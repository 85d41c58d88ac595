/* A driver of libmmapfs for tests/py/test_lib.py: each command is one end
 * of a channel, through the library, and prints one line.
 *
 *   write CHAN SRC SEED [nb]     SRC's bytes, in writes of random sizes,
 *                                then the end of stream: "ok N"
 *   read CHAN SRC SEED [zc] [nb] the stream, in reads of random sizes
 *                                (zc: zero copy, random partial ends),
 *                                compared with SRC, then end of file: "ok N"
 *   open CHAN r|w|rw             "ok" or the errno's name
 *   hold CHAN r|w|rw             open, print "open", close at end of stdin
 *   put CHAN TEXT                write TEXT, print "written", close (the
 *                                end of stream) at end of stdin: "ok N"
 *   error CHAN r|w               read (or write) until it fails: the errno's
 *                                name, or "eof"
 *   sigbus CHAN                  a SIGBUS outside the library reaches the
 *                                program's own handler: "chained"
 *
 * nb: O_NONBLOCK, waiting in poll() on mmapfs_fd(). Exit status 0 when the
 * command ran as meant (the line says the outcome), 1 otherwise. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mmapfs.h>

static uint64_t rng;

static uint64_t next(void)
{
	uint64_t z = (rng += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* Sizes that cross a 64 KiB ring's end in every way. */
static size_t random_size(void)
{
	static const size_t top[] = { 16, 4096, 65535, 65537, 200000, 1 << 20 };

	return 1 + next() % top[next() % (sizeof(top) / sizeof(top[0]))];
}

static int die(const char *what)
{
	printf("%s: %s\n", what, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
	return 1;
}

static uint8_t *load(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *p;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	*len = (size_t)st.st_size;
	p = mmap(NULL, *len ? *len : 1, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

static int flags_of(const char *m)
{
	int acc = strncmp(m, "rw", 2) == 0 ? O_RDWR : m[0] == 'w' ? O_WRONLY : O_RDONLY;

	return acc | (strchr(m, 'n') ? O_NONBLOCK : 0);
}

/* Wait for events on the handle's descriptor (non-blocking mode). */
static void wait_fd(struct mmapfs_chan *c, short events)
{
	struct pollfd p = { .fd = mmapfs_fd(c), .events = events };

	poll(&p, 1, 1000);
}

static int cmd_write(const char *chan, const char *src, bool nb)
{
	struct mmapfs_chan *c = mmapfs_open(chan, O_WRONLY | (nb ? O_NONBLOCK : 0));
	size_t len, done = 0;
	uint8_t *data = load(src, &len);

	if (!c || !data)
		return die("open");
	while (done < len) {
		size_t n = random_size();
		ssize_t w = mmapfs_write(c, data + done, n < len - done ? n : len - done);

		if (w < 0 && nb && errno == EAGAIN) {
			wait_fd(c, POLLOUT);
			continue;
		}
		if (w <= 0)
			return die("write");
		done += (size_t)w;
	}
	if (mmapfs_close(c) < 0)
		return die("close");
	printf("ok %zu\n", done);
	return 0;
}

static int cmd_read(const char *chan, const char *src, bool zc, bool nb)
{
	struct mmapfs_chan *c = mmapfs_open(chan, O_RDONLY | (nb ? O_NONBLOCK : 0));
	size_t len, got = 0;
	uint8_t *want = load(src, &len);
	static uint8_t buf[1 << 20];

	if (!c || !want)
		return die("open");
	for (;;) {
		size_t max = random_size();
		const void *p = buf;
		ssize_t n;

		n = zc ? mmapfs_read_begin(c, &p, max) : mmapfs_read(c, buf, max);
		if (n < 0 && nb && errno == EAGAIN) {
			wait_fd(c, POLLIN);
			continue;
		}
		if (n < 0)
			return die("read");
		if (n == 0)
			break;
		if (got + (size_t)n > len || memcmp(p, want + got, (size_t)n) != 0) {
			printf("mismatch at byte %zu (%zd bytes read)\n", got, n);
			return 1;
		}
		if (zc) {
			n = (ssize_t)(next() % 4 ? (size_t)n : next() % ((size_t)n + 1));
			if (mmapfs_read_end(c, (size_t)n) < 0)
				return die("read_end");
		}
		got += (size_t)n;
	}
	if (got != len) {
		printf("short: %zu of %zu bytes\n", got, len);
		return 1;
	}
	if (mmapfs_close(c) < 0)
		return die("close");
	printf("ok %zu\n", got);
	return 0;
}

static int cmd_open(const char *chan, const char *mode, bool hold)
{
	struct mmapfs_chan *c = mmapfs_open(chan, flags_of(mode));
	char b[64];

	if (!c) {
		printf("%s\n", strerrorname_np(errno));
		return hold;
	}
	printf(hold ? "open\n" : "ok\n");
	fflush(stdout);
	while (hold && read(STDIN_FILENO, b, sizeof(b)) > 0)
		;
	return mmapfs_close(c) < 0 ? die("close") : 0;
}

static int cmd_put(const char *chan, const char *text)
{
	struct mmapfs_chan *c = mmapfs_open(chan, O_WRONLY);
	size_t len = strlen(text);
	char b[64];

	if (!c)
		return die("open");
	if (mmapfs_write(c, text, len) != (ssize_t)len)
		return die("write");
	printf("written\n");
	while (read(STDIN_FILENO, b, sizeof(b)) > 0)
		;
	if (mmapfs_close(c) < 0)
		return die("close");
	printf("ok %zu\n", len);
	return 0;
}

static int cmd_error(const char *chan, const char *mode)
{
	struct mmapfs_chan *c = mmapfs_open(chan, flags_of(mode));
	static char buf[65536];
	ssize_t n;

	if (!c)
		return die("open");
	printf("open\n");
	fflush(stdout);
	do
		n = mode[0] == 'w' ? mmapfs_write(c, buf, sizeof(buf))
				   : mmapfs_read(c, buf, sizeof(buf));
	while (n > 0);
	printf("%s\n", n == 0 ? "eof" : strerrorname_np(errno));
	mmapfs_close(c);
	return 0;
}

static sigjmp_buf back;

static void own_handler(int sig)
{
	siglongjmp(back, 1);
}

/* The program's SIGBUS handler, installed before the library's, still
 * gets the faults that are not the library's. */
static int cmd_sigbus(const char *chan)
{
	struct sigaction sa = { .sa_handler = own_handler };
	struct mmapfs_chan *c;
	volatile uint8_t *m;
	int fd;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		return die("sigaction");
	c = mmapfs_open(chan, O_RDONLY);
	if (!c)
		return die("open");
	fd = memfd_create("libtest", 0);
	if (fd < 0 || ftruncate(fd, 4096) < 0)
		return die("memfd");
	m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED || ftruncate(fd, 0) < 0)
		return die("mmap");
	if (sigsetjmp(back, 1) == 0) {
		m[0] = 1;	/* faults: the page is past the end of the file */
		printf("no fault\n");
		return 1;
	}
	printf("chained\n");
	return mmapfs_close(c) < 0 ? die("close") : 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 2 ? argv[1] : "";
	bool zc = false, nb = false;

	for (int i = 5; i < argc; i++) {
		zc |= strcmp(argv[i], "zc") == 0;
		nb |= strcmp(argv[i], "nb") == 0;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 5)
		rng = strtoull(argv[4], NULL, 0);
	if (strcmp(cmd, "write") == 0 && argc >= 5)
		return cmd_write(argv[2], argv[3], nb);
	if (strcmp(cmd, "read") == 0 && argc >= 5)
		return cmd_read(argv[2], argv[3], zc, nb);
	if ((strcmp(cmd, "open") == 0 || strcmp(cmd, "hold") == 0) && argc == 4)
		return cmd_open(argv[2], argv[3], cmd[0] == 'h');
	if (strcmp(cmd, "put") == 0 && argc == 4)
		return cmd_put(argv[2], argv[3]);
	if (strcmp(cmd, "error") == 0 && argc == 4)
		return cmd_error(argv[2], argv[3]);
	if (strcmp(cmd, "sigbus") == 0 && argc == 3)
		return cmd_sigbus(argv[2]);
	fprintf(stderr, "usage: see the head of mmapfs-libtest.c\n");
	return 2;
}
