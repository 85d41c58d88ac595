#!/bin/bash
# Build the VM test's guest: an uncompressed initramfs (newc cpio) holding
# busybox (static), fuse.ko of the guest's Debian kernel and VFIO's modules
# where the kernel has them (lib/vfio/, in the order init loads them), an
# mmapfs binary
# with the shared libraries ldd names and the dynamic loader, tests/vm/init
# and contrib/handshake-serial.sh (the guest's side of the handshake).
#
#   tests/vm/mkinitramfs.sh OUT.cpio MMAPFS KVER [MODULES [PROGRAM...]]
#
# PROGRAM: further programs. A static one goes in /bin (the benchmark's
# bellprobe); a dynamic one at its own path, with the libraries ldd names
# at theirs, so that a RUNPATH relative to it ($ORIGIN: the build's
# libmmapfs) still finds them (the build's mmapfs-libtest); not under /tmp,
# which the guest mounts over.
#
# KVER: the kernel release whose fuse.ko goes in (MODULES/KVER; MODULES is
# /lib/modules by default, tests/vm/run.sh gives the kernel it unpacked).
# Nothing outside OUT and a temporary directory next to it is written.
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 OUT.cpio MMAPFS KVER [MODULES [PROGRAM...]]" >&2; exit 2; }
out=$1 mmapfs=$2 kver=$3 modules=${4:-/lib/modules}
shift $(($# < 4 ? $# : 4))
here=$(cd "$(dirname "$0")" && pwd)

busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
	echo "$0: $busybox is missing or not static (apt-get install busybox-static)" >&2
	exit 1
fi
[ -x "$mmapfs" ] || { echo "$0: $mmapfs: not an executable" >&2; exit 1; }

root=$(mktemp -d "$out.root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,etc,lib,proc,sys,tmp,mnt}

# busybox-static: the init script installs its applet links at boot
cp "$busybox" "$root/bin/busybox"

# fuse.ko has no dependencies; Debian ships it plain, other kernels compress it
ko=''
for f in "$modules/$kver"/kernel/fs/fuse/fuse.ko{,.xz,.zst,.gz}; do
	[ -e "$f" ] && { ko=$f; break; }
done
[ -n "$ko" ] || { echo "$0: no fuse.ko for kernel $kver" >&2; exit 1; }
case $ko in
*.xz) xz -dc "$ko" ;;
*.zst) zstd -qdc "$ko" ;;
*.gz) gzip -dc "$ko" ;;
*) cat "$ko" ;;
esac > "$root/lib/fuse.ko"

# VFIO (the doorbell's interrupts, through vfio-pci): in load order; a
# kernel without them gives a guest that polls
mkdir -p "$root/lib/vfio"
i=0
for m in virt/lib/irqbypass drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 \
	drivers/vfio/vfio_virqfd drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
	for f in "$modules/$kver/kernel/$m".ko{,.xz,.zst,.gz}; do
		[ -e "$f" ] || continue
		i=$((i + 1))
		ko_out="$root/lib/vfio/$i-$(basename "$m").ko"
		case $f in
		*.xz) xz -dc "$f" ;;
		*.zst) zstd -qdc "$f" ;;
		*.gz) gzip -dc "$f" ;;
		*) cat "$f" ;;
		esac > "$ko_out"
		break
	done
done

# every library ldd names for program $1 (at the same path) and the loader
libs_of() {
	local lib
	for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

cp "$mmapfs" "$root/bin/mmapfs"
libs_of "$mmapfs"

for p in "$@"; do
	if ldd "$p" >/dev/null 2>&1; then
		p=$(realpath "$p")
		case $p in
		/tmp/* | /proc/* | /sys/* | /dev/*)
			# tests/vm/init mounts over these
			echo "$0: $p: a dynamic program under a directory the guest" \
			     "mounts over; build outside /tmp" >&2
			exit 1 ;;
		esac
		mkdir -p "$root$(dirname "$p")"
		cp "$p" "$root$p"
		libs_of "$p"
	else
		cp "$p" "$root/bin/"
	fi
done

cp "$here/init" "$root/init"
cp "$here/../../contrib/handshake-serial.sh" "$root/bin/handshake-serial.sh"
chmod 755 "$root/init" "$root/bin/handshake-serial.sh"

(cd "$root" && find . | cpio -o -H newc --quiet) > "$out"
