#!/usr/bin/env python3
"""Run the mmapfs handshake of one channel over a socket, then stream a file.

Each end of a channel runs this script on its own mount: the creator (it made
the areas and offers them) and the attacher (it opens them and answers). One
end listens, the other connects; which one does which is independent of the
role (xpra's server, the attacher, usually listens). Only text crosses the
socket: the offer, the answer and a verdict. The data itself then goes
through shared memory, as `MOUNT/NAME/data`.

Run again, it is the recovery tool: on a pair that is ready with a live
peer it changes nothing and says so ("CHANNEL: already ready, peer alive:
nothing to do"); on a pair whose peer died or restarted it performs the
new handshake (docs/PROTOCOL.md, "Restarts"). So after restarting either
side, an administrator runs the handshake again, on both sides.

Wire protocol, version 2 (lines of text; the same as handshake.sh and
handshake-serial.sh):

    attacher   mmapfs-handshake 2        (the hello: the highest version it speaks)
    creator    mmapfs-handshake V        (V: the lower of the two; both speak V)
    both       (version 2) "state ready": this end is ready and sees its peer
               alive; or "state new": anything else
    if both sent "state ready", nothing more: the channel works as it is
    creator    the offer: `cat capabilities`, then a line "."
               (or "! reason", ".")
    attacher   the answer: `cat capabilities`, then "."   (or "! reason", ".")
    creator    "ok"   (or "! reason")

Versions. Each end says "mmapfs-handshake N", N the highest version it
speaks; both then speak the lower of the two, and a script speaks every
version from 1 up to its own. The attacher speaks first; the creator never
does, it answers. Scripts older than this rule (version 1, and the first
scripts of version 2) send their own hello at once and accept no other, so
the attacher first listens for one (HELLO_WAIT, 1 s): a hello heard is
answered with the lower version, as the creator does. Each end says on
stderr, once, that its peer speaks version 1. Version 1 is version 2
without the state lines: every run is a full handshake, as if the other end
had said "state new" (so on a ready pair it offers the current session,
which the old attacher may refuse with EBADMSG: run it only after a
restart). A hello of version 1 that reaches an attacher after it spoke (a
creator started late, over a serial line that dropped the attacher's
hello) is answered with "mmapfs-handshake 1". A new version keeps these
rules and adds its own lines after the hello.

Reading a creator's capabilities while its peer is dead starts a new
session (fresh tokens, emptied rings); the attacher takes that offer
through `peer`. A creator that still sees its peer alive while the other
end says "state new" (a peer killed less than a second ago, and restarted)
first waits for the peer to be marked dead. Both data files must be closed.

Python 3.6+, standard library only.
"""
import argparse
import errno
import os
import re
import select
import socket
import sys
import time

# the highest version of the wire protocol this script speaks, and its hello
VERSION = 2
HELLO = "mmapfs-handshake"
# how long an attacher listens for the hello of an older creator (which sends
# it at once) before it speaks first
HELLO_WAIT = 1.0
# how long a creator waits for a peer that the other end says is new to be
# marked dead (the daemon does it within 1.25 s of the last heartbeat)
DEATH_WAIT = 5.0
CHUNK = 1 << 16


class Failure(Exception):
    """A handshake step failed; the message says which and why."""


def log(args, msg):
    if args.verbose:
        print(f"handshake: {msg}", file=sys.stderr)


# ---- the socket ----

def parse_addr(text, listen):
    """unix:PATH, tcp:HOST:PORT (listen: tcp:[HOST:]PORT), vsock:CID:PORT
    (listen: vsock:PORT) -> (family, address)."""
    kind, _, rest = text.partition(":")
    try:
        if kind == "unix" and rest:
            return socket.AF_UNIX, rest
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            if listen and not host:
                host = "0.0.0.0"
            return socket.AF_INET, (host.strip("[]"), int(port))
        if kind == "vsock":
            if not hasattr(socket, "AF_VSOCK"):
                raise Failure("this Python has no AF_VSOCK support")
            cid, _, port = rest.rpartition(":")
            if listen and not cid:
                return socket.AF_VSOCK, (socket.VMADDR_CID_ANY, int(port))
            return socket.AF_VSOCK, (int(cid), int(port))
    except ValueError:
        pass
    raise Failure(f"bad socket address {text!r}: use unix:PATH, tcp:HOST:PORT "
                  "or vsock:CID:PORT (vsock:PORT / tcp:PORT to listen)")


