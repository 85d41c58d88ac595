"""Version 2 of the format (docs/PROTOCOL.md, "Failed streams" and "Readers
that leave"), with real programs and real daemons: a reader that leaves
tells its writer (EPIPE, and SIGPIPE through the FIFO); a stall past the
dead-peer limit fails the open streams on both ends for good, and the next
streams carry no old byte; and a daemon of the previous release (format
version 1, built from this repository's history) is still a peer.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import MMAPFS, TOP, handshake, sh, wait_state
from test_lib import python_env

# The last commit whose daemon speaks version 1 of the format only.
V1_COMMIT = "d77321b"


def test_reader_leaves_writer_gets_epipe(chan):
    """dd writes until the reader (head) leaves: dd gets EPIPE, its bytes
    are dropped, and the next stream is whole."""
    cdir, adir, c, a = chan
    reader = subprocess.Popen(["bash", "-c", f"head -c 100000 {adir}/data | wc -c"],
                              stdout=subprocess.PIPE, text=True)
    w = sh(f"dd if=/dev/zero of={cdir}/data bs=64k count=100000", check=False, timeout=30)
    assert reader.communicate(timeout=30)[0].strip() == "100000"
    assert w.returncode != 0 and "Broken pipe" in w.stderr, w.stderr
    # the rest of that stream is dropped; the next one arrives whole
    sh(f"echo next > {cdir}/data")
    assert sh(f"cat {adir}/data", timeout=10).stdout == "next\n"


def test_reader_leaves_fifo_writer_gets_sigpipe(chan):
    """Through the FIFO the writer gets what a pipe gives: SIGPIPE."""
    cdir, adir, c, a = chan
    w = subprocess.Popen(["bash", "-c", f"exec yes > {cdir}/send"], stderr=subprocess.PIPE)
    got = sh(f"head -c 10000 < {adir}/recv", timeout=30).stdout
    assert len(got) == 10000 and got.startswith("y\ny\n")
    w.wait(timeout=30)
    assert w.returncode == -signal.SIGPIPE, (w.returncode, w.stderr.read())
    sh(f"echo next > {cdir}/send")
    assert sh(f"cat {adir}/data", timeout=10).stdout == "next\n"


LIB_READER = r'''
import sys, mmapfs
ch = mmapfs.open(sys.argv[1], "r")
assert len(ch.read(1000)) > 0
ch.close()                      # in the middle of the stream
print("left")
'''


def test_library_reader_abandons(chan):
    """A library reader that closes in the middle of a stream abandons it:
    the file writer gets EPIPE."""
    cdir, adir, c, a = chan
    fd = os.open(f"{cdir}/data", os.O_WRONLY)
    try:
        os.write(fd, b"x" * 5000)
        p = subprocess.run([sys.executable, "-c", LIB_READER, adir], env=python_env(),
                           capture_output=True, text=True, timeout=30)
        assert p.stdout == "left\n", p.stderr
        deadline = time.monotonic() + 5
        with pytest.raises(BrokenPipeError):
            while time.monotonic() < deadline:
                os.write(fd, b"y" * 1000)
                time.sleep(0.01)
    finally:
        os.close(fd)
    sh(f"echo next > {cdir}/data")
    assert sh(f"cat {adir}/data", timeout=10).stdout == "next\n"


class Pump(threading.Thread):
    """A writer or a reader of one `data` file that goes on until an error,
    which it keeps; a reader reads slowly, so the ring stays full."""

    def __init__(self, path, write):
        super().__init__(daemon=True)
        self.path, self.write, self.err, self.moved = path, write, None, 0
        self.fd = os.open(path, os.O_WRONLY if write else os.O_RDONLY)

    def run(self):
        block = b"old " * 1024
        try:
            while True:
                if self.write:
                    self.moved += os.write(self.fd, block)
                else:
                    n = len(os.read(self.fd, 4096))
                    if n == 0:
                        continue        # an end of stream: the next one
                    self.moved += n
                    time.sleep(0.005)
        except OSError as e:
            self.err = e.errno

    def close(self):
        os.close(self.fd)


def words(m):
    st = m.status("chan")
    out = {}
    for d in ("read", "write"):
        path = st[f"{d}.file"]
        size = os.path.getsize(path)
        t1 = (size - 64) & ~7
        with open(path, "rb") as f:
            f.seek(t1 - 64)
            v2 = [int.from_bytes(f.read(4), "little") for _ in range(5)]
            f.seek(t1 + 12)
            v1 = [int.from_bytes(f.read(4), "little") for _ in range(2)]
        out[d] = dict(open=v2[0], abort=v2[1], aband=v2[2], ep=v2[3:5], cs=v1[0], ack=v1[1])
    return out


@pytest.mark.parametrize("stopped", ["creator", "attacher"])
def test_stall_fails_streams_for_good(chan, stopped):
    """One daemon stopped (SIGSTOP) past the dead-peer limit in the middle of
    streams both ways, then resumed: both ends' callers get EPIPE and
    ECONNRESET, status counts it, and the next streams carry no old byte,
    with no new handshake."""
    cdir, adir, c, a = chan
    pumps = [Pump(f"{cdir}/data", True), Pump(f"{adir}/data", False),
             Pump(f"{adir}/data", True), Pump(f"{cdir}/data", False)]
    for p in pumps:
        p.start()
    time.sleep(0.5)
    victim, other = (c, a) if stopped == "creator" else (a, c)
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 3
        while other.status("chan")["peer"] != "dead":
            assert time.monotonic() < deadline, other.status("chan")
            time.sleep(0.05)
        time.sleep(1)           # the stalled end's pumps are stuck meanwhile
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    for p in pumps:
        p.join(10)
        assert not p.is_alive(), f"{p.path} ({'writer' if p.write else 'reader'}) still going"
        assert p.err == (errno.EPIPE if p.write else errno.ECONNRESET), (p.path, p.write, p.err)
        assert p.moved > 0
        p.close()
    for m in (c, a):
        st = wait_state(m, "chan", "ready")
        deadline = time.monotonic() + 3
        while m.status("chan")["peer"] != "alive":
            assert time.monotonic() < deadline, m.status("chan")
            time.sleep(0.05)
        st = m.status("chan")
        assert int(st["streams_failed"]) >= 1 and st["stream_failed_at"], st
    # the next streams: exactly what is written now, nothing of the old
    for d, text in ((cdir, "fresh-c"), (adir, "fresh-a")):
        w = sh(f"echo {text} > {d}/data", check=False)
        assert w.returncode == 0, (w.stderr, words(c), words(a))
    assert sh(f"cat {adir}/data", timeout=10).stdout == "fresh-c\n"
    assert sh(f"cat {cdir}/data", timeout=10).stdout == "fresh-a\n"
    for m in (c, a):
        assert "the open streams failed" in m.log_text()


LIB_READ_ALL = r'''
import errno, sys, mmapfs
ch = mmapfs.open(sys.argv[1], "r")
got = 0
try:
    while True:
        b = ch.read(65536)
        if not b:
            print("eof", got)
            break
        got += len(b)
except OSError as e:
    print(errno.errorcode[e.errno], got)
'''


@pytest.mark.parametrize("reader", ["data", "library", "fifo"])
def test_abort_mark(chan, reader):
    """A writer told that its stream failed (its daemon found the reader's
    daemon dead) ends it there: a reader that comes after the stall gets
    every byte written before, then ECONNRESET (data, the library) or end
    of file (the FIFO, which cannot say more; status counts it)."""
    cdir, adir, c, a = chan
    fd = os.open(f"{cdir}/data", os.O_WRONLY)
    try:
        os.write(fd, b"z" * 5000)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 3
            while c.status("chan")["peer"] != "dead":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(BrokenPipeError):
                os.write(fd, b"late")
        finally:
            a.proc.send_signal(signal.SIGCONT)
    finally:
        os.close(fd)
    wait_state(a, "chan", "ready")
    if reader == "data":
        p = subprocess.run(["dd", f"if={adir}/data", "of=/dev/null", "bs=64k"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "Connection reset by peer" in p.stderr, p.stderr
        assert "5000 bytes" in p.stderr, p.stderr
    elif reader == "library":
        p = subprocess.run([sys.executable, "-c", LIB_READ_ALL, adir], env=python_env(),
                           capture_output=True, text=True, timeout=30)
        assert p.stdout.split() == ["ECONNRESET", "5000"], (p.stdout, p.stderr)
    else:
        assert sh(f"cat {adir}/recv", timeout=30).stdout == "z" * 5000
    assert int(a.status("chan")["streams_failed"]) >= 1
    # the stream after it is whole, once the writer's end sees its peer again
    deadline = time.monotonic() + 3
    while c.status("chan")["peer"] != "alive":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sh(f"echo next > {cdir}/data")
    assert sh(f"cat {adir}/data", timeout=10).stdout == "next\n"


# ---- a version-1 peer: the previous release's daemon ----

@pytest.fixture(scope="session")
def old_mmapfs(tmp_path_factory):
    """The daemon of V1_COMMIT, built from this repository's history
    (MMAPFS_V1 names one already built)."""
    if os.environ.get("MMAPFS_V1"):
        return os.environ["MMAPFS_V1"]
    git = shutil.which("git")
    have = git and subprocess.run([git, "-C", TOP, "cat-file", "-e", V1_COMMIT + "^{commit}"],
                                  capture_output=True).returncode == 0
    if not have:
        if os.environ.get("CI"):
            pytest.fail(f"commit {V1_COMMIT} (the version-1 peer) is not in this clone")
        pytest.skip(f"commit {V1_COMMIT} (the version-1 peer) is not in this clone")
    src = tmp_path_factory.mktemp("v1")
    sh(f"git -C {TOP} archive {V1_COMMIT} | tar -x -C {src}")
    sh(f"cd {src} && meson setup -Dbuildtype=release build >/dev/null && "
       f"ninja -C build fs/mmapfs >/dev/null", timeout=600)
    return str(src / "build" / "fs" / "mmapfs")


def start_old(mount_factory, old):
    """A mount served by the old daemon (the factory runs MMAPFS)."""
    import conftest
    saved = conftest.MMAPFS
    conftest.MMAPFS = old
    try:
        return mount_factory()
    finally:
        conftest.MMAPFS = saved


@pytest.mark.parametrize("old_role", ["attacher", "creator"])
def test_version_1_peer(mount_factory, old_mmapfs, old_role, tmp_path):
    new = mount_factory()
    old = start_old(mount_factory, old_mmapfs)
    c, a = (old, new) if old_role == "creator" else (new, old)
    handshake(c, a)
    for m in (c, a):
        assert m.status("chan")["mmapfs"] == "1", m.status("chan")
    # both ways, byte for byte
    src = tmp_path / "src"
    src.write_bytes(os.urandom(1 << 20))
    for w, r in ((c, a), (a, c)):
        reader = subprocess.Popen(["bash", "-c", f"cat {r / 'chan'}/data | sha256sum"],
                                  stdout=subprocess.PIPE, text=True)
        sh(f"dd if={src} of={w / 'chan'}/data bs=64k 2>/dev/null")
        out, _ = reader.communicate(timeout=60)
        assert out.split()[0] == sh(f"sha256sum {src}").stdout.split()[0]
    # version 1 has no word to tell the writer of an abandoned stream: its
    # writes go on; the reader's end still drops the rest
    fd = os.open(f"{c / 'chan'}/data", os.O_WRONLY)
    try:
        os.write(fd, b"a" * 3000)
        assert len(sh(f"head -c 100 {a / 'chan'}/data").stdout) == 100
        time.sleep(0.3)
        assert os.write(fd, b"b" * 1000) == 1000
    finally:
        os.close(fd)
    sh(f"echo next > {c / 'chan'}/data")
    assert sh(f"cat {a / 'chan'}/data", timeout=10).stdout == "next\n"
