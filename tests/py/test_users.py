"""Users (DESIGN.md, "Users"; docs/mmapfs.1, USERS): a mount with
-o allow_other lets other users in only as far as the modes and owners the
files show, and the daemon acts for the owner of a user's channel.

The tests add a real second user (useradd; removed at the end) and run
commands as that user with setpriv, so they need root, as CI has. Their
mounts and mmap_dir live in a directory of /tmp that the user may cross
(pytest's own temporary directories are private to root).
"""
import errno
import hashlib
import os
import pathlib
import pwd
import grp
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import areas_in, read_kv, sh, wait_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd")
                                or not shutil.which("setpriv"),
                                reason="needs root, useradd and setpriv (a second user)")

MODES = {"capabilities": 0o400, "peer": 0o600, "token": 0o400, "status": 0o400,
         "data": 0o600, "chunks": 0o600}


class User:
    def __init__(self, name):
        pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, pw.pw_uid, pw.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name


@pytest.fixture(scope="module")
def user():
    name = f"mmapfs-test-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        yield User(name)
    finally:
        # -r: its mail spool too; it has no home (-M): userdel says so, ignored
        subprocess.run(["userdel", "-r", name], capture_output=True)


@pytest.fixture
def tmp_path():
    """This module's mounts, logs and mmap_dir: in a directory the second
    user may cross (conftest's fixtures use it)."""
    d = tempfile.mkdtemp(prefix="mmapfs-users-")
    os.chmod(d, 0o711)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def as_user(u, cmd, timeout=60):
    """Run a shell command line as the user."""
    return subprocess.run(["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups",
                           "bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)


# One file operation as the user: prints OK or the errno's name.
PROBE = r"""
import errno, os, sys
op, path = sys.argv[1:3]
try:
    if op == "read":
        open(path).read()
    elif op == "write":
        os.close(os.open(path, os.O_WRONLY))
    elif op == "rdwr":
        os.close(os.open(path, os.O_RDWR))
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "rmdir":
        os.rmdir(path)
    elif op == "list":
        os.listdir(path)
    elif op == "chmod":
        os.chmod(path, int(sys.argv[3], 8))
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def probe(u, op, path, *args):
    r = subprocess.run(["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--init-groups",
                        sys.executable, "-c", PROBE, op, str(path), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def user_dir(shm, u):
    return f"{shm}/u{u.uid}"


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def user_stream(u, src, wr, rd):
    """Stream src through the channel as the user: dd into wr's data, cat out
    of rd's data; the sha256 of what came out."""
    r = as_user(u, f"cat {rd}/data | sha256sum & dd if={src} of={wr}/data bs=64k status=none; wait")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[0]


def source(tmp_path, n=300_000):
    """A file of random bytes the user may read."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(n))
    src.chmod(0o644)
    return str(src)


def test_other_user_is_shut_out(mount_factory, user):
    m = mount_factory("-o", "allow_other")
    os.mkdir(m / "chan")
    # the top is readable: the channel's names, nothing in them
    assert probe(user, "list", m.path) == "OK"
    assert probe(user, "list", m / "chan") == "EACCES"
    for f in ("capabilities", "status", "token", "peer", "data"):
        assert probe(user, "read", m / f"chan/{f}") == "EACCES", f
    assert probe(user, "write", m / "chan/peer") == "EACCES"
    assert probe(user, "write", m / "chan/data") == "EACCES"
    r = as_user(user, f"echo read.token=1 > {m / 'chan/peer'}")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert m.status("chan")["error"] == ""
    # only the mounting user makes channels; nobody else removes them
    assert probe(user, "mkdir", m / "mine") == "EACCES"
    assert probe(user, "rmdir", m / "chan") == "EACCES"
    assert probe(user, "chmod", m / "chan", "0777") == "EPERM"
    assert os.listdir(m.path) == ["chan"]
    st = os.stat(m.path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    st = os.stat(m / "chan")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 0, 0)
    for f, mode in MODES.items():
        assert mode_of(m / f"chan/{f}") == mode, f


def test_mkdir_all_sticky(mount_factory, user, shm):
    m = mount_factory("-o", "allow_other,mkdir=all")
    os.mkdir(m / "chan")
    assert mode_of(m.path) == 0o1777
    assert probe(user, "mkdir", m / "mine") == "OK"
    st = os.stat(m / "mine")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, user.uid, user.gid)
    # the sticky bit: only a channel's owner (or root) removes it
    assert probe(user, "rmdir", m / "chan") == "EPERM"
    assert probe(user, "read", m / "chan/status") == "EACCES"
    assert probe(user, "rmdir", m / "mine") == "OK"
    assert probe(user, "mkdir", m / "mine") == "OK"
    os.rmdir(m / "mine")    # root may
    # the areas of the user's channels were theirs, and are gone with them
    assert areas_in(user_dir(shm, user)) == []


def test_mkdir_group(mount_factory, user):
    m = mount_factory("-o", f"allow_other,mkdir={user.group}")
    st = os.stat(m.path)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o1775, user.gid)
    assert probe(user, "mkdir", m / "mine") == "OK"
    m2 = mount_factory("-o", f"allow_other,mkdir={user.gid}")
    assert os.stat(m2.path).st_gid == user.gid


def test_group_writable_channel(mount_factory, user):
    m = mount_factory("-o", "allow_other")
    c = m / "chan"
    sh(f"umask 022; mkdir -m 0770 {c} && chgrp {user.group} {c}")
    st = os.stat(c)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o770, 0, user.gid)
    for f, mode in MODES.items():
        st = os.stat(c + f"/{f}")
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode | mode >> 3, user.gid), f
    # the group has the owner's access
    assert probe(user, "read", c + "/capabilities") == "OK"
    assert probe(user, "read", c + "/status") == "OK"
    assert probe(user, "rdwr", c + "/data") == "ENOTCONN"    # allowed, not ready
    r = as_user(user, f"echo read.token=zz > {c}/peer")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    # private again: only the group-write bit of a chmod counts
    sh(f"chmod 0750 {c}")
    assert mode_of(c) == 0o700
    assert probe(user, "read", c + "/status") == "EACCES"
    sh(f"chmod 0777 {c}")
    assert mode_of(c) == 0o770
    assert probe(user, "read", c + "/status") == "OK"
    sh(f"chmod g-w {c}")
    assert probe(user, "read", c + "/status") == "EACCES"
    # chown by root: the user owns it, and chmods it; its files stay as they are
    sh(f"chown {user.name} {c}")
    assert os.stat(c).st_uid == user.uid and os.stat(c + "/peer").st_uid == user.uid
    assert probe(user, "read", c + "/status") == "OK"
    assert probe(user, "chmod", c, "0770") == "OK"
    assert mode_of(c) == 0o770
    assert probe(user, "chmod", c + "/peer", "0666") == "EPERM"
    for cmd in (f"chmod 0666 {c}/peer", f"chown root {c}/peer", f"chgrp root {c}/status",
                f"chmod 0700 {m.path}"):
        assert sh(cmd, check=False).returncode != 0, cmd
    assert mode_of(c + "/peer") == 0o660


def test_user_channel_handshake_and_stream(mount_factory, user, shm, tmp_path):
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", "allow_other,mkdir=all")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'}")
    assert r.returncode == 0, r.stderr
    # the areas are the user's, in the user's own directory beside the mmap_dir
    ud = user_dir(shm, user)
    st = os.stat(ud)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, user.uid, user.gid)
    offer = read_kv(a / "uc/capabilities")
    for d in ("read", "write"):
        assert os.path.dirname(offer[f"{d}.file"]) == ud
    assert len(areas_in(ud)) == 4 and areas_in(shm) == []
    for f in areas_in(ud):
        st = os.stat(os.path.join(ud, f))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, user.uid, user.gid)
    # the handshake and the stream, all as the user
    r = as_user(user, f"cat {a / 'uc'}/capabilities > {b / 'uc'}/peer && "
                      f"cat {b / 'uc'}/capabilities > {a / 'uc'}/peer")
    assert r.returncode == 0, r.stderr
    wait_state(a, "uc", "ready")
    wait_state(b, "uc", "ready")
    src = source(tmp_path)
    assert user_stream(user, src, a / "uc", b / "uc") == sha256_file(src)
    assert user_stream(user, src, b / "uc", a / "uc") == sha256_file(src)
    # the user's own programs open the user's areas, not root's
    assert probe(user, "rdwr", offer["read.file"]) == "OK"
    os.mkdir(a / "rootc")
    root_file = read_kv(a / "rootc/capabilities")["read.file"]
    assert os.stat(root_file).st_uid == 0
    assert probe(user, "rdwr", root_file) == "EACCES"
    assert len(areas_in(ud)) == 2    # the attacher dropped its own offer


def test_user_channel_refuses_others_files(mount_factory, user, shm, tmp_path):
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", "allow_other,mkdir=all")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'}")
    assert r.returncode == 0, r.stderr
    # root's own channel offers root's files, which are not in the user's
    # directory: a user's channel does not open them
    os.mkdir(a / "rootc")
    offer = tmp_path / "root-offer"
    shutil.copy(a / "rootc/capabilities", offer)
    offer.chmod(0o644)
    r = as_user(user, f"cat {offer} > {b / 'uc'}/peer")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
    assert "not found in the allowed directories" in b.status("uc")["error"]
    # a file in the user's directory that belongs to root: refused
    offer = read_kv(a / "uc/capabilities")
    os.chown(offer["read.file"], 0, 0)
    r = as_user(user, f"cat {a / 'uc'}/capabilities > {b / 'uc'}/peer")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
    assert "owned by uid 0" in b.status("uc")["error"]
    os.chown(offer["read.file"], user.uid, user.gid)
    r = as_user(user, f"cat {a / 'uc'}/capabilities > {b / 'uc'}/peer")
    assert r.returncode == 0, r.stderr


def test_declared_user_channel(mount_factory, user, shm, tmp_path):
    """Two mounts sharing one mmap_dir setting, each with a channel declared
    for the user: the user handshakes and streams with the defaults."""
    confs = []
    for role in ("creator", "attacher"):
        path = tmp_path / f"{role}.conf"
        path.write_text(f'channels = ( {{ name = "u"; role = "{role}"; user = "{user.name}"; }},\n'
                        f'  {{ name = "g"; role = "{role}"; group = {user.gid}; '
                        f'mode = "0770"; }} );\n')
        confs.append(str(path))
    a = mount_factory("-c", confs[0], "-o", "allow_other")
    b = mount_factory("-c", confs[1], "-o", "allow_other")
    for m in (a, b):
        st = os.stat(m / "u")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, user.uid, user.gid)
        st = os.stat(m / "g")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o770, 0, user.gid)
    ud = user_dir(shm, user)
    assert len(areas_in(ud)) == 2 and len(areas_in(shm)) == 2
    for f in areas_in(ud):
        assert os.stat(os.path.join(ud, f)).st_uid == user.uid
    for name in ("u", "g"):
        r = as_user(user, f"cat {a / name}/capabilities > {b / name}/peer && "
                          f"cat {b / name}/capabilities > {a / name}/peer")
        assert r.returncode == 0, (name, r.stderr)
        wait_state(a, name, "ready")
        wait_state(b, name, "ready")
        src = source(tmp_path)
        assert user_stream(user, src, a / name, b / name) == sha256_file(src), name


def test_one_users_waiting_callers_delay_nobody(mount_factory, user):
    """A user ends six streams nobody reads, then starts 100 writers whose
    opens wait for the reader, and 20 readers that wait for bytes: root's
    ls and cat status answer at once; killing the user's processes ends
    them, and the channel serves the next caller."""
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", "allow_other,mkdir=all")
    os.mkdir(a / "rootc")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'} && "
                      f"cat {a / 'uc'}/capabilities > {b / 'uc'}/peer && "
                      f"cat {b / 'uc'}/capabilities > {a / 'uc'}/peer")
    assert r.returncode == 0, r.stderr
    wait_state(a, "uc", "ready")
    wait_state(b, "uc", "ready")
    for i in range(20):
        r = as_user(user, f"mkdir {a / f'r{i}'} {b / f'r{i}'} && "
                          f"cat {a / f'r{i}'}/capabilities > {b / f'r{i}'}/peer && "
                          f"cat {b / f'r{i}'}/capabilities > {a / f'r{i}'}/peer")
        assert r.returncode == 0, r.stderr
    r = as_user(user, f"for i in 1 2 3 4 5 6; do echo $i > {a / 'uc'}/data; done")
    assert r.returncode == 0, r.stderr
    setpriv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
    waiting = [subprocess.Popen(setpriv + ["bash", "-c", f"echo {i} > {a / 'uc'}/data"],
                                stderr=subprocess.DEVNULL) for i in range(100)]
    waiting += [subprocess.Popen(setpriv + ["cat", str(b / f"r{i}/data")],
                                 stdout=subprocess.DEVNULL) for i in range(20)]
    try:
        time.sleep(1)
        assert all(p.poll() is None for p in waiting), "a waiting caller did not wait"
        for cmd in (["ls", str(a.path)], ["cat", str(a / "rootc/status")],
                    ["ls", str(a / "uc")], ["cat", str(b / "r0/status")]):
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True, timeout=5)
            assert time.monotonic() - t0 < 1, f"{cmd} took {time.monotonic() - t0:.2f} s"
        t0 = time.monotonic()
        for p in waiting:
            p.kill()
        for p in waiting:
            p.wait(5)
        assert time.monotonic() - t0 < 2
    finally:
        for p in waiting:
            if p.poll() is None:
                p.kill()
                p.wait()
    # the six streams are still there, in order, and the channel goes on
    got = [as_user(user, f"cat {b / 'uc'}/data").stdout for _ in range(6)]
    assert got == [f"{i}\n" for i in range(1, 7)]
    r = as_user(user, f"echo next > {a / 'uc'}/data && cat {b / 'uc'}/data")
    assert r.stdout == "next\n", r.stderr