def open_socket(args):
    deadline = time.monotonic() + args.timeout
    if args.listen:
        family, addr = parse_addr(args.listen, True)
        srv = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                try:
                    os.unlink(addr)
                except FileNotFoundError:
                    pass
            else:
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(addr)
            srv.listen(1)
            srv.settimeout(args.timeout)
            log(args, f"listening on {args.listen}")
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                raise Failure(f"nobody connected to {args.listen} within {args.timeout} s")
        finally:
            srv.close()
            if family == socket.AF_UNIX:
                try:
                    os.unlink(addr)
                except OSError:
                    pass
    else:
        family, addr = parse_addr(args.connect, False)
        while True:
            conn = socket.socket(family, socket.SOCK_STREAM)
            try:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                conn.connect(addr)
                break
            except OSError as e:
                conn.close()
                # the listener may not be up yet: retry until the deadline
                if time.monotonic() >= deadline:
                    raise Failure(f"cannot connect to {args.connect}: {e.strerror or e}")
                time.sleep(0.1)
        log(args, f"connected to {args.connect}")
    conn.settimeout(args.timeout)     # for each message from now on
    return conn


class Wire:
    """Line-oriented messages over a connected socket."""

    def __init__(self, sock, args):
        self.sock = sock
        self.file = sock.makefile("rwb")
        self.args = args
        self.closed_hint = ""

    def send(self, *lines):
        for line in lines:
            self.file.write(line.encode() + b"\n")
        self.file.flush()

    def waiting(self, seconds):
        """True once the peer has sent something (or closed) within seconds.
        Only before the first read: the file's buffer is empty then."""
        return bool(select.select([self.sock], [], [], seconds)[0])

    def line(self, silent=""):
        try:
            raw = self.file.readline(65536)
        except socket.timeout:
            raise Failure(f"the peer said nothing within {self.args.timeout} s{silent}")
        if not raw:
            raise Failure("the peer closed the connection" + self.closed_hint)
        return raw.decode(errors="replace").rstrip("\r\n")

    def block(self):
        """Lines up to ".": the text, or Failure if the peer sent "! reason"."""
        lines = []
        while True:
            line = self.line()
            if line == ".":
                break
            lines.append(line)
        if lines and lines[0].startswith("!"):
            raise Failure("the peer failed: " + lines[0][1:].strip())
        return "".join(x + "\n" for x in lines)

    def close(self):
        try:
            self.file.close()
        finally:
            self.sock.close()


# ---- the channel ----

def read_text(path):
    with open(path) as f:
        return f.read()


def status(chan):
    out = {}
    for line in read_text(os.path.join(chan, "status")).splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def write_peer(chan, text):
    """One write(), so a refusal (EINVAL, EACCES, EBADMSG) comes back here."""
    path = os.path.join(chan, "peer")
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            data = text.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
        finally:
            os.close(fd)
    except OSError as e:
        reason = status(chan).get("error") or e.strerror
        raise Failure(f"{path}: {e.strerror}: {reason}")


def wait_ready(chan, timeout):
    deadline = time.monotonic() + timeout
    while True:
        st = status(chan)
        if st.get("state") == "ready":
            return
        if st.get("state") == "error":
            raise Failure(f"{chan}: error: {st.get('error')}")
        if time.monotonic() > deadline:
            raise Failure(f"{chan}: state {st.get('state')}, not ready after {timeout} s")
        time.sleep(0.05)


