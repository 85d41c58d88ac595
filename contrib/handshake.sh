#!/usr/bin/env bash
# handshake.sh: run the mmapfs handshake of one channel over a socket (with
# socat), then stream a file through the channel. The same wire protocol and
# options as handshake.py, so either script can face the other.
#
# Run again, it is the recovery tool: on a pair that is ready with a live
# peer it changes nothing and says so ("CHANNEL: already ready, peer alive:
# nothing to do"); on a pair whose peer died or restarted it performs the
# new handshake (docs/PROTOCOL.md, "Restarts"). So after restarting either
# side, an administrator runs the handshake again, on both sides.
#
# Wire protocol, version 2 (lines of text; that of handshake.py and
# handshake-serial.sh):
#   attacher   mmapfs-handshake 2   (the hello: the highest version it speaks)
#   creator    mmapfs-handshake V   (V: the lower of the two; both speak V)
#   both       (version 2) "state ready": this end is ready and sees its
#              peer alive; or "state new": anything else
#   if both sent "state ready", nothing more: the channel works as it is
#   creator    the offer (cat capabilities), then a line "."
#              (or "! reason", ".")
#   attacher   the answer (cat capabilities), then "."  (or "! reason", ".")
#   creator    "ok"  (or "! reason")
# Versions. Each end says "mmapfs-handshake N", N the highest version it
# speaks; both then speak the lower of the two, and a script speaks every
# version from 1 up to its own. The attacher speaks first; the creator never
# does, it answers. Scripts older than this rule (version 1, and the first
# scripts of version 2) send their own hello at once and accept no other, so
# the attacher first listens for one (HELLO_WAIT, 1 s): a hello heard is
# answered with the lower version, as the creator does. Each end says on
# stderr, once, that its peer speaks version 1. Version 1 is version 2
# without the state lines: every run is a full handshake, as if the other
# end had said "state new" (so on a ready pair it offers the current
# session, which the old attacher may refuse with EBADMSG: run it only after
# a restart). A hello of version 1 that reaches an attacher after it spoke
# (a creator started late, over a serial line that dropped the attacher's
# hello) is answered with "mmapfs-handshake 1". A new version keeps these
# rules and adds its own lines after the hello.
# Reading a creator's capabilities while its peer is dead starts a new
# session (fresh tokens, emptied rings); the attacher takes that offer
# through peer. A creator that still sees its peer alive while the other
# end says "state new" (a peer killed less than a second ago, and
# restarted) first waits for the peer to be marked dead. Both data files
# must be closed.
#
# Needs bash 4.3+, socat and coreutils (cat, mkdir, sleep).
set -u

# the highest version of the wire protocol this script speaks, and its hello
VERSION=2
HELLO="mmapfs-handshake"
# how long an attacher listens for the hello of an older creator (which
# sends it at once) before it speaks first
HELLO_WAIT=1
# how long a creator waits for a peer that the other end says is new to be
# marked dead (the daemon does it within 1.25 s of the last heartbeat)
DEATH_WAIT=5
prog=${0##*/}

usage() {
	cat <<EOF
usage: $prog (--listen ADDR | --connect ADDR) [--role creator|attacher]
       [--send FILE | --receive FILE] [--timeout SEC] [-v] CHANNEL

Run the mmapfs handshake of CHANNEL (a directory MOUNTPOINT/NAME, made with
mkdir if missing) with the other end over a socket, then optionally stream a
file through CHANNEL/data. The socket only carries the offer, the answer and
a verdict; the data goes through shared memory.

  --listen ADDR     wait for the other end: unix:PATH, tcp:[HOST:]PORT,
                    vsock:PORT, or socat:ADDRESS (any socat address)
  --connect ADDR    reach the other end: unix:PATH, tcp:HOST:PORT,
                    vsock:CID:PORT, or socat:ADDRESS (retried until --timeout)
  --role ROLE       creator or attacher (default: the role in CHANNEL/status;
                    a channel made by mkdir is a creator, so pass
                    --role attacher on that side)
  --send FILE       after the handshake, write FILE (-: stdin) into data
  --receive FILE    after the handshake, copy data into FILE (-: stdout)
                    until the other end closes it
  --timeout SEC     for connecting, each message and becoming ready (30)
  -v, --verbose     say each step on stderr
  -h, --help        this help

Example, host (creator) and guest (attacher) over vsock:
  guest\$ $prog --role attacher --listen vsock:10000 --receive out.bin /run/mmapfs/vm0/from-host
  host\$  $prog --connect vsock:3:10000 --send in.bin /run/mmapfs/vm0/to-guest

Run again on both sides, it is the recovery after a restart of either side:
a pair that is ready with a live peer is left as it is ("already ready, peer
alive: nothing to do"), a dead or restarted peer gets the new handshake.

Paths in unix: addresses may not contain ':' or ',' (socat syntax); use
socat:ADDRESS with socat's escapes for those.
Exit status: 0 on success, 1 on failure (the reason is on stderr), 2 on bad
usage.
EOF
}

die() { socat_errors; echo "$prog: $*" >&2; exit 1; }
bad_usage() { echo "$prog: $*" >&2; echo "try '$prog --help'" >&2; exit 2; }
say() { [ "$verbose" = 1 ] && echo "$prog: $*" >&2; return 0; }

listen='' connect='' role='' send='' receive='' timeout=30 verbose=0 chan=''
while [ $# -gt 0 ]; do
	case $1 in
	-h|--help) usage; exit 0 ;;
	--listen|--connect|--role|--send|--receive|--timeout)
		[ $# -ge 2 ] || bad_usage "$1 needs a value"
		declare "${1#--}=$2"; shift 2 ;;
	--listen=*|--connect=*|--role=*|--send=*|--receive=*|--timeout=*)
		opt=${1%%=*}; declare "${opt#--}=${1#*=}"; shift ;;
	-v|--verbose) verbose=1; shift ;;
	--) shift; break ;;
	-*) bad_usage "unknown option $1" ;;
	*) [ -z "$chan" ] || bad_usage "one CHANNEL only"; chan=$1; shift ;;
	esac
