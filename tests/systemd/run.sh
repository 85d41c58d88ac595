#!/bin/bash
# mmapfs@.service under a real systemd: boots Debian 12 (systemd 252 as
# PID 1) in a systemd-nspawn container with mmapfs installed from a fresh
# build, and checks the unit, the tmpfiles line, the sample configuration and
# the documented drop-ins from inside (tests/systemd/checks.sh, run there by
# a oneshot unit that powers the container off at the end).
#
#   sudo tests/systemd/run.sh          (tests/run-all.sh runs it after pytest)
#
#   MMAPFS_DEBS=build-deb/debs sudo tests/systemd/run.sh
#                                      the Debian packages instead (CI)
#
# Needs root, /dev/fuse and Debian's archive (debootstrap). The root file
# system is built once and kept in BUILD/bookworm-root (MMAPFS_NSPAWN_ROOT=DIR
# to put it elsewhere; delete it to rebuild); each run boots a copy of it
# under /tmp/nspawn-mmapfs.*, removed at the end. BUILD is build-nspawn (or
# MMAPFS_NSPAWN_BUILD). mmapfs goes into the copy one of two ways:
#   - MMAPFS_DEBS=DIR: the packages of tests/deb/build.sh in DIR, installed
#     with dpkg in the copy; the checks then also stream through the
#     installed library (mmapfs-cat, the Python module, and the example of
#     libmmapfs-dev compiled here against that package's header, .pc and
#     library), and end by purging the packages: nothing of theirs may be
#     left but the administrator's files in /etc.
#   - else a plain meson build in BUILD with --prefix=/usr --sysconfdir=/etc,
#     installed into the copy with DESTDIR.
# The checks'
# results, their journal and the console log are left in BUILD/nspawn-last/.
# Prints PASS/FAIL per check and ends with "N passed, N failed"; exits 1 if
# a check failed, 0 with a SKIP line where it cannot run (not root, no
# /dev/fuse).
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
debs=${MMAPFS_DEBS:+$(cd "$MMAPFS_DEBS" && pwd)}
cd "$top"
build=${MMAPFS_NSPAWN_BUILD:-$top/build-nspawn}
cache=${MMAPFS_NSPAWN_ROOT:-$build/bookworm-root}
boot_timeout=${NSPAWN_TIMEOUT:-300}
# What the daemon needs, and the checks (procps: pgrep; python3: the
# handshake script and python3-mmapfs; the rest is in minbase).
packages=systemd,systemd-sysv,fuse3,libfuse3-3,libconfig9,procps,python3

skip() { echo "SKIP tests/systemd: $*"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
if ! command -v debootstrap > /dev/null || ! command -v systemd-nspawn > /dev/null; then
	command -v apt-get > /dev/null || skip "no debootstrap or systemd-nspawn, and no apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		debootstrap systemd-container meson ninja-build > /dev/null || {
		echo "FAIL tools: cannot install debootstrap and systemd-container"
		echo "0 passed, 1 failed"; exit 1; }
fi

