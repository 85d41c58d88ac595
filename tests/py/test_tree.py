"""The tree (DESIGN.md, "The tree" and "Data"): what mkdir and rmdir make and
remove, the files' names, modes and sizes, what may not be done in it, and
when `data` may be opened."""
import errno
import os
import signal
import stat
import subprocess

import pytest

from conftest import areas_in, handshake, read_kv, read_text, sh, unmount

FILES = ["capabilities", "peer", "token", "status", "data"]
# private to the channel's owner (docs/mmapfs.1, USERS; test_users.py)
MODES = {"capabilities": 0o400, "peer": 0o600, "token": 0o400, "status": 0o400,
         "data": 0o600, "chunks": 0o600}


def listing(path):
    """The channel's files in readdir order: the five of DESIGN.md's tree,
    then `chunks` (xpra's lists), `send` and `recv` (links to FIFOs:
    test_fifo.py)."""
    names = os.listdir(path)
    assert names == FILES + ["chunks", "send", "recv"], names
    return names


def areas_of(m, name="chan"):
    """The basenames of the area files a creator's channel offers."""
    caps = read_kv(m / f"{name}/capabilities")
    return sorted(os.path.basename(caps[f"{d}.file"]) for d in ("read", "write"))


def errno_of(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return errno.errorcode.get(e.value.errno, e.value.errno)


@pytest.fixture
def ready(pair):
    c, a = pair
    handshake(c, a)
    return c, a


def test_mkdir_makes_five_files(mount_factory):
    m = mount_factory()
    os.mkdir(m / "chan")
    assert os.listdir(m.path) == ["chan"]
    names = listing(m / "chan")
    assert sh(f"ls -U {m / 'chan'}").stdout.split() == names
    st = os.stat(m / "chan")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    for f in names:
        st = os.lstat(m / f"chan/{f}")
        if f in ("send", "recv"):
            assert stat.S_ISLNK(st.st_mode), f
            assert stat.S_ISFIFO(os.stat(m / f"chan/{f}").st_mode), f
            continue
        assert stat.S_ISREG(st.st_mode), f
        assert stat.S_IMODE(st.st_mode) == MODES[f], (f, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f


def test_text_sizes_are_content_lengths(ready):
    for m in ready:
        for f in ("capabilities", "token", "status", "peer"):
            size = os.stat(m / f"chan/{f}").st_size
            assert size == len(read_text(m / f"chan/{f}")) > 0, f


def test_read_only_files_refuse_writes(mount_factory):
    m = mount_factory()
    os.mkdir(m / "chan")
    for f in ("capabilities", "token", "status"):
        assert errno_of(os.open, m / f"chan/{f}", os.O_WRONLY) == "EACCES", f


def test_mkdir_existing_name(mount_factory):
    m = mount_factory()
    os.mkdir(m / "chan")
    assert errno_of(os.mkdir, m / "chan") == "EEXIST"
    assert os.listdir(m.path) == ["chan"]


def test_nothing_else_can_be_made_or_moved(mount_factory):
    m = mount_factory()
    os.mkdir(m / "chan")
    assert errno_of(os.open, m / "chan/extra", os.O_WRONLY | os.O_CREAT, 0o600) == "EPERM"
    assert errno_of(os.open, m / "loose", os.O_WRONLY | os.O_CREAT, 0o600) == "EPERM"
    assert errno_of(os.mkdir, m / "chan/sub") == "EPERM"
    assert errno_of(os.unlink, m / "chan/status") == "EPERM"
    assert errno_of(os.rename, m / "chan/peer", m / "chan/peer2") == "EPERM"
    assert errno_of(os.rename, m / "chan", m / "chan2") == "EPERM"
    assert os.listdir(m.path) == ["chan"]
    listing(m / "chan")


def test_data_before_ready(pair):
    c, a = pair
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    for mode in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        assert errno_of(os.open, c / "chan/data", mode) == "ENOTCONN"
    r = sh(f"echo x > {c / 'chan/data'}", check=False)
    assert r.returncode != 0 and "not connected" in r.stderr
    # the attacher has taken the offer, the creator not yet the answer
    sh(f"cat {c / 'chan/capabilities'} > {a / 'chan/peer'}")
    assert read_kv(a / "chan/status")["state"] == "attached"
    assert errno_of(os.open, a / "chan/data", os.O_WRONLY) == "ENOTCONN"
    assert errno_of(os.open, c / "chan/data", os.O_RDONLY) == "ENOTCONN"


def test_rmdir_deletes_the_areas(mount_factory, shm):
    m = mount_factory()
    os.mkdir(m / "chan")
    files = areas_of(m)
    assert areas_in(shm) == files
    os.rmdir(m / "chan")
    assert os.listdir(m.path) == []
    assert areas_in(shm) == []
    assert errno_of(os.stat, m / "chan/status") == "ENOENT"
    os.mkdir(m / "chan")            # the name is free again
    assert len(areas_in(shm)) == 2


def test_rmdir_busy_while_data_open(ready):
    c, _ = ready
    for mode in (os.O_WRONLY, os.O_RDONLY):
        fd = os.open(c / "chan/data", mode | os.O_NONBLOCK)
        try:
            assert errno_of(os.rmdir, c / "chan") == "EBUSY"
            assert "chan" in os.listdir(c.path)
        finally:
            os.close(fd)
    os.rmdir(c / "chan")
    assert os.listdir(c.path) == []


def test_echo_echo_never_busy(ready):
    """`echo a > data; echo b > data`, 50 times: a close()d writer's release
    may still be on its way, the next open must not get EBUSY. A reader on
    the other end takes the 100 streams, also opening right after closing."""
    c, a = ready
    reader = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq 100); do cat {a / 'chan/data'} || exit 1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        w = sh(f"d={c / 'chan/data'}; for i in $(seq 50); do "
               f"echo a > $d || exit 1; echo b > $d || exit 1; done", check=False)
        assert w.returncode == 0, w.stderr
        out, err = reader.communicate(timeout=20)
    finally:
        if reader.poll() is None:
            os.killpg(reader.pid, signal.SIGKILL)
            reader.wait()
    assert (reader.returncode, err) == (0, "")
    assert out == "a\nb\n" * 50


def test_cat_then_rmdir(ready):
    c, a = ready
    sh(f"echo hello > {a / 'chan/data'}")
    r = sh(f"cat {c / 'chan/data'} && rmdir {c / 'chan'}", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello\n", "")
    assert os.listdir(c.path) == []


def test_echo_then_rmdir_keeps_the_stream(ready):
    """The writer closes data and removes its channel at once: what it wrote,
    and the end of its stream, still reach the other end."""
    c, a = ready
    r = sh(f"echo bye > {a / 'chan/data'} && rmdir {a / 'chan'}", check=False)
    assert (r.returncode, r.stderr) == (0, "")
    r = sh(f"timeout 5 cat {c / 'chan/data'}", check=False)
    assert (r.returncode, r.stdout) == (0, "bye\n"), r.stderr


def test_attacher_rmdir_keeps_creator_files(ready, shm):
    c, a = ready
    files = areas_of(c)
    assert areas_in(shm) == files     # the attacher's own are gone
    os.rmdir(a / "chan")
    assert os.listdir(a.path) == []
    assert areas_in(shm) == files
    assert read_kv(c / "chan/status")["state"] == "ready"
    os.rmdir(c / "chan")
    assert areas_in(shm) == []


def test_unmount_deletes_creator_files(ready, shm):
    c, a = ready
    os.mkdir(c / "idle")            # never handshaken
    files = sorted(areas_of(c) + areas_of(c, "idle"))
    assert areas_in(shm) == files
    unmount(a)
    assert areas_in(shm) == files
    unmount(c)
    assert os.listdir(shm) == []       # lock files too
