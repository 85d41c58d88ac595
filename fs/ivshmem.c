/* ivshmem doorbells (docs/ivshmem.md, "Doorbells"): wake-ups across a VM.
 *
 * Host: the daemon is the ivshmem server that QEMU's ivshmem-doorbell
 * device connects to (QEMU's docs/specs/ivshmem-spec.rst; Debian ships no
 * ivshmem-server). It listens on a unix socket and gives each client that
 * connects, in 8-byte little-endian messages: the protocol version (0),
 * the client's id (1, 2, ...; 0 is the daemon's own), -1 with the memory
 * file's descriptor, each other peer's id with one eventfd per vector (the
 * daemon's first), then its own id with its own eventfds; the clients
 * already there get the newcomer's id with its eventfds, and an id without
 * a descriptor when a client leaves. A guest rings peer 0 through its
 * Doorbell register: QEMU writes the daemon's eventfd, which this file's
 * thread waits on beside its sockets, and kicks the ticker (event.c),
 * which looks at the waits again. The daemon rings a guest by writing that
 * guest's eventfd (QEMU raises its MSI-X vector). Clients send nothing in
 * this protocol: whatever one sends is read and thrown away, and one that
 * keeps sending, or whose socket will not take a message at once, is
 * dropped. No FUSE worker ever waits here.
 *
 * Guest: the daemon rings the host through the Doorbell register of the
 * device's BAR0 (sysfs resource0, mapped: no driver needed), value
 * (peer << 16) | vector. It takes the host's rings, the device's MSI-X
 * vectors, where the device is bound to vfio-pci (a virtual IOMMU: VFIO's
 * no-IOMMU mode is not in Debian's kernel): VFIO signals an eventfd for
 * each, which a thread of this file waits on, and kicks the ticker as on
 * the host. Without it the guest's waits poll as before (docs/ivshmem.md
 * says why uio_pci_generic cannot: QEMU's ivshmem-doorbell has no INTx).
 *
 * Vectors: the server gives each peer ivshmem_vectors eventfds (QEMU's
 * vectors= of the device at least as many). Each daemon shares the vectors
 * it hears out between its doorbell channels (mmfs_ivshmem_vector); a
 * sleeper names its channel's in the trailer (core/stream.c), and ring()
 * gets the vector the peer named.
 *
 * Host, joining an existing server instead (ivshmem_client: QEMU's
 * contrib/ivshmem-server, or another mmapfs): the daemon is one of its
 * clients, as QEMU is. It reads the setup (version, its id, the memory,
 * whose file its declared areas must be) before it mounts, and the rest,
 * the peers' eventfds (which it rings) and its own (which it waits on),
 * in its thread; every message is checked, and descriptors where none
 * belong are closed.
 *
 * Watch it work: mmapfs -d with ivshmem_server logs each client's coming
 * and going; a doorbell channel's status counts the rings both ways. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fs.h"

#define IVS_VECTORS_MAX MM_IVSHMEM_VECTORS_MAX	/* eventfds (MSI-X vectors)
							 * a peer, at most */
#define IVS_CLIENTS_MAX 16	/* QEMUs connected at once */
#define IVS_JUNK_MAX 4096	/* bytes a client may send before it is dropped */
#define IVS_REG_IVPOSITION 2	/* BAR0's registers, as 32-bit words */
#define IVS_REG_DOORBELL 3
#define IVS_ID_MAX 65535	/* the Doorbell register's 16 bits */

struct ivs_client {
	int sock;			/* -1: a free slot */
	unsigned id;
	unsigned nfds;
	int fds[IVS_VECTORS_MAX];	/* its eventfds, one a vector: ring them */
	size_t junk;			/* bytes it sent */
	bool ready;			/* lock: told everything, may be rung */
};

struct ivshmem {
	struct mm_bell bell;		/* first: what the channels hold */
	struct mmfs *fs;
	bool host;
	bool client;			/* host: a client of another server */
	int csock;			/* client: its connection, or -1 */
	int64_t pending;		/* client: bytes of a message so far */
	uint8_t msg[8];
	int msg_fd;
	/* host, fixed */
	char *path;			/* the socket, unlinked at the end */
	dev_t sock_dev;
	ino_t sock_ino;
	int listen;
	int memfd;			/* the memory QEMU gets */
	dev_t mem_dev;
	ino_t mem_ino;
	int stop;			/* an eventfd: the thread ends */
	pthread_t thread;
	bool running;
	/* host: the clients' table, changed by the thread only, under lock;
	 * ring() reads it under lock */
	pthread_mutex_t lock;
	struct ivs_client clients[IVS_CLIENTS_MAX];
	unsigned next_id;		/* the thread's */
	/* guest, fixed */
	char *device;			/* realpath of the PCI device */
	volatile uint32_t *regs;	/* BAR0, mapped */
	size_t regs_len;
	uint32_t doorbell;		/* (peer << 16) | vector */
	int container, group, vdev;	/* VFIO, or -1 */
	/* the vectors we hear, an eventfd each: the server's own (peer 0's),
	 * a client's own as the server sends them (nvec then atomic: the
	 * thread's, counted on by status), the guest's VFIO gives for its
	 * MSI-X vectors; shared out between the channels by next_vector */
	int own[IVS_VECTORS_MAX];
	unsigned nvec;
	unsigned next_vector;		/* atomic */
	/* atomic */
	uint64_t rung, heard, heard_v[IVS_VECTORS_MAX];
	unsigned peers;			/* server: clients; guest, client: our id */
	unsigned peers_n;		/* client: peers we may ring */
};

