#!/bin/bash
# mmapfs benchmark: one run, one machine, channel against pipe.
#
#   contrib/bench/bench.sh [BUILDDIR]      as root (or with sudo); default
#                                          build-release, made with
#                                          meson --buildtype=release
#
# (a) throughput: dd bs=1M through a channel between two mounts, against
#     dd bs=1M | dd bs=1M through a pipe;
# (b) latency: 64-byte round trips, one direction each way, against two pipes;
# (c) cost of waiting: CPU used by a daemon with one blocked reader over 10 s.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build-release}
[ -d "$build" ] || meson setup "$build" "$top" --buildtype=release >/dev/null
ninja -C "$build" fs/mmapfs contrib/bench/pingpong >/dev/null
mmapfs=$build/fs/mmapfs
GIB=${GIB:-8}
TRIPS=${TRIPS:-20000}

work=$(mktemp -d /tmp/mmapfs-bench.XXXXXX)
A=$work/a B=$work/b
mkdir "$A" "$B" "$work/shm"
chmod 700 "$work/shm"
cleanup() {
	fusermount3 -u "$A" 2>/dev/null || true
	fusermount3 -u "$B" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

"$mmapfs" -o mmap_dir="$work/shm" "$A"
"$mmapfs" -o mmap_dir="$work/shm" "$B"
mkdir "$A/c" "$B/c"
cat "$A/c/capabilities" > "$B/c/peer"
cat "$B/c/capabilities" > "$A/c/peer"
sleep 0.3
grep -q state=ready "$A/c/status"

rate() {	# the GB/s figure dd printed last
	sed -n 's/.* s, \([0-9.]*\) GB\/s$/\1/p; s/.* s, \([0-9.]*\) MB\/s$/0.\1/p' | tail -1
}
echo "mmapfs benchmark, $(date -u +%F), $(nproc) cores, $(uname -r), area ring 64M"
echo
echo "(a) throughput, ${GIB} GiB of zeros, bs=1M"
for i in 1 2 3; do
	p=$(dd if=/dev/zero bs=1M count=$((GIB * 1024)) 2>/dev/null |
		dd of=/dev/null bs=1M 2>&1 | tail -1)
	dd if="$B/c/data" of=/dev/null bs=1M 2>/dev/null &
	c=$(dd if=/dev/zero of="$A/c/data" bs=1M count=$((GIB * 1024)) 2>&1 | tail -1)
	wait
	echo "  run $i: pipe    $p"
	echo "  run $i: channel $c"
done
echo
echo "(b) round trips of 64 bytes, ${TRIPS} of them"
for i in 1 2; do
	# a fresh channel each run: the last run's closes left ends of stream
	mkdir "$A/p$i" "$B/p$i"
	cat "$A/p$i/capabilities" > "$B/p$i/peer"
	cat "$B/p$i/capabilities" > "$A/p$i/peer"
	echo "  run $i: $("$build/contrib/bench/pingpong" pipe "$TRIPS")"
	echo "  run $i: $("$build/contrib/bench/pingpong" files "$TRIPS" "$A/p$i/data" "$B/p$i/data")"
done
echo
echo "(c) a daemon with one blocked reader, 10 s"
pid=$(pgrep -f -n "mmapfs -o mmap_dir=$work/shm $B")
cat "$B/c/data" >/dev/null &
reader=$!
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks)
sleep 10
t1=$(ticks)
kill "$reader"
wait "$reader" 2>/dev/null || true
hz=$(getconf CLK_TCK)
awk -v t=$((t1 - t0)) -v hz="$hz" \
	'BEGIN { printf "  daemon CPU: %d ticks in 10 s = %.2f %% of a core\n", t, 100 * t / hz / 10 }'
