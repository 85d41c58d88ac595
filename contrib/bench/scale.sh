#!/bin/bash
# mmapfs at scale: N channels a mount, made and handshaken from a shell one
# after another, between two mounts sharing one mmap_dir (64 KiB rings).
#
#   contrib/bench/scale.sh [N...] [BUILDDIR]     (as root; default N: 1000;
#                                                 BUILDDIR build-release)
#
# For each N it reports: the time to make and handshake them all; each
# daemon's idle CPU over 10 s; `cat status` of the first and of the last
# channel (mean of 200 each); each daemon's RSS, its own anonymous memory, and
# its open descriptors; then it uses a handful of channels (a line through
# each, both ways), removes them all with rmdir and checks that none is
# left, nor any area file. Areas live in SHM (default a new directory in
# /dev/shm: a tmpfs, as the daemon's default mmap_dir), mounts in a new
# directory in /tmp; both are removed at the end. A channel keeps no
# descriptor open, so any N fits the descriptor limit.
#
# The targets of issue 17, at 10,000: made and handshaken in under 60 s,
# idle under 0.5 % of a core per daemon, the last status within 10 % of the
# first, under 8 KB of anonymous memory a channel.
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
shm=${SHM:-$(mktemp -d /dev/shm/mmapfs-scale.XXXXXX)}
A=$work/a B=$work/b
pa= pb=
cleanup() {
	fusermount3 -u -z "$A" 2>/dev/null || true
	fusermount3 -u -z "$B" 2>/dev/null || true
	[ -z "$pa$pb" ] || wait $pa $pb 2>/dev/null || true
	rm -rf "$work"
	[ -n "${SHM:-}" ] || rm -rf "$shm"
}
trap cleanup EXIT

# CPU time of a process in ns: its threads' run times (schedstat), which a
# thread that exits takes with it; else (no schedstat) its clock ticks.
cpu_ns() {
	local sum
	sum=$(cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}')
	if [ "$sum" -gt 0 ]; then
		echo "$sum"
	else
		awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1e9 / hz}' \
			"/proc/$1/stat"
	fi
}
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
secs() { awk -v d="$1" 'BEGIN { printf "%.1f", d / 1e9 }'; }
pct() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 1e9 / 10 * 100 }'; }
# `cat status` of channels $1 and $2: the mean time of 200 cats each, in
# ms, in blocks of 50 taken in turn (after 20 of each to warm up), so that
# the machine's other work weighs on both alike
status_ms() {
	local t=(0 0) t0 i
	for _ in $(seq 20); do cat "$1" "$2" >/dev/null; done
	for _ in 1 2 3 4; do
		for i in 0 1; do
			f=$1
			[ $i = 0 ] || f=$2
			t0=$(date +%s%N)
			for _ in $(seq 50); do cat "$f" >/dev/null; done
			t[i]=$(( t[i] + $(date +%s%N) - t0 ))
		done
	done
	awk -v a="${t[0]}" -v b="${t[1]}" 'BEGIN { printf "%.3f %.3f\n", a / 200 / 1e6, b / 200 / 1e6 }'
}

echo "mmapfs at scale, $(date -u +%F), $(nproc) cores, $(uname -r), 64 KiB rings in $shm"
for n in "${counts[@]}"; do
	mkdir -p "$A" "$B"
	chmod 700 "$shm"
	"$mmapfs" -f -o mmap_dir="$shm",size=64K "$A" 2>"$work/a.log" &
	pa=$!
	"$mmapfs" -f -o mmap_dir="$shm",size=64K "$B" 2>"$work/b.log" &
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
	for m in "$A" "$B"; do
		grep -q state=ready "$m/c$n/status" || { echo "  channel $n is not ready" >&2; exit 1; }
	done
	a0=$(cpu_ns $pa) b0=$(cpu_ns $pb)
	sleep 10
	a1=$(cpu_ns $pa) b1=$(cpu_ns $pb)
	echo "  idle CPU over 10 s: $(pct $((a1 - a0))) % and $(pct $((b1 - b0))) % of a core"
	read -r first last < <(status_ms "$A/c1/status" "$A/c$n/status")
	echo "  cat status: first channel $first ms, last $last ms" \
	     "($(awk -v f="$first" -v l="$last" 'BEGIN { printf "%+.1f", (l - f) * 100 / f }') %)"
	for p in $pa $pb; do
		echo "  daemon $p: RSS $(( $(kb $p VmRSS) / 1024 )) MB," \
		     "anonymous $(( $(kb $p RssAnon) / 1024 )) MB" \
		     "($(( $(kb $p RssAnon) * 1024 / n )) bytes a channel)," \
		     "$(ls /proc/$p/fd | wc -l) descriptors"
	done
	# a line each way through a handful of them
	used=0
	for i in 1 $((n / 3 + 1)) $((n / 2 + 1)) $((n - 1 > 0 ? n - 1 : 1)) "$n"; do
		cat "$B/c$i/data" > "$work/got" & r=$!
		echo "to c$i" > "$A/c$i/data"
		wait $r
		cat "$A/c$i/data" > "$work/back" & r=$!
		echo "from c$i" > "$B/c$i/data"
		wait $r
		[ "$(cat "$work/got")" = "to c$i" ] && [ "$(cat "$work/back")" = "from c$i" ] ||
			{ echo "  c$i: the bytes did not come through" >&2; exit 1; }
		used=$((used + 1))
	done
	echo "  used: a line each way through $used of them"
	t0=$(date +%s%N)
	for i in $(seq "$n"); do rmdir "$A/c$i" "$B/c$i"; done
	t1=$(date +%s%N)
	left=$(( $(ls -A "$A" | wc -l) + $(ls -A "$B" | wc -l) ))
	echo "  removed: $(secs $((t1 - t0))) s," \
	     "$left channels and $(ls "$shm" | grep -c '\.mmap$' || true) area files left"
	fusermount3 -u "$A"
	fusermount3 -u "$B"
	wait $pa $pb
	pa= pb=
done