static struct ivshmem *of_bell(const struct mm_bell *b)
{
	return (struct ivshmem *)(void *)b;	/* bell is the first member */
}

/* ---- ringing ---- */

/* vector: what the peer's trailer word asks for; one the peer does not
 * have is vector 0, which every mmapfs hears */
static void host_ring(const struct mm_bell *b, unsigned vector)
{
	struct ivshmem *v = of_bell(b);
	uint64_t one = 1;

	pthread_mutex_lock(&v->lock);
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++) {
		struct ivs_client *c = &v->clients[i];

		/* nonblocking: a counter full to its top already says "rung" */
		if (c->ready && write(c->fds[vector < c->nfds ? vector : 0], &one,
				      sizeof(one)) == sizeof(one))
			__atomic_add_fetch(&v->rung, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&v->lock);
}

static void guest_ring(const struct mm_bell *b, unsigned vector)
{
	struct ivshmem *v = of_bell(b);

	/* QEMU ignores a vector the host does not have */
	v->regs[IVS_REG_DOORBELL] = v->doorbell | (vector <= IVS_ID_MAX ? vector : 0);
	__atomic_add_fetch(&v->rung, 1, __ATOMIC_RELAXED);
}

/* One of our vectors rang (its eventfd k readable): count it, and have
 * the ticker look at the waits. */
static void heard(struct ivshmem *v, int fd, unsigned k)
{
	uint64_t count;

	if (read(fd, &count, sizeof(count)) != sizeof(count))
		return;
	__atomic_add_fetch(&v->heard, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&v->heard_v[k], 1, __ATOMIC_RELAXED);
	mmfs_ticker_kick(v->fs);
}

/* ---- the server's messages ---- */

/* One message: v, with fd if fd >= 0. Never waits: a client whose socket
 * cannot take it now is not reading, and is dropped. 0 or -errno. */
