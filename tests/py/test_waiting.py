"""Callers that wait: blocked readers and writers leave the daemon answering,
signals end them, poll and edge-triggered epoll are exact, a reader that
closes early abandons its stream, and real programs (a Go bufio.Scanner,
curl through a socat tunnel) get every byte.

The tunnel (test_curl_through_socat_tunnel): TCP connections, one at a
time, over one channel. socat opens `data` O_RDWR (an OPEN address used both
ways), one descriptor for both directions, and each connection is one
stream each way:

    # end A: the listener; each connection opens A/chan/data
    socat -b 1048576 TCP-LISTEN:8080,bind=127.0.0.1,reuseaddr,fork OPEN:A/chan/data
    # end B: one socat per connection, the server's connection made first
    while :; do socat -b 1048576 TCP:127.0.0.1:80 OPEN:B/chan/data || sleep 1; done

curl http://127.0.0.1:8080/... then reaches the server on port 80. When the
server closes the connection, B's socat closes `data` (after socat's -t, half
a second): that ends the answer's stream, A's socat sees end of file and
closes the client's connection and its `data`, which ends the request's
stream. If B closed first, it abandoned the rest of the request's stream, so
B's next socat starts with the next connection's request. B's socat connects
to the server when it starts, before a client comes. One connection at a
time: while one has A/chan/data open, another's socat gets EBUSY and closes
that connection.
"""
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import handshake, read_text, sh, sigint_default, wait_state

SCALE = int(os.environ.get("MMAPFS_SCALE", "500"))
ROUNDS = int(os.environ.get("MMAPFS_TUNNEL_ROUNDS", "20"))
PY = sys.executable

# ---- helpers ---------------------------------------------------------------


def unavailable(reason):
    """Skip, except under CI, which must run everything."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: nothing may skip)")
    pytest.skip(reason)


def need(*progs):
    missing = [p for p in progs if not shutil.which(p)]
    if missing:
        unavailable(f"needs {' '.join(missing)} (apt-get install {' '.join(missing)})")


def handshake_many(c, a, names):
    """mkdir and handshake each channel, as test_scale.py does."""
    for name in names:
        os.mkdir(c / name)
        os.mkdir(a / name)
        with open(a / f"{name}/peer", "w") as f:
            f.write(read_text(c / f"{name}/capabilities"))
        with open(c / f"{name}/peer", "w") as f:
            f.write(read_text(a / f"{name}/capabilities"))
    for name in names:
        wait_state(a, name, "ready")
        wait_state(c, name, "ready")


def reap(procs, mounts=()):
    """Kill what is left of procs. One the daemon never lets go (it sits in a
    FUSE request the daemon has taken and never answers) is freed by killing
    the daemons, so that a failing test ends instead of hanging."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    deadline = time.monotonic() + 5 + len(procs) / 500     # 10,000 take a while
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for m in mounts:
                if not m.killed:
                    m.kill()
            p.wait(10)


def in_syscall(proc, numbers=(0,)):
    """proc sleeps in one of these system calls (0 read, 1 write, 257 openat)."""
    try:
        with open(f"/proc/{proc.pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return first.isdigit() and int(first) in numbers


def wait_blocked(proc, numbers=(0,), timeout=10):
    deadline = time.monotonic() + timeout
    while not in_syscall(proc, numbers):
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.args} not blocked in {numbers} within {timeout} s")
        time.sleep(0.02)


def finish(proc, secs, what=None):
    """proc's (stdout, stderr) once it has exited; the test fails if it has
    not within secs (the caller's finally reaps it)."""
    try:
        return proc.communicate(timeout=secs)
    except subprocess.TimeoutExpired:
        pass
    pytest.fail(what or f"{proc.args} still running after {secs} s")


def ends_within(proc, sig, secs):
    """Send sig to proc: it must be gone within secs."""
    proc.send_signal(sig)
    finish(proc, secs, f"{proc.args} still there {secs} s after {signal.Signals(sig).name}")


def answers_within(cmd, secs, mounts):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=secs)
    except subprocess.TimeoutExpired:
        out = None
    if out is None:
        reap([p], mounts)
        pytest.fail(f"{' '.join(cmd)} did not answer within {secs} s")
    assert p.returncode == 0, f"{' '.join(cmd)}: {err}"
    return out


def read_all(path, timeout=10):
    """A whole stream of `data`, by cat, bounded."""
    return subprocess.run(["cat", path], capture_output=True, check=True,
                          timeout=timeout).stdout


