#!/bin/bash
# The whole test suite, from a fresh machine: installs what mmapfs needs
# (Debian packages), builds it with AddressSanitizer and UBSan, runs the C
# unit tests, each fuzzer for a bounded time, the pytest suite, which
# mounts real filesystems, the unit tests and a short pytest subset built
# with ThreadSanitizer, the VM test (tests/vm/run.sh: a QEMU guest and its
# host over real ivshmem devices), the Debian packages (tests/deb/build.sh:
# dpkg-buildpackage in a copy of the tree, lintian) and the systemd unit
# booted for real in a systemd-nspawn container with those packages
# installed (tests/systemd/run.sh, which builds a Debian root with
# debootstrap once and keeps it in build-nspawn/; nothing is installed on
# this host but build tools). Run as root (FUSE mounts, apt-get, QEMU,
# containers):
#
#   tests/run-all.sh                 as root (or with sudo); FUZZ_SECONDS=60 by default
#
# A failure of the build, the unit tests or the fuzzers stops it; the
# pytest suite, the TSan subset, the VM test, the packages and the systemd
# test all run, and any of them failing makes the status non-zero.
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
	libfuse3-dev fuse3 libconfig-dev libacl1-dev \
	python3 python3-pytest socat coreutils procps \
	debootstrap systemd-container
# real programs that wait on `data` (tests/py/test_waiting.py): Go's
# runtime (an edge-triggered epoll), curl through a socat tunnel
apt-get install -y -q --no-install-recommends golang-go curl
# io_uring's opens of the FIFO entries (tests/peers/uring_open.c), and a
# 32-bit program at them (tests/peers/fifo32.c, built -m32)
apt-get install -y -q --no-install-recommends liburing-dev gcc-multilib
# xpra itself, as the interoperability tests' peer: Debian's 3.1, and xpra
# 6.6's own modules from ../shared/xpra-6.6, whose packet encoder the tests
# build with cython3 into build-xpra6/ (tests/py/xpra_peer.py). Under CI
# (CI=true) a missing peer fails those tests instead of skipping them.
apt-get install -y -q --no-install-recommends xpra python3-rencode \
	cython3 python3-dev python3-gi
# the Debian packages: debian/control's build dependencies (debhelper,
# dh-python, ...) and lintian
apt-get build-dep -y -q --no-install-recommends ./
apt-get install -y -q --no-install-recommends lintian
# the VM test: QEMU, a static busybox for the guest, cpio for its
# initramfs, xz and zstd for a compressed fuse.ko. Not a kernel: the guest's
# is Debian's package, downloaded and unpacked into build-vm/ by
# tests/vm/run.sh (apt-get download, dpkg-deb), never installed here.
apt-get install -y -q --no-install-recommends \
	qemu-system-x86 busybox-static cpio xz-utils zstd

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
# the whole tree, not only the harnesses: this is also the clang build with
# sanitizers (libmmapfs included, core/lib/meson.build says why it links)
if [ -d build-fuzz ]; then
	CC=clang meson setup --reconfigure build-fuzz -Dfuzz=true -Db_sanitize=address,undefined
else
	CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined
fi
ninja -C build-fuzz
tests/fuzz/run.sh build-fuzz "$fuzz_seconds"

# pytest ("$@": the command, to which --basetemp is added) in this run's own
# directory: other runs on the machine (other work trees, as root too) share
# /tmp/pytest-of-root, and their mounts are not ours. Non-zero if a test
# failed or left a FUSE mount behind; the directory is then kept, to look at.
leftover() { awk -v d="$1/" '$3 ~ /^fuse/ && index($2, d) == 1 {print $2}' /proc/self/mounts; }
run_pytest() {
	local dir rc=0
	dir=$(mktemp -d /tmp/pytest-mmapfs.XXXXXX)
	"$@" --basetemp="$dir" || rc=1
	if [ -n "$(leftover "$dir")" ]; then
		echo "tests left FUSE mounts behind:" >&2
		leftover "$dir" >&2
		leftover "$dir" | xargs -r -n1 fusermount3 -u -z
		rc=1
	fi
	[ "$rc" != 0 ] || rm -rf --one-file-system "$dir"
	return "$rc"
}
pytest=(/usr/bin/python3 -m pytest -c tests/pytest.ini --rootdir tests)

step "pytest: the daemon through files and shell tools"
status=0
MMAPFS="$top/build-asan/fs/mmapfs" run_pytest "${pytest[@]}" tests/py || status=1

step "ThreadSanitizer: unit tests and a pytest subset (build-tsan)"
# libfuse is not instrumented; races inside it would go to tests/tsan.supp
# (none so far). A report fails the test: the daemon exits 66 and its log,
# which conftest.py scans, says ThreadSanitizer. TSan wants its shadow memory
# at fixed addresses, which some kernels' mmap randomization gets in the way
# of ("FATAL: ThreadSanitizer: unexpected memory mapping"): run without it.
# The library's tests load the TSan build of libmmapfs into a Python child
# with libtsan preloaded (test_lib.py, asan_runtime); a report there fails
# the child.
if [ -d build-tsan ]; then
	meson setup --reconfigure build-tsan -Db_sanitize=thread
