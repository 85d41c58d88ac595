#!/bin/sh
# handshake-serial.sh: the attacher's side of the mmapfs handshake over a
# serial line, for a VM guest that has only a POSIX shell (busybox is
# enough: no Python, no socat). The host, the creator, runs handshake.py or
# handshake.sh on the other end of the line, a unix socket there.
#
#   handshake-serial.sh CHANNEL PORT [TIMEOUT]
#
# CHANNEL: the guest's channel directory (MOUNTPOINT/NAME, an attacher);
# PORT: the serial line, a virtio-serial port (/dev/virtio-ports/NAME) or a
# UART (/dev/ttyS1); TIMEOUT: seconds for each message and for becoming
# ready (30; under dash, wrap the script in timeout(1) instead).
# Start the host's side first: QEMU discards what the guest sends while
# nobody is connected to the socket. A UART must be raw and stay open from
# boot, or bytes arriving while nobody has it open are lost: under systemd,
#   systemctl enable --now mmapfs-serial@ttyS1
# (the unit installed with mmapfs); without it, from a boot script,
#   sleep 2147483647 < /dev/ttyS1 & stty -F /dev/ttyS1 raw -echo
#
# Run again, it is the recovery tool: on a pair that is ready with a live
# peer it changes nothing and says so ("CHANNEL: already ready, peer alive:
# nothing to do"); after a restart of either side (the guest's daemon, the
# VM, the host's daemon) it takes the host's new offer: run the handshake
# again on both sides, the host's side first.
#
# Wire protocol, version 2 (lines of text; that of handshake.py and
# handshake.sh):
#   attacher   mmapfs-handshake 2   (the hello: the highest version it speaks)
#   creator    mmapfs-handshake V   (V: the lower of the two; both speak V)
#   both       (version 2) "state ready": this end is ready and sees its
#              peer alive; or "state new": anything else
#   if both sent "state ready", nothing more: the channel works as it is
#   creator    the offer (capabilities), then a line "."  (or "! reason", ".")
#   attacher   the answer (capabilities), then "."  (or "! reason", ".")
#   creator    "ok"  (or "! reason")
# Versions. Each end says "mmapfs-handshake N", N the highest version it
# speaks; both then speak the lower of the two, and a script speaks every
# version from 1 up to its own. The attacher speaks first; the creator never
# does, it answers. Scripts older than this rule (version 1, and the first
# scripts of version 2) send their own hello at once and accept no other, so
# the attacher first listens for one (HELLO_WAIT, 1 s; under dash through
# timeout(1)): a hello heard is answered with the lower version, as the
# creator does. Each end says on stderr, once, that its peer speaks version
# 1. Version 1 is version 2 without the state lines: every run is a full
# handshake, as if the other end had said "state new". A hello of version 1
# that arrives after this script spoke (the host's side started after the
# guest's, against the advice above) is answered with "mmapfs-handshake 1".
# A new version keeps these rules and adds its own lines after the hello.
# The guest's data file must be closed for a new offer to be taken.
# Exit status: 0 once the channel is ready (or was already), 1 on failure
# (reason on stderr).
[ $# -ge 2 ] || { echo "usage: ${0##*/} CHANNEL PORT [TIMEOUT]" >&2; exit 2; }
chan=${1%/} port=$2 t=${3:-30}
# the highest version of the wire protocol this script speaks, and its hello
VERSION=2 HELLO="mmapfs-handshake"
# how long it listens for the hello of an older host script (which sends it
# at once) before it speaks first
HELLO_WAIT=1

fail() { echo "${0##*/}: $*" >&2; exit 1; }
# busybox sh, bash, ksh bound each read; dash's read has no -t (exit 2):
# there, bound the whole script with timeout(1)
# shellcheck disable=SC3045,SC2034 # the probe itself
(read -r -t 1 x </dev/null) 2>/dev/null
if [ $? -eq 2 ]; then wait_opt=''; else wait_opt="-t $t"; fi
recv() {	# one line into $line, within $t seconds
	# shellcheck disable=SC2086,SC2229 # wait_opt: none, or two words
	IFS= read -r $wait_opt line <&3 || fail "the peer said nothing within $t s"
}

[ -d "$chan" ] || fail "$chan: no such channel"
exec 3<>"$port" || fail "cannot open $port"
stty raw -echo <&3 2>/dev/null	# a UART; a virtio port is no tty

# the hellos: the version both ends speak (see Versions above)
line=''
if [ -n "$wait_opt" ]; then
	# shellcheck disable=SC3045 # read -t: probed above
	IFS= read -r -t "$HELLO_WAIT" line <&3
else	# dash: a shell of its own, which reads byte by byte, under timeout(1)
	# shellcheck disable=SC2016 # the inner shell expands them
	line=$(timeout "$HELLO_WAIT" sh -c 'IFS= read -r l; s=$?; printf %s "$l"; exit $s' <&3)
fi
heard=$?
spoke=''
if [ $heard -ne 0 ]; then	# nothing (or a cut line: keep its start)
	partial=$line
	printf '%s %s\n' "$HELLO" "$VERSION" >&3
	spoke=$VERSION
	recv
	line=$partial$line
fi
v=${line#"$HELLO "}
[ "$v" != "$line" ] || fail "the peer does not speak the mmapfs handshake (it said '$line')"
case $v in ''|0*|*[!0-9]*|??????????*)
	fail "the peer does not speak the mmapfs handshake (it said '$line')" ;;
esac
if [ "$v" -lt "$VERSION" ]; then version=$v; else version=$VERSION; fi
if [ -z "$spoke" ] || [ "$version" = 1 ]; then
	printf '%s %s\n' "$HELLO" "$version" >&3
fi
# ready: state=ready and peer=alive; new: anything else
if grep -q '^state=ready$' "$chan/status" && grep -q '^peer=alive$' "$chan/status"; then
	mine=ready
else
	mine=new
fi
if [ "$version" = 1 ]; then
	echo "${0##*/}: the other end runs an older handshake script (version 1):" \
		"speaking version 1, a full handshake every time; upgrade it" >&2
	line="state new"	# no state lines: always the whole handshake
else
	printf 'state %s\n' "$mine" >&3
	recv
	case $line in
	"state ready"|"state new") ;;
	*) fail "the peer did not say its state (it said '$line')" ;;
	esac
fi
if [ "$mine" = ready ] && [ "$line" = "state ready" ]; then
	echo "${0##*/}: $chan: already ready, peer alive: nothing to do" >&2
	exit 0
fi

offer=''
recv
while [ "$line" != . ]; do
	offer="$offer$line
"
	recv
done
case $offer in '!'*) fail "the peer failed: $offer" ;; esac

# one write, so that a refusal comes back from write() itself
if ! printf '%s' "$offer" > "$chan/peer"; then
	why=$(grep '^error=' "$chan/status")
	printf '! %s: %s\n.\n' "$chan/peer refused the offer" "$why" >&3
	fail "$chan/peer refused the offer: $why"
fi
cat "$chan/capabilities" >&3
printf '.\n' >&3
recv
[ "$line" = ok ] || fail "the creator refused the answer: $line"

i=0
until grep -q '^state=ready$' "$chan/status"; do
	i=$((i + 1))
	[ $i -le $((t * 10)) ] || fail "$chan: not ready after $t s"
	sleep 0.1
done
