#!/bin/bash
# The whole test suite, from a fresh machine: installs what mmapfs needs
# (Debian packages), builds it with AddressSanitizer and UBSan, runs the C
# unit tests, each fuzzer for a bounded time, the pytest suite, which
# mounts real filesystems, and the systemd unit booted for real in a
# systemd-nspawn container (tests/systemd/run.sh, which builds a Debian root
# with debootstrap once and keeps it in build-nspawn/). Run as root (FUSE
# mounts, apt-get):
#
#   sudo tests/run-all.sh            FUZZ_SECONDS=60 by default
#
# Any failure stops it with a non-zero status.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
fuzz_seconds=${FUZZ_SECONDS:-60}

if [ "$(id -u)" != 0 ]; then
	echo "tests/run-all.sh: run as root: it installs packages and mounts FUSE" >&2
	exit 1
fi

step() { printf '\n=== %s\n' "$*"; }

step "installing packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
	gcc clang libclang-rt-dev meson ninja-build pkg-config \
	libfuse3-dev fuse3 libconfig-dev \
	python3 python3-pytest socat coreutils procps \
	debootstrap systemd-container
# xpra itself, as the interoperability tests' peer: Debian's 3.1, and xpra
# 6.6's own modules from ../shared/xpra-6.6, whose packet encoder the tests
# build with cython3 into build-xpra6/ (tests/py/xpra_peer.py). Under CI
# (CI=true) a missing peer fails those tests instead of skipping them.
apt-get install -y -q --no-install-recommends xpra python3-rencode \
	cython3 python3-dev python3-gi

# A sanitizer report must fail the test that caused it.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

step "building with AddressSanitizer and UBSan (build-asan)"
if [ -d build-asan ]; then
	meson setup --reconfigure build-asan -Db_sanitize=address,undefined -Dwerror=true
else
	meson setup build-asan -Db_sanitize=address,undefined -Dwerror=true
fi
ninja -C build-asan

step "unit tests"
meson test -C build-asan --print-errorlogs

step "fuzzers, ${fuzz_seconds} s each (build-fuzz, clang)"
if [ -d build-fuzz ]; then
	CC=clang meson setup --reconfigure build-fuzz -Dfuzz=true -Db_sanitize=address,undefined
else
	CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined
fi
ninja -C build-fuzz tests/fuzz/fuzz_caps tests/fuzz/fuzz_ring tests/fuzz/fuzz_peer \
	tests/fuzz/fuzz_chunks
tests/fuzz/run.sh build-fuzz "$fuzz_seconds"

step "pytest: the daemon through files and shell tools"
# This run's own directory: other runs on the machine (other work trees, as
# root too) share /tmp/pytest-of-root, and their mounts are not ours.
basetemp=$(mktemp -d /tmp/pytest-mmapfs.XXXXXX)
leftover() { awk -v d="$basetemp/" '$3 ~ /^fuse/ && index($2, d) == 1 {print $2}' /proc/self/mounts; }
status=0
MMAPFS="$top/build-asan/fs/mmapfs" /usr/bin/python3 -m pytest -c tests/pytest.ini \
	--rootdir tests --basetemp="$basetemp" tests/py || status=$?
if [ -n "$(leftover)" ]; then
	echo "tests left FUSE mounts behind:" >&2
	leftover >&2
	leftover | xargs -r -n1 fusermount3 -u -z
	status=1
fi
[ "$status" != 0 ] || rm -rf --one-file-system "$basetemp"   # kept to look at when a test failed

step "systemd: mmapfs@.service booted in a container (build-nspawn)"
tests/systemd/run.sh || status=1
exit "$status"
