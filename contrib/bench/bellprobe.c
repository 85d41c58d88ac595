/* bellprobe: the floor of a doorbell round trip across a VM, without
 * mmapfs. Runs in the guest on an ivshmem-doorbell device bound to vfio-pci
 * (docs/ivshmem.md, "Guest: what it needs"), whose mmapfs is stopped: it
 * takes the device's MSI-X vector 0 through VFIO, as mmapfs does, and
 * answers each interrupt by ringing PEER's vector 0 through the Doorbell
 * register of BAR0. The host side (tests/vm/vmtest.py, bench) joins the
 * host daemon's ivshmem server as a peer, rings the guest and times the
 * answer: what any user-space doorbell round trip costs on that VM, before
 * mmapfs adds its threads and its FUSE requests.
 *
 *   bellprobe /sys/bus/pci/devices/0000:00:05.0 PEER      (root; until killed)
 *
 * Built static (contrib/bench/meson.build), so that the VM test's busybox
 * guest can run it. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int fail(const char *what)
{
	fprintf(stderr, "bellprobe: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	union {
		char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
		struct vfio_irq_set set;
	} u;
	char path[PATH_MAX], link[PATH_MAX];
	struct vfio_region_info cfg = { .argsz = sizeof(cfg),
					.index = VFIO_PCI_CONFIG_REGION_INDEX };
	volatile uint32_t *regs;
	int container, group, dev, efd, fd;
	uint32_t bell;
	uint16_t cmd;
	uint64_t n;
	ssize_t k;

	if (argc != 3) {
		fprintf(stderr, "usage: bellprobe DEVICE_DIR PEER\n");
		return 2;
	}
	bell = (uint32_t)strtoul(argv[2], NULL, 0) << 16;	/* vector 0 */
	snprintf(path, sizeof(path), "%s/iommu_group", argv[1]);
	k = readlink(path, link, sizeof(link) - 1);
	if (k < 0)
		return fail(path);
	link[k] = '\0';
	snprintf(path, sizeof(path), "/dev/vfio/%s", basename(link));
	if ((group = open(path, O_RDWR)) < 0 || (container = open("/dev/vfio/vfio", O_RDWR)) < 0)
		return fail("/dev/vfio");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0 ||
	    ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0 ||
	    (dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, basename(argv[1]))) < 0)
		return fail("VFIO");
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0 ||
	    pread(dev, &cmd, sizeof(cmd), (off_t)cfg.offset + PCI_COMMAND) != sizeof(cmd))
		return fail("the command register");
	cmd |= PCI_COMMAND_MASTER;
	if (pwrite(dev, &cmd, sizeof(cmd), (off_t)cfg.offset + PCI_COMMAND) != sizeof(cmd))
		return fail("bus mastering");
	if ((efd = eventfd(0, 0)) < 0)
		return fail("eventfd");
	memset(&u, 0, sizeof(u));
	u.set.argsz = sizeof(u);
	u.set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	u.set.index = VFIO_PCI_MSIX_IRQ_INDEX;
	u.set.count = 1;
	memcpy(u.set.data, &efd, sizeof(efd));
	if (ioctl(dev, VFIO_DEVICE_SET_IRQS, &u.set) < 0)
		return fail("MSI-X");
	snprintf(path, sizeof(path), "%s/resource0", argv[1]);
	if ((fd = open(path, O_RDWR | O_SYNC)) < 0)
		return fail(path);
	regs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (regs == MAP_FAILED)
		return fail("mmap resource0");
	printf("bellprobe: ready\n");
	fflush(stdout);
	while (read(efd, &n, sizeof(n)) == sizeof(n))
		regs[3] = bell;		/* the Doorbell register */
	return fail("read");
}
