#!/bin/bash
# From a fresh Debian machine to bytes through a channel, in one command:
# installs the build dependencies, builds mmapfs into build/, mounts two
# instances (two "ends"), does the handshake with cat and shell redirection,
# streams a file through the channel and shows both ends' status. Unmounts
# everything at the end (or leaves the mounts up with KEEP=1).
#
#   contrib/quickstart.sh            as root (or with sudo)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ "$(id -u)" != 0 ]; then
	echo "contrib/quickstart.sh: run as root (apt-get, mounting FUSE)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends gcc meson ninja-build pkg-config \
	libfuse3-dev fuse3 libconfig-dev >/dev/null
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
mmapfs=$top/build/fs/mmapfs

demo=$(mktemp -d /tmp/mmapfs-demo.XXXXXX)
A=$demo/a B=$demo/b
mkdir "$A" "$B"
cleanup() {
	[ "${KEEP:-0}" = 1 ] && { echo "left mounted: $A $B"; return; }
	fusermount3 -u "$A" 2>/dev/null || true
	fusermount3 -u "$B" 2>/dev/null || true
	rm -rf "$demo"
}
trap cleanup EXIT

run() { printf '$ %s\n' "$*"; bash -c "$*"; }

"$mmapfs" "$A"
"$mmapfs" "$B"
echo "mounted two ends: $A (creator) and $B (attacher)"
run "mkdir $A/chan $B/chan"
run "cat $A/chan/capabilities"
run "cat $A/chan/capabilities > $B/chan/peer"
run "cat $B/chan/capabilities > $A/chan/peer"
sleep 0.3
run "grep -E '^(state|role|peer)=' $A/chan/status $B/chan/status"
run "head -c 100M /dev/urandom > $demo/file"
run "dd if=$A/chan/data bs=1M of=/dev/null & dd if=$demo/file of=$B/chan/data bs=1M; wait"
run "dd if=$demo/file of=$A/chan/data bs=1M status=none & sha256sum < $B/chan/data; sha256sum < $demo/file; wait"
run "cat $A/chan/status"
