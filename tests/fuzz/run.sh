#!/bin/sh
# Run each libFuzzer harness for a while. Builds nothing.
#
#   CC=clang meson setup BUILDDIR -Dfuzz=true -Db_sanitize=address,undefined
#   ninja -C BUILDDIR
#   tests/fuzz/run.sh BUILDDIR [SECONDS]      (default 30 per harness)
#
# Each harness starts from a temporary copy of its seed corpus (the seeds in
# the source tree are never modified). A crash leaves its input in
# BUILDDIR/fuzz-artifacts/ and makes the script exit non-zero. The channel
# harnesses (peer, chunks) make their areas under TMPDIR, set to the
# temporary directory, so that nothing is left behind even after a crash.
set -u

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 BUILDDIR [SECONDS]" >&2
	exit 2
fi
build=$1
secs=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
artifacts=$build/fuzz-artifacts
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mmapfs-fuzz.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$artifacts" || exit 2
export TMPDIR=$tmp

status=0
for name in caps ring peer chunks; do
	exe=$build/tests/fuzz/fuzz_$name
	if [ ! -x "$exe" ]; then
		echo "$exe: missing (configure with -Dfuzz=true and build)" >&2
		exit 2
	fi
	corpus=$tmp/corpus_$name
	mkdir -p "$corpus"
	if [ -d "$here/corpus_$name" ]; then
		cp "$here/corpus_$name"/* "$corpus"/ 2>/dev/null
	fi
	set -- -max_total_time="$secs" -max_len=8192 -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$artifacts/fuzz_$name-"
	if [ -f "$here/$name.dict" ]; then
		set -- "$@" -dict="$here/$name.dict"
	fi
	echo "== fuzz_$name for ${secs}s"
	"$exe" "$@" "$corpus" >"$tmp/log_$name" 2>&1
	rc=$?
	tail -n 12 "$tmp/log_$name"
	if [ $rc -ne 0 ] || grep -q -e '^==[0-9]*==ERROR' -e 'runtime error:' "$tmp/log_$name"; then
		echo "fuzz_$name: FAILED (exit $rc); inputs in $artifacts" >&2
		grep -m 20 -e ERROR -e 'runtime error' -e 'Test unit written' "$tmp/log_$name" >&2
		status=1
	else
		echo "fuzz_$name: clean"
	fi
done
exit $status