static int send_msg(int sock, int64_t v, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	uint64_t le = htole64((uint64_t)v);
	struct iovec iov = { &le, sizeof(le) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	ssize_t n;

	if (fd >= 0) {
		memset(&u, 0, sizeof(u));
		m.msg_control = u.buf;
		m.msg_controllen = sizeof(u.buf);
		cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	n = sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	return n == sizeof(le) ? 0 : -EAGAIN;
}

/* A peer's n eventfds, one message each. */
static int send_peer(int sock, unsigned id, const int *fds, unsigned n)
{
	int r = 0;

	for (unsigned k = 0; k < n && r == 0; k++)
		r = send_msg(sock, id, fds[k]);
	return r;
}

static void close_client(struct ivs_client *c)
{
	if (c->sock >= 0)
		close(c->sock);
	for (unsigned k = 0; k < IVS_VECTORS_MAX; k++) {
		if (c->fds[k] >= 0)
			close(c->fds[k]);
		c->fds[k] = -1;
	}
	c->nfds = 0;
	c->sock = -1;
	c->id = 0;
	c->junk = 0;
	c->ready = false;
}

/* Drop client c (why: for the log) and tell the others; one that cannot
 * be told goes too. The thread's. */
static void drop(struct ivshmem *v, struct ivs_client *c, const char *why)
{
	unsigned id = c->id;
	bool was_ready;

	pthread_mutex_lock(&v->lock);
	was_ready = c->ready;
	c->ready = false;		/* ring() no longer writes its fds */
	pthread_mutex_unlock(&v->lock);
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: ivshmem %s: peer %u %s\n", v->path, id, why);
	close_client(c);
	if (!was_ready)
		return;			/* nobody was told of it */
	__atomic_sub_fetch(&v->peers, 1, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++) {
		struct ivs_client *o = &v->clients[i];

		if (o->ready && send_msg(o->sock, id, -1) < 0)
			drop(v, o, "dropped: its socket takes no more messages");
	}
}

static bool id_used(const struct ivshmem *v, unsigned id)
{
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++)
		if (v->clients[i].sock >= 0 && v->clients[i].id == id)
			return true;
	return false;
}

/* A new client: an id, its eventfds, and everything it must be told. */
static void join(struct ivshmem *v)
{
	int sock = accept4(v->listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	struct ivs_client *c = NULL;
	int r = 0;

	if (sock < 0) {
		/* out of descriptors or memory: the listening socket stays
		 * readable, so wait a little rather than spin */
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
			usleep(100000);
		return;
	}
	for (unsigned i = 0; i < IVS_CLIENTS_MAX && !c; i++)
		if (v->clients[i].sock < 0)
			c = &v->clients[i];
	if (!c) {
		fuse_log(FUSE_LOG_WARNING, "mmapfs: ivshmem %s: a client refused: %d are "
			 "connected already\n", v->path, IVS_CLIENTS_MAX);
		close(sock);
		return;
	}
	do
		v->next_id = v->next_id >= IVS_ID_MAX ? 1 : v->next_id + 1;
	while (id_used(v, v->next_id));
	c->sock = sock;
	c->id = v->next_id;
	c->junk = 0;
	c->nfds = v->nvec;
	for (unsigned k = 0; k < c->nfds; k++)
		if ((c->fds[k] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
			r = -errno;
	if (r < 0) {
		fuse_log(FUSE_LOG_ERR, "mmapfs: ivshmem %s: eventfd: %s\n", v->path,
			 strerror(-r));
		close_client(c);
		return;
	}
	/* the protocol's order: version, id, memory, the others, its own */
	r = send_msg(sock, 0, -1);
	if (r == 0)
		r = send_msg(sock, c->id, -1);
	if (r == 0)
		r = send_msg(sock, -1, v->memfd);
	if (r == 0)
		r = send_peer(sock, 0, v->own, v->nvec);
	for (unsigned i = 0; i < IVS_CLIENTS_MAX && r == 0; i++)
		if (v->clients[i].ready)
			r = send_peer(sock, v->clients[i].id, v->clients[i].fds, v->nvec);
	if (r == 0)
		r = send_peer(sock, c->id, c->fds, c->nfds);
	if (r < 0) {
		drop(v, c, "went away during its setup");
		return;
	}
	/* ready before the others are told: one dropped meanwhile is told
	 * to it as gone */
	pthread_mutex_lock(&v->lock);
	c->ready = true;
	pthread_mutex_unlock(&v->lock);
	__atomic_add_fetch(&v->peers, 1, __ATOMIC_RELAXED);
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: ivshmem %s: peer %u joined\n", v->path, c->id);
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++) {
		struct ivs_client *o = &v->clients[i];

		if (o != c && o->ready && send_peer(o->sock, c->id, c->fds, c->nfds) < 0)
			drop(v, o, "dropped: its socket takes no more messages");
	}
}

/* A client's socket is readable or closed: what it sends is thrown away. */
static void hear_client(struct ivshmem *v, struct ivs_client *c, short revents)
{
	char buf[256];
	ssize_t n;

	if (revents & POLLIN) {
		/* recv, not recvmsg: descriptors it may have sent are closed */
		n = recv(c->sock, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0) {
			c->junk += (size_t)n;
			if (c->junk > IVS_JUNK_MAX)
				drop(v, c, "dropped: it sends what the protocol has not");
			return;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
	}
	drop(v, c, "left");
}

static void *serve(void *arg)
{
	struct ivshmem *v = arg;
	struct pollfd p[2 + IVS_VECTORS_MAX + IVS_CLIENTS_MAX];
	struct ivs_client *who[IVS_CLIENTS_MAX];

	for (;;) {
		unsigned n = 0, nc = 0, first;

		p[n++] = (struct pollfd){ .fd = v->stop, .events = POLLIN };
		p[n++] = (struct pollfd){ .fd = v->listen, .events = POLLIN };
		for (unsigned k = 0; k < v->nvec; k++)
			p[n++] = (struct pollfd){ .fd = v->own[k], .events = POLLIN };
		first = n;
		for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++)
			if (v->clients[i].sock >= 0) {
				who[nc++] = &v->clients[i];
				p[n++] = (struct pollfd){ .fd = v->clients[i].sock,
							  .events = POLLIN };
			}
		if (poll(p, n, -1) < 0)
			continue;	/* EINTR */
		if (p[0].revents)
			break;
		for (unsigned k = 0; k < v->nvec; k++)
			if (p[2 + k].revents & POLLIN)
				heard(v, v->own[k], k);
		for (unsigned i = 0; i < nc; i++)
			if (p[first + i].revents && who[i]->sock == p[first + i].fd)
				hear_client(v, who[i], p[first + i].revents);
		if (p[1].revents & POLLIN)
			join(v);
	}
	return NULL;
}

/* ---- set-up ---- */

static bool power_of_two(uint64_t x)
{
	return x && !(x & (x - 1));
}

/* The listening socket at path: a stale one (nobody answers) is replaced,
 * a live one or another kind of file is refused. 0 or -errno. */
static int listen_at(struct ivshmem *v, const char *path, gid_t group, struct mm_err *err)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat st;
	int s, r;

	if (strlen(path) >= sizeof(a.sun_path))
		return mm_fail(err, -ENAMETOOLONG, "ivshmem_server %s: longer than a unix "
			       "socket's path may be (%zu)", path, sizeof(a.sun_path) - 1);
	memcpy(a.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return mm_fail(err, -EEXIST, "ivshmem_server %s: exists and is not a socket",
				       path);
		s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			return mm_fail(err, -errno, "ivshmem_server %s: socket: %s", path,
				       strerror(errno));
		r = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : -errno;
		close(s);
		if (r != -ECONNREFUSED)
			return mm_fail(err, -EADDRINUSE, "ivshmem_server %s: another server "
				       "answers there", path);
		unlink(path);	/* a dead server's */
	}
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return mm_fail(err, -errno, "ivshmem_server %s: socket: %s", path,
			       strerror(errno));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		r = -errno;
		close(s);
		return mm_fail(err, r, "ivshmem_server %s: %s", path, strerror(-r));
	}
	/* QEMU's user (libvirt-qemu) reaches it through a group */
	if ((group != (gid_t)-1 && (chown(path, (uid_t)-1, group) < 0 || chmod(path, 0660) < 0)) ||
	    listen(s, 8) < 0 || lstat(path, &st) < 0) {
		r = -errno;
		close(s);
		unlink(path);
		return mm_fail(err, r, "ivshmem_server %s: %s", path, strerror(-r));
	}
	v->listen = s;
	v->sock_dev = st.st_dev;
	v->sock_ino = st.st_ino;
	return 0;
}

static int host_setup(struct ivshmem *v, const struct mm_config *c, struct mm_err *err)
{
	struct stat st;
	int r;

	v->memfd = open(c->ivshmem_memory, O_RDWR | O_CLOEXEC);
	if (v->memfd < 0)
		return mm_fail(err, -errno, "ivshmem_memory %s: %s", c->ivshmem_memory,
			       strerror(errno));
	if (fstat(v->memfd, &st) < 0)
		return mm_fail(err, -errno, "ivshmem_memory %s: %s", c->ivshmem_memory,
			       strerror(errno));
	/* QEMU makes it a PCI BAR, whose size is a power of two (QEMU exits
	 * on another) */
	if (!S_ISREG(st.st_mode) || !power_of_two((uint64_t)st.st_size) ||
	    (uint64_t)st.st_size < MM_AREA_MIN)
		return mm_fail(err, -EINVAL, "ivshmem_memory %s: expected a regular file whose "
			       "size is a power of two from 64K (truncate -s 256M %s), not %s of "
			       "%lld bytes", c->ivshmem_memory, c->ivshmem_memory,
			       S_ISREG(st.st_mode) ? "a file" : "another kind of file",
			       (long long)st.st_size);
	v->mem_dev = st.st_dev;
	v->mem_ino = st.st_ino;
	v->nvec = c->ivshmem_vectors ? c->ivshmem_vectors : 1;
	for (unsigned k = 0; k < v->nvec; k++)
		if ((v->own[k] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
			return mm_fail(err, -errno, "ivshmem_server: eventfd: %s", strerror(errno));
	if (!(v->path = strdup(c->ivshmem_server)))
		return mm_fail(err, -ENOMEM, "out of memory");
	r = listen_at(v, c->ivshmem_server, c->ivshmem_group, err);
	if (r < 0)
		return r;
	v->bell.ring = host_ring;
	return 0;
}

/* A sysfs file of the device, its first line. */
static int sysfs_line(const char *dir, const char *name, char *buf, size_t n)
{
	char path[PATH_MAX];
	FILE *f;
	int r = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (!(f = fopen(path, "re")))
		return -errno;
	if (!fgets(buf, (int)n, f))
		r = -EIO;
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return r;
}

static int guest_vfio(struct ivshmem *v, struct mm_err *err);

static int guest_setup(struct ivshmem *v, const struct mm_config *c, struct mm_err *err)
{
	char path[PATH_MAX], vendor[16] = "", device[16] = "";
	long page = sysconf(_SC_PAGESIZE);
	void *p;
	int fd, r;

	if (!(v->device = realpath(c->ivshmem_device, NULL)))
		return mm_fail(err, -errno, "ivshmem_device %s: %s", c->ivshmem_device,
			       strerror(errno));
	if (sysfs_line(v->device, "vendor", vendor, sizeof(vendor)) < 0 ||
	    sysfs_line(v->device, "device", device, sizeof(device)) < 0 ||
	    strcmp(vendor, "0x1af4") != 0 || strcmp(device, "0x1110") != 0)
		return mm_fail(err, -ENODEV, "ivshmem_device %s: not an ivshmem device "
			       "(vendor:device %s:%s, not 0x1af4:0x1110)", c->ivshmem_device,
			       vendor[0] ? vendor : "?", device[0] ? device : "?");
	snprintf(path, sizeof(path), "%s/resource0", v->device);
	fd = open(path, O_RDWR | O_CLOEXEC | O_SYNC);
	if (fd < 0)
		return mm_fail(err, -errno, "ivshmem_device: %s: %s", path, strerror(errno));
	v->regs_len = page > 256 ? (size_t)page : 256;
	p = mmap(NULL, v->regs_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return mm_fail(err, -errno, "ivshmem_device: %s: mmap: %s", path,
			       strerror(errno));
	v->regs = p;
	v->doorbell = c->ivshmem_peer << 16;	/* | the vector */
	v->peers = v->regs[IVS_REG_IVPOSITION];	/* our own id, shown in status */
	v->bell.ring = guest_ring;
	r = guest_vfio(v, err);
	return r < 0 ? r : 0;
}

/* The guest's interrupts: the device's MSI-X vectors through VFIO, each
 * to an eventfd, where the device is bound to vfio-pci. 0 (set up), 1 (not
 * bound: the guest polls), or -errno with err saying why. */
static int guest_vfio(struct ivshmem *v, struct mm_err *err)
{
	union {
		char buf[sizeof(struct vfio_irq_set) + IVS_VECTORS_MAX * sizeof(int32_t)];
		struct vfio_irq_set set;
	} u;
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg),
					.index = VFIO_PCI_CONFIG_REGION_INDEX };
	char path[PATH_MAX], link[PATH_MAX], *base;
	const char *dev = strrchr(v->device, '/') + 1;
	uint16_t cmd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/driver", v->device);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0 || (link[n] = '\0', strcmp(basename(link), "vfio-pci") != 0))
		return 1;
	snprintf(path, sizeof(path), "%s/iommu_group", v->device);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return mm_fail(err, -ENODEV, "ivshmem_device %s: bound to vfio-pci but in no IOMMU "
			       "group (a virtual IOMMU, intel_iommu=on?)", v->device);
	link[n] = '\0';
	base = basename(link);
	snprintf(path, sizeof(path), "/dev/vfio/%s", base);
	if ((v->group = open(path, O_RDWR | O_CLOEXEC)) < 0 ||
	    (v->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC)) < 0)
		return mm_fail(err, -errno, "ivshmem_device %s: %s: %s", v->device,
			       v->group < 0 ? path : "/dev/vfio/vfio", strerror(errno));
	if (ioctl(v->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
	    ioctl(v->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
		return mm_fail(err, -ENOTSUP, "ivshmem_device %s: VFIO has no type 1 IOMMU",
			       v->device);
	if (ioctl(v->group, VFIO_GROUP_GET_STATUS, &gs) < 0 ||
	    !(gs.flags & VFIO_GROUP_FLAGS_VIABLE))
		return mm_fail(err, -EBUSY, "ivshmem_device %s: IOMMU group %s is not viable: "
			       "bind its other devices to vfio-pci too, or to no driver",
			       v->device, base);
	if (ioctl(v->group, VFIO_GROUP_SET_CONTAINER, &v->container) < 0 ||
	    ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0 ||
	    (v->vdev = ioctl(v->group, VFIO_GROUP_GET_DEVICE_FD, dev)) < 0)
		return mm_fail(err, -errno, "ivshmem_device %s: VFIO: %s", v->device,
			       strerror(errno));
	if (ioctl(v->vdev, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0 || ii.count < 1)
		return mm_fail(err, -ENOTSUP, "ivshmem_device %s: no MSI-X vector (not an "
			       "ivshmem-doorbell device?)", v->device);
	/* MSI-X messages are the device's writes: bus mastering on */
	if (ioctl(v->vdev, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0 ||
	    pread(v->vdev, &cmd, sizeof(cmd), (off_t)cfg.offset + PCI_COMMAND) != sizeof(cmd))
		return mm_fail(err, -EIO, "ivshmem_device %s: its PCI command register: %s",
			       v->device, strerror(errno));
	cmd |= PCI_COMMAND_MASTER;
	if (pwrite(v->vdev, &cmd, sizeof(cmd), (off_t)cfg.offset + PCI_COMMAND) != sizeof(cmd))
		return mm_fail(err, -EIO, "ivshmem_device %s: bus mastering: %s", v->device,
			       strerror(errno));
	/* QEMU's vectors= of the device: as many as it has, up to ours */
	v->nvec = ii.count < IVS_VECTORS_MAX ? ii.count : IVS_VECTORS_MAX;
	memset(&u, 0, sizeof(u));
	for (unsigned k = 0; k < v->nvec; k++) {
		int32_t fd = v->own[k] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

		if (fd < 0)
			return mm_fail(err, -errno, "ivshmem_device: eventfd: %s", strerror(errno));
		memcpy(u.set.data + k * sizeof(fd), &fd, sizeof(fd));
	}
	u.set.argsz = (uint32_t)(sizeof(u.set) + v->nvec * sizeof(int32_t));
	u.set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	u.set.index = VFIO_PCI_MSIX_IRQ_INDEX;
	u.set.start = 0;
	u.set.count = v->nvec;
	if (ioctl(v->vdev, VFIO_DEVICE_SET_IRQS, &u.set) < 0)
		return mm_fail(err, -errno, "ivshmem_device %s: MSI-X through VFIO: %s", v->device,
			       strerror(errno));
	v->bell.hears = true;
	return 0;
}

/* The guest's thread: the host's rings, through VFIO's eventfds. */
static void *hear(void *arg)
{
	struct ivshmem *v = arg;
	struct pollfd p[1 + IVS_VECTORS_MAX] = { { .fd = v->stop, .events = POLLIN } };

	for (unsigned k = 0; k < v->nvec; k++)
		p[1 + k] = (struct pollfd){ .fd = v->own[k], .events = POLLIN };
	for (;;) {
		if (poll(p, 1 + v->nvec, -1) < 0)
			continue;	/* EINTR */
		if (p[0].revents)
			break;
		for (unsigned k = 0; k < v->nvec; k++)
			if (p[1 + k].revents & POLLIN)
				heard(v, v->own[k], k);
	}
	return NULL;
}

/* ---- a client of an existing server ---- */

/* One message from the server: 1 and *val, *fd (-1 without) once whole,
 * 0 while only part of it came, -errno (-ECONNRESET: the server left).
 * Extra descriptors are closed. */
static int client_msg(struct ivshmem *v, int64_t *val, int *fd)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { v->msg + v->pending, sizeof(v->msg) - (size_t)v->pending };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf) };
	ssize_t n = recvmsg(v->csock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
		int fds[4];
		size_t k = cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS ?
			   (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int) : 0;

		if (k > 4)
			k = 4;

		memcpy(fds, CMSG_DATA(cm), k * sizeof(int));
		for (size_t i = 0; i < k; i++) {
			if (v->msg_fd < 0)
				v->msg_fd = fds[i];	/* one per message */
			else
				close(fds[i]);
		}
	}
	if (n == 0)
		return -ECONNRESET;
	v->pending += n;
	if (v->pending < (int64_t)sizeof(v->msg))
		return 0;
	memcpy(val, v->msg, sizeof(*val));
	*val = (int64_t)le64toh((uint64_t)*val);
	*fd = v->msg_fd;
	v->pending = 0;
	v->msg_fd = -1;
	return 1;
}

/* The setup's first three messages, waiting (before the mount: no FUSE
 * worker yet) at most 5 s: version 0, our id, the memory. */
static int client_setup(struct ivshmem *v, const struct mm_config *c, struct mm_err *err)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	const char *path = c->ivshmem_client;
	int64_t val;
	struct stat st;
	int fd, r;

	if (strlen(path) >= sizeof(a.sun_path))
		return mm_fail(err, -ENAMETOOLONG, "ivshmem_client %s: too long", path);
	memcpy(a.sun_path, path, strlen(path) + 1);
	if (!(v->path = strdup(path)))
		return mm_fail(err, -ENOMEM, "out of memory");
	v->csock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (v->csock < 0 || connect(v->csock, (struct sockaddr *)&a, sizeof(a)) < 0)
		return mm_fail(err, -errno, "ivshmem_client %s: %s", path, strerror(errno));
	for (int i = 0; i < 3; i++) {
		struct pollfd p = { .fd = v->csock, .events = POLLIN };

		do {
			if (poll(&p, 1, 5000) <= 0)
				return mm_fail(err, -ETIMEDOUT, "ivshmem_client %s: the server said "
					       "nothing for 5 s", path);
			r = client_msg(v, &val, &fd);
		} while (r == 0);
		if (r < 0)
			return mm_fail(err, r, "ivshmem_client %s: %s", path, strerror(-r));
		/* version 0 without a descriptor; an id 0..65535 without; -1 with */
		if ((i == 0 && (val != 0 || fd >= 0)) || (i == 1 && (val < 0 || val > IVS_ID_MAX ||
								    fd >= 0)) ||
		    (i == 2 && (val != -1 || fd < 0))) {
			if (fd >= 0)
				close(fd);
			return mm_fail(err, -EPROTO, "ivshmem_client %s: message %d is %lld%s: not "
				       "QEMU's ivshmem protocol, version 0", path, i + 1,
				       (long long)val, fd >= 0 ? " with a descriptor" : "");
		}
		if (i == 1)
			v->peers = (unsigned)val;	/* our id */
	}
	r = fstat(fd, &st);
	close(fd);
	if (r < 0)
		return mm_fail(err, -errno, "ivshmem_client %s: the memory: %s", path,
			       strerror(errno));
	v->mem_dev = st.st_dev;
	v->mem_ino = st.st_ino;
	v->bell.ring = host_ring;
	return 0;
}

/* A message after the setup: a peer's eventfd (ours: what we hear), or a
 * peer gone. */
static void client_hear(struct ivshmem *v, int64_t val, int fd)
{
	struct ivs_client *c = NULL, *free_slot = NULL;

	if (val < 0 || val > IVS_ID_MAX) {
		fuse_log(FUSE_LOG_WARNING, "mmapfs: ivshmem %s: the server sent %lld: ignored\n",
			 v->path, (long long)val);
		if (fd >= 0)
			close(fd);
		return;
	}
	if ((unsigned)val == v->peers) {		/* our own vectors */
		if (fd >= 0 && v->nvec < IVS_VECTORS_MAX) {
			v->own[v->nvec] = fd;
			__atomic_store_n(&v->nvec, v->nvec + 1, __ATOMIC_RELAXED);	/* status */
		} else if (fd >= 0) {
			close(fd);			/* more vectors than we use */
		}
		return;
	}
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++) {
		if (v->clients[i].nfds && v->clients[i].id == (unsigned)val)
			c = &v->clients[i];
		else if (!v->clients[i].nfds && !free_slot)
			free_slot = &v->clients[i];
	}
	if (fd < 0) {					/* a peer left */
		if (c) {
			pthread_mutex_lock(&v->lock);
			c->ready = false;
			pthread_mutex_unlock(&v->lock);
			close_client(c);
			__atomic_sub_fetch(&v->peers_n, 1, __ATOMIC_RELAXED);
			fuse_log(FUSE_LOG_NOTICE, "mmapfs: ivshmem %s: peer %lld left\n", v->path,
				 (long long)val);
		}
		return;
	}
	if (c) {			/* its next vector */
		pthread_mutex_lock(&v->lock);
		if (c->nfds < IVS_VECTORS_MAX)
			c->fds[c->nfds++] = fd;
		else
			close(fd);
		pthread_mutex_unlock(&v->lock);
		return;
	}
	if (!free_slot) {		/* no room: not rung */
		close(fd);
		return;
	}
	free_slot->id = (unsigned)val;
	pthread_mutex_lock(&v->lock);
	free_slot->fds[0] = fd;
	free_slot->nfds = 1;
	free_slot->ready = true;
	pthread_mutex_unlock(&v->lock);
	__atomic_add_fetch(&v->peers_n, 1, __ATOMIC_RELAXED);
	fuse_log(FUSE_LOG_NOTICE, "mmapfs: ivshmem %s: peer %lld joined\n", v->path,
		 (long long)val);
}

static void *serve_client(void *arg)
{
	struct ivshmem *v = arg;
	struct pollfd p[2 + IVS_VECTORS_MAX];

	for (;;) {
		unsigned n = 0, nvec = v->nvec;	/* this thread adds to it */

		p[n++] = (struct pollfd){ .fd = v->stop, .events = POLLIN };
		p[n++] = (struct pollfd){ .fd = v->csock, .events = POLLIN };
		for (unsigned k = 0; k < nvec; k++)
			p[n++] = (struct pollfd){ .fd = v->own[k], .events = POLLIN };
		if (poll(p, n, -1) < 0)
			continue;
		if (p[0].revents)
			break;
		for (unsigned k = 0; k < nvec; k++)
			if (p[2 + k].revents & POLLIN)
				heard(v, v->own[k], k);
		if (p[1].revents) {
			int64_t val;
			int fd, r;

			while ((r = client_msg(v, &val, &fd)) > 0)
				client_hear(v, val, fd);
			if (r < 0) {
				/* waits on the memory go on by polling (ivshmem_poll) */
				fuse_log(FUSE_LOG_WARNING, "mmapfs: ivshmem %s: the server left (%s): "
					 "no more doorbells\n", v->path, strerror(-r));
				close(v->csock);
				v->csock = -1;		/* poll ignores it from now on */
			}
		}
	}
	return NULL;
}

int mmfs_ivshmem_setup(struct mmfs *fs, struct mm_err *err)
{
	const struct mm_config *c = &fs->cfg;
	struct ivshmem *v;
	int r;

	if (!c->ivshmem_server && !c->ivshmem_device && !c->ivshmem_client)
		return 0;
	if (!(v = calloc(1, sizeof(*v))))
		return mm_fail(err, -ENOMEM, "out of memory");
	v->fs = fs;
	v->client = c->ivshmem_client != NULL;
	v->host = c->ivshmem_server != NULL || v->client;
	v->listen = v->memfd = v->stop = v->csock = v->msg_fd = -1;
	v->container = v->group = v->vdev = -1;
	for (unsigned k = 0; k < IVS_VECTORS_MAX; k++)
		v->own[k] = -1;
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++) {
		struct ivs_client *slot = &v->clients[i];

		slot->sock = -1;
		for (unsigned k = 0; k < IVS_VECTORS_MAX; k++)
			slot->fds[k] = -1;
	}
	pthread_mutex_init(&v->lock, NULL);
	fs->ivshmem = v;
	v->bell.hears = v->host;	/* the server thread hears the guests */
	r = v->client ? client_setup(v, c, err) : v->host ? host_setup(v, c, err) :
	    guest_setup(v, c, err);
	if (r == 0 && (v->stop = eventfd(0, EFD_CLOEXEC)) < 0)
		r = mm_fail(err, -errno, "ivshmem_server: eventfd: %s", strerror(errno));
	return r;
}

