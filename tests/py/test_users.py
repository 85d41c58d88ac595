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
import re
import grp
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import (MMAPFS, areas_in, force_cleanup, read_kv, sh, unexpected_log_lines,
                      wait_mounted, wait_state)

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


def user_channel(mount_factory, user):
    """Two mounts, all may make channels, and the user's channel "uc" on
    each, handshaken by the user."""
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", "allow_other,mkdir=all")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'} && "
                      f"cat {a / 'uc'}/capabilities > {b / 'uc'}/peer && "
                      f"cat {b / 'uc'}/capabilities > {a / 'uc'}/peer")
    assert r.returncode == 0, r.stderr
    wait_state(a, "uc", "ready")
    wait_state(b, "uc", "ready")
    return a, b


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
    a, b = user_channel(mount_factory, user)
    os.mkdir(a / "rootc")
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


def test_fifo_entries_go_one_way_for_the_owner(mount_factory, user, tmp_path):
    """A user's channel's FIFO entries: the user streams through them (dd
    with 512-byte blocks), but may not read send nor write recv, nor change
    who may (the FIFOs are the daemon's); a stranger opens neither."""
    a, b = user_channel(mount_factory, user)
    src = source(tmp_path)
    r = as_user(user, f"cat {b / 'uc'}/recv | sha256sum & "
                      f"dd if={src} of={a / 'uc'}/send status=none; wait")
    assert r.returncode == 0 and r.stdout.split()[0] == sha256_file(src), r.stderr
    assert probe(user, "read", a / "uc/send") == "EACCES"
    assert probe(user, "write", b / "uc/recv") == "EACCES"
    assert probe(user, "chmod", a / "uc/send", "666") == "EPERM"
    os.mkdir(a / "rootc")
    assert probe(user, "write", a / "rootc/send") == "EACCES"
    st = os.lstat(a / "uc/send")
    assert stat.S_ISLNK(st.st_mode) and st.st_uid == user.uid


