#!/bin/bash
# The VM test: mmapfs between a QEMU host and its guest over real
# ivshmem-plain devices (see vmtest.py). As root:
#
#   tests/vm/run.sh [MMAPFS]      default: build/fs/mmapfs, built if missing
#
# Installs the tools it needs if they are missing (QEMU, busybox-static,
# cpio), but not a kernel: the guest's is Debian's, whose package
# (linux-image-amd64's dependency, linux-image-VERSION-amd64) is downloaded
# with apt-get download and unpacked with dpkg-deb into build-vm/VERSION/
# (VMTEST_KERNEL_DIR=DIR: DIR/VERSION), kept for the next run: vmlinuz,
# fuse.ko and VFIO's modules (the guest takes its doorbell's interrupts
# through vfio-pci), nothing else, and nothing on this host's /boot or
# /lib/modules.
# Then it runs vmtest.py in a scratch directory /tmp/vmtest-XXXXXX. Whatever happens
# (a failure, a signal, the time limit), the trap leaves nothing behind:
# QEMU killed, mounts lazily unmounted, /dev/shm files and the scratch
# directory removed (VMTEST_KEEP=1 keeps the directory and its logs).
# Environment: VMTEST_ACCEL=auto|kvm|tcg, VMTEST_LAYOUT=two-devices|one-device|doorbell,
# VMTEST_BENCH=1 (contrib/bench/ivshmem-rtt.sh).
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
	echo "tests/vm/run.sh: run as root: it installs QEMU, boots it, mounts FUSE" >&2
	exit 1
fi

need=()
for p in qemu-system-x86 busybox-static cpio python3 fuse3; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The guest's kernel, unpacked (not installed) into kdir/VERSION once.
kdir=${VMTEST_KERNEL_DIR:-$top/build-vm}
kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
	apt-get update -q
	pkg=$(kernel_pkg)
fi
[ -n "$pkg" ] || { echo "tests/vm/run.sh: apt knows no linux-image-amd64" >&2; exit 1; }
kroot=$kdir/$pkg
# (unpacked again where an earlier run took fuse.ko alone)
if [ ! -e "$kroot/.unpacked" ] || [ -z "$(find "$kroot" -name 'vfio-pci.ko*' -print -quit)" ]
then
	echo "tests/vm/run.sh: unpacking $pkg into $kroot (apt-get download, dpkg-deb)"
	rm -rf "$kroot" "$kdir/download"
	mkdir -p "$kdir/download" "$kroot"
	# APT::Sandbox::User: root downloads into a directory _apt may not write
	(cd "$kdir/download" && apt-get download -q -o APT::Sandbox::User=root \
		linux-image-amd64 "$pkg")
	# what the guest needs of its 400 MB: the kernel and fuse.ko (lib/ or
	# usr/lib/, as the package has it; a pattern that matches nothing is
	# no error here, the checks below are)
	dpkg-deb --fsys-tarfile "$kdir/download/${pkg}_"*.deb |
		tar -x -C "$kroot" --wildcards './boot/vmlinuz-*' \
			'./lib/modules/*/kernel/fs/fuse/*' './usr/lib/modules/*/kernel/fs/fuse/*' \
			'./lib/modules/*/kernel/drivers/vfio/*' './usr/lib/modules/*/kernel/drivers/vfio/*' \
			'./lib/modules/*/kernel/virt/lib/*' './usr/lib/modules/*/kernel/virt/lib/*' \
			2>/dev/null || :
	found=$(ls "$kroot"/boot/vmlinuz-* "$kroot"/lib/modules/*/kernel/fs/fuse/fuse.ko* \
		"$kroot"/usr/lib/modules/*/kernel/fs/fuse/fuse.ko* 2> /dev/null) || :
	[[ $found == *vmlinuz-* && $found == *fuse.ko* ]] || {
		echo "tests/vm/run.sh: $pkg holds no vmlinuz or no fuse.ko" >&2; exit 1; }
	rm -rf "$kdir/download"
	touch "$kroot/.unpacked"
fi

mmapfs=${1:-$top/build/fs/mmapfs}
if [ ! -x "$mmapfs" ] && [ $# -eq 0 ]; then
	(cd "$top" && { [ -d build ] || meson setup build; } && ninja -C build fs/mmapfs)
fi
[ -x "$mmapfs" ] || { echo "tests/vm/run.sh: $mmapfs: no such program" >&2; exit 1; }

work=$(mktemp -d /tmp/vmtest-XXXXXX)
cleanup() {	# after vmtest.py, which cleans up itself unless it was killed
	local pid
	pid=$(cat "$work/qemu.pid" 2>/dev/null) || pid=''
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ]; then
		kill -9 "$pid" 2>/dev/null || :
	fi
	awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/self/mounts |
	while read -r m; do
		fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || :
	done
	# the host's daemon, which blocked readers or writers may keep alive
	pid=$(cat "$work/host-mmapfs.pid" 2>/dev/null) || pid=''
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mmapfs ]; then
		kill -9 "$pid" 2>/dev/null || :
	fi
	rm -f /dev/shm/"$(basename "$work")"-*
	if [ "${VMTEST_KEEP:-0}" = 1 ]; then
		echo "tests/vm/run.sh: logs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# vmtest.py stops itself after --time-limit; timeout is the last resort
timeout -k 10 1200 /usr/bin/python3 "$top/tests/vm/vmtest.py" \
	--mmapfs "$mmapfs" --work "$work" --kernel-root "$kroot"
