#!/bin/bash
# mmapfs benchmark: one run, one machine, the library and the files against
# pipes.
#
#   contrib/bench/bench.sh [BUILDDIR]      as root (or with sudo); default
#                                          build-release, made with
#                                          meson --buildtype=release
#
# (a) throughput, 1 MiB blocks: dd | dd through a pipe; dd into a channel's
#     data with dd reading the other end; libmmapfs at both ends with
#     zero-copy reads that compare every byte they are handed (bench_lib);
# (b) latency: 64-byte round trips, one direction each way: two pipes; the
#     files at both ends; the library at both ends; the library at one end
#     and the files at the other; the FIFO entries at both ends;
# (c) block sizes from 512 B to 1 MiB: pipe, files (dd into data, dd out
#     of data), the FIFO entries (dd into A's send, dd out of B's recv: a
#     FIFO at each end, the kernel's), library (copying reads of that size,
#     every byte compared); (f) has more of the FIFOs;
# (d) cost of waiting: CPU of a daemon with one blocked file reader, with
#     one blocked reader of recv, of a blocked library reader, and of both
#     daemons while two library ends stream;
# (e) the FIFO entries at scale: PIPES channels (default 1000), a reader
#     blocked on each one's recv: the daemon's threads, descriptors and
#     CPU over 10 s, then one line through each.
# (f) the FIFO entries beside dd | dd at 512 B to 1 MiB with the daemons'
#     CPU per GiB and the cores busy during each (all of them: the figure
#     is the machine's, two programs and two pumps sharing its cores), and
#     beside dd | relay | dd (contrib/bench/relay.c: the same three copies
#     with nothing else, the most their rate can be on the machine; and
#     relay's CPU per GiB beside the daemons'), data at 1 MiB, and tar
#     (10 KiB blocks) through them beside a plain FIFO; each run's ratios
#     (fifos/pipe, fifos/relay, relay/pipe, fifos/data, tar's) beside its
#     figures.
# (g) the working window: libmmapfs (bench_lib, copying and zero-copy
#     reads) at 512 B to 1 MiB with the default 64 MiB ring beside a 1 MiB
#     ring (a second pair of daemons, -o size=1M), and dd | dd.
# ONLY=c,f runs those sections alone.
# Each figure is measured RUNS times (default 3) and the table at the end
# gives the range. Areas live in SHM (default a new directory in /dev/shm,
# a tmpfs as the daemon's default mmap_dir), mounts in WORK (default a new
# directory in /tmp); both are removed at the end.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build-release}
[ -d "$build" ] || meson setup "$build" "$top" --buildtype=release >/dev/null
ninja -C "$build" fs/mmapfs contrib/bench/pingpong contrib/bench/bench_lib \
	contrib/bench/relay contrib/examples/mmapfs-cat >/dev/null
mmapfs=$build/fs/mmapfs
bench_lib=$build/contrib/bench/bench_lib
pingpong=$build/contrib/bench/pingpong
relay=$build/contrib/bench/relay
GIB=${GIB:-8}
TRIPS=${TRIPS:-20000}
RUNS=${RUNS:-3}

work=${WORK:-$(mktemp -d /tmp/mmapfs-bench.XXXXXX)}
shm=${SHM:-$(mktemp -d /dev/shm/mmapfs-bench.XXXXXX)}
A=$work/a B=$work/b
results=$work/results
mkdir -p "$A" "$B" "$shm"
chmod 700 "$shm"
: > "$results"
pids=()
cleanup() {
	fusermount3 -u "$A" 2>/dev/null || true
	fusermount3 -u "$B" 2>/dev/null || true
	fusermount3 -u "$work/a1m" 2>/dev/null || true
	fusermount3 -u "$work/b1m" 2>/dev/null || true
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work" "$shm"
}
trap cleanup EXIT

"$mmapfs" -f -o mmap_dir="$shm" "$A" & pids+=($!)
"$mmapfs" -f -o mmap_dir="$shm" "$B" & pids+=($!)
for i in $(seq 100); do
	grep -q " $B fuse" /proc/self/mounts && grep -q " $A fuse" /proc/self/mounts && break
	sleep 0.05
