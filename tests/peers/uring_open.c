/* A FIFO opened through io_uring (IORING_OP_OPENAT or OPENAT2), then read
 * to its end or written from stdin, as tests/py/test_fifo.py's peer:
 *
 *   uring_open openat|openat2 r|w PATH
 *
 * r: copies what it reads to stdout; w: copies stdin into the FIFO.
 * Exit 0, or 1 with the open's error on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct open_how how = { 0 };
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct io_uring ring;
	char buf[65536];
	ssize_t n;
	int fd, in, out;

	if (argc != 4 || (argv[2][0] != 'r' && argv[2][0] != 'w')) {
		fprintf(stderr, "usage: uring_open openat|openat2 r|w PATH\n");
		return 2;
	}
	how.flags = (argv[2][0] == 'r' ? O_RDONLY : O_WRONLY) | O_CLOEXEC;
	if (io_uring_queue_init(4, &ring, 0) < 0) {
		perror("io_uring_queue_init");
		return 1;
	}
	sqe = io_uring_get_sqe(&ring);
	if (strcmp(argv[1], "openat2") == 0)
		io_uring_prep_openat2(sqe, AT_FDCWD, argv[3], &how);
	else
		io_uring_prep_openat(sqe, AT_FDCWD, argv[3], (int)how.flags, 0);
	if (io_uring_submit(&ring) != 1 || io_uring_wait_cqe(&ring, &cqe) < 0) {
		perror("io_uring");
		return 1;
	}
	fd = cqe->res;
	io_uring_cqe_seen(&ring, cqe);
	io_uring_queue_exit(&ring);
	if (fd < 0) {
		fprintf(stderr, "uring_open: %s: %s\n", argv[3], strerror(-fd));
		return 1;
	}
	in = argv[2][0] == 'r' ? fd : 0;
	out = argv[2][0] == 'r' ? 1 : fd;
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n) {
			perror("write");
			return 1;
		}
	if (n < 0) {
		perror("read");
		return 1;
	}
	return close(fd) < 0;
}