done
if [ $# -gt 0 ]; then
	if [ -n "$chan" ] || [ $# -ne 1 ]; then bad_usage "one CHANNEL only"; fi
	chan=$1
fi
[ -n "$chan" ] || bad_usage "no CHANNEL"
if { [ -n "$listen" ] && [ -n "$connect" ]; } || { [ -z "$listen" ] && [ -z "$connect" ]; }; then
	bad_usage "give one of --listen and --connect"
fi
[ -z "$send" ] || [ -z "$receive" ] || bad_usage "--send or --receive, not both"
case $role in ''|creator|attacher) ;; *) bad_usage "--role is creator or attacher" ;; esac
case $timeout in ''|*[!0-9.]*|*.*.*) bad_usage "--timeout takes seconds" ;; esac
command -v socat >/dev/null || die "socat is needed (apt-get install socat)"
chan=${chan%/}

# unix:/tcp:/vsock:/socat: -> a socat address
socat_addr() {	# ADDR listen|connect
	local a=$1 rest=${1#*:} host port tries
	tries=${timeout%.*}
	tries=$(( ${tries:-0} * 10 + 10 ))	# every 0.1 s until the timeout
	case $a:$2 in
	unix:?*:listen) echo "UNIX-LISTEN:$rest,unlink-early,unlink-close" ;;
	unix:?*:connect) echo "UNIX-CONNECT:$rest,retry=$tries,interval=0.1" ;;
	tcp:*:listen)
		port=${rest##*:}; host=${rest%"$port"}; host=${host%:}
		echo "TCP-LISTEN:$port,reuseaddr${host:+,bind=$host}" ;;
	tcp:*:*:connect) echo "TCP:$rest,retry=$tries,interval=0.1" ;;
	vsock:*:listen) echo "VSOCK-LISTEN:${rest##*:}" ;;
	vsock:*:*:connect) echo "VSOCK-CONNECT:$rest,retry=$tries,interval=0.1" ;;
	socat:?*:*) echo "$rest" ;;
	*) bad_usage "bad socket address '$a': use unix:PATH, tcp:HOST:PORT, vsock:CID:PORT (vsock:PORT / tcp:PORT to listen) or socat:ADDRESS" ;;
	esac
}

status_of() {	# KEY -> its value in $chan/status
	local line
	while IFS= read -r line; do
		[ "${line%%=*}" = "$1" ] && { echo "${line#*=}"; return 0; }
	done < "$chan/status"
	return 1
}