done
n=0
MA=$A MB=$B	# the mounts newchan and lib_rate use
LA=$A LB=$B	# those of the last channel
newchan() {	# a fresh ready channel on $MA and $MB, the last one removed: its name in $c
	local d i
	for d in "$LA/c$n" "$LB/c$n"; do
		for i in $(seq 100); do	# its last release may be on its way
			[ -d "$d" ] || break
			rmdir "$d" 2>/dev/null && break
			sleep 0.05
		done
	done
	n=$((n + 1)) LA=$MA LB=$MB
	mkdir "$MA/c$n" "$MB/c$n"
	cat "$MA/c$n/capabilities" > "$MB/c$n/peer"
	cat "$MB/c$n/capabilities" > "$MA/c$n/peer"
	for i in $(seq 100); do grep -q state=ready "$MB/c$n/status" && break; sleep 0.02; done
	c=c$n
}
now() { date +%s.%N; }
pct() { awk -v d="$1" -v t="$2" 'BEGIN { printf "%.3f", 100 * d / (t * 1e9) }'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
want() { [[ ",${ONLY:-a,b,c,d,e,f}," == *",$1,"* ]]; }	# ONLY=c,f: those sections
record() {	# KEY VALUE: one measurement, also printed
	echo "$1 $2" >> "$results"
	printf '  %-28s %s\n' "$1" "$2"
}
nth() {	# KEY I: the I-th value recorded under KEY
	awk -v k="$1" -v i="$2" '$1 == k && ++n == i { print $2 }' "$results"
}
ratio() {	# KEY KEY2 I: run I's value of KEY over its value of KEY2
	awk -v a="$(nth "$1" "$3")" -v b="$(nth "$2" "$3")" 'BEGIN { printf "%.2f", b ? a / b : 0 }'
}
gbs() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.3f", b / (t1 - t0) / 1e9 }'; }
pipe_rate() {	# BS BYTES: dd | dd, GB/s
	local t0 t1
	t0=$(now)
	dd if=/dev/zero bs="$1" count=$(($2 / $1)) 2>/dev/null | dd of=/dev/null bs="$1" 2>/dev/null
	t1=$(now)
	gbs "$2" "$t0" "$t1"
}
relay_rate() {	# BS BYTES: dd | relay | dd (the FIFO entries' copies alone), GB/s;
	# relay's own CPU seconds (user system) in $work/relay.cpu
	local t0 t1 TIMEFORMAT='%U %S'
	t0=$(now)
	dd if=/dev/zero bs="$1" count=$(($2 / $1)) 2>/dev/null |
		{ time "$relay"; } 2> "$work/relay.cpu" |
		dd of=/dev/null bs="$1" 2>/dev/null
	t1=$(now)
	gbs "$2" "$t0" "$t1"
}
files_rate() {	# BS BYTES [W R]: dd into A's W (data), dd out of B's R (data) ($c), GB/s
	local t0 t1 w=${3:-data} r=${4:-data}
	t0=$(now)
	dd if="$B/$c/$r" of=/dev/null bs="$1" 2>/dev/null &
	dd if=/dev/zero of="$A/$c/$w" bs="$1" count=$(($2 / $1)) 2>/dev/null
	wait $!
	t1=$(now)
	gbs "$2" "$t0" "$t1"
}
lib_rate() {	# BS BYTES zc|copy: bench_lib over $c, GB/s
	"$bench_lib" "$MA/$c" "$MB/$c" "$2" "$1" "$3" | sed 's/.*, \([0-9.]*\) GB\/s$/\1/'
}
cpu_ns() {	# PID: CPU time of all its threads, ns
	cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f\n", s }'
}
jiffies() {	# the machine's busy and total jiffies, all cores
	awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
busy_run() {	# KEY CMD...: record CMD's output under KEY, and beside it under
	# KEY-cores-busy how many of the machine's cores were busy meanwhile
	# (nproc: the figure is limited by the cores)
	local key=$1 b0 t0 b1 t1 out
	shift
	read -r b0 t0 < <(jiffies)
	out=$("$@")
	read -r b1 t1 < <(jiffies)
	record "$key" "$out"
	record "$key-cores-busy" "$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v n="$(nproc)" \
		'BEGIN { printf "%.2f", t ? n * b / t : 0 }')"
}

echo "mmapfs benchmark, $(date -u +%F), $(nproc) cores, $(uname -r), 64 MiB rings in $shm"
bytes=$((GIB << 30))
if want a; then
echo
echo "(a) throughput, 1 MiB blocks, ${GIB} GiB"
for i in $(seq "$RUNS"); do
	record "a.pipe" "$(pipe_rate 1048576 $bytes)"
	newchan
	record "a.files" "$(files_rate 1048576 $bytes)"
	newchan
	record "a.library-zero-copy" "$(lib_rate 1048576 $bytes zc)"
done
fi
if want b; then
echo
echo "(b) round trips of 64 bytes, ${TRIPS} of them, median us"
median() { sed -n 's/.*median \([0-9.]*\) us$/\1/p'; }
for i in $(seq "$RUNS"); do
	record "b.pipe" "$("$pingpong" pipe "$TRIPS" | median)"
	newchan
	record "b.files" "$("$pingpong" files "$TRIPS" "$A/$c/data" "$B/$c/data" | median)"
	newchan
	record "b.library" "$("$pingpong" lib "$TRIPS" "$A/$c" "$B/$c" | median)"
	newchan
	record "b.library-files" "$("$pingpong" libfiles "$TRIPS" "$A/$c" "$B/$c" | median)"
	newchan
	record "b.fifos" "$("$pingpong" fifos "$TRIPS" "$A/$c" "$B/$c" | median)"
done
fi
if want c; then
echo
echo "(c) block sizes, GB/s"
for bs in 512 4096 16384 65536 262144 1048576; do
	# about a second each: the files pay a FUSE request per block
	lib_bytes=$((bs < 4096 ? 512 << 20 : bs < 65536 ? 2 << 30 : 4 << 30))
	pipe_bytes=$((bs < 4096 ? 256 << 20 : bs < 65536 ? 2 << 30 : 2 << 30))
	files_bytes=$((bs < 4096 ? 16 << 20 : bs < 65536 ? 256 << 20 : 2 << 30))
	pipefile_bytes=$((bs < 4096 ? 128 << 20 : 1 << 30))
	for i in $(seq "$RUNS"); do
		record "c.$bs.pipe" "$(pipe_rate "$bs" "$pipe_bytes")"
		newchan
		record "c.$bs.files" "$(files_rate "$bs" "$files_bytes")"
		newchan
		record "c.$bs.fifos" "$(files_rate "$bs" "$pipefile_bytes" send recv)"
		newchan
		record "c.$bs.library" "$(lib_rate "$bs" "$lib_bytes" copy)"
	done
done
fi
if want d; then
echo
echo "(d) cost of waiting, 10 s each, % of a core"
waiting() {	# KEY daemon|reader PROG SUFFIX: PROG "$B/$c$SUFFIX" blocks on a fresh
	# channel for 10 s: the CPU of B's daemon, or of PROG itself
	local reader pid t0 t1 d0 d1
	newchan
	"$3" "$B/$c$4" >/dev/null &
	reader=$!
	[ "$2" = daemon ] && pid=${pids[1]} || pid=$reader
	sleep 1
	t0=$(now); d0=$(cpu_ns "$pid")
	sleep 10
	t1=$(now); d1=$(cpu_ns "$pid")
	kill "$reader"
	wait "$reader" 2>/dev/null || true
	record "$1" "$(pct $((d1 - d0)) "$(elapsed "$t0" "$t1")")"
}
for i in $(seq "$RUNS"); do
	waiting d.daemon-file-reader daemon cat /data
	waiting d.daemon-recv-reader daemon cat /recv
	waiting d.library-reader reader "$build/contrib/examples/mmapfs-cat" ""

	# two library ends stream for a few seconds: what do the daemons spend?
	newchan
	t0=$(now); a0=$(cpu_ns "${pids[0]}"); b0=$(cpu_ns "${pids[1]}")
	"$bench_lib" "$A/$c" "$B/$c" $((4 * bytes)) 1048576 zc >/dev/null
	t1=$(now); a1=$(cpu_ns "${pids[0]}"); b1=$(cpu_ns "${pids[1]}")
	record "d.daemons-library-stream" "$(pct $((a1 - a0 + b1 - b0)) "$(elapsed "$t0" "$t1")")"
done
fi
if want e; then
echo
PIPES=${PIPES:-1000}
echo "(e) $PIPES channels, a reader blocked on each one's recv"
for i in $(seq "$PIPES"); do
	mkdir "$A/p$i" "$B/p$i"
	cat "$A/p$i/capabilities" > "$B/p$i/peer"
	cat "$B/p$i/capabilities" > "$A/p$i/peer"
done
readers=()
for i in $(seq "$PIPES"); do
	cat "$B/p$i/recv" > "$work/p$i.out" &
	readers+=($!)
done
fifos() { find /proc/"${pids[1]}"/fd -lname "*.recv.*" 2>/dev/null | wc -l; }
sleep 1
t0=$(now); d0=$(cpu_ns "${pids[1]}")
sleep 10
t1=$(now); d1=$(cpu_ns "${pids[1]}")
record "e.daemon-threads" "$(ls /proc/"${pids[1]}"/task | wc -l)"
record "e.daemon-fifo-fds" "$(fifos)"
record "e.daemon-idle-cpu" "$(pct $((d1 - d0)) "$(elapsed "$t0" "$t1")")"
t0=$(now)
for i in $(seq "$PIPES"); do echo "line $i" > "$A/p$i/send"; done
for p in "${readers[@]}"; do wait "$p"; done
t1=$(now)
ok=0
for i in $(seq "$PIPES"); do [ "$(cat "$work/p$i.out")" = "line $i" ] && ok=$((ok + 1)); done
record "e.lines-delivered" "$ok"
record "e.lines-seconds" "$(elapsed "$t0" "$t1")"
fi
if want f; then
echo
echo "(f) the FIFO entries: dd into A's send, dd out of B's recv, beside dd | dd, GB/s,"
echo "    both daemons' CPU seconds per GiB moved, and the cores busy meanwhile (of $(nproc));"
echo "    tar through them beside a plain FIFO, s"
for bs in 512 4096 16384 65536 1048576; do
	fifo_bytes=$((bs < 4096 ? 256 << 20 : 1 << 30))
	for i in $(seq "$RUNS"); do
		busy_run "f.$bs.pipe" pipe_rate "$bs" "$fifo_bytes"
		busy_run "f.$bs.relay" relay_rate "$bs" "$fifo_bytes"
		record "f.$bs.relay-cpu-s-per-GiB" "$(awk -v b="$fifo_bytes" \
			'{ printf "%.2f", ($1 + $2) / (b / 2^30) }' "$work/relay.cpu")"
		newchan
		a0=$(cpu_ns "${pids[0]}"); b0=$(cpu_ns "${pids[1]}")
		busy_run "f.$bs.fifos" files_rate "$bs" "$fifo_bytes" send recv
		a1=$(cpu_ns "${pids[0]}"); b1=$(cpu_ns "${pids[1]}")
		record "f.$bs.fifos-cpu-s-per-GiB" "$(awk -v ns=$((a1 - a0 + b1 - b0)) \
			-v b="$fifo_bytes" 'BEGIN { printf "%.2f", ns / 1e9 / (b / 2^30) }')"
		# the run's own ratios: the machine's speed swings between runs
		record "f.$bs.fifos/pipe" "$(ratio "f.$bs.fifos" "f.$bs.pipe" "$i")"
		record "f.$bs.fifos/relay" "$(ratio "f.$bs.fifos" "f.$bs.relay" "$i")"
		record "f.$bs.relay/pipe" "$(ratio "f.$bs.relay" "f.$bs.pipe" "$i")"
	done
done
for i in $(seq "$RUNS"); do
	newchan
	record "f.1048576.data" "$(files_rate 1048576 $((1 << 30)))"
	record "f.1048576.fifos/data" "$(ratio f.1048576.fifos f.1048576.data "$i")"
done
# a tree of 256 MiB in files of 4 KiB to 1 MiB, on the tmpfs: tar's own
# 10 KiB blocks, through a plain FIFO and through send and recv
mkdir -p "$shm/tree" "$shm/out"
left=$((256 << 20)) k=0
while [ "$left" -gt 0 ]; do
	sz=$(( (RANDOM * 32 + RANDOM) % (1 << 20) + 4096 ))
	head -c "$sz" /dev/urandom > "$shm/tree/f$k"
	left=$((left - sz)) k=$((k + 1))
done
mkfifo "$work/plain.fifo"
tar_time() {	# W R: tar -c into W, tar -x out of R, s
	local t0 t1
	rm -rf "$shm/out" && mkdir "$shm/out"
	t0=$(now)
	tar -cf - -C "$shm/tree" . > "$1" &
	tar -xf - -C "$shm/out" < "$2"	# from a pipe: whole 10 KiB records (-B)
	wait $!
	t1=$(now)
	diff -r "$shm/tree" "$shm/out" > /dev/null || { echo failed; return; }
	elapsed "$t0" "$t1"
}
for i in $(seq "$RUNS"); do
	record "f.tar.plain-fifo" "$(tar_time "$work/plain.fifo" "$work/plain.fifo")"
	newchan
	record "f.tar.fifos" "$(tar_time "$A/$c/send" "$B/$c/recv")"
	# as a rate: the plain FIFO's time over theirs
	record "f.tar.fifos/plain-fifo" "$(ratio f.tar.plain-fifo f.tar.fifos "$i")"
done
rm -rf "$shm/tree" "$shm/out"
fi
if want g; then
echo
echo "(g) the working window: libmmapfs with the default 64 MiB ring and a 1 MiB ring, GB/s"
mkdir -p "$work/a1m" "$work/b1m"
"$mmapfs" -f -o mmap_dir="$shm",size=1M "$work/a1m" & pids+=($!)
"$mmapfs" -f -o mmap_dir="$shm",size=1M "$work/b1m" & pids+=($!)
for i in $(seq 100); do
	grep -q " $work/a1m fuse" /proc/self/mounts && grep -q " $work/b1m fuse" /proc/self/mounts &&
		break
	sleep 0.05
done
for bs in 512 4096 16384 65536 262144 1048576; do
	lib_bytes=$((bs < 4096 ? 512 << 20 : bs < 65536 ? 2 << 30 : 4 << 30))
	pipe_bytes=$((bs < 4096 ? 256 << 20 : 2 << 30))
	for i in $(seq "$RUNS"); do
		record "g.$bs.pipe" "$(pipe_rate "$bs" "$pipe_bytes")"
		for how in copy zc; do
			MA=$A MB=$B
			newchan
			record "g.$bs.$how.64M" "$(lib_rate "$bs" "$lib_bytes" "$how")"
			MA=$work/a1m MB=$work/b1m
			newchan
			record "g.$bs.$how.1M" "$(lib_rate "$bs" "$lib_bytes" "$how")"
		done
	done
done
MA=$A MB=$B
echo
echo "  side by side, GB/s, min-max of $RUNS runs:"
awk 'function r(k) { return (k in lo) ? (lo[k] == hi[k] ? lo[k] : lo[k] "-" hi[k]) : "-" }
     $1 ~ /^g\./ { v = $2 + 0
       if (!($1 in lo) || v < lo[$1]) lo[$1] = v
       if (!($1 in hi) || v > hi[$1]) hi[$1] = v }
     END { printf "  %-8s %-13s %-13s %-13s %-13s %s\n", "block", "copy 64M", "copy 1M",
                  "zero-copy 64M", "zero-copy 1M", "dd | dd"
           n = split("512 4096 16384 65536 262144 1048576", bs, " ")
           for (i = 1; i <= n; i++) { b = "g." bs[i] "."
             printf "  %-8s %-13s %-13s %-13s %-13s %s\n", bs[i], r(b "copy.64M"),
                    r(b "copy.1M"), r(b "zc.64M"), r(b "zc.1M"), r(b "pipe") } }' "$results"
fi
echo
echo "summary: min-max of $RUNS runs"
awk '{ k = $1; v = $2 + 0
       if (!(k in lo)) { order[++nk] = k; lo[k] = v; hi[k] = v }
       if (v < lo[k]) lo[k] = v
       if (v > hi[k]) hi[k] = v }
     END { for (i = 1; i <= nk; i++) { k = order[i]
             printf "  %-28s %s\n", k, lo[k] == hi[k] ? lo[k] : lo[k] "-" hi[k] } }' "$results"
