#!/bin/bash
# What waiting costs: the figures of parked requests (fs/data.c, fs/event.c),
# for one build or two side by side (before and after a change), one run,
# one machine.
#
#   contrib/bench/waiting.sh BUILDDIR [BUILDDIR...]     as root
#
# For each build (its fs/mmapfs and contrib/bench/pingpong):
#   data-1M-GB/s      dd bs=1M into A's data, dd out of B's, GIB GiB (4)
#   data-512-MB/s     the same with dd's 512-byte blocks, 32 MiB
#   rtt-64B-us        64-byte round trips through data both ways, median
#   blocked-threads   the reading daemon's threads with N readers (1000,
#                     WAITERS=) blocked on N channels' data
#   blocked-cpu-%     its CPU over 10 s while nothing moves
#   status-ms         cat of a channel's status meanwhile, the slowest of 20
#   lines-s           a line written to each channel, until every reader has
#                     its own (the daemons' first blocked readers wedged the
#                     mount at 10: the figure is then "wedged")
set -euo pipefail

GIB=${GIB:-4}
N=${WAITERS:-1000}
TRIPS=${TRIPS:-20000}
LOG=${LOG:-/dev/null}		# the daemons' logs
now() { date +%s.%N; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f\n", s }'; }

one() {		# BUILDDIR: the figures of one build, as "key value" lines
	local build=$1 mmapfs=$1/fs/mmapfs work shm A B pids=() t0 t1 d0 d1 worst=0 i c
	work=$(mktemp -d /tmp/mmapfs-wait.XXXXXX)
	shm=$(mktemp -d /dev/shm/mmapfs-wait.XXXXXX)
	A=$work/a B=$work/b
	mkdir "$A" "$B"
	"$mmapfs" -f -o mmap_dir="$shm" "$A" 2>>"$LOG" & pids+=($!)
	"$mmapfs" -f -o mmap_dir="$shm" "$B" 2>>"$LOG" & pids+=($!)
	for i in $(seq 100); do
		grep -q " $B fuse" /proc/self/mounts && grep -q " $A fuse" /proc/self/mounts && break
		sleep 0.05
	done
	chan() {	# NAME: a ready channel
		mkdir "$A/$1" "$B/$1"
		cat "$A/$1/capabilities" > "$B/$1/peer"
		cat "$B/$1/capabilities" > "$A/$1/peer"
	}
	chan big; chan small; chan rtt
	sleep 0.2
	t0=$(now)
	dd if="$B/big/data" of=/dev/null bs=1M 2>/dev/null &
	dd if=/dev/zero of="$A/big/data" bs=1M count=$((GIB << 10)) 2>/dev/null
	wait $!
	t1=$(now)
	echo "data-1M-GB/s $(awk -v b=$((GIB << 30)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", b / (z - a) / 1e9 }')"
	t0=$(now)
	dd if="$B/small/data" of=/dev/null 2>/dev/null &
	dd if=/dev/zero of="$A/small/data" count=65536 2>/dev/null
	wait $!
	t1=$(now)
	echo "data-512-MB/s $(awk -v b=$((32 << 20)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')"
	echo "rtt-64B-us $("$build/contrib/bench/pingpong" files "$TRIPS" "$A/rtt/data" "$B/rtt/data" |
		sed -n 's/.*median \([0-9.]*\) us$/\1/p')"
	for i in $(seq "$N"); do chan "w$i"; done
	chan spare
	sleep 0.5
	for i in $(seq "$N"); do cat "$B/w$i/data" > "$work/w$i.out" & done
	sleep 3
	echo "blocked-threads $(ls /proc/"${pids[1]}"/task | wc -l)"
	t0=$(now); d0=$(cpu_ns "${pids[1]}")
	sleep 10
	t1=$(now); d1=$(cpu_ns "${pids[1]}")
	echo "blocked-cpu-% $(awk -v d=$((d1 - d0)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.3f", 100 * d / ((z - a) * 1e9) }')"
	for i in $(seq 20); do
		t0=$(now)
		if ! timeout 5 cat "$B/spare/status" >/dev/null; then worst=wedged; break; fi
		t1=$(now)
		worst=$(awk -v w="$worst" -v a="$t0" -v z="$t1" 'BEGIN { d = (z - a) * 1000; if (w + 0 > d) d = w; printf "%.1f", d }')
	done
	echo "status-ms $worst"
	t0=$(now)
	c=0
	for i in $(seq "$N"); do
		timeout 5 sh -c "echo line $i > $A/w$i/data" || { c=wedged; break; }
	done
	for i in $(seq 600); do	# every reader has its line, or a minute
		[ "$c" = wedged ] && break
		c=$(cat "$work"/w*.out | grep -c '^line ' || true)
		[ "$c" -ge "$N" ] && break
		sleep 0.1
	done
	t1=$(now)
	if [ "$c" = wedged ]; then
		echo "lines-s wedged"
	else
		c=0
		for i in $(seq "$N"); do [ "$(cat "$work/w$i.out")" = "line $i" ] && c=$((c + 1)); done
		echo "lines-s $(awk -v a="$t0" -v z="$t1" 'BEGIN { printf "%.2f", z - a }') ($c of $N right)"
	fi
	kill "${pids[@]}" 2>/dev/null || true
	sleep 1
	kill -9 "${pids[@]}" 2>/dev/null || true
	for m in "$A" "$B"; do fusermount3 -u -z "$m" 2>/dev/null || true; done
	jobs -pr | xargs -r kill -9 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$work" "$shm"
}

echo "mmapfs waiting benchmark, $(date -u +%F), $(nproc) cores, $(uname -r), $N blocked readers"
for b in "$@"; do
	ninja -C "$b" fs/mmapfs contrib/bench/pingpong >/dev/null
	echo "== $b"
	one "$b" | sed 's/^/  /'
done
