"""The handshake scripts run again (contrib/handshake.sh, handshake.py): the
administrator's recovery tool. On a pair that is ready with a live peer
they change nothing and say so; after either daemon was killed and started
again with the same configuration (declared shared files, as over ivshmem)
they perform the new handshake (docs/PROTOCOL.md, "Restarts"). Real mounts,
the real scripts over a unix socket, one of each kind on each side."""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import (SHARED_RING as RING, leave_unread, nothing_to_read, read_kv,
                      wait_state)
from test_deploy import need_socat, random_file, run_pair, script_cmd, sha256

NOTHING = "already ready, peer alive: nothing to do"
# (the creator's script, the attacher's script)
KINDS = [("py", "sh"), ("sh", "py")]


class Scripts:
    """The creator's and the attacher's script kinds; the attacher listens
    (as xpra's server does), the creator connects."""

    def __init__(self, kinds, tmp_path):
        self.ckind, self.akind = kinds
        need_socat(self.ckind)
        need_socat(self.akind)
        self.tmp = tmp_path
        self.runs = 0

    def run(self, c, a, creator=(), attacher=()):
        """Both scripts on channel vm: (creator's stderr, attacher's stderr);
        both must exit 0."""
        self.runs += 1
        sock = str(self.tmp / f"hs{self.runs}.sock")
        (ra, _, ea), (rc, _, ec) = run_pair(
            script_cmd(self.akind) + ["-v", "--listen", f"unix:{sock}", *attacher, a / "vm"],
            script_cmd(self.ckind) + ["-v", "--connect", f"unix:{sock}", *creator, c / "vm"])
        assert (rc, ra) == (0, 0), f"creator ({self.ckind}): {ec}\nattacher ({self.akind}): {ea}"
        assert not os.path.exists(sock)
        return ec, ea

    def stream(self, src_m, dst_m, c, n):
        """n random bytes from src_m's data to dst_m's, through the scripts
        run on the pair (--send on one side, --receive on the other):
        (creator's stderr, attacher's stderr)."""
        self.runs += 1
        src = random_file(self.tmp / f"in{self.runs}.bin", n)
        dst = str(self.tmp / f"out{self.runs}.bin")
        send, receive = ("--send", src), ("--receive", dst)
        if src_m is c:
            out = self.run(src_m, dst_m, creator=send, attacher=receive)
        else:
            out = self.run(dst_m, src_m, creator=receive, attacher=send)
        assert sha256(dst) == sha256(src)
        return out


def tokens(m):
    with open(m / "vm/token") as f:
        return f.read()


def ready_alive(*mounts):
    for m in mounts:
        st = m.status("vm")
        assert (st["state"], st["peer"]) == ("ready", "alive"), (m.path, st)


def used_zero(m):
    st = m.status("vm")
    assert (st["read.used"], st["write.used"]) == ("0", "0"), (m.path, st)


def handshake_and_fill(scripts, c, a):
    """The first handshake, then streams long enough to overwrite the
    tokens each way, and a few bytes left unread each way."""
    ec, ea = scripts.run(c, a)
    assert NOTHING not in ec + ea
    ready_alive(c, a)
    scripts.stream(c, a, c, 8 * RING)
    scripts.stream(a, c, c, 8 * RING)
    leave_unread(c, 1000)
    leave_unread(a, 500)
    return tokens(c), tokens(a)


def recovered(scripts, c, a, before):
    """After a restart: the scripts performed a new handshake; fresh
    tokens, nothing stale, data both ways."""
    ready_alive(c, a)
    assert (tokens(c), tokens(a)) != before
    assert tokens(c) != before[0] and tokens(a) != before[1]
    used_zero(c)
    used_zero(a)
    nothing_to_read(c)
    nothing_to_read(a)
    for src, dst in ((c, a), (a, c)):
        ec, ea = scripts.stream(src, dst, c, 4 * RING + 77)
        assert NOTHING in ec and NOTHING in ea, (ec, ea)
    # and run again, plain: nothing to do now
    ec, ea = scripts.run(c, a)
    assert NOTHING in ec and NOTHING in ea, (ec, ea)


@pytest.mark.parametrize("kinds", KINDS, ids=["-".join(k) for k in KINDS])
def test_run_twice_nothing_to_do(kinds, mount_factory, shared_confs, tmp_path):
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    s = Scripts(kinds, tmp_path)
    ec, ea = s.run(c, a)
    assert NOTHING not in ec + ea, (ec, ea)
    ready_alive(c, a)
    before = tokens(c), tokens(a)
    offer = open(c / "vm/capabilities").read()
    ec, ea = s.run(c, a)
    assert NOTHING in ec and NOTHING in ea, (ec, ea)
    assert "offer" not in ec + ea                   # -v: no offer went out
    ready_alive(c, a)
    assert (tokens(c), tokens(a)) == before
    # the channel still works, both ways, through scripts that again find
    # nothing to do
    for src, dst in ((c, a), (a, c)):
        ec, ea = s.stream(src, dst, c, 3 * RING + 12345)
        assert NOTHING in ec and NOTHING in ea, (ec, ea)
    assert (tokens(c), tokens(a)) == before
    assert open(c / "vm/capabilities").read() == offer
    assert "new session" not in c.log_text()


