"""Version skew of the handshake scripts' wire protocol (contrib/handshake.py,
handshake.sh, handshake-serial.sh, their headers' "Versions"): today's
scripts against copies of older ones kept in tests/peers/, in both roles.

- handshake-v1.py: version 1 (commit 411fb33), no state lines;
- handshake-v2.py: the first version 2 (commit 1408b0a), before versions
  were negotiated.

Both old scripts send their hello at once and accept only their own. Each
pair must end ready on both ends (peer alive) with a stream flowing each
way through `data`, and today's script says once, on stderr, that a peer of
version 1 is old. Real mounts on declared shared files (as over ivshmem),
the scripts over a unix socket; handshake-serial.sh over a pty that socat
joins to a unix socket, as QEMU joins a guest's serial port to one."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import SHARED_RING as RING, TOP, read_kv
from test_deploy import CONTRIB, need_socat, run_pair, script_cmd

PEERS = os.path.join(TOP, "tests", "peers")
OLD = {"v1": os.path.join(PEERS, "handshake-v1.py"),
       "v2": os.path.join(PEERS, "handshake-v2.py")}
SERIAL = os.path.join(CONTRIB, "handshake-serial.sh")
OLD_NOTE = "older handshake script (version 1)"
NOTHING = "already ready, peer alive: nothing to do"
T = "20"                                  # each script's --timeout


def old_cmd(v):
    return [sys.executable, OLD[v]]


def ready_alive(*mounts):
    for m in mounts:
        st = m.status("vm")
        assert (st["state"], st["peer"]) == ("ready", "alive"), (m.path, st)


def flow(src, dst, n):
    """n random bytes written into src's vm/data arrive whole from dst's."""
    blob = os.urandom(n)
    got, errors = [], []

    def reader():
        try:
            with open(dst / "vm/data", "rb", buffering=0) as f:
                while True:
                    buf = f.read(1 << 16)
                    if not buf:
                        return
                    got.append(buf)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    with open(src / "vm/data", "wb", buffering=0) as f:
        view = memoryview(blob)
        while view:
            view = view[f.write(view):]
    t.join(30)
    assert not t.is_alive(), "the reader did not see the end of the stream"
    assert not errors, errors
    assert b"".join(got) == blob


def flows_both_ways(c, a):
    flow(c, a, 3 * RING + 123)
    flow(a, c, 2 * RING + 45)


def pair_run(creator, attacher, c, a, tmp_path, listener="attacher"):
    """creator's and attacher's commands (without address and channel) on
    the channel vm of mounts c and a: (creator's stderr, attacher's
    stderr); both must exit 0."""
    sock = str(tmp_path / f"hs{time.monotonic_ns()}.sock")
    ccmd = creator + ["-v", "--timeout", T]
    acmd = attacher + ["-v", "--timeout", T, "--role", "attacher"]
    if listener == "attacher":
        (ra, _, ea), (rc, _, ec) = run_pair(acmd + ["--listen", f"unix:{sock}", a / "vm"],
                                            ccmd + ["--connect", f"unix:{sock}", c / "vm"])
    else:
        (rc, _, ec), (ra, _, ea) = run_pair(ccmd + ["--listen", f"unix:{sock}", c / "vm"],
                                            acmd + ["--connect", f"unix:{sock}", a / "vm"])
    assert (rc, ra) == (0, 0), f"creator: {ec}\nattacher: {ea}"
    return ec, ea


def check_note(new_err, old):
    """Today's script said once that a version-1 peer is old, and nothing
    of the kind to a version-2 one."""
    assert new_err.count(OLD_NOTE) == (1 if old == "v1" else 0), new_err


@pytest.fixture
def vm_pair(mount_factory, shared_confs):
    c_conf, a_conf = shared_confs
    return mount_factory("-c", c_conf), mount_factory("-c", a_conf)


@pytest.mark.parametrize("listener", ["attacher", "creator"])
@pytest.mark.parametrize("kind", ["py", "sh"])
@pytest.mark.parametrize("old", ["v1", "v2"])
@pytest.mark.parametrize("new_role", ["creator", "attacher"])
def test_new_and_old(new_role, old, kind, listener, vm_pair, tmp_path):
    """Today's script in new_role, the old one in the other."""
    need_socat(kind)
    c, a = vm_pair
    new, prior = script_cmd(kind), old_cmd(old)
    cmds = (new, prior) if new_role == "creator" else (prior, new)
    ec, ea = pair_run(*cmds, c, a, tmp_path, listener)
    ready_alive(c, a)
    check_note(ec if new_role == "creator" else ea, old)
    flows_both_ways(c, a)


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_old_attacher_restarted(kind, mount_factory, shared_confs, tmp_path):
    """The guest kept version 1 and its daemon restarted at once: today's
    creator, which may still see its peer alive, treats the old peer as
    "state new", waits for the death and starts the new session; run again
    on the ready pair with the same old peer, it is a full handshake again
    (version 1 has no "nothing to do")."""
    need_socat(kind)
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    pair_run(script_cmd(kind), old_cmd("v1"), c, a, tmp_path)
    flows_both_ways(c, a)
    before = open(c / "vm/token").read()
    a.kill()
    a2 = mount_factory("-c", a_conf)
    ec, ea = pair_run(script_cmd(kind), old_cmd("v1"), c, a2, tmp_path)
    assert NOTHING not in ec, ec
    ready_alive(c, a2)
    assert open(c / "vm/token").read() != before
    assert "new session" in c.log_text()
    flows_both_ways(c, a2)


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_new_pair_nothing_to_do(kind, vm_pair, tmp_path):
    """Between two of today's scripts the attacher speaks first (after its
    wait for an old creator's hello) and nothing changed: run again on the
    ready pair, nothing to do."""
    need_socat(kind)
    c, a = vm_pair
    other = "py" if kind == "sh" else "sh"
    need_socat(other)
    ec, ea = pair_run(script_cmd(kind), script_cmd(other), c, a, tmp_path)
    assert "said mmapfs-handshake 2 first" in ea, ea
    assert "speaking version 2" in ec and "speaking version 2" in ea, (ec, ea)
    assert OLD_NOTE not in ec + ea
    ec, ea = pair_run(script_cmd(kind), script_cmd(other), c, a, tmp_path)
    assert NOTHING in ec and NOTHING in ea, (ec, ea)
    ready_alive(c, a)
    flows_both_ways(c, a)