int mmfs_ivshmem_start(struct mmfs *fs)
{
	struct ivshmem *v = fs->ivshmem;
	int r;

	if (!v || (!v->host && !v->nvec))
		return 0;
	r = -pthread_create(&v->thread, NULL, v->client ? serve_client : v->host ? serve : hear,
			    v);
	v->running = r == 0;
	return r;
}

void mmfs_ivshmem_stop(struct mmfs *fs)
{
	struct ivshmem *v = fs->ivshmem;
	uint64_t one = 1;
	struct stat st;

	if (!v)
		return;
	if (v->running && write(v->stop, &one, sizeof(one)) == sizeof(one))
		pthread_join(v->thread, NULL);
	for (unsigned i = 0; i < IVS_CLIENTS_MAX; i++)
		close_client(&v->clients[i]);
	/* the socket, if it is still ours */
	if (v->csock >= 0)
		close(v->csock);
	if (v->msg_fd >= 0)
		close(v->msg_fd);
	if (v->listen >= 0 && lstat(v->path, &st) == 0 && st.st_dev == v->sock_dev &&
	    st.st_ino == v->sock_ino)
		unlink(v->path);
	if (v->listen >= 0)
		close(v->listen);
	if (v->memfd >= 0)
		close(v->memfd);
	if (v->stop >= 0)
		close(v->stop);
	if (v->regs)
		munmap((void *)v->regs, v->regs_len);
	/* VFIO's: the device's first, which ends its interrupts */
	if (v->vdev >= 0)
		close(v->vdev);
	for (unsigned k = 0; k < IVS_VECTORS_MAX; k++)
		if (v->own[k] >= 0)
			close(v->own[k]);
	if (v->group >= 0)
		close(v->group);
	if (v->container >= 0)
		close(v->container);
	pthread_mutex_destroy(&v->lock);
	free(v->path);
	free(v->device);
	free(v);
	fs->ivshmem = NULL;
}