def roundtrip(cdir, adir, text="x\n"):
    """The channel is usable: a fresh writer's stream arrives whole."""
    sh(f"printf '{text}' > {cdir}/data", timeout=10)
    assert read_all(adir + "/data").decode() == text


def listening(port):
    """A TCP socket listens on 127.0.0.1:port (without connecting to it)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "0A" for l in f.readlines()[1:])


def wait_listening(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while not listening(port):
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout} s"
        time.sleep(0.05)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


# A writer of `line N\n`, one write each, resting now and then so that the
# reader catches up and waits for the next bytes.
LINE_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(int(sys.argv[2])):
    line = b"line %d\n" % i
    assert os.write(fd, line) == len(line)
    if i % 97 == 0:
        time.sleep(0.01)
os.close(fd)
"""

# Messages of 1..200 random bytes, with short pauses; prints "bytes sha256".
MSG_WRITER = r"""
import hashlib, os, random, sys, time
rng = random.Random(int(sys.argv[2]))
fd = os.open(sys.argv[1], os.O_WRONLY)
h, n = hashlib.sha256(), 0
for i in range(int(sys.argv[3])):
    msg = rng.randbytes(rng.randint(1, 200))
    assert os.write(fd, msg) == len(msg)
    h.update(msg)
    n += len(msg)
    if rng.random() < 0.02:
        time.sleep(rng.random() / 100)
os.close(fd)
print(n, h.hexdigest())
"""

# A blocking reader that reads only after poll said POLLIN; a read that
# still blocks is cut by SIGALRM; prints "bytes sha256" at end of stream.
POLL_READER = r"""
import hashlib, os, select, signal, sys
def stuck(*_):
    sys.exit(f"read blocked for 2 s after poll said readable, at byte {n}")
signal.signal(signal.SIGALRM, stuck)
fd = os.open(sys.argv[1], os.O_RDONLY)
p = select.poll()
p.register(fd, select.POLLIN)
h, n = hashlib.sha256(), 0
while True:
    if not p.poll(5000):
        sys.exit(f"no POLLIN for 5 s, at byte {n}")
    signal.setitimer(signal.ITIMER_REAL, 2)
    data = os.read(fd, 65536)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not data:
        break
    h.update(data)
    n += len(data)
print(n, h.hexdigest())
"""

GO_LINES = """package main

import (
	"bufio"
	"fmt"
	"os"
)

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := bufio.NewScanner(f)
	n := 0
	for s.Scan() {
		n++
	}
	if err := s.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(n)
}
"""


# ---- tests -----------------------------------------------------------------


