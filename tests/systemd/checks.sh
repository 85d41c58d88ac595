#!/bin/bash
# The checks of tests/systemd/run.sh, run INSIDE the booted container by the
# oneshot unit mmapfs-checks.service, as root, with systemd as PID 1 and
# mmapfs installed under /usr. Writes "PASS name" or "FAIL name: why" lines
# to OUT/results and the mmapfs units' journal to OUT/journal.txt; the unit
# then powers the container off. Every wait is bounded.
set -u
out=${1:-/var/lib/mmapfs-test}
mkdir -p "$out"
res=$out/results
: > "$res"
unit=/usr/lib/systemd/system/mmapfs@.service
user=mmuser
mnt() { echo "/run/mmapfs/$1"; }

# check NAME FUNCTION: PASS when FUNCTION returns 0, else FAIL with the last
# lines it printed.
check() {
	local name=$1 log rc
	shift
	log=$("$@" 2>&1)
	rc=$?
	if [ "$rc" = 0 ]; then
		echo "PASS $name" >> "$res"
	else
		echo "FAIL $name: $(printf '%s' "$log" | tail -n 4 | tr '\n' '|')" >> "$res"
	fi
	printf '[%s] rc=%s\n%s\n' "$name" "$rc" "$log"      # to the console log
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds, polling every 0.1 s.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.1
	done
}
mounted() { findmnt -M "$1" > /dev/null; }
state_is() { grep -qx "state=$2" "$1/status" 2>/dev/null; }
prop() { systemctl show -p "$2" --value "$1"; }
cursor() { journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# The unit's journal lines after CURSOR that tell of a problem.
bad_lines() {
	journalctl --sync 2>/dev/null
	journalctl -q -o cat -u "$1" --after-cursor="$2" |
		grep -Ei 'error|fail|not mounted|denied|status=[1-9]|cannot|unable' || true
}
# Each check runs in a subshell (check's $(...)): fail ends it.
fail() { echo "$*"; exit 1; }

# The drop-ins are taken from the unit's own comments, so what is documented
# is what is tested: the indented "#   " block holding $1, "alice" -> $user.
documented_dropin() {
	awk -v want="$1" '
		/^#   / { blk = blk substr($0, 5) "\n"; if (index($0, want)) hit = 1; next }
		{ if (hit) { printf "%s", blk; exit } blk = ""; hit = 0 }' "$unit" |
		sed "s/alice/$user/g"
}

t_tmpfiles_at_boot() {
	local f=/dev/shm/shmem-xpra
	[ -f "$f" ] || fail "$f was not made at boot"
	[ "$(stat -c '%a %U %G %s' "$f")" = "660 root kvm 0" ] ||
		fail "$f: $(stat -c '%a %U %G %s' "$f"), want 660 root kvm 0"
}

t_enable_now() {
	mkdir -p /etc/mmapfs
	for i in a b; do
		printf 'mmap_dir = "/dev/shm/mmapfs-shared";\nsize = "4M";\n' > "/etc/mmapfs/$i.conf"
	done
	timeout 30 systemctl enable --now mmapfs@a mmapfs@b || fail "enable --now failed"
	for i in a b; do
		[ "$(prop "mmapfs@$i" ActiveState)" = active ] || fail "mmapfs@$i not active"
		mounted "$(mnt $i)" || fail "$(mnt $i) not mounted"
	done
	[ -L /etc/systemd/system/multi-user.target.wants/mmapfs@a.service ] || fail "not enabled"
}

t_runtime_dir_mode() {
	[ "$(stat -c %a /run/mmapfs)" = 755 ] || fail "/run/mmapfs is mode $(stat -c %a /run/mmapfs)"
}

t_handshake() {
	local a b
	a=$(mnt a)/chan b=$(mnt b)/chan
	mkdir "$a" "$b" || fail "mkdir"
	cat "$a/capabilities" > "$b/peer" || fail "offer a -> b refused"
	cat "$b/capabilities" > "$a/peer" || fail "answer b -> a refused"
	wait_for 5 state_is "$a" ready || fail "a: $(cat "$a/status")"
	wait_for 5 state_is "$b" ready || fail "b: $(cat "$b/status")"
}

t_stream() {
	local src=/var/tmp/src dst=/var/tmp/dst rd
	head -c $((8 * 1024 * 1024 + 12345)) /dev/urandom > "$src"
	timeout 60 cat "$(mnt b)/chan/data" > "$dst" &
	rd=$!
	timeout 60 dd if="$src" of="$(mnt a)/chan/data" bs=1M status=none || fail "dd failed"
	wait "$rd" || fail "reader failed"
	[ "$(sha256sum < "$src")" = "$(sha256sum < "$dst")" ] ||
		fail "sha256 differs: $(wc -c < "$dst") of $(wc -c < "$src") bytes"
	echo "sha256 $(sha256sum < "$dst")"
}

# The guest's UART unit (docs/ivshmem.md, step 5): systemd loads and
# accepts it, it conflicts with a getty on its port, and enables. (The
# container has no UART to start it on.)
t_serial_unit() {
	local u=mmapfs-serial@ttyS1.service
	(cd /usr/lib/systemd/system && systemd-analyze verify "./$u") || fail "verify $u"
	[ "$(prop "$u" LoadState)" = loaded ] || fail "$u: LoadState $(prop "$u" LoadState)"
	prop "$u" Conflicts | grep -qw serial-getty@ttyS1.service ||
		fail "$u: Conflicts=$(prop "$u" Conflicts)"
	prop "$u" BindsTo | grep -qw dev-ttyS1.device || fail "$u: BindsTo=$(prop "$u" BindsTo)"
	systemctl enable "$u" || fail "enable $u"
	[ -L "/etc/systemd/system/multi-user.target.wants/$u" ] || fail "$u not enabled"
	systemctl disable "$u" || fail "disable $u"
}

# the FIFO entries under the unit's confinement, which has no
# CAP_SYS_PTRACE: dd with its default 512-byte blocks into one end's send,
# cat out of the other's recv
t_fifo() {
	local src=/var/tmp/psrc dst=/var/tmp/pdst rd bnd
	head -c $((1024 * 1024 + 321)) /dev/urandom > "$src"
	bnd=$(sed -n 's/^CapBnd:\t//p' /proc/"$(systemctl show -P MainPID mmapfs@a)"/status)
	[ -n "$bnd" ] && [ $(( 0x$bnd >> 19 & 1 )) = 0 ] || fail "the daemon may ptrace: CapBnd $bnd"
	timeout 60 cat "$(mnt b)/chan/recv" > "$dst" &
	rd=$!
	timeout 60 dd if="$src" of="$(mnt a)/chan/send" status=none || fail "dd into send failed"
	wait "$rd" || fail "reader of recv failed"
	[ "$(sha256sum < "$src")" = "$(sha256sum < "$dst")" ] ||
		fail "sha256 differs: $(wc -c < "$dst") of $(wc -c < "$src") bytes"
	echo "send to recv: sha256 $(sha256sum < "$dst")"
}

# Installed from the Debian packages (tests/systemd/run.sh, MMAPFS_DEBS)?
packaged() { dpkg-query -W -f '${Status}' mmapfs 2> /dev/null | grep -q 'ok installed'; }

# The installed library, from C and Python, on a channel of its own: the
# packaged mmapfs-cat writes and python3-mmapfs reads; then Python writes
# and the example of libmmapfs-dev, compiled against that package, reads.
t_library() {
	local a b src=/var/tmp/lsrc want got py
	a=$(mnt a)/lib b=$(mnt b)/lib
	mkdir "$a" "$b" || fail "mkdir"
	{ cat "$a/capabilities" > "$b/peer" && cat "$b/capabilities" > "$a/peer"; } || fail "handshake"
	{ wait_for 5 state_is "$a" ready && wait_for 5 state_is "$b" ready; } ||
		fail "not ready: $(grep -h '^state=' "$a/status" "$b/status" | tr '\n' ' ')"
	py=$(python3 -c 'import mmapfs; print(mmapfs.__file__, mmapfs.library_path())') ||
		fail "python3: import mmapfs"
	[ "$py" = "/usr/lib/python3/dist-packages/mmapfs.py libmmapfs.so.0" ] || fail "mmapfs.py: $py"
	echo "python3-mmapfs: $py"
	head -c $((3 * 1024 * 1024 + 99)) /dev/urandom > "$src"
	want=$(sha256sum < "$src" | cut -d' ' -f1)
	got=$(timeout 60 python3 -c 'import hashlib, mmapfs, sys
with mmapfs.open(sys.argv[1]) as ch:
    print(hashlib.sha256(ch.read()).hexdigest())' "$b" &
		timeout 60 mmapfs-cat -w "$a" < "$src" || echo "mmapfs-cat -w failed"
		wait)
	[ "$got" = "$want" ] || fail "mmapfs-cat -w -> python3: $got, want $want"
	echo "mmapfs-cat -w -> python3-mmapfs: sha256 $got"
	got=$(timeout 60 mmapfs-cat-example "$b" | sha256sum | cut -d' ' -f1 &
		timeout 60 python3 -c 'import mmapfs, sys
with mmapfs.open(sys.argv[1], "w") as ch, open(sys.argv[2], "rb") as f:
    ch.write(f.read())' "$a" "$src" || echo "python3 write failed"
		wait)
	[ "$got" = "$want" ] || fail "python3 -> the example: $got, want $want"
	echo "python3-mmapfs -> mmapfs-cat.c of libmmapfs-dev: sha256 $got"
	rmdir "$a" "$b" || fail "rmdir"
}

# systemctl stop while a reader is blocked on data: unmounted, inactive, the
# reader released, and no error in the unit's journal.
t_stop_clean() {
	local c rd bad
	timeout 30 cat "$(mnt b)/chan/data" > /dev/null 2> /var/tmp/reader.err &
	rd=$!
	sleep 0.5
	c=$(cursor)
	timeout 30 systemctl stop mmapfs@b || fail "stop failed"
	! mounted "$(mnt b)" || fail "still mounted"
	[ "$(prop mmapfs@b ActiveState)" = inactive ] || fail "state $(prop mmapfs@b ActiveState)"
	wait_for 10 eval '! kill -0 '"$rd"' 2>/dev/null' || fail "the blocked reader was not released"
	wait "$rd"
	echo "the reader: $(cat /var/tmp/reader.err)"
	bad=$(bad_lines mmapfs@b "$c")
	[ -z "$bad" ] || fail "journal: $bad"
}

t_kill9_restart() {
	local old new
	old=$(prop mmapfs@a MainPID)
	[ "$old" -gt 0 ] || fail "no main pid"
	kill -9 "$old"
	restarted() {
		new=$(prop mmapfs@a MainPID)
		[ "$new" -gt 0 ] && [ "$new" != "$old" ] &&
			[ "$(prop mmapfs@a ActiveState)" = active ] && mountpoint -q "$(mnt a)"
	}
	wait_for 15 restarted || fail "not back after 15 s: $(systemctl status --no-pager mmapfs@a | tail -n 5)"
	[ "$(prop mmapfs@a NRestarts)" = 1 ] || fail "NRestarts=$(prop mmapfs@a NRestarts)"
	mkdir "$(mnt a)/again" && grep -q '^state=offered' "$(mnt a)/again/status" ||
		fail "the new mount does not work"
}

t_bad_config() {
	local t0 t1 ms
	printf 'size = "lots";\n' > /etc/mmapfs/bad.conf
	t0=$(date +%s%N)
	if timeout 30 systemctl start mmapfs@bad; then fail "the start succeeded"; fi
	t1=$(date +%s%N)
	ms=$(((t1 - t0) / 1000000))
	echo "systemctl start failed after $ms ms"
	[ "$ms" -lt 5000 ] || fail "the start took $ms ms"
	sleep 5     # RestartSec=2: a restart would have happened by now
	[ "$(prop mmapfs@bad NRestarts)" = 0 ] || fail "NRestarts=$(prop mmapfs@bad NRestarts)"
	[ "$(prop mmapfs@bad ActiveState)" = failed ] || fail "state $(prop mmapfs@bad ActiveState)"
	journalctl --sync 2>/dev/null
	journalctl -q -o cat -u mmapfs@bad | grep -F "bad.conf:1: size" ||
		fail "the reason is not in the journal"
}

# The documented allow_other drop-in: a second user reaches the mount point
# (and without it, does not).
t_allow_other() {
	id "$user" > /dev/null 2>&1 || useradd -M -s /bin/sh "$user" || fail "useradd"
	mkdir -p /etc/systemd/system/mmapfs@c.service.d
	{ echo "[Service]"; grep -o 'Environment="OPTIONS=-o allow_other[^"]*"' "$unit" | head -n 1; } \
		> /etc/systemd/system/mmapfs@c.service.d/allow-other.conf
	grep -q allow_other /etc/systemd/system/mmapfs@c.service.d/allow-other.conf ||
		fail "no allow_other drop-in documented in the unit"
	: > /etc/mmapfs/c.conf
	systemctl daemon-reload
	timeout 30 systemctl start mmapfs@c || fail "start failed"
	runuser -u "$user" -- ls "$(mnt c)" || fail "$user cannot list $(mnt c)"
	if runuser -u "$user" -- ls "$(mnt a)" 2>/dev/null; then fail "$user lists $(mnt a) without allow_other"; fi
	timeout 30 systemctl stop mmapfs@c
}

# A second user's channels under the unit (its bounding set must allow the
# daemon to act for them): two instances sharing one mmap_dir, with the
# documented allow_other drop-in, which has mkdir=all; the user makes a
# channel on each, handshakes and streams, all as that user. The areas are
# the user's, in the user's directory beside the mmap_dir; root's channel
# stays closed to them.
t_user_channel() {
	local i d uid ud e f sum want c bad
	id "$user" > /dev/null 2>&1 || useradd -M -s /bin/sh "$user" || fail "useradd"
	uid=$(id -u "$user")
	for i in e f; do
		printf 'mmap_dir = "/dev/shm/mmapfs-users";\nsize = "1M";\n' > "/etc/mmapfs/$i.conf"
		d=/etc/systemd/system/mmapfs@$i.service.d
		mkdir -p "$d"
		{ echo "[Service]"; grep -o 'Environment="OPTIONS=-o allow_other[^"]*"' "$unit" | head -n 1; } \
			> "$d/options.conf"
	done
	grep -q 'mkdir=all' "$d/options.conf" || fail "the documented drop-in: $(cat "$d/options.conf")"
	systemctl daemon-reload
	c=$(cursor)
	timeout 30 systemctl start mmapfs@e mmapfs@f || fail "start failed"
	e=$(mnt e)/uc f=$(mnt f)/uc
	runuser -u "$user" -- mkdir "$e" "$f" ||
		fail "$user: mkdir failed: $(journalctl -q -o cat -u mmapfs@e | grep -m 2 mkdir)"
	ud=/dev/shm/mmapfs-users/u$uid
	[ "$(stat -c '%a %U' "$ud")" = "700 $user" ] || fail "$ud: $(stat -c '%a %U' "$ud")"
	[ "$(stat -c '%a %U' "$ud"/*.mmap | sort -u)" = "600 $user" ] ||
		fail "areas: $(stat -c '%n %a %U' "$ud"/*.mmap)"
	runuser -u "$user" -- sh -c "cat $e/capabilities > $f/peer && cat $f/capabilities > $e/peer" ||
		fail "handshake as $user: $(grep -h error= "$e/status" "$f/status")"
	wait_for 5 state_is "$e" ready || fail "e: $(cat "$e/status")"
	wait_for 5 state_is "$f" ready || fail "f: $(cat "$f/status")"
	head -c $((2 * 1024 * 1024 + 7)) /dev/urandom > /var/tmp/usrc
	chmod 644 /var/tmp/usrc
	want=$(sha256sum < /var/tmp/usrc)
	sum=$(runuser -u "$user" -- sh -c "timeout 30 cat $f/data | sha256sum &
		timeout 30 dd if=/var/tmp/usrc of=$e/data bs=64k status=none; wait")
	[ "$sum" = "$want" ] || fail "sha256 $sum, want $want"
	echo "as $user: sha256 $sum"
	sum=$(runuser -u "$user" -- sh -c "timeout 30 cat $f/recv | sha256sum &
		timeout 30 dd if=/var/tmp/usrc of=$e/send status=none; wait")
	[ "$sum" = "$want" ] || fail "through send and recv: sha256 $sum, want $want"
	echo "as $user, through send and recv: sha256 $sum"
	# only the entry's own direction, for the channel's owner too
	runuser -u "$user" -- dd if="$e/send" iflag=nonblock count=0 2>&1 |
		grep -q "Permission denied" || fail "$user may read send"
	runuser -u "$user" -- dd of="$f/recv" oflag=nonblock count=0 2>&1 |
		grep -q "Permission denied" || fail "$user may write recv"
	mkdir "$(mnt e)/rootc"
	if runuser -u "$user" -- cat "$(mnt e)/rootc/status" 2>/dev/null; then fail "$user reads root's channel"; fi
	timeout 30 systemctl stop mmapfs@e mmapfs@f
	bad=$(bad_lines mmapfs@e "$c"; bad_lines mmapfs@f "$c")
	[ -z "$bad" ] || fail "journal: $bad"
}

# A user takes the default mmap_dir's name, /dev/shm/mmapfs-0, before the
# unit starts: the start succeeds, the journal names the squatter, root's
# and the user's areas go to a directory of the daemon's own beside it, and
# after kill -9 the restarted daemon finds it again and sweeps them.
t_squatted_default() {
	local d uid c own left
	id "$user" > /dev/null 2>&1 || useradd -M -s /bin/sh "$user" || fail "useradd"
	uid=$(id -u "$user")
	# an earlier instance with the default took it at start: left empty
	rmdir /dev/shm/mmapfs-0 2> /dev/null
	[ ! -e /dev/shm/mmapfs-0 ] || fail "/dev/shm/mmapfs-0 is in use: $(ls -la /dev/shm/mmapfs-0)"
	runuser -u "$user" -- mkdir -m 0777 /dev/shm/mmapfs-0 || fail "the squat failed"
	printf 'size = "1M";
' > /etc/mmapfs/q.conf
	d=/etc/systemd/system/mmapfs@q.service.d
	mkdir -p "$d"
	{ echo "[Service]"; grep -o 'Environment="OPTIONS=-o allow_other[^"]*"' "$unit" | head -n 1; } \
		> "$d/options.conf"
	systemctl daemon-reload
	c=$(cursor)
	timeout 30 systemctl start mmapfs@q ||
		fail "start failed: $(journalctl -q -o cat -u mmapfs@q | grep -m 2 mmapfs)"
	journalctl --sync 2>/dev/null
	journalctl -q -o cat -u mmapfs@q --after-cursor="$c" |
		grep -F "/dev/shm/mmapfs-0 is taken by uid $uid ($user)" ||
		fail "the squatter is not named: $(journalctl -q -o cat -u mmapfs@q | head -n 3)"
	mkdir "$(mnt q)/rootc" || fail "root's mkdir"
	runuser -u "$user" -- mkdir "$(mnt q)/userc" || fail "$user's mkdir"
	own=$(dirname "$(sed -n 's/^read.file=//p' "$(mnt q)/rootc/capabilities")")
	case $own in /dev/shm/mmapfs-0.??????) ;; *) fail "root's areas in $own" ;; esac
	[ "$(dirname "$(sed -n 's/^read.file=//p' "$(mnt q)/userc/capabilities")")" = "$own/u$uid" ] ||
		fail "$user's areas: $(grep file= "$(mnt q)/userc/capabilities")"
	kill -9 "$(prop mmapfs@q MainPID)"
	wait_for 15 eval '[ "$(prop mmapfs@q NRestarts)" = 1 ] && mountpoint -q "$(mnt q)"' ||
		fail "not back after kill -9"
	left=$(find /dev/shm/mmapfs-0.* -name '*.mmap' | wc -l)
	[ "$left" = 0 ] || fail "$left areas left after the restart"
	journalctl --sync 2>/dev/null
	journalctl -q -o cat -u mmapfs@q | grep -F "$own: removed 4 areas" || fail "no sweep logged"
	timeout 30 systemctl stop mmapfs@q
	rm -rf /dev/shm/mmapfs-0 /dev/shm/mmapfs-0.*
}

# The documented User= drop-in: the daemon runs as that user, mounts through
# fusermount3, and stops cleanly.
t_user_dropin() {
	local c pid bad d=/etc/systemd/system/mmapfs@u.service.d
	id "$user" > /dev/null 2>&1 || useradd -M -s /bin/sh "$user" || fail "useradd"
	mkdir -p "$d"
	documented_dropin "User=alice" > "$d/user.conf"
	grep -q "^User=$user" "$d/user.conf" || fail "no User= drop-in documented in the unit"
	cat "$d/user.conf"
	: > /etc/mmapfs/u.conf
	systemctl daemon-reload
	timeout 30 systemctl start mmapfs@u ||
		fail "start failed: $(journalctl -q -o cat -u mmapfs@u | grep -m 2 -E '^(mmapfs|fusermount|umount|mkdir)')"
	pid=$(prop mmapfs@u MainPID)
	[ "$(stat -c %U /proc/"$pid")" = "$user" ] || fail "the daemon runs as $(stat -c %U /proc/"$pid")"
	grep -Eq '^NoNewPrivs:[[:space:]]*0$' /proc/"$pid"/status || fail "$(grep NoNewPrivs /proc/"$pid"/status)"
	mounted "$(mnt u)" || fail "not mounted"
	# (root itself may not enter a FUSE mount of another user without allow_other)
	[ "$(runuser -u "$user" -- stat -c %U "$(mnt u)")" = "$user" ] || fail "the mount is not $user's"
	runuser -u "$user" -- mkdir "$(mnt u)/mine" || fail "$user cannot make a channel"
	runuser -u "$user" -- grep -q '^state=offered' "$(mnt u)/mine/status" || fail "status"
	c=$(cursor)
	timeout 30 systemctl stop mmapfs@u || fail "stop failed"
	! mounted "$(mnt u)" || fail "still mounted after stop"
	bad=$(bad_lines mmapfs@u "$c")
	[ -z "$bad" ] || fail "journal: $bad"
}

# The sample configuration, copied as is, starts and touches no ivshmem file.
t_sample_as_is() {
	cp /usr/share/doc/mmapfs/mmapfs.conf.sample /etc/mmapfs/s.conf
	timeout 30 systemctl start mmapfs@s ||
		fail "start failed: $(journalctl -q -o cat -u mmapfs@s | grep -m 2 -E '^(mmapfs|fusermount|umount|mkdir)')"
	ls "$(mnt s)"
	[ "$(stat -c '%a %U %G %s' /dev/shm/shmem-xpra)" = "660 root kvm 0" ] ||
		fail "/dev/shm/shmem-xpra is now $(stat -c '%a %U %G %s' /dev/shm/shmem-xpra)"
	timeout 30 systemctl stop mmapfs@s
}

t_stop_plain() {
	local c bad
	c=$(cursor)
	timeout 30 systemctl stop mmapfs@a || fail "stop failed"
	! mounted "$(mnt a)" || fail "still mounted"
	[ "$(prop mmapfs@a ActiveState)" = inactive ] || fail "state $(prop mmapfs@a ActiveState)"
	bad=$(bad_lines mmapfs@a "$c")
	[ -z "$bad" ] || fail "journal: $bad"
}

# Purging the packages, with an instance running and another enabled: the
# running one is stopped and unmounted, the enablement link goes, and no
# file of the packages is left; what stays is the administrator's (the
# configurations in /etc/mmapfs, the drop-ins).
t_purge() {
	local left
	dpkg-query -L mmapfs libmmapfs0 libmmapfs-dev python3-mmapfs | sort -u > /var/tmp/pkgfiles
	timeout 30 systemctl start mmapfs@a || fail "start mmapfs@a"
	systemctl enable mmapfs@b 2>&1 || fail "enable mmapfs@b"
	timeout 120 dpkg --purge python3-mmapfs libmmapfs-dev mmapfs libmmapfs0 > /var/tmp/purge.log 2>&1 ||
		fail "dpkg --purge: $(tail -n 3 /var/tmp/purge.log)"
	cat /var/tmp/purge.log
	[ "$(prop mmapfs@a ActiveState)" != active ] || fail "mmapfs@a still active"
	! mounted "$(mnt a)" || fail "$(mnt a) still mounted"
	! ls /etc/systemd/system/*.wants/mmapfs@* 2> /dev/null || fail "enablement links left"
	[ ! -e /run/mmapfs ] || fail "/run/mmapfs left: $(ls /run/mmapfs)"
	# the packages' files (their own directories too; not /usr/bin and such)
	left=$(while read -r f; do
		if [ -d "$f" ]; then
			[[ $f != *mmapfs* ]] || echo "$f"
		elif [ -e "$f" ] || [ -L "$f" ]; then
			echo "$f"
		fi
	done < /var/tmp/pkgfiles)
	[ -z "$left" ] || fail "left: $left"
	# and nothing else by that name, but the administrator's and the test's
	left=$(find / -xdev -name '*mmapfs*' \
		! -path '/etc/mmapfs' ! -path '/etc/mmapfs/*' \
		! -path '/etc/systemd/system/mmapfs@*.service.d*' \
		! -path /etc/tmpfiles.d/mmapfs.conf \
		! -path '/var/lib/mmapfs-test*' ! -path '/usr/local/*' \
		! -name 'mmapfs-checks*' ! -path /.mmapfs-root -print)
	[ -z "$left" ] || fail "left: $left"
	echo "kept, the administrator's: $(ls -d /etc/mmapfs/* /etc/systemd/system/mmapfs@*.service.d | tr '\n' ' ')"
}

check tmpfiles-at-boot t_tmpfiles_at_boot
check enable-now-two-instances t_enable_now
check run-mmapfs-mode-0755 t_runtime_dir_mode
check handshake t_handshake
check stream-8MiB-sha256 t_stream
check fifo-dd-512-sha256-no-ptrace t_fifo
check serial-unit-loads t_serial_unit
if packaged; then
	check installed-library-c-and-python t_library
fi
check stop-with-blocked-reader t_stop_clean
check restart-after-kill-9 t_kill9_restart
check bad-config-fails-fast-no-restart t_bad_config
check allow-other-second-user t_allow_other
check user-dropin t_user_dropin
check second-user-channel t_user_channel
check squatted-default-mmap-dir t_squatted_default
check sample-config-as-is t_sample_as_is
check stop-clean-journal t_stop_plain
if packaged; then
	check purge-leaves-nothing t_purge
fi

journalctl --sync 2>/dev/null
journalctl -q -o short-precise -u 'mmapfs@*' > "$out/journal.txt"
echo DONE >> "$res"