# ---- the socket: a socat coprocess, its pipes duplicated to fds in/out ----
# socat logs (-d -d) into a deleted file that fd $log holds: its "starting
# data transfer loop" says when the connection is made; its errors are shown
# when the script fails.
in='' out='' sock_pid='' log=''
socat_errors() {
	[ -n "$log" ] || return 0
	sed -n 's/^.* socat\[[0-9]*\] E /socat: /p' "/dev/fd/$log" >&2
}
open_socket() {
	local addr
	if [ -n "$listen" ]; then
		addr=$(socat_addr "$listen" listen) || exit
		say "listening on $listen"
	else
		addr=$(socat_addr "$connect" connect) || exit
		say "connecting to $connect"
	fi
	local tmp
	tmp=$(mktemp "${TMPDIR:-/tmp}/handshake.sh.XXXXXX") || die "cannot make a temporary file"
	exec {log}<>"$tmp"
	rm -f "$tmp"
	# -t: after we close our side, give the peer's last words time to arrive;
	# shut-close: once the peer has closed its side, so is our input (an end
	# of file at once, not after -t)
	coproc SOCK { exec socat -d -d -lf "/dev/fd/$log" -t "$timeout" -,shut-close "$addr"; }
	# shellcheck disable=SC2153 # SOCK_PID is set by coproc
	sock_pid=$SOCK_PID
	# our own copies, which outlive the coprocess; the originals closed, so
	# that closing $out is an end of file for socat
	exec {in}<&"${SOCK[0]}" {out}>&"${SOCK[1]}"
	eval "exec ${SOCK[0]}<&- ${SOCK[1]}>&-"
}
close_socket() {	# let socat deliver what we sent, then let it go
	local i=0
	[ -n "$out" ] && exec {out}>&-
	[ -n "$in" ] && exec {in}<&-
	out='' in=''
	[ -n "$log" ] && exec {log}>&-
	log=''
	[ -n "$sock_pid" ] || return 0
	while kill -0 "$sock_pid" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.05
		i=$((i + 1))
	done
	kill "$sock_pid" 2>/dev/null
	wait "$sock_pid" 2>/dev/null
	sock_pid=''
	return 0
}
trap close_socket EXIT
wait_connected() {	# until socat has made the connection
	local end=$((SECONDS + ${timeout%.*} + 1))
	until grep -q 'starting data transfer loop' "/dev/fd/$log"; do
		kill -0 "$sock_pid" 2>/dev/null ||
			return 0	# socat is gone: the next recv says so
		if [ $SECONDS -ge $end ]; then
			[ -n "$listen" ] && die "nobody connected to $listen within $timeout s"
			die "cannot connect to $connect within $timeout s"
		fi
		sleep 0.05
	done
}