def ready_alive(st):
    return st.get("state") == "ready" and st.get("peer") == "alive"


def wait_peer_gone(args, chan):
    """The other end is new while this creator still sees its peer alive:
    a peer killed a moment ago. Wait (bounded) until it is marked dead, so
    that reading capabilities starts a new session."""
    deadline = time.monotonic() + min(args.timeout, DEATH_WAIT)
    log(args, "the other end is new, this one still sees its peer alive: waiting for it "
        "to be marked dead")
    while ready_alive(status(chan)):
        if time.monotonic() > deadline:
            log(args, "the peer still beats: offering the current session")
            return
        time.sleep(0.05)


def make_offer(args, chan, wire):
    """The creator's capabilities: a new session if its peer is dead."""
    offer = read_text(os.path.join(chan, "capabilities"))
    st = status(chan)
    if st.get("state") == "error" or (st.get("state") == "ready" and
                                      st.get("peer") not in ("alive", "unknown")):
        # no new session started (data still open, a fault): say why
        reason = f"{chan}: no new session: {st.get('error') or 'state ' + st.get('state', '?')}"
        wire.send(f"! {reason}", ".")
        raise Failure(reason)
    return offer


def hello_version(line):
    """The version a hello names, or None."""
    m = re.fullmatch(re.escape(HELLO) + r" ([1-9][0-9]{0,8})", line)
    return int(m.group(1)) if m else None


def negotiate(args, wire):
    """The hellos: the version both ends speak (the header's "Versions")."""
    spoke = None
    if args.role == "attacher" and not wire.waiting(min(HELLO_WAIT, args.timeout)):
        wire.send(f"{HELLO} {VERSION}")
        spoke = VERSION
        log(args, f"the creator said nothing: said {HELLO} {VERSION} first")
    said = wire.line("" if args.role == "attacher" else
                     " (the attacher speaks first: is the other end an attacher, "
                     "started after this one?)")
    theirs = hello_version(said)
    if theirs is None:
        raise Failure(f"the peer does not speak the mmapfs handshake "
                      f"(it said {said[:60]!r}, not {HELLO + ' N'!r})")
    version = min(VERSION, theirs)
    if spoke is None or version == 1:
        wire.send(f"{HELLO} {version}")
    if spoke is not None and version == 1:
        # an old creator that read our hello before it sent its own refused it
        wire.closed_hint = (" (a creator of version 1 refuses a hello it reads before it "
                            "sends its own: run both again, the creator's side first)")
    log(args, f"the other end speaks version {theirs}: speaking version {version}")
    if version == 1:
        print("handshake: the other end runs an older handshake script (version 1): "
              "speaking version 1, a full handshake every time; upgrade it",
              file=sys.stderr)
    return version


def handshake(args, chan, wire):
    """The handshake over wire: True if done, False if there was nothing to do."""
    version = negotiate(args, wire)
    mine = "ready" if ready_alive(status(chan)) else "new"
    if version == 1:
        theirs = "new"          # no state lines: always the whole handshake
    else:
        wire.send(f"state {mine}")
        said = wire.line()
        theirs = said[len("state "):] if said.startswith("state ") else ""
        if theirs not in ("ready", "new"):
            raise Failure(f"the peer did not say its state (it said {said[:60]!r})")
    log(args, f"this end: state {mine}; the other end: state {theirs}")
    if mine == theirs == "ready":
        return False
    if args.role == "creator":
        if mine == "ready":
            wait_peer_gone(args, chan)
        wire.send(*make_offer(args, chan, wire).splitlines(), ".")
        log(args, "offer sent")
        answer = wire.block()
        try:
            write_peer(chan, answer)
        except Failure as e:
            wire.send(f"! {e}")
            raise
        wire.send("ok")
        log(args, "answer accepted")
    else:
        offer = wire.block()
        try:
            write_peer(chan, offer)
        except Failure as e:
            wire.send(f"! {e}", ".")
            raise
        wire.send(*read_text(os.path.join(chan, "capabilities")).splitlines(), ".")
        log(args, "offer accepted, answer sent")
        verdict = wire.line()
        if verdict != "ok":
            raise Failure("the creator refused the answer: " + verdict.lstrip("! "))
    return True