# ---- the hellos on the wire, against a scripted peer ----

class FakePeer:
    """A unix socket the script under test connects to; the test speaks
    for the other end."""

    def __init__(self, tmp_path, cmd):
        self.path = str(tmp_path / "fake.sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(1)
        self.proc = subprocess.Popen(cmd + ["--connect", f"unix:{self.path}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.srv.settimeout(10)
        self.conn, _ = self.srv.accept()
        self.conn.settimeout(10)
        self.file = self.conn.makefile("rwb")

    def send(self, *lines):
        self.file.write(b"".join(x.encode() + b"\n" for x in lines))
        self.file.flush()

    def line(self):
        return self.file.readline().decode().rstrip("\n")

    def silent_for(self, seconds):
        """True if the script said nothing for that long."""
        self.conn.settimeout(seconds)
        try:
            return not self.conn.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True
        finally:
            self.conn.settimeout(10)

    def finish(self):
        """Hang up: (exit status, stderr)."""
        self.file.close()
        self.conn.close()
        try:
            _, err = self.proc.communicate(timeout=30)
        finally:
            self.close()
        return self.proc.returncode, err

    def close(self):
        self.srv.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture
def fake_peer(tmp_path):
    peers = []

    def start(cmd):
        p = FakePeer(tmp_path, cmd)
        peers.append(p)
        return p

    yield start
    for p in peers:
        p.close()


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_creator_answers_the_lower_version(kind, pair, fake_peer):
    """A creator never speaks first; to an attacher of a later version it
    answers with its own, 2, and goes on in version 2."""
    need_socat(kind)
    c, _ = pair
    os.mkdir(c / "chan")
    p = fake_peer(script_cmd(kind) + ["--timeout", "10", c / "chan"])
    assert p.silent_for(1.5)
    p.send("mmapfs-handshake 7")
    assert p.line() == "mmapfs-handshake 2"
    assert p.line() == "state new"
    rc, err = p.finish()
    assert rc == 1 and OLD_NOTE not in err, err
    assert c.status("chan")["state"] == "offered"


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_attacher_speaks_first(kind, pair, fake_peer):
    """An attacher that hears no hello within its wait says its own; a
    creator of a later version then answers 2."""
    need_socat(kind)
    c, a = pair
    os.mkdir(a / "chan")
    t0 = time.monotonic()
    p = fake_peer(script_cmd(kind) + ["--role", "attacher", "--timeout", "10", a / "chan"])
    assert p.line() == "mmapfs-handshake 2"
    assert time.monotonic() - t0 >= 0.9
    p.send("mmapfs-handshake 2", "state new")
    assert p.line() == "state new"
    rc, err = p.finish()
    assert rc == 1 and OLD_NOTE not in err, err


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_late_version_1_creator(kind, pair, fake_peer):
    """A version-1 hello that comes after the attacher spoke (an old
    creator whose line dropped the attacher's) is answered with version 1,
    and the offer that follows is taken without state lines."""
    need_socat(kind)
    c, a = pair
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    p = fake_peer(script_cmd(kind) + ["--role", "attacher", "--timeout", "10", a / "chan"])
    assert p.line() == "mmapfs-handshake 2"
    p.send("mmapfs-handshake 1")
    assert p.line() == "mmapfs-handshake 1"
    with open(c / "chan/capabilities") as f:
        p.send(*f.read().splitlines(), ".")
    answer = []
    while (line := p.line()) != ".":
        answer.append(line)
    with open(c / "chan/peer", "w") as f:
        f.write("".join(x + "\n" for x in answer))
    p.send("ok")
    rc, err = p.finish()
    assert rc == 0, err
    assert err.count(OLD_NOTE) == 1, err
    assert c.status("chan")["state"] == "ready"


# ---- handshake-serial.sh (the guest's side, a POSIX shell) ----

SHELLS = [s for s in ("dash", "busybox") if shutil.which(s)]


@pytest.fixture
def serial_port(tmp_path):
    """(the guest's serial port, the host's unix socket): a pty whose
    master socat joins to a listening unix socket, as QEMU's chardev does."""
    if not shutil.which("socat"):
        pytest.skip("needs socat")
    port, sock = str(tmp_path / "ttyS1"), str(tmp_path / "serial.sock")
    proc = subprocess.Popen(["socat", f"PTY,link={port},raw,echo=0", f"UNIX-LISTEN:{sock}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (os.path.exists(port) and os.path.exists(sock)):
            assert proc.poll() is None and time.monotonic() < deadline, "socat did not start"
            time.sleep(0.05)
        yield port, sock
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.skipif(not SHELLS, reason="needs dash or busybox")
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("host", ["v1", "new"])
def test_serial_guest(host, shell, vm_pair, serial_port):
    """The host's side (old version 1, or today's handshake.py) connects
    first, the guest's handshake-serial.sh (under dash: the hello's wait
    through timeout(1); under busybox: read -t) answers over the port."""
    c, a = vm_pair
    port, sock = serial_port
    hcmd = old_cmd("v1") if host == "v1" else script_cmd("py")
    hp = subprocess.Popen(hcmd + ["-v", "--timeout", T, "--connect", f"unix:{sock}", c / "vm"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    try:
        sh = ["busybox", "sh"] if shell == "busybox" else ["dash"]
        g = subprocess.run(sh + [SERIAL, a / "vm", port, T], capture_output=True, text=True,
                           timeout=60)
        _, herr = hp.communicate(timeout=30)
    finally:
        if hp.poll() is None:
            os.killpg(hp.pid, signal.SIGKILL)
            hp.communicate()
    assert (hp.returncode, g.returncode) == (0, 0), f"host: {herr}\nguest: {g.stderr}"
    ready_alive(c, a)
    check_note(g.stderr, "v1" if host == "v1" else "new")
    if host == "new":
        assert "speaking version 2" in herr, herr
    flows_both_ways(c, a)
    assert read_kv(a / "vm/status")["role"] == "attacher"
