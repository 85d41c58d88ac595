"""A full filesystem (docs/mmapfs.1, "-o reserve"): areas are sparse, as
xpra's are, so space is taken as the ring is first written. When it runs
out, mkdir fails with ENOSPC and says why, and a write gets ENOSPC, loses
nothing, and goes on once space is freed. -o reserve takes every area's
space when it is made instead."""
import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

from conftest import handshake, sh


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs, made for the test and gone after it."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M,mode=0700", "tmpfs", str(d)],
                   check=True)
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_mkdir_on_a_full_filesystem(mount_factory, small_fs):
    m = mount_factory(mmap_dir=os.path.join(small_fs, "shm"))
    made = 0
    with pytest.raises(OSError) as e:
        for made in range(2000):
            os.mkdir(m / f"c{made}")
    assert e.value.errno == errno.ENOSPC
    assert made > 10
    assert f"mkdir c{made}: " in m.log_text()
    assert "no space left on its filesystem" in m.log_text()
    # the channels made before still work, and removing some makes room:
    # two, for a channel's pages are three or four an area (the header, the
    # trailer, and the token's, whose random place may straddle two pages),
    # and a full filesystem may have had none left over
    os.rmdir(m / "c0")
    os.rmdir(m / "c1")
    os.mkdir(m / f"c{made}")


def test_reserve_fails_mkdir_up_front(mount_factory, small_fs):
    m = mount_factory("-o", "reserve", size="1M", mmap_dir=os.path.join(small_fs, "shm"))
    with pytest.raises(OSError) as e:
        for i in range(4):
            os.mkdir(m / f"c{i}")
    assert e.value.errno == errno.ENOSPC
    assert i == 0 or i == 1
    assert "no space left for its" in m.log_text()


def read_into(path, h):
    """Read path to its end of file into the hash h."""
    with open(path, "rb", buffering=0) as f:
        while True:
            piece = f.read(1 << 16)
            if not piece:
                return
            h.update(piece)

def almost_full(mount_factory, small_fs):
    """A channel of 1 MiB rings on the small filesystem, and a filler file
    that leaves less room than the ring needs: (c, a, filler)."""
    shm = os.path.join(small_fs, "shm")
    c = mount_factory(size="1M", mmap_dir=shm)
    a = mount_factory(size="1M", mmap_dir=shm)
    handshake(c, a)
    filler = os.path.join(small_fs, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (1500 << 10))
    return c, a, filler


def test_write_on_a_full_filesystem(mount_factory, small_fs, tmp_path):
    # the stream wraps the 1 MiB ring 3 times
    c, a, filler = almost_full(mount_factory, small_fs)
    blob = os.urandom(3 << 20)
    got = hashlib.sha256()
    nospace = []

    reader = threading.Thread(target=read_into, args=(a / "chan/data", got))
    reader.start()
    fd = os.open(c / "chan/data", os.O_WRONLY)
    try:
        view = memoryview(blob)
        while view:
            try:
                view = view[os.write(fd, view[:1 << 16]):]
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if not nospace:
                    st = c.status("chan")
                    assert st["state"] == "ready", st
                    assert "no space left on its filesystem" in st["error"], st
                nospace.append(len(blob) - len(view))
                assert len(nospace) == 1, "ENOSPC again after room was made"
                os.unlink(filler)            # make room: the stream goes on
    finally:
        os.close(fd)
    reader.join(30)
    assert nospace, "the filesystem never filled up"
    assert got.hexdigest() == hashlib.sha256(blob).hexdigest()


def test_send_on_a_full_filesystem(mount_factory, small_fs, tmp_path):
    """The FIFO entry `send` reads its FIFO straight into the ring: on a full
    filesystem its pump waits (a FIFO's writer cannot be told ENOSPC; it
    blocks once the FIFO is full), status says why, and the stream goes on
    whole once room is made."""
    c, a, filler = almost_full(mount_factory, small_fs)
    blob = os.urandom(3 << 20)
    got = hashlib.sha256()

    def write_all():
        with open(c / "chan/send", "wb", buffering=0) as f:
            f.write(blob)

    threads = [threading.Thread(target=read_into, args=(a / "chan/recv", got)),
               threading.Thread(target=write_all)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while "no space left on its filesystem" not in c.status("chan")["error"]:
        assert time.monotonic() < deadline, c.status("chan")
        time.sleep(0.05)
    assert c.status("chan")["state"] == "ready"
    os.unlink(filler)            # make room: the stream goes on
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert got.hexdigest() == hashlib.sha256(blob).hexdigest()

def lowest_free_fd(pid):
    """The descriptor number the process's next open() would get."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_descriptor_limit(mount_factory):
    """A limit on descriptors reached is EMFILE, with the reason in the log
    or in status: never EACCES. (Channels keep no descriptor: the limit is
    set just where the daemon's next open fails.)"""
    c, a = mount_factory(), mount_factory()
    for i in range(20):
        os.mkdir(c / f"c{i}")
    os.mkdir(a / "offer")
    os.mkdir(c / "offer")
    for m in (c, a):
        n = lowest_free_fd(m.proc.pid)
        subprocess.run(["prlimit", "--pid", str(m.proc.pid), f"--nofile={n}:{n}"], check=True)
    with pytest.raises(OSError) as e:
        os.mkdir(c / "c20")
    assert e.value.errno == errno.EMFILE
    assert "Too many open files" in c.log_text()
    # the attacher, out of descriptors too, refuses the offer with EMFILE
    offer = open(c / "offer/capabilities").read()
    with pytest.raises(OSError) as e:
        with open(a / "offer/peer", "w") as f:
            f.write(offer)
    assert e.value.errno == errno.EMFILE, e.value
    assert "Too many open files" in a.status("offer")["error"]
