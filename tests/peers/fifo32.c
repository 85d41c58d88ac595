/* A 32-bit program at the FIFO entries (tests/py/test_fifo.py), built with
 * -m32 where the compiler can (Debian's gcc-multilib), without large-file
 * support, as old 32-bit programs are:
 *
 *   fifo32 stat PATH     lstat, then stat through the link: "link fifo"
 *   fifo32 w PATH        standard input into PATH (the entry `send`)
 *   fifo32 r PATH        PATH (the entry `recv`) to standard output
 *   fifo32 nb PATH       an O_NONBLOCK open for writing: "ok" or the errno's name
 *
 * Exit status 0, or 1 with the failed call on standard error. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int die(const char *what, const char *path)
{
	fprintf(stderr, "fifo32: %s %s: %s\n", what, path, strerror(errno));
	return 1;
}

static int copy(int from, int to)
{
	char buf[4096];
	ssize_t n;

	while ((n = read(from, buf, sizeof(buf))) > 0)
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(to, buf + off, (size_t)(n - off));

			if (w < 0)
				return -1;
			off += w;
		}
	return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	struct stat l, s;
	int fd;

	if (argc != 3)
		return fprintf(stderr, "usage: fifo32 stat|w|r|nb PATH\n"), 2;
	if (strcmp(argv[1], "stat") == 0) {
		if (lstat(argv[2], &l) < 0)
			return die("lstat", argv[2]);
		if (stat(argv[2], &s) < 0)
			return die("stat", argv[2]);
		printf("%s %s\n", S_ISLNK(l.st_mode) ? "link" : "other",
		       S_ISFIFO(s.st_mode) ? "fifo" : "other");
		return 0;
	}
	if (strcmp(argv[1], "nb") == 0) {
		fd = open(argv[2], O_WRONLY | O_NONBLOCK);
		printf("%s\n", fd >= 0 ? "ok" : errno == ENXIO ? "ENXIO" : strerror(errno));
		return 0;
	}
	fd = open(argv[2], argv[1][0] == 'w' ? O_WRONLY : O_RDONLY);
	if (fd < 0)
		return die("open", argv[2]);
	if (argv[1][0] == 'w' ? copy(0, fd) : copy(fd, 1))
		return die("copy", argv[2]);
	return close(fd) < 0 ? die("close", argv[2]) : 0;
}