unsigned mmfs_ivshmem_vector(struct mmfs *fs)
{
	struct ivshmem *v = fs->ivshmem;

	/* a client's vectors come after its channels: those name vector 0 */
	return v && !v->client && v->nvec > 1 ?
	       __atomic_fetch_add(&v->next_vector, 1, __ATOMIC_RELAXED) % v->nvec : 0;
}

const struct mm_bell *mmfs_ivshmem_bell(struct mmfs *fs, const char *file)
{
	struct ivshmem *v = fs->ivshmem;
	char copy[PATH_MAX], *dir;
	struct stat st;
	bool same;

	if (!v || !file)
		return NULL;
	if (v->host)
		return stat(file, &st) == 0 && st.st_dev == v->mem_dev &&
		       st.st_ino == v->mem_ino ? &v->bell : NULL;
	/* a BAR of the device: resource2 or resource2_wc in its directory */
	snprintf(copy, sizeof(copy), "%s", file);
	if (!(dir = realpath(dirname(copy), NULL)))
		return NULL;
	same = strcmp(dir, v->device) == 0;
	free(dir);
	return same ? &v->bell : NULL;
}

int mmfs_ivshmem_status(const struct mm_channel *mc, char *buf, size_t len)
{
	const struct mm_bell *b = mc->rd.bell ? mc->rd.bell : mc->wr.bell;
	unsigned vec = mc->opts.bell_vector;
	struct ivshmem *v;
	struct mmfs *fs;
	int n;

	if (!b || len == 0)
		return 0;
	v = of_bell(b);
	fs = v->fs;
	n = snprintf(buf, len, "doorbell=%s\n%s=%u\ndoorbell.rung=%llu\ndoorbell.heard=%llu\n"
		     "doorbell.poll=%s\ndoorbell.hears=%s\ndoorbell.vectors=%u\n"
		     "doorbell.vector=%u\ndoorbell.vector_heard=%llu\n",
		     v->client ? "ivshmem-client" : v->host ? "ivshmem-server" : "ivshmem-guest",
		     v->host && !v->client ? "doorbell.peers" : "doorbell.id",
		     __atomic_load_n(&v->peers, __ATOMIC_RELAXED),
		     (unsigned long long)__atomic_load_n(&v->rung, __ATOMIC_RELAXED),
		     (unsigned long long)__atomic_load_n(&v->heard, __ATOMIC_RELAXED),
		     fs->cfg.ivshmem_nopoll ? "off" : "on",
		     v->host ? "eventfd" : v->bell.hears ? "vfio-msix" : "no",
		     __atomic_load_n(&v->nvec, __ATOMIC_RELAXED), vec,
		     vec < IVS_VECTORS_MAX ? (unsigned long long)__atomic_load_n(
			     &v->heard_v[vec], __ATOMIC_RELAXED) : 0ULL);
	return n < 0 ? 0 : (size_t)n >= len ? (int)len - 1 : n;
}