else
	meson setup build-tsan -Db_sanitize=thread
fi
ninja -C build-tsan
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1 exitcode=66}
[ ! -f tests/tsan.supp ] || TSAN_OPTIONS="$TSAN_OPTIONS suppressions=$top/tests/tsan.supp"
no_aslr=(setarch "$(uname -m)" -R)
"${no_aslr[@]}" meson test -C build-tsan --suite unit --print-errorlogs
# streams both ways at once, ends of stream, poll, blocked and killed peers, a
# truncated area, a handshake in pieces, xpra's chunk lists, the FIFO
# entries' pump (and its naps between a burst's steps), and parked requests
# (signals, poll, epoll, SIGTERM, early closes, a tunnel), format version
# 2's failed and abandoned streams, and
# the ivshmem server's thread beside the rings of the doorbells: about a
# minute
tsan_tests=(
	tests/py/test_data.py::test_dd_both_ways_at_once
	tests/py/test_data.py::test_end_of_file_and_next_stream
	tests/py/test_data.py::test_one_reader_one_writer
	tests/py/test_data.py::test_poll_select_epoll
	tests/py/test_data.py::test_poll_reader_and_writer_fds_at_once
	tests/py/test_data.py::test_blocked_read_leaves_daemon_answering
	tests/py/test_data.py::test_peer_killed_blocked_read_fails
	tests/py/test_data.py::test_restarted_peer_is_told_apart
	tests/py/test_data.py::test_truncated_area_no_sigbus
	tests/py/test_data.py::test_sigterm_with_a_blocked_reader
	tests/py/test_handshake.py::test_shell_handshake
	tests/py/test_handshake.py::test_python_five_byte_writes
	tests/py/test_xpra.py::test_xpra_writes_mmapfs_reads_restart_and_split
	"tests/py/test_fifo.py::test_exactly_once_random_sizes_and_readers_that_leave[creator-to-attacher]"
	tests/py/test_fifo.py::test_fifo_rules_nonblocking_poll_and_eof
	tests/py/test_fifo.py::test_a_conversation_through_socat
	tests/py/test_fifo.py::test_data_takes_the_direction_back_from_a_waiting_recv
	tests/py/test_fifo.py::test_rmdir_unmount_and_sigterm_with_callers_blocked
	tests/py/test_fifo.py::test_dead_peer
	tests/py/test_fifo.py::test_recv_waiting_lets_a_new_session_in
	tests/py/test_waiting.py::test_signals_end_blocked_callers
	tests/py/test_waiting.py::test_poll_then_read_never_blocks
	tests/py/test_waiting.py::test_epollet_reader_gets_every_line
	tests/py/test_waiting.py::test_sigterm_answers_every_waiting_caller
	"tests/py/test_waiting.py::test_reader_close_abandons_its_stream[head-64K]"
	tests/py/test_waiting.py::test_curl_through_socat_tunnel
	"tests/py/test_streams.py::test_stall_fails_streams_for_good[attacher]"
	tests/py/test_streams.py::test_reader_leaves_writer_gets_epipe
	"tests/py/test_streams.py::test_abort_mark[data]"
	tests/py/test_ivshmem.py::test_setup_and_peers
	tests/py/test_ivshmem.py::test_hostile_clients
	tests/py/test_ivshmem.py::test_ring_a_sleeping_guest_and_hear_it
	tests/py/test_ivshmem.py::test_join_an_existing_server
	tests/py/test_ivshmem.py::test_library_rings_and_hears_through_its_daemon
	tests/py/test_ivshmem.py::test_library_waits_interrupted_and_ioctls_checked
)
MMAPFS="$top/build-tsan/fs/mmapfs" run_pytest "${no_aslr[@]}" "${pytest[@]}" \
	"${tsan_tests[@]}" || status=1

step "VM test: a QEMU guest and its host over real ivshmem devices"
# the ASan/UBSan build runs on both sides; the test installs nothing more
# here (the guest's kernel is unpacked into build-vm/), boots under KVM if a
# probe says it works, else TCG, and ends with "N passed, N failed"
tests/vm/run.sh "$top/build-asan/fs/mmapfs" || status=1

step "Debian packages: dpkg-buildpackage and lintian (build-deb)"
# in a copy of the tree; the packages land in build-deb/debs
debs=()
if tests/deb/build.sh "$top/build-deb"; then
	debs=(MMAPFS_DEBS="$top/build-deb/debs")
else
	status=1
fi

step "systemd: mmapfs@.service booted in a container with the packages (build-nspawn)"
# the packages installed with dpkg into the container's root (a meson build
# there if they failed to build), the unit's checks, the installed library
# from C and Python, then a purge that must leave nothing
env "${debs[@]}" tests/systemd/run.sh || status=1
exit "$status"
