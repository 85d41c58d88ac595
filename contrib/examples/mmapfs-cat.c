/* mmapfs-cat: cat(1) over an mmapfs channel, through libmmapfs.
 *
 *   mmapfs-cat CHAN > out        read the channel's stream to its end
 *   mmapfs-cat -w CHAN < in      write standard input, then end the stream
 *
 * CHAN is a channel directory of a mount (MOUNTPOINT/NAME), ready. Build:
 *   cc mmapfs-cat.c $(pkg-config --cflags --libs mmapfs) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mmapfs.h>

static int out_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The channel to standard output, zero copy: the bytes go from the shared
 * area straight to write(2). */
static int cat_out(struct mmapfs_chan *c)
{
	const void *p;
	ssize_t n;

	while ((n = mmapfs_read_begin(c, &p, 1 << 20)) > 0) {
		if (out_all(STDOUT_FILENO, p, (size_t)n) < 0)
			return perror("mmapfs-cat: write"), 1;
		if (mmapfs_read_end(c, (size_t)n) < 0)
			return perror("mmapfs-cat"), 1;
	}
	if (n < 0)
		return perror("mmapfs-cat: read"), 1;
	return 0;
}

static int cat_in(struct mmapfs_chan *c)
{
	static char buf[1 << 20];
	ssize_t n;

	while ((n = read(STDIN_FILENO, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return perror("mmapfs-cat: read"), 1;
		if (mmapfs_write(c, buf, (size_t)n) != n)
			return perror("mmapfs-cat: write"), 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int wr = argc == 3 && strcmp(argv[1], "-w") == 0;
	struct mmapfs_chan *c;
	int r;

	if (argc != 2 + wr || argv[1 + wr][0] == '-') {
		fprintf(stderr, "usage: mmapfs-cat CHAN > out | mmapfs-cat -w CHAN < in\n");
		return 2;
	}
	c = mmapfs_open(argv[1 + wr], wr ? O_WRONLY : O_RDONLY);
	if (!c) {
		fprintf(stderr, "mmapfs-cat: %s: %s\n", argv[1 + wr], strerror(errno));
		return 1;
	}
	r = wr ? cat_in(c) : cat_out(c);
	if (mmapfs_close(c) < 0 && r == 0)
		r = (perror("mmapfs-cat: close"), 1);
	return r;
}