def send_file(chan, path):
    src = sys.stdin.buffer if path == "-" else open(path, "rb")
    total = 0
    with src, open(os.path.join(chan, "data"), "wb", buffering=0) as out:
        while True:
            buf = src.read(CHUNK)
            if not buf:
                return total
            view = memoryview(buf)
            while view:
                n = out.write(view)
                view = view[n:]
                total += n


def receive_file(chan, path):
    dst = sys.stdout.buffer if path == "-" else open(path, "wb")
    total = 0
    with dst, open(os.path.join(chan, "data"), "rb", buffering=0) as src:
        while True:
            buf = src.read(CHUNK)
            if not buf:
                return total
            dst.write(buf)
            total += len(buf)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Run the mmapfs handshake of CHANNEL (a directory MOUNTPOINT/NAME) "
        "with the other end over a socket, then optionally stream a file through "
        "the channel's data file.",
        epilog="Example, host (creator) and guest (attacher) over vsock:\n"
        "  guest$ handshake.py --role attacher --listen vsock:10000 "
        "--receive out.bin /run/mmapfs/vm0/from-host\n"
        "  host$  handshake.py --connect vsock:3:10000 --send in.bin "
        "/run/mmapfs/vm0/to-guest\n"
        "Run again on both sides, it is the recovery after a restart of either side: "
        "a pair\nthat is ready with a live peer is left as it is (\"already ready, peer "
        "alive:\nnothing to do\"), a dead or restarted peer gets the new handshake.\n"
        "Exit status: 0 on success, 1 on failure (the reason is on stderr), 2 on "
        "bad usage.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--listen", metavar="ADDR",
                     help="wait for the other end: unix:PATH, tcp:[HOST:]PORT, vsock:PORT")
    way.add_argument("--connect", metavar="ADDR",
                     help="reach the other end: unix:PATH, tcp:HOST:PORT, vsock:CID:PORT "
                     "(retried until --timeout)")
    p.add_argument("--role", choices=("creator", "attacher"),
                   help="this end's part (default: the role in CHANNEL/status; a channel "
                   "made by mkdir is a creator, so pass --role attacher on that side)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--send", metavar="FILE",
                      help="after the handshake, write FILE ('-': stdin) into CHANNEL/data")
    data.add_argument("--receive", metavar="FILE",
                      help="after the handshake, copy CHANNEL/data into FILE ('-': stdout) "
                      "until the other end closes it")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SEC",
                   help="for connecting, each message and becoming ready (default 30)")
    p.add_argument("-v", "--verbose", action="store_true", help="say each step on stderr")
    p.add_argument("channel", metavar="CHANNEL",
                   help="the channel directory; made with mkdir if missing")
    args = p.parse_args(argv)
    chan = args.channel.rstrip("/") or "/"
    try:
        if not os.path.isdir(chan):
            os.mkdir(chan)
            log(args, f"made {chan}")
        if args.role is None:
            args.role = status(chan).get("role", "creator")
        wire = Wire(open_socket(args), args)
        try:
            done = handshake(args, chan, wire)
        finally:
            wire.close()
        if done:
            wait_ready(chan, args.timeout)
            log(args, f"{chan} is ready")
        else:
            print(f"handshake: {chan}: already ready, peer alive: nothing to do",
                  file=sys.stderr)
        if args.send:
            n = send_file(chan, args.send)
            log(args, f"sent {n} bytes")
        elif args.receive:
            n = receive_file(chan, args.receive)
            log(args, f"received {n} bytes")
    except Failure as e:
        print(f"handshake: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"handshake: {e.filename or chan}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