def test_many_blocked_readers_leave_the_mount_answering(pair, tmp_path):
    """A reader blocked on each of many channels: the mount still answers
    (each read used to hold one of libfuse's ten workers), and then every
    reader gets its line. Each reader writes to a file of its own: the test
    keeps no descriptor per reader (10,000 with MMAPFS_SCALE)."""
    c, a = pair
    names = [f"ch{k}" for k in range(SCALE)]
    handshake_many(c, a, names + ["spare"])
    cats = []
    try:
        for name in names:
            with open(tmp_path / f"{name}.out", "wb") as out:
                cats.append(subprocess.Popen(["cat", a / f"{name}/data"], stdout=out,
                                             stderr=subprocess.DEVNULL))
        for cat in cats:       # in its read, or (a wedged daemon) its open
            wait_blocked(cat, (0, 257))
        assert answers_within(["cat", a / "spare/status"], 2, [a]).startswith("state=")
        assert "spare" in answers_within(["ls", a.path], 2, [a]).split()
        writers = tmp_path / "writers.sh"
        writers.write_text("".join(f"echo line-{k} > {c / name}/data || exit 1\n"
                                   for k, name in enumerate(names)))
        sh(f"bash {writers}", timeout=30 + SCALE // 100)
        for k, (name, cat) in enumerate(zip(names, cats)):
            finish(cat, 10)
            assert cat.returncode == 0
            assert (tmp_path / f"{name}.out").read_text() == f"line-{k}\n"
    finally:
        reap(cats, [c, a])


def test_signals_end_blocked_callers(chan):
    cdir, adir, c, a = chan
    for sig in (signal.SIGINT, signal.SIGKILL):
        cat = subprocess.Popen(["cat", adir + "/data"], stdout=subprocess.DEVNULL,
                               preexec_fn=sigint_default)
        try:
            wait_blocked(cat)
            ends_within(cat, sig, 1)
        finally:
            reap([cat], [c, a])
        roundtrip(cdir, adir)
    # a writer blocked on a full ring, nobody reading
    dd = subprocess.Popen(["dd", "if=/dev/zero", f"of={cdir}/data", "bs=1M", "status=none"],
                          stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while c.status("chan")["write.free"] != "0":
            assert time.monotonic() < deadline, c.status("chan")
            time.sleep(0.02)
        wait_blocked(dd, (1,))
        ends_within(dd, signal.SIGKILL, 1)
    finally:
        reap([dd], [c, a])
    # its close ended its stream: what it wrote arrives, then end of file
    zeros = read_all(adir + "/data")
    assert 0 < len(zeros) < int(c.status("chan")["write.size"])
    assert zeros.count(0) == len(zeros)
    roundtrip(cdir, adir)


def test_poll_then_read_never_blocks(chan):
    """A blocking reader that reads only when poll says POLLIN never blocks
    in read, and gets every byte of 10,000 small messages."""
    cdir, adir, c, a = chan
    reader = subprocess.Popen([PY, "-c", POLL_READER, adir + "/data"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = subprocess.Popen([PY, "-c", MSG_WRITER, cdir + "/data", "7", "10000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got, rerr = finish(reader, 60)
        assert reader.returncode == 0, rerr
        sent, werr = finish(writer, 10)
        assert writer.returncode == 0, werr
        assert got == sent
    finally:
        reap([reader, writer], [c, a])


def test_epollet_reader_gets_every_line(chan):
    """Edge-triggered epoll, reading up to EAGAIN after each event: no edge
    is lost, the end of stream included."""
    cdir, adir, c, a = chan
    count = 5000
    r = os.open(adir + "/data", os.O_RDONLY | os.O_NONBLOCK)
    ep = select.epoll()
    writer = None
    try:
        ep.register(r, select.EPOLLIN | select.EPOLLET)
        writer = subprocess.Popen([PY, "-c", LINE_WRITER, cdir + "/data", str(count)])
        buf, eof = b"", False
        deadline = time.monotonic() + 60
        while not eof:
            lines = buf.count(b"\n")
            assert time.monotonic() < deadline, f"{lines} lines in 60 s"
            if not ep.poll(5):
                try:
                    late = f"{len(os.read(r, 1 << 20))} bytes"
                except BlockingIOError:
                    late = "EAGAIN"
                pytest.fail(f"no event for 5 s after {lines} lines "
                            f"(writer {'running' if writer.poll() is None else 'done'}); "
                            f"a read then: {late}")
            while True:
                try:
                    data = os.read(r, 1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    eof = True
                    break
                buf += data
        finish(writer, 10)
        assert writer.returncode == 0
        assert buf.decode().splitlines() == [f"line {i}" for i in range(count)]
    finally:
        ep.close()
        os.close(r)
        if writer:
            reap([writer], [c, a])


def go_binary():
    for cand in (shutil.which("go"), "/usr/bin/go", "/usr/lib/go/bin/go"):
        if cand and os.access(cand, os.X_OK):
            return cand
    unavailable("needs go (apt-get install golang-go)")


def test_go_reader_with_bufio_scanner(chan, tmp_path):
    """Go's os.Open puts a pollable file in its netpoller (edge-triggered
    epoll, non-blocking reads): a bufio.Scanner must see every line."""
    go = go_binary()
    cdir, adir, c, a = chan
    (tmp_path / "lines.go").write_text(GO_LINES)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"),
               GO111MODULE="off", GOFLAGS="", GOPROXY="off", GOTOOLCHAIN="local",
               CGO_ENABLED="0", HOME=str(tmp_path))
    build = subprocess.run([go, "build", "-o", "lines", "lines.go"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    reader = subprocess.Popen([tmp_path / "lines", adir + "/data"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    writer = subprocess.Popen([PY, "-c", LINE_WRITER, cdir + "/data", "5000"])
    try:
        out, err = finish(reader, 60, "the Go reader did not reach the end in 60 s")
        assert (out, reader.returncode) == ("5000\n", 0), err
        finish(writer, 10)
        assert writer.returncode == 0
    finally:
        reap([reader, writer], [c, a])


@pytest.mark.parametrize("ring", ["64K", "4M"])
@pytest.mark.parametrize("early", ["read", "head"])
def test_reader_close_abandons_its_stream(mount_factory, ring, early):
    """A reader that closes before the end of a stream abandons it: the rest
    is dropped up to its writer's close (64K: the writer is still blocked on
    the full ring; 4M: it has closed already), and the next reader gets the
    next stream."""
    c, a = mount_factory(size=ring), mount_factory(size=ring)
    handshake_many(c, a, ["chan"])
    cdir, adir = c / "chan", a / "chan"
    writer = subprocess.Popen([PY, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
                               "os.write(fd, b'a' * (1 << 20)); os.close(fd)", cdir + "/data"])
    try:
        if ring == "4M":
            finish(writer, 10)                 # the whole stream is in the ring
            assert writer.returncode == 0
        if early == "head":
            cmd = ["head", "-c", "10", adir + "/data"]
        else:
            cmd = [PY, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                   "sys.stdout.buffer.write(os.read(fd, 10))", adir + "/data"]
        first = subprocess.run(cmd, capture_output=True, check=True, timeout=10).stdout
        assert 0 < len(first) <= 10 and first == b"a" * len(first)
        finish(writer, 10, "the first stream's writer still blocked 10 s after its "
               "reader closed: the rest of the stream was not dropped")
        sh(f"echo second > {cdir}/data", timeout=10)
        rest = read_all(adir + "/data")
        if rest != b"second\n":
            pytest.fail(f"the next reader got {len(rest)} bytes: {rest[:12]!r}...{rest[-12:]!r}")
    finally:
        reap([writer], [c, a])


def test_curl_through_socat_tunnel(chan, tmp_path):
    """HTTP through the recipe at the top of this file, one connection after
    another (MMAPFS_TUNNEL_ROUNDS, 20 by default), each a different file."""
    need("socat", "curl")
    cdir, adir, c, a = chan
    www = tmp_path / "www"
    www.mkdir()
    sizes = [0, 1, 100, 4095, 65536, 65537, 300000, 1 << 20]
    for i in range(ROUNDS):
        (www / f"f{i}").write_bytes(os.urandom(sizes[i % len(sizes)] + i))
    hport, tport = free_ports(2)
    logs = tmp_path / "logs"
    logs.mkdir()
    procs, listener = [], None

    def start(name, cmd):
        with open(logs / name, "a") as log:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        procs.append(p)
        return p

    def why():
        return "".join(f"{f.name}: {f.read_text()}" for f in sorted(logs.iterdir()))

    try:
        server = start("http", [PY, "-m", "http.server", "--bind", "127.0.0.1",
                                "--directory", str(www), str(hport)])
        listener = start("side1", ["socat", "-b", "1048576",
                                   f"TCP-LISTEN:{tport},bind=127.0.0.1,reuseaddr,fork",
                                   f"OPEN:{cdir}/data"])
        wait_listening(hport, server)
        wait_listening(tport, listener)
        for i in range(ROUNDS):
            side2 = start("side2", ["socat", "-b", "1048576", f"TCP:127.0.0.1:{hport}",
                                    f"OPEN:{adir}/data"])
            out = tmp_path / "got"
            curl = subprocess.run(["curl", "-sS", "--max-time", "15", "-o", str(out),
                                   f"http://127.0.0.1:{tport}/f{i}"],
                                  capture_output=True, text=True, timeout=30)
            assert curl.returncode == 0, f"round {i}: {curl.stderr}\n{why()}"
            assert out.read_bytes() == (www / f"f{i}").read_bytes(), f"round {i}"
            finish(side2, 10, f"round {i}: B's socat still running 10 s after curl\n{why()}")
            deadline = time.monotonic() + 10     # A's connection closes its data
            while children(listener.pid):
                assert time.monotonic() < deadline, f"round {i}: A's socat lingers\n{why()}"
                time.sleep(0.02)
    finally:
        for pid in children(listener.pid) if listener else ():
            os.kill(pid, signal.SIGKILL)      # A's socat's connections
        reap(procs, [c, a])


def test_sigterm_answers_every_waiting_caller(chan):
    """SIGTERM with readers waiting on `data` and on `recv`, and a writer
    waiting for room: the daemon exits 0 within a second, each caller gets
    an error instead of waiting for ever."""
    cdir, adir, c, a = chan
    procs = [subprocess.Popen(["cat", cdir + "/data"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen(["dd", "if=/dev/zero", f"of={cdir}/data", "bs=1M"],
                                  stderr=subprocess.DEVNULL))
    try:
        wait_blocked(procs[0], (0,))
        wait_blocked(procs[1], (1,))
        handshake(c, a, "two")
        procs.append(subprocess.Popen(["cat", str(c / "two/recv")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_blocked(procs[2], (257,))     # in the FIFO's open
        t0 = time.monotonic()
        c.proc.terminate()
        assert c.proc.wait(5) == 0
        assert time.monotonic() - t0 < 1, f"exit took {time.monotonic() - t0:.2f} s"
        for p in procs:
            finish(p, 5)
    finally:
        reap(procs, [c, a])


# Each SIGALRM interrupts the read waiting in the daemon; Python retries it
# (PEP 475): a new request, parked and interrupted in turn.
INTERRUPTED_READS = r"""
import os, signal, sys
class Done(Exception):
    pass
n, want = 0, int(sys.argv[2])
def ring(*_):
    global n
    n += 1
    if n >= want:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise Done
fd = os.open(sys.argv[1], os.O_RDONLY)
signal.signal(signal.SIGALRM, ring)
try:
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    os.read(fd, 4096)
    sys.exit("a read returned: nothing was written")
except Done:
    print(n)
"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def sanitized(pid):
    with open(f"/proc/{pid}/maps") as f:
        return any("libasan" in l or "libtsan" in l for l in f)


def test_interrupted_reads_leave_nothing_behind(chan):
    """Reads that wait and are interrupted, 100,000 of them (fewer under
    MMAPFS_INTERRUPTS): each is answered once, the daemon's memory does not
    grow (LeakSanitizer checks the rest at exit in sanitized builds), and
    the channel is usable after."""
    cdir, adir, c, a = chan
    rounds = int(os.environ.get("MMAPFS_INTERRUPTS", "100000"))
    run = lambda n: subprocess.run([PY, "-c", INTERRUPTED_READS, adir + "/data", str(n)],
                                   capture_output=True, text=True, timeout=600)
    r = run(rounds // 10)
    assert r.returncode == 0, r.stderr
    before = rss_kb(a.proc.pid)
    r = run(rounds)
    assert r.returncode == 0, r.stderr
    after = rss_kb(a.proc.pid)
    if not sanitized(a.proc.pid):
        assert after - before < 4096, f"RSS grew from {before} to {after} kB"
    roundtrip(cdir, adir)


LONG = os.environ.get("MMAPFS_LONG") == "1"


@pytest.mark.skipif(not LONG, reason="the long suite: MMAPFS_LONG=1 (README)")
def test_ssh_and_rsync_through_the_tunnel(chan, tmp_path):
    """A real sshd on a local port, reached through the channel by ssh's
    ProxyCommand: 10 sessions one after another, then an rsync -e ssh of a
    tree of 1,000 files, which arrives whole."""
    need("sshd", "ssh", "ssh-keygen", "rsync", "socat")
    cdir, adir, c, a = chan
    (port,) = free_ports(1)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for name in ("host", "user"):
        sh(f"ssh-keygen -q -t ed25519 -N '' -f {keys}/{name}")
    (keys / "authorized").write_text((keys / "user.pub").read_text())
    conf = tmp_path / "sshd_config"
    conf.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys}/host\n"
                    f"AuthorizedKeysFile {keys}/authorized\nPermitRootLogin prohibit-password\n"
                    f"StrictModes no\nUsePAM no\nPidFile {tmp_path}/sshd.pid\n"
                    "Subsystem sftp internal-sftp\n")
    os.makedirs("/run/sshd", exist_ok=True)
    procs, loop = [], None
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sshd.log", "w"))
    procs.append(sshd)
    ssh = (f"ssh -i {keys}/user -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           f"-o BatchMode=yes -o LogLevel=ERROR "
           f"-o ProxyCommand='socat -b 1048576 - OPEN:{cdir}/data'")
    try:
        wait_listening(port, sshd)
        # end B: one socat per session, connected to sshd first
        loop = subprocess.Popen(["bash", "-c", f"while :; do socat -b 1048576 "
                                 f"TCP:127.0.0.1:{port} OPEN:{adir}/data || sleep 0.2; done"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        for i in range(10):
            r = sh(f"{ssh} root@mmapfs echo session {i}", check=False, timeout=60)
            assert (r.returncode, r.stdout) == (0, f"session {i}\n"), \
                r.stderr + (tmp_path / "sshd.log").read_text()
        src = tmp_path / "src"
        for i in range(1000):
            d = src / f"d{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(os.urandom(i * 37 % 20000))
        r = sh(f"rsync -a -e \"{ssh}\" {src}/ root@mmapfs:{tmp_path}/dst/", check=False,
               timeout=300)
        assert r.returncode == 0, r.stderr
        assert sh(f"diff -r {src} {tmp_path}/dst", check=False).returncode == 0
    finally:
        if loop:
            os.killpg(loop.pid, signal.SIGKILL)
            loop.wait()
        reap(procs, [c, a])
