#!/bin/bash
# From a fresh Debian machine to bytes through a channel, in one command:
# installs the build dependencies, builds mmapfs into build/, mounts two
# instances (two "ends"), does the handshake with cat and shell redirection,
# streams a file through the channel and checks it, then shows the speed:
# warm figures (the ring's pages mapped in by a first run) of `dd bs=1M`
# through data, `dd` with its default 512-byte blocks through the FIFO
# entries (send, recv) and the library (contrib/bench/bench_lib), each beside a
# pipe's figure (dd | dd, the same blocks) measured here, now. Unmounts
# everything at the end (or leaves the mounts up with KEEP=1).
#
#   contrib/quickstart.sh            as root (or with sudo)
#
# RUNS=N: each figure is the best of N runs (3). contrib/bench/bench.sh
# measures more (every block size, round trips, CPU while waiting).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ "$(id -u)" != 0 ]; then
	echo "contrib/quickstart.sh: run as root (apt-get, mounting FUSE)" >&2
	exit 1
fi
runs=${RUNS:-3}
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends gcc meson ninja-build pkg-config \
	libfuse3-dev fuse3 libconfig-dev >/dev/null
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
mmapfs=$top/build/fs/mmapfs
bench_lib=$top/build/contrib/bench/bench_lib

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
run "dd if=$demo/file of=$A/chan/data bs=1M status=none & sha256sum < $B/chan/data; sha256sum < $demo/file; wait"
run "cat $A/chan/status"

# --- the speed, warm, beside a pipe's ---
now() { date +%s.%N; }
rate() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.2f", b / (t1 - t0) / 1e9 }'; }
# BS BYTES: dd | dd with BS-byte blocks, GB/s
pipe_rate() {
	local t0 t1
	t0=$(now)
	dd if=/dev/zero bs="$1" count=$(($2 / $1)) 2>/dev/null | dd of=/dev/null bs="$1" 2>/dev/null
	t1=$(now)
	rate "$2" "$t0" "$t1"
}
# FILE BS BYTES: dd into A's FILE, dd out of B's, BS-byte blocks, GB/s
# ("failed" if either dd failed or the reader got less)
file_rate() {
	local t0 t1 rd ok=1 w=$1 r=$1
	[ "$1" != fifo ] || { w=send; r=recv; }
	t0=$(now)
	dd if="$B/speed/$r" of=/dev/null bs="$2" 2> "$demo/rd.err" &
	rd=$!
	dd if=/dev/zero of="$A/speed/$w" bs="$2" count=$(($3 / $2)) 2>/dev/null || ok=0
	wait "$rd" || ok=0
	t1=$(now)
	grep -q "^$3 bytes" "$demo/rd.err" || ok=0
	if [ "$ok" = 1 ]; then rate "$3" "$t0" "$t1"; else echo failed; fi
}
# BYTES: bench_lib, 1 MiB writes, zero-copy reads that check every byte, GB/s
lib_rate() {
	local out
	out=$("$bench_lib" "$A/speed" "$B/speed" "$1" 1048576 zc) || { echo failed; return; }
	printf '%.2f\n' "$(sed 's/.*, \([0-9.]*\) GB\/s$/\1/' <<< "$out")"
}
# the best of the runs' figures, or "failed" if one failed
best() {
	local all
	all=$(cat)
	if grep -q failed <<< "$all"; then echo failed; else sort -g <<< "$all" | tail -n 1; fi
}
# LABEL MMAPFS-COMMAND PIPE-COMMAND: the best of $runs of each, alternated
figure() {
	local i m=() p=()
	for i in $(seq "$runs"); do
		m+=("$($2)")
		p+=("$($3)")
	done
	printf '  %-44s %8s %8s\n' "$1" "$(printf '%s\n' "${m[@]}" | best)" \
		"$(printf '%s\n' "${p[@]}" | best)"
}

mkdir "$A/speed" "$B/speed"
cat "$A/speed/capabilities" > "$B/speed/peer"
cat "$B/speed/capabilities" > "$A/speed/peer"
for i in $(seq 100); do grep -q state=ready "$B/speed/status" && break; sleep 0.02; done
# warm: a first stream maps the ring's pages in (the areas are sparse: a
# cold 64 MiB ring costs the first 64 MiB a page fault every 4 KiB)
file_rate data 1048576 $((256 << 20)) > /dev/null
echo
echo "speed on this machine, warm, GB/s, the best of $runs runs ($(nproc) cores, $(uname -r)):"
printf '  %-44s %8s %8s\n' "" mmapfs "a pipe"
figure "dd bs=1M through data, 1 GiB" \
	"file_rate data 1048576 $((1 << 30))" "pipe_rate 1048576 $((1 << 30))"
figure "dd (512-byte blocks) through send and recv, 128 MiB" \
	"file_rate fifo 512 $((128 << 20))" "pipe_rate 512 $((128 << 20))"
figure "the library (bench_lib, 1 MiB blocks), 2 GiB" \
	"lib_rate $((2 << 30))" "pipe_rate 1048576 $((2 << 30))"
cat <<'EOF'
  (a pipe: dd | dd with the same blocks. data is a FUSE file, a request per
  read and write: fast with large blocks only; send and recv are FIFOs the
  kernel serves, for small pieces; the library moves the bytes in the shared
  memory itself, zero copy. README, "Which file for which writer".)
EOF
rmdir "$A/speed" "$B/speed" 2>/dev/null || true
