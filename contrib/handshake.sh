#!/usr/bin/env bash
# handshake.sh: run the mmapfs handshake of one channel over a socket (with
# socat), then stream a file through the channel. The same wire protocol and
# options as handshake.py, so either script can face the other.
#
# Wire protocol (lines of text):
#   both       mmapfs-handshake 1
#   creator    the offer (cat capabilities), then a line "."
#   attacher   the answer (cat capabilities), then "."  (or "! reason", ".")
#   creator    "ok"  (or "! reason")
#
# Needs bash 4.3+, socat and coreutils (cat, mkdir, sleep).
set -u

MAGIC="mmapfs-handshake 1"
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

Paths in unix: addresses may not contain ':' or ',' (socat syntax); use
socat:ADDRESS with socat's escapes for those.
Exit status: 0 on success, 1 on failure (the reason is on stderr), 2 on bad
usage.
EOF
}

die() { echo "$prog: $*" >&2; exit 1; }
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
in='' out='' sock_pid=''
open_socket() {
	local addr
	if [ -n "$listen" ]; then
		addr=$(socat_addr "$listen" listen) || exit
		say "listening on $listen"
	else
		addr=$(socat_addr "$connect" connect) || exit
		say "connecting to $connect"
	fi
	# -t: after we close our side, give the peer's last words time to arrive
	coproc SOCK { exec socat -t "$timeout" - "$addr"; }
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

send() { printf '%s\n' "$@" >&"$out" || die "the connection broke"; }
recv() {	# one line into $line
	IFS= read -r -t "$timeout" line <&"$in" && return 0
	[ $? -gt 128 ] && die "the peer said nothing within $timeout s"
	if [ -n "$listen" ]; then
		die "the peer closed the connection (or nobody connected to $listen)"
	fi
	die "the peer closed the connection (or $connect did not answer)"
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

open_socket
send "$MAGIC"
recv
[ "$line" = "$MAGIC" ] || die "the peer does not speak '$MAGIC' (it said '${line:0:60}')"
if [ "$role" = creator ]; then
	send_caps
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