# The mirror apt uses (deb822 or one-line sources), else Debian's own.
mirror=${DEBIAN_MIRROR:-$( { sed -n 's|^URIs: *\([^ ]*/debian\)/*$|\1|p' \
		/etc/apt/sources.list.d/*.sources
	sed -n 's|^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*/debian\)/* .*|\2|p' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list; } 2>/dev/null | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

passed=0 failed=0
result() {       # result PASS|FAIL NAME [WHY]
	echo "$1 $2${3:+: $3}"
	if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
finish() {
	echo "$passed passed, $failed failed"
	[ "$failed" = 0 ]
	exit
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

mkdir -p "$build"
if [ -n "$debs" ]; then
	echo "== packages: $debs"
	ls "$debs"/mmapfs_*.deb "$debs"/libmmapfs0_*.deb "$debs"/libmmapfs-dev_*.deb \
		"$debs"/python3-mmapfs_*.deb || { result FAIL packages "missing in $debs"; finish; }
	# The example of libmmapfs-dev, built against that package alone (its
	# header, pkg-config file and library, unpacked here): it runs in the
	# container against the installed libmmapfs0.
	dev=$build/libmmapfs-dev
	rm -rf "$dev"
	mkdir -p "$dev"
	dpkg-deb -x "$debs"/libmmapfs-dev_*.deb "$dev"
	dpkg-deb -x "$debs"/libmmapfs0_*.deb "$dev"
	pcdir=$(dirname "$(find "$dev" -name mmapfs.pc)")
	# shellcheck disable=SC2046  # pkg-config's words
	cc -O2 -o "$build/mmapfs-cat-example" "$dev"/usr/share/doc/libmmapfs-dev/examples/mmapfs-cat.c \
		$(PKG_CONFIG_SYSROOT_DIR=$dev PKG_CONFIG_LIBDIR=$pcdir pkg-config --cflags --libs mmapfs) \
		> "$build/example.log" 2>&1 || {
		cat "$build/example.log"; result FAIL example "cc against libmmapfs-dev"; finish; }
else
	echo "== build ($build: --prefix=/usr --sysconfdir=/etc)"
	if [ ! -d "$build/meson-private" ]; then
		meson setup --prefix=/usr --sysconfdir=/etc "$build" > /dev/null || {
			result FAIL build "meson setup"; finish; }
	fi
	ninja -C "$build" > "$build/ninja.log" 2>&1 || {
		tail -n 20 "$build/ninja.log"; result FAIL build "ninja"; finish; }
fi

# The root, built once: debootstrap into a temporary directory, renamed when
# complete. A stamp names the packages, so a change here rebuilds it.
stamp="bookworm minbase $packages"
if [ "$(cat "$cache/.mmapfs-root" 2>/dev/null)" != "$stamp" ]; then
	echo "== debootstrap bookworm into $cache ($mirror)"
	t0=$(now)
	rm -rf "$cache" "$cache.tmp"
	mkdir -p "$(dirname "$cache")"
	if ! debootstrap --variant=minbase --include="$packages" bookworm "$cache.tmp" "$mirror" \
		> "$build/debootstrap.log" 2>&1; then
		tail -n 20 "$build/debootstrap.log"
		rm -rf "$cache.tmp"
		result FAIL root "debootstrap failed (log: $build/debootstrap.log)"
		finish
	fi
	echo "$stamp" > "$cache.tmp/.mmapfs-root"
	mv "$cache.tmp" "$cache"
	echo "root built in $(since "$t0") s"
else
	echo "== root: $cache (cached)"
fi

run=$(mktemp -d /tmp/nspawn-mmapfs.XXXXXX)
root=$run/root
nspawn_pid= leftover=

# Everything started here ends here: the container (by its PID, and any of
# its processes left behind, found by their root directory), then the copy.
cleanup() {
	local pid p i
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2> /dev/null; then
		kill -TERM "$nspawn_pid" 2> /dev/null      # nspawn: an orderly poweroff
		for i in $(seq 200); do kill -0 "$nspawn_pid" 2> /dev/null || break; sleep 0.1; done
		kill -KILL "$nspawn_pid" 2> /dev/null
	fi
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/root" 2> /dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2> /dev/null
	done
	wait 2> /dev/null
	if findmnt -rn -o TARGET | grep -q "^$run"; then
		leftover=$(findmnt -rn -o TARGET | grep "^$run" | tr '\n' ' ')
		findmnt -rn -o TARGET | grep "^$run" | sort -r | xargs -r -n1 umount -l
	fi
	rm -rf --one-file-system "$run"
}
trap cleanup EXIT

t0=$(now)
cp -a "$cache" "$root" || { result FAIL root "copy"; finish; }
echo "== copied the root in $(since "$t0") s; installing mmapfs"
if [ -n "$debs" ]; then
	# dpkg, not apt: the root holds every dependency already (debootstrap's
	# --include), and a missing one must fail here rather than be fetched
	mkdir -p "$root/var/tmp/mmapfs-debs"
	cp "$debs"/*.deb "$root/var/tmp/mmapfs-debs/"
	chroot "$root" sh -c 'dpkg -i /var/tmp/mmapfs-debs/*.deb' > "$run/dpkg.log" 2>&1 || {
		tail -n 20 "$run/dpkg.log"; result FAIL install "dpkg -i"; finish; }
	rm -rf "$root/var/tmp/mmapfs-debs"
	install -m 0755 "$build/mmapfs-cat-example" "$root/usr/local/bin/"
	result PASS install-packages "$(chroot "$root" dpkg-query -W -f '${Package} ${Version}, ' \
		mmapfs libmmapfs0 libmmapfs-dev python3-mmapfs)"
else
	DESTDIR=$root meson install -C "$build" --no-rebuild --quiet > /dev/null || {
		result FAIL install "meson install"; finish; }
fi
# The host's tmpfiles line, as an administrator installs it; a VM host has
# the group kvm (udev makes it), this root does not.
grep -q '^kvm:' "$root/etc/group" || chroot "$root" groupadd --system kvm
cp "$root/usr/share/doc/mmapfs/mmapfs-tmpfiles.conf" "$root/etc/tmpfiles.d/mmapfs.conf"
install -m 0755 tests/systemd/checks.sh "$root/usr/local/sbin/mmapfs-checks"
install -m 0644 tests/systemd/mmapfs-checks.service "$root/etc/systemd/system/"
ln -s /etc/systemd/system/mmapfs-checks.service \
	"$root/etc/systemd/system/multi-user.target.wants/mmapfs-checks.service"
mkdir -p "$root/var/lib/mmapfs-test"

echo "== booting (at most $boot_timeout s)"
t0=$(now)
# No system bus on such hosts: no machine registration, no scope of its own.
systemd-nspawn --quiet --directory="$root" --machine="mmapfs-test-$$" --boot \
	--register=no --keep-unit --link-journal=no \
	--bind=/dev/fuse --capability=CAP_SYS_ADMIN --console=read-only \
	< /dev/null > "$run/console.log" 2>&1 &
nspawn_pid=$!
end=$((SECONDS + boot_timeout))
while kill -0 "$nspawn_pid" 2> /dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.5; done
if kill -0 "$nspawn_pid" 2> /dev/null; then
	result FAIL container-powered-off "still running after $boot_timeout s: killed"
	cleanup
else
	wait "$nspawn_pid"
	rc=$?
	nspawn_pid=
	if [ "$rc" = 0 ]; then
		result PASS container-powered-off
	else
		result FAIL container-powered-off "systemd-nspawn exit status $rc"
	fi
fi
boot_secs=$(since "$t0")

out=$root/var/lib/mmapfs-test
last=$build/nspawn-last
rm -rf "$last"
mkdir -p "$last"
cp "$run/console.log" "$last/"
cp "$out/results" "$out/journal.txt" "$last/" 2> /dev/null
if [ -f "$out/results" ]; then
	while read -r verdict rest; do
		case $verdict in
		PASS | FAIL) result "$verdict" "${rest%%:*}" "$(expr "$rest" : '[^:]*: \(.*\)')" ;;
		esac
	done < "$out/results"
	grep -qx DONE "$out/results" || result FAIL checks-finished "the checks stopped early"
else
	tail -n 30 "$run/console.log"
	result FAIL checks-ran "no results (console log: $last/console.log)"
fi

cleanup
trap - EXIT
if [ -n "$leftover" ]; then
	result FAIL nothing-left-mounted "$leftover(unmounted now)"
else
	result PASS nothing-left-mounted
fi
echo "boot, checks and poweroff: $boot_secs s; whole run: $(since "$t_start") s"
finish