@pytest.mark.parametrize("kinds", KINDS, ids=["-".join(k) for k in KINDS])
def test_run_again_after_attacher_restart(kinds, mount_factory, shared_confs, tmp_path):
    """The attacher's daemon killed and started again at once: the creator
    may still see its peer alive for up to a second, the fresh attacher says
    "state new", and the creator's script waits for the death to start the
    new session."""
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    s = Scripts(kinds, tmp_path)
    before = handshake_and_fill(s, c, a)
    a.kill()
    a2 = mount_factory("-c", a_conf)
    ec, ea = s.run(c, a2)
    assert NOTHING not in ec + ea, (ec, ea)
    recovered(s, c, a2, before)
    assert "new session" in c.log_text()


@pytest.mark.parametrize("kinds", KINDS, ids=["-".join(k) for k in KINDS])
def test_run_again_after_creator_restart(kinds, mount_factory, shared_confs, tmp_path):
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    s = Scripts(kinds, tmp_path)
    before = handshake_and_fill(s, c, a)
    c.kill()
    c2 = mount_factory("-c", c_conf)
    ec, ea = s.run(c2, a)
    assert NOTHING not in ec + ea, (ec, ea)
    recovered(s, c2, a, before)


@pytest.mark.parametrize("kinds", KINDS, ids=["-".join(k) for k in KINDS])
def test_run_again_after_dead_peer_noticed(kinds, mount_factory, shared_confs, tmp_path):
    """The attacher restarted once the creator says peer=dead: the creator
    itself is "new" and reading its offer starts the session."""
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    s = Scripts(kinds, tmp_path)
    before = handshake_and_fill(s, c, a)
    a.kill()
    deadline = time.monotonic() + 5
    while c.status("vm")["peer"] != "dead":
        assert time.monotonic() < deadline, c.status("vm")
        time.sleep(0.1)
    a2 = mount_factory("-c", a_conf)
    ec, ea = s.run(c, a2)
    assert "state new; the other end: state new" in ec, ec
    recovered(s, c, a2, before)


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_no_new_session_while_data_is_open(kind, mount_factory, shared_confs, tmp_path):
    """The creator's data still open while its peer is dead: no new session
    can start, and both ends say why instead of an EBADMSG."""
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    s = Scripts((kind, "py" if kind == "sh" else "sh"), tmp_path)
    s.run(c, a)
    fd = os.open(c / "vm/data", os.O_WRONLY)
    try:
        a.kill()
        deadline = time.monotonic() + 5
        while c.status("vm")["peer"] != "dead":
            assert time.monotonic() < deadline, c.status("vm")
            time.sleep(0.1)
        a2 = mount_factory("-c", a_conf)
        sock = str(tmp_path / "busy.sock")
        (ra, _, ea), (rc, _, ec) = run_pair(
            script_cmd(s.akind) + ["--listen", f"unix:{sock}", "--timeout", "20", a2 / "vm"],
            script_cmd(s.ckind) + ["--connect", f"unix:{sock}", "--timeout", "20", c / "vm"])
        assert (rc, ra) == (1, 1), (ec, ea)
        assert "no new session" in ec and "close data" in ec, ec
        assert "the peer failed" in ea and "no new session" in ea, ea
        assert read_kv(a2 / "vm/status")["state"] == "offered"
    finally:
        os.close(fd)
    # data closed: the same commands recover
    s.run(c, a2)
    wait_state(a2, "vm", "ready")
    ready_alive(c, a2)
    s.stream(a2, c, c, 2 * RING)


@pytest.mark.parametrize("kind", ["py", "sh"])
def test_no_hello_refused(kind, pair, tmp_path):
    """A peer whose first line is no hello of any version is refused
    clearly, and the channel is left as it was. (A peer of version 1 is
    spoken to in version 1: test_handshake_skew.py.)"""
    need_socat(kind)
    c, _ = pair
    os.mkdir(c / "chan")
    sock = str(tmp_path / "old.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock)
    srv.listen(1)
    proc = subprocess.Popen(script_cmd(kind) + ["--connect", f"unix:{sock}", "--timeout", "10",
                                                c / "chan"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        srv.settimeout(10)
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"mmapfs-handshake\n")
            _, err = proc.communicate(timeout=20)
    finally:
        srv.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err
    assert "does not speak the mmapfs handshake" in err, err
    assert c.status("chan")["state"] == "offered"