send() { printf '%s\n' "$@" >&"$out" || die "the connection broke"; }
silent='' closed_hint=''
recv() {	# one line into $line
	IFS= read -r -t "$timeout" line <&"$in" && return 0
	[ $? -gt 128 ] && die "the peer said nothing within $timeout s$silent"
	if [ -n "$listen" ]; then
		die "the peer closed the connection (or nobody connected to $listen)$closed_hint"
	fi
	die "the peer closed the connection (or $connect did not answer)$closed_hint"
}
recv_block() {	# lines up to "." into $block; "! reason" fails
	local first=1
	block=
	while recv && [ "$line" != . ]; do
		if [ $first = 1 ] && [ "${line#!}" != "$line" ]; then
			reason=${line#!}
			while recv && [ "$line" != . ]; do :; done
			die "the peer failed:${reason}"
		fi
		first=0
		block+=$line$'\n'
	done
}
send_caps() {
	local caps
	caps=$(cat "$chan/capabilities") || die "cannot read $chan/capabilities"
	printf '%s\n.\n' "$caps" >&"$out" || die "the connection broke"
}
my_state() {	# ready: state=ready and peer=alive; new: anything else
	local st='' peer='' line
	while IFS= read -r line; do
		case $line in
		state=*) st=${line#state=} ;;
		peer=*) peer=${line#peer=} ;;
		esac
	done < "$chan/status" || return 1
	if [ "$st" = ready ] && [ "$peer" = alive ]; then echo ready; else echo new; fi
}
wait_peer_gone() {	# the other end is new, our peer still beats: a peer
	# killed a moment ago. Wait (bounded) until it is marked dead, so that
	# reading capabilities starts a new session.
	local t=${timeout%.*} end
	t=${t:-0}
	[ "$t" -lt "$DEATH_WAIT" ] || t=$DEATH_WAIT
	end=$((SECONDS + t + 1))
	say "the other end is new, this one still sees its peer alive: waiting for it to be marked dead"
	while [ "$(my_state)" = ready ]; do
		if [ $SECONDS -ge $end ]; then
			say "the peer still beats: offering the current session"
			return 0
		fi
		sleep 0.05
	done
}
send_offer() {	# the creator's capabilities: a new session if its peer is dead
	local caps st peer why
	caps=$(cat "$chan/capabilities") || die "cannot read $chan/capabilities"
	st=$(status_of state) || st=''
	peer=$(status_of peer) || peer=''
	if [ "$st" = error ] || { [ "$st" = ready ] && [ "$peer" != alive ] && [ "$peer" != unknown ]; }; then
		# no new session started (data still open, a fault): say why
		why=$(status_of error) || why=''
		reason="$chan: no new session: ${why:-state $st}"
		send "! $reason" .
		die "$reason"
	fi
	printf '%s\n.\n' "$caps" >&"$out" || die "the connection broke"
}
write_peer() {	# TEXT: one write, so that the daemon's refusal comes back here
	local err
	if ! err=$( { printf '%s' "$1" > "$chan/peer"; } 2>&1 ); then
		err=${err##*: }
		why=$(status_of error) || why=
		reason="$chan/peer: ${err:-write failed}${why:+: $why}"
		return 1
	fi
}

[ -d "$chan" ] || { mkdir "$chan" || die "cannot make $chan"; say "made $chan"; }
[ -n "$role" ] || role=$(status_of role) || die "cannot read $chan/status"

hello_version() {	# LINE: the version a hello names, or fail
	local v=${1#"$HELLO "}
	[ "$1" != "$v" ] || return 1
	case $v in ''|0*|*[!0-9]*|??????????*) return 1 ;; esac
	echo "$v"
}

# the hellos: the version both ends speak (the header's "Versions")
open_socket
spoke='' partial=''
if [ "$role" = attacher ]; then
	wait_connected
	if IFS= read -r -t "$HELLO_WAIT" line <&"$in"; then
		heard=1
	elif [ $? -gt 128 ]; then
		heard='' partial=$line	# (a line cut by the wait: its start)
	else
		heard=1 line=''		# the end of the connection: recv says it
	fi
	if [ -z "$heard" ]; then
		send "$HELLO $VERSION"
		spoke=$VERSION
		say "the creator said nothing: said $HELLO $VERSION first"
		recv
		line=$partial$line
	elif [ -z "$line" ]; then
		recv
	fi
else
	silent=" (the attacher speaks first: is the other end an attacher, started after this one?)"
	recv
	silent=''
fi
theirs_v=$(hello_version "$line") ||
	die "the peer does not speak the mmapfs handshake (it said '${line:0:60}', not '$HELLO N')"
version=$(( theirs_v < VERSION ? theirs_v : VERSION ))
if [ -z "$spoke" ] || [ "$version" = 1 ]; then
	send "$HELLO $version"
fi
if [ -n "$spoke" ] && [ "$version" = 1 ]; then
	# an old creator that read our hello before it sent its own refused it
	closed_hint=" (a creator of version 1 refuses a hello it reads before it sends its own: run both again, the creator's side first)"
fi
say "the other end speaks version $theirs_v: speaking version $version"
[ "$version" != 1 ] || echo "$prog: the other end runs an older handshake script (version 1):" \
	"speaking version 1, a full handshake every time; upgrade it" >&2
mine=$(my_state) || die "cannot read $chan/status"
if [ "$version" = 1 ]; then
	theirs=new		# no state lines: always the whole handshake
else
	send "state $mine"
	recv
	case $line in
	"state ready"|"state new") theirs=${line#state } ;;
	*) die "the peer did not say its state (it said '${line:0:60}')" ;;
	esac
fi
say "this end: state $mine; the other end: state $theirs"
if [ "$mine" = ready ] && [ "$theirs" = ready ]; then
	close_socket
	echo "$prog: $chan: already ready, peer alive: nothing to do" >&2
elif [ "$role" = creator ]; then
	[ "$mine" = ready ] && wait_peer_gone
	send_offer
	say "offer sent"
	recv_block
	if ! write_peer "$block"; then
		send "! $reason"
		die "$reason"
	fi
	send ok
	say "answer accepted"
else
	recv_block
	if ! write_peer "$block"; then
		send "! $reason" .
		die "$reason"
	fi
	send_caps
	say "offer accepted, answer sent"
	recv
	[ "$line" = ok ] || die "the creator refused the answer: ${line#!}"
fi
close_socket

# both ends: wait until the channel is ready
deadline=$((SECONDS + ${timeout%.*} + 1))
while :; do
	state=$(status_of state) || die "cannot read $chan/status"
	[ "$state" = ready ] && break
	[ "$state" = error ] && die "$chan: error: $(status_of error)"
	[ $SECONDS -lt $deadline ] || die "$chan: state $state, not ready after $timeout s"
	sleep 0.05
done
say "$chan is ready"

if [ -n "$send" ]; then
	if [ "$send" = - ]; then cat > "$chan/data"; else cat -- "$send" > "$chan/data"; fi \
		|| die "sending $send failed"
	say "sent $send"
elif [ -n "$receive" ]; then
	if [ "$receive" = - ]; then cat "$chan/data"; else cat "$chan/data" > "$receive"; fi \
		|| die "receiving into $receive failed"
	say "received into $receive"
fi
exit 0