def test_non_root_daemon_and_a_non_dumpable_caller(user, tmp_path):
    """The daemon as a plain user (fusermount3 mounts it), and a caller that
    made itself non-dumpable (no one may read its /proc): `ls -l` and a
    stream through send and recv work, as for anyone."""
    procs, mnts = [], []
    shm = tmp_path / "shm"
    for i in range(2):
        mnts.append(tmp_path / f"umnt{i}")
        mnts[-1].mkdir()
        os.chown(mnts[-1], user.uid, user.gid)
    shm.mkdir()
    os.chown(shm, user.uid, user.gid)
    try:
        for i, mnt in enumerate(mnts):
            log = open(tmp_path / f"umount{i}.log", "w")
            procs.append(subprocess.Popen(
                ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                 MMAPFS, "-f", "-o", f"mmap_dir={shm}/areas,size=64K", str(mnt)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            wait_mounted(str(mnt), procs[-1], log.name)
        a, b = mnts
        r = as_user(user, f"mkdir {a}/c {b}/c && cat {a}/c/capabilities > {b}/c/peer && "
                          f"cat {b}/c/capabilities > {a}/c/peer && sleep 0.5 && "
                          f"grep -x state=ready {a}/c/status")
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                            "--init-groups", sys.executable, "-c", NON_DUMPABLE, str(a / "c"),
                            str(b / "c")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.split() == ["dumpable=0", "listed", "hello"], \
            (r.stdout, r.stderr)
    finally:
        for mnt, p in zip(mnts, procs):
            force_cleanup(str(mnt), p)
    for i in range(len(procs)):
        log = (tmp_path / f"umount{i}.log").read_text()
        assert not unexpected_log_lines(log), log


NON_DUMPABLE = r"""
import ctypes, os, subprocess, sys, threading
libc = ctypes.CDLL(None)
libc.prctl(4, 0, 0, 0, 0)              # PR_SET_DUMPABLE: 0
print("dumpable=%d" % libc.prctl(3, 0, 0, 0, 0))
a, b = sys.argv[1:3]
names = os.listdir(a)
assert {"send", "recv"} <= set(names), names
for n in names:
    os.lstat(os.path.join(a, n))
os.readlink(os.path.join(a, "send"))
print("listed")
got = []
t = threading.Thread(target=lambda: got.append(open(os.path.join(b, "recv")).read()))
t.start()
with open(os.path.join(a, "send"), "w") as f:
    f.write("hello")
t.join(10)
print(got[0])
"""


# ---- a shared machine: what one user can do to the others (issue 24) ----

# The whole squat runs in a mount namespace of its own with a tmpfs of its
# own on /dev/shm, so that the default mmap_dir, /dev/shm/mmapfs-0, is this
# test's alone. The daemons it starts die with it (trap) and their mount
# with the namespace.
SQUAT = r"""
set -u
exe=$1 mnt=$2 log=$3 uid=$4 gid=$5 squat=$6 other=$7
mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm || exit 90
as() { u=$1; shift; setpriv --reuid="$u" --regid="$u" --clear-groups "$@"; }
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; umount -l "$mnt" 2>/dev/null' EXIT
start() {
    "$exe" -f -o allow_other,mkdir=all,size=64K "$mnt" >> "$log" 2>&1 &
    pid=$!
    for i in $(seq 100); do
        mountpoint -q "$mnt" && return 0
        kill -0 $pid 2>/dev/null || { wait $pid; echo "start=exit $?"; exit 0; }
        sleep 0.1
    done
    echo "start=timeout"; exit 0
}
# the user takes root's default name first, and another user's old one
case $squat in
    dir) as $uid mkdir -m 0777 /dev/shm/mmapfs-0 ;;
    file) as $uid touch /dev/shm/mmapfs-0 ;;
    symlink) as $uid ln -s /etc /dev/shm/mmapfs-0 ;;
esac
as $uid mkdir -m 0700 /dev/shm/mmapfs-0-u$other
start
echo "start=ok"
mkdir "$mnt/rootc" && echo "rootc=$(grep read.file= "$mnt/rootc/capabilities")"
as $uid mkdir "$mnt/userc" && echo "userc=$(grep read.file= "$mnt/userc/capabilities")"
as $other mkdir "$mnt/otherc" && echo "otherc=$(grep read.file= "$mnt/otherc/capabilities")"
echo "squatter=$(stat -c %u /dev/shm/mmapfs-0)"
# a crash: the next daemon finds its directory again and sweeps every
# area left, the users' too
kill -9 $pid; wait $pid 2>/dev/null; pid=; umount -l "$mnt"
echo "left=$(find /dev/shm -name '*.mmap' | wc -l)"
start
echo "swept=$(find /dev/shm -name '*.mmap' | wc -l)"
fusermount3 -u "$mnt"; wait $pid; echo "rc=$?"; pid=
"""


@pytest.mark.parametrize("squat", ["dir", "file", "symlink"])
def test_squatted_default_dir(user, tmp_path, squat):
    """A user who takes /dev/shm/mmapfs-0 first (a directory open to all,
    a file, a symlink) stops nothing: root's daemon starts, says who holds
    the name, makes a directory of its own beside it, and finds it again
    after a crash to sweep its leftovers, its users' too. The old users'
    directory names beside the mmap_dir (mmapfs-0-uUID) mean nothing."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1)")
    from conftest import MMAPFS, unexpected_log_lines
    mnt, log, other = tmp_path / "mnt", tmp_path / "squat.log", 54321
    mnt.mkdir()
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", SQUAT,
                        "squat", MMAPFS, str(mnt), str(log), str(user.uid), str(user.gid),
                        squat, str(other)],
                       capture_output=True, text=True, timeout=120, start_new_session=True)
    got = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert r.returncode == 0 and got.get("start") == "ok", (r.stdout, r.stderr, text)
    assert got["squatter"] == str(user.uid)
    files = {k: got.get(k, "").split("=", 1)[-1] for k in ("rootc", "userc", "otherc")}
    assert all(files.values()), (got, r.stderr, text)
    ours = os.path.dirname(files["rootc"])
    assert re.fullmatch(r"/dev/shm/mmapfs-0\.[A-Za-z0-9]{6}", ours), files
    assert os.path.dirname(files["userc"]) == f"{ours}/u{user.uid}"
    assert os.path.dirname(files["otherc"]) == f"{ours}/u{other}"
    assert f"/dev/shm/mmapfs-0 is taken by uid {user.uid} ({user.name})" in text, text
    assert f"areas go to {ours} instead" in text
    assert got["left"] == "6" and got["swept"] == "0", got
    assert "removed 6 areas a dead mmapfs left behind" in text
    assert got["rc"] == "0", text
    assert not unexpected_log_lines(text), text


def offer_naming(caps, name):
    """A whole offer (a real one's tokens and sizes) whose files are name."""
    return "".join(f"{d}.file=/x/{name}\n" + "".join(
        f"{d}.{k}={caps[f'{d}.{k}']}\n" for k in ("size", "token", "token_index", "token_bytes"))
        for d in ("read", "write"))


def test_offer_through_symlinked_dir(mount_factory, user, tmp_path):
    """The user's allowed directory, theirs, swapped for a symlink to /dev
    or to a directory only root may read: nothing there is opened, and the
    refusal says no more than for a name that is not there."""
    home = tmp_path / "home"            # the user's, where they may swap names
    home.mkdir(mode=0o755)
    os.chown(home, user.uid, user.gid)
    allowed = home / "allowed"
    allowed.mkdir(mode=0o700)
    os.chown(allowed, user.uid, user.gid)
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    (secret / "f.mmap").write_bytes(b"\0" * (128 << 10))
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", f"allow_other,mkdir=all,allow_dirs={allowed}")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'}")
    assert r.returncode == 0, r.stderr
    caps = read_kv(a / "uc/capabilities")
    answers = {}
    for target, name in (("/dev", "null"), ("/dev", "zero"), (str(secret), "f.mmap"),
                         (str(secret), "none.mmap")):
        r = as_user(user, f"rmdir {allowed} 2>/dev/null; rm -f {allowed}; "
                          f"ln -s {target} {allowed}")
        assert r.returncode == 0, r.stderr
        offer = tmp_path / f"offer-{name}"
        offer.write_text(offer_naming(caps, name))
        offer.chmod(0o644)
        r = as_user(user, f"cat {offer} > {b / 'uc'}/peer")
        assert r.returncode != 0 and "Permission denied" in r.stderr, (name, r.stderr)
        answers[name] = b.status("uc")["error"]
    for name, why in answers.items():
        assert why.endswith(f"{name}: not found in the allowed directories"), (name, why)
        for leak in ("regular", "uid 0", "owned", "symbolic", "/dev", str(secret)):
            assert leak not in why, (name, why)


def test_offer_never_opens_a_fifo(mount_factory, user, tmp_path):
    """A FIFO the user offers from their own directory is looked at, never
    opened: a writer waiting for a reader on it goes on waiting."""
    a = mount_factory("-o", "allow_other,mkdir=all")
    b = mount_factory("-o", "allow_other,mkdir=all")
    r = as_user(user, f"mkdir {a / 'uc'} {b / 'uc'}")
    assert r.returncode == 0, r.stderr
    caps = read_kv(a / "uc/capabilities")
    udir = os.path.dirname(caps["read.file"])
    r = as_user(user, f"mkfifo -m 0600 {udir}/fifo")
    assert r.returncode == 0, r.stderr
    # opens for writing once someone opens it for reading: as the daemon did
    writer = subprocess.Popen(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
                               "--init-groups", "sh", "-c", f"exec 3>{udir}/fifo; echo opened"],
                              stdout=subprocess.PIPE, text=True)
    try:
        offer = tmp_path / "offer"
        offer.write_text(offer_naming(caps, "fifo"))
        offer.chmod(0o644)
        r = as_user(user, f"cat {offer} > {b / 'uc'}/peer")
        assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
        # their own directory: they may learn what it is
        assert "fifo: not a regular file" in b.status("uc")["error"]
        time.sleep(0.5)
        assert writer.poll() is None, "the daemon opened the FIFO"
    finally:
        writer.kill()
        writer.wait()


def mkdirs_as(uid, paths):
    """mkdir each path as uid (any number, no account needed): the errno
    name of each, or OK."""
    script = ("import errno, os, sys\n"
              "for p in sys.argv[1:]:\n"
              "    try:\n        os.mkdir(p); print('OK')\n"
              "    except OSError as e:\n        print(errno.errorcode[e.errno])\n")
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        sys.executable, "-c", script, *map(str, paths)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


AREA_PAIR = 2 * (64 * 1024 + 4096)     # the two areas of a channel of 64K rings


def test_limit_channels(mount_factory, user):
    """A user at their limit of channels gets EDQUOT, and the log says whose
    limit and which; another user, and the mounting user, go on."""
    m = mount_factory("-o", "allow_other,mkdir=all,max_channels=3")
    assert mkdirs_as(user.uid, [m / f"u{i}" for i in range(5)]) == ["OK"] * 3 + ["EDQUOT"] * 2
    assert mkdirs_as(54321, [m / f"o{i}" for i in range(4)]) == ["OK"] * 3 + ["EDQUOT"]
    for i in range(6):
        os.mkdir(m / f"root{i}")     # the mounting user: no limit unless configured
    assert f"mkdir u3: uid {user.uid} is at its limit of 3 channels (max_channels)" \
        in m.log_text()
    # a channel removed gives its place back
    assert probe(user, "rmdir", m / "u0") == "OK"
    assert mkdirs_as(user.uid, [m / "u5", m / "u6"]) == ["OK", "EDQUOT"]


def test_limit_bytes(mount_factory, user, shm):
    """The same for the bytes of a user's areas (their apparent size)."""
    m = mount_factory("-o", f"allow_other,mkdir=all,max_bytes={2 * AREA_PAIR + 100}")
    assert mkdirs_as(user.uid, [m / f"u{i}" for i in range(3)]) == ["OK", "OK", "EDQUOT"]
    assert mkdirs_as(54321, [m / "o0", m / "o1"]) == ["OK", "OK"]
    log = m.log_text()
    assert f"mkdir u2: uid {user.uid}: {AREA_PAIR} bytes of areas more would pass its " \
           f"limit of {2 * AREA_PAIR + 100} (max_bytes), {2 * AREA_PAIR} in use" in log, log
    assert len(areas_in(f"{shm}/u{user.uid}")) == 4


def test_limit_owner_and_defaults(mount_factory, conf_file, user):
    """The mounting user is limited only when configured (owner_max_*, here
    from the file); other users by default to 64 channels."""
    m = mount_factory("-c", conf_file("owner_max_channels = 2;\n"), "-o", "allow_other,mkdir=all")
    assert mkdirs_as(0, [m / "a", m / "b", m / "c"]) == ["OK", "OK", "EDQUOT"]
    assert "uid 0 is at its limit of 2 channels (owner_max_channels)" in m.log_text()
    got = mkdirs_as(user.uid, [m / f"u{i}" for i in range(66)])
    assert got == ["OK"] * 64 + ["EDQUOT"] * 2


@pytest.fixture
def conf_file(tmp_path):
    def make(text):
        path = tmp_path / f"limits{len(list(tmp_path.glob('limits*')))}.conf"
        path.write_text(text)
        return str(path)
    return make


# _IOW('M', 1, struct mm_ioc_bytes): core/channel.h
MM_IOC_BYTES = (1 << 30) | (16 << 16) | (ord("M") << 8) | 1

LIAR = r"""
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.write(fd, b"x" * 5000)
for _ in range(3):
    fcntl.ioctl(fd, int(sys.argv[2]), struct.pack("QQ", 10**12, 10**12))
os.close(fd)
"""


def test_lying_byte_counts(mount_factory, user):
    """The holder of data says with MM_IOC_BYTES that it moved 10^12 bytes
    each way: status counts what the pointers moved, nothing more."""
    a, b = user_channel(mount_factory, user)
    r = subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                        sys.executable, "-c", LIAR, str(a / "uc/data"), str(MM_IOC_BYTES)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = a.status("uc")
    assert (st["write.bytes"], st["read.bytes"]) == ("5000", "0"), st
    r = as_user(user, f"cat {b / 'uc'}/data | wc -c")
    assert r.stdout.strip() == "5000"
    assert b.status("uc")["read.bytes"] == "5000"
