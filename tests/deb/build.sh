#!/bin/bash
# The Debian packages of debian/ (mmapfs, libmmapfs0, libmmapfs-dev,
# python3-mmapfs), built from a copy of this tree and checked by lintian:
#
#   tests/deb/build.sh [BUILD]        default: build-deb
#
# Copies the tree (the files git tracks, and the untracked ones it does not
# ignore; without git, everything but build*/ and .git) to BUILD/src/mmapfs,
# runs `dpkg-buildpackage -us -uc -b` there, whose products land in
# BUILD/src, moves the packages (not the -dbgsym ones) to BUILD/debs, and
# runs lintian on the .changes: an error (E:) fails, warnings are printed.
# Nothing is written outside BUILD. Needs the build dependencies
# (`apt-get build-dep ./` installs them) and lintian; not root.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(mkdir -p "${1:-$top/build-deb}" && cd "${1:-$top/build-deb}" && pwd)
src=$build/src/mmapfs

rm -rf "$build/src" "$build/debs"
mkdir -p "$src" "$build/debs"
if git -C "$top" rev-parse --git-dir > /dev/null 2>&1; then
	# tracked files deleted in the work tree are skipped
	(cd "$top" && git ls-files -z -co --exclude-standard |
		tar --null -T - --ignore-failed-read -cf - 2> /dev/null) | tar -xf - -C "$src"
else
	(cd "$top" && tar --exclude='./build*' --exclude=./.git -cf - .) | tar -xf - -C "$src"
fi

echo "== dpkg-buildpackage -us -uc -b in $src (log: $build/dpkg-buildpackage.log)"
export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-parallel=$(nproc)}
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) > "$build/dpkg-buildpackage.log" 2>&1; then
	tail -n 40 "$build/dpkg-buildpackage.log"
	echo "tests/deb/build.sh: dpkg-buildpackage failed" >&2
	exit 1
fi
grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail):' "$build/dpkg-buildpackage.log" || :

for deb in "$build"/src/*.deb; do
	case $deb in *-dbgsym_*) ;; *) cp "$deb" "$build/debs/" ;; esac
done
echo "== packages in $build/debs"
(cd "$build/debs" && ls -l -- *.deb)

echo "== lintian"
lintian_rc=0
lintian --pedantic --display-info --fail-on error "$build"/src/mmapfs_*.changes \
	> "$build/lintian.txt" 2>&1 || lintian_rc=$?
grep -v 'running with root privileges' "$build/lintian.txt" || :
if [ "$lintian_rc" != 0 ] || grep -q '^E: ' "$build/lintian.txt"; then
	echo "tests/deb/build.sh: lintian reports errors" >&2
	exit 1
fi
echo "lintian: no error ($(grep -c '^W: ' "$build/lintian.txt" || :) warnings)"
