#!/bin/bash
# mmapfs at scale: N channels a mount, made and handshaken from a shell one
# after another, between two mounts sharing one mmap_dir (64 KiB rings).
#
#   contrib/bench/scale.sh [N...] [BUILDDIR]     (as root; default N: 1000;
#                                                 BUILDDIR build-release)
#
# For each N it reports: the time to make and handshake them all; each
# daemon's idle CPU over 10 s; `cat status` of the first and of the last
# channel (mean of 200); each daemon's RSS, its own anonymous memory, and
# its open descriptors; then it removes the channels with rmdir and checks
# none is left. Needs a descriptor limit above 2 N + 20 (ulimit -Hn).
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
counts=() build=$top/build-release
for a in "$@"; do
	case $a in
	*[!0-9]*) build=$a ;;
	*) counts+=("$a") ;;
	esac
done
[ ${#counts[@]} -gt 0 ] || counts=(1000)
[ -d "$build" ] || meson setup "$build" "$top" --buildtype=release >/dev/null
ninja -C "$build" fs/mmapfs >/dev/null
mmapfs=$build/fs/mmapfs

work=$(mktemp -d /tmp/mmapfs-scale.XXXXXX)
A=$work/a B=$work/b
cleanup() {
	fusermount3 -u -z "$A" 2>/dev/null || true
	fusermount3 -u -z "$B" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
secs() { awk -v d="$1" 'BEGIN { printf "%.1f", d / 1e9 }'; }
pct() { awk -v t="$1" -v hz="$2" 'BEGIN { printf "%.2f", t * 100 / hz / 10 }'; }
# mean time of 200 cats, in ms
status_ms() {
	local t0 t1
	t0=$(date +%s%N)
	for _ in $(seq 200); do cat "$1" >/dev/null; done
	t1=$(date +%s%N)
	awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 200 / 1e6 }'
}

echo "mmapfs at scale, $(date -u +%F), $(nproc) cores, $(uname -r), 64 KiB rings"
for n in "${counts[@]}"; do
	mkdir -p "$A" "$B" "$work/shm"
	chmod 700 "$work/shm"
	"$mmapfs" -f -o mmap_dir="$work/shm",size=64K "$A" 2>"$work/a.log" &
	pa=$!
	"$mmapfs" -f -o mmap_dir="$work/shm",size=64K "$B" 2>"$work/b.log" &
	pb=$!
	for _ in $(seq 100); do mountpoint -q "$A" && mountpoint -q "$B" && break; sleep 0.05; done
	echo
	echo "== $n channels"
	t0=$(date +%s%N)
	for i in $(seq "$n"); do
		mkdir "$A/c$i" "$B/c$i"
		cat "$A/c$i/capabilities" > "$B/c$i/peer"
		cat "$B/c$i/capabilities" > "$A/c$i/peer"
	done
	t1=$(date +%s%N)
	echo "  made and handshaken: $(secs $((t1 - t0))) s"
	sleep 2
	grep -q state=ready "$A/c$n/status" || { echo "  channel $n is not ready" >&2; exit 1; }
	a0=$(ticks $pa) b0=$(ticks $pb)
	sleep 10
	a1=$(ticks $pa) b1=$(ticks $pb)
	hz=$(getconf CLK_TCK)
	echo "  idle CPU over 10 s: $(pct $((a1 - a0)) "$hz") % and $(pct $((b1 - b0)) "$hz") %" \
	     "of a core"
	echo "  cat status: first channel $(status_ms "$A/c1/status") ms," \
	     "last $(status_ms "$A/c$n/status") ms"
	for p in $pa $pb; do
		echo "  daemon $p: RSS $(( $(kb $p VmRSS) / 1024 )) MB," \
		     "anonymous $(( $(kb $p RssAnon) / 1024 )) MB" \
		     "($(( $(kb $p RssAnon) * 1024 / n )) bytes a channel)," \
		     "$(ls /proc/$p/fd | wc -l) descriptors"
	done
	t0=$(date +%s%N)
	for i in $(seq "$n"); do rmdir "$A/c$i" "$B/c$i"; done
	t1=$(date +%s%N)
	echo "  removed: $(secs $((t1 - t0))) s," \
	     "$(ls "$work/shm" | grep -c '\.mmap$' || true) area files left"
	fusermount3 -u "$A"
	fusermount3 -u "$B"
	wait $pa $pb
done
