"""Deployment: a VM host and its guest simulated on one machine, the
handshake scripts, mounting through mount(8)/mount.fuse3, and what
`meson install` puts in place (contrib/, docs/).

The ivshmem simulation: a 1 MiB file made by the test stands for the
memory of an ivshmem-plain device (/dev/shm/shmem-xpra on the host), and a
symbolic link to it for the guest's view of the same memory (the BAR file
resource2_wc). Mount A (the host) declares the file as the write_file of a
creator channel, mount B (the guest) the link as the read_file of an
attacher channel (DESIGN.md, "Configuration file").
"""
import grp
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import (MMAPFS, TOP, Mount, force_cleanup, mounted, read_kv, unmount,
                      wait_mounted, wait_state)

CONTRIB = os.path.join(TOP, "contrib")
SCRIPTS = {"sh": os.path.join(CONTRIB, "handshake.sh"),
           "py": os.path.join(CONTRIB, "handshake.py")}
AREA = 1 << 20                          # the simulated ivshmem device


def script_cmd(kind, path=None):
    path = path or SCRIPTS[kind]
    return ["bash", path] if kind == "sh" else [sys.executable, path]


def need_socat(kind):
    if kind == "sh" and not shutil.which("socat"):
        pytest.skip("handshake.sh needs socat (apt-get install socat)")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return str(path)


def write_conf(path, text):
    text = textwrap.dedent(text)
    path.write_text(text[1:] if text.startswith("\n") else text)
    return str(path)


def run_pair(first, second, timeout=60):
    """Start `first` (the listener), then `second`: (rc, stdout, stderr) of
    each. Each runs in its own process group, killed whole on a timeout, so
    that no child (socat, cat) keeps a file of the mount open."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for cmd in (first, second)]
    results, deadline = [], time.monotonic() + timeout
    for p in reversed(procs):
        try:
            out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                try:
                    os.killpg(q.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out, err = p.communicate()
            err += f"\n[killed after {timeout} s]"
        results.append((p.returncode, out, err))
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)     # stragglers of a finished script
        except (ProcessLookupError, PermissionError):
            pass
    return results[1], results[0]


@pytest.fixture
def ivshmem(tmp_path):
    """The host's backing file and the guest's view of it."""
    host_dir = tmp_path / "hostshm"
    host_dir.mkdir(mode=0o700)
    shmem = host_dir / "shmem-xpra"
    with open(shmem, "wb") as f:
        f.truncate(AREA)
    bar_dir = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:05.0"
    bar_dir.mkdir(parents=True)
    bar = bar_dir / "resource2_wc"
    bar.symlink_to(shmem)
    return str(shmem), str(bar)


@pytest.fixture
def host_guest(tmp_path, mount_factory, ivshmem):
    """Mount A (host, creator "vm0") and mount B (guest, attacher "host")."""
    shmem, bar = ivshmem
    nowhere = tmp_path / "guest-allowed"
    nowhere.mkdir(mode=0o700)
    a_conf = write_conf(tmp_path / "host.conf", f"""
        channels = (
          {{ name = "vm0";
            role = "creator";
            write_file = "{shmem}";
          }}
        );
        """)
    # The guest may open no offered file by name: only its BAR, as declared.
    b_conf = write_conf(tmp_path / "guest.conf", f"""
        allow_dirs = [ "{nowhere}" ];
        channels = (
          {{ name = "host";
            role = "attacher";
            read_file = "{bar}";
          }}
        );
        """)
    a = mount_factory("-c", a_conf)
    b = mount_factory("-c", b_conf)
    return a, b, shmem, bar


def test_host_guest_ivshmem(host_guest, tmp_path):
    a, b, shmem, bar = host_guest
    # both declared channels are there at mount
    assert os.listdir(a.path) == ["vm0"]
    assert os.listdir(b.path) == ["host"]
    sa, sb = a.status("vm0"), b.status("host")
    assert (sa["state"], sa["role"]) == ("offered", "creator")
    assert (sb["state"], sb["role"]) == ("offered", "attacher")
    # the host offers one direction: the existing file, at its own size
    offer = read_kv(a / "vm0/capabilities")
    assert offer["write.file"] == shmem
    assert offer["write.size"] == str(AREA)
    assert not any(k.startswith("read.") for k in offer)
    # ... and its token really is in that file
    idx, nbytes = int(offer["write.token_index"]), int(offer["write.token_bytes"])
    with open(shmem, "rb") as f:
        f.seek(idx)
        raw = f.read(nbytes)
    assert int.from_bytes(raw, "little") == int(offer["write.token"], 0)

    # handshake through files: A's capabilities -> B's peer, and back
    with open(a / "vm0/capabilities") as f:
        offer_text = f.read()
    with open(b / "host/peer", "w") as f:
        f.write(offer_text)
    answer = read_kv(b / "host/capabilities")
    assert set(k for k in answer if "." in k) == {
        "read.token", "read.token_index", "read.token_bytes"}, answer
    with open(b / "host/capabilities") as f:
        answer_text = f.read()
    with open(a / "vm0/peer", "w") as f:
        f.write(answer_text)
    sa = wait_state(a, "vm0", "ready")
    sb = wait_state(b, "host", "ready")
    assert sa["write.size"] == sb["read.size"] == str(AREA)
    assert "read.size" not in sa and "write.size" not in sb

    # data A -> B, three times the area (wraps around), byte-identical
    src = random_file(tmp_path / "in.bin", 3 * AREA + 12345)
    dst = str(tmp_path / "out.bin")
    with open(dst, "wb") as out:
        reader = subprocess.Popen(["cat", b / "host/data"], stdout=out)
        subprocess.run(["dd", f"if={src}", f"of={a / 'vm0/data'}", "bs=64k", "status=none"],
                       check=True, timeout=60)
        assert reader.wait(60) == 0
    assert sha256(dst) == sha256(src)
    assert a.status("vm0")["write.bytes"] == str(3 * AREA + 12345)
    assert b.status("host")["read.bytes"] == str(3 * AREA + 12345)

    # one device, one direction: the other one does not exist
    for path, mode in ((b / "host/data", os.O_WRONLY), (a / "vm0/data", os.O_RDONLY)):
        with pytest.raises(OSError) as e:
            os.close(os.open(path, mode))
        assert e.value.errno == 6, (path, e.value)      # ENXIO

    # the administrator's files outlive the channel and the mounts
    os.rmdir(a / "vm0")
    assert os.path.getsize(shmem) == AREA
    for m in (a, b):
        unmount(m)
    assert os.path.getsize(shmem) == AREA
    assert os.path.islink(bar) and os.path.realpath(bar) == shmem


def test_guest_refuses_wrong_memory(host_guest, tmp_path):
    """The guest's BAR is another memory: the host's token is not there."""
    a, b, shmem, bar = host_guest
    other = tmp_path / "other-device"
    with open(other, "wb") as f:
        f.truncate(AREA)
    os.unlink(bar)
    os.symlink(other, bar)
    with open(a / "vm0/capabilities") as f:
        offer = f.read()
    with pytest.raises(OSError) as e:
        with open(b / "host/peer", "w") as f:
            f.write(offer)
    assert e.value.errno == 74                       # EBADMSG
    assert "not found" in b.status("host")["error"]
    assert b.status("host")["state"] == "offered"


@pytest.mark.parametrize("listener,connector", [
    ("sh", "py"), ("py", "sh"), ("sh", "sh"), ("py", "py")])
def test_handshake_scripts(listener, connector, pair, tmp_path):
    """The attacher listens, the creator connects; a file goes creator ->
    attacher through the channel, byte-identical."""
    need_socat(listener)
    need_socat(connector)
    c, a = pair
    sock = str(tmp_path / "hs.sock")
    src = random_file(tmp_path / "in.bin", 300_000 + 7)
    dst = str(tmp_path / "out.bin")
    (r1, _, e1), (r2, _, e2) = run_pair(
        script_cmd(listener) + ["--role", "attacher", "--listen", f"unix:{sock}",
                                "--receive", dst, a / "chan"],
        script_cmd(connector) + ["--connect", f"unix:{sock}", "--send", src, c / "chan"])
    assert (r1, r2) == (0, 0), f"listener: {e1}\nconnector: {e2}"
    assert sha256(dst) == sha256(src)
    assert c.status("chan")["role"] == "creator"
    assert a.status("chan")["role"] == "attacher"
    assert not os.path.exists(sock)


@pytest.mark.parametrize("kind", ["sh", "py"])
def test_handshake_script_other_way(kind, pair, tmp_path):
    """The creator listens, the attacher connects and sends to the creator."""
    need_socat(kind)
    c, a = pair
    sock = str(tmp_path / "hs.sock")
    src = random_file(tmp_path / "in.bin", 200_000)
    dst = str(tmp_path / "out.bin")
    (r1, _, e1), (r2, _, e2) = run_pair(
        script_cmd(kind) + ["--listen", f"unix:{sock}", "--receive", dst, c / "chan"],
        script_cmd(kind) + ["--role=attacher", f"--connect=unix:{sock}", f"--send={src}",
                            "-v", a / "chan"])
    assert (r1, r2) == (0, 0), f"listener: {e1}\nconnector: {e2}"
    assert sha256(dst) == sha256(src)
    assert "ready" in e2                             # -v says each step


@pytest.mark.parametrize("kind", ["sh", "py"])
def test_handshake_script_host_guest(kind, host_guest, tmp_path):
    """The scripts on the declared channels: roles come from status."""
    need_socat(kind)
    a, b, shmem, bar = host_guest
    sock = str(tmp_path / "vsock-stand-in.sock")
    src = random_file(tmp_path / "in.bin", 2 * AREA + 1)
    dst = str(tmp_path / "out.bin")
    (r1, _, e1), (r2, _, e2) = run_pair(
        script_cmd(kind) + ["--listen", f"unix:{sock}", "--receive", dst, b / "host"],
        script_cmd(kind) + ["--connect", f"unix:{sock}", "--send", src, a / "vm0"])
    assert (r1, r2) == (0, 0), f"guest: {e1}\nhost: {e2}"
    assert sha256(dst) == sha256(src)


@pytest.mark.parametrize("listener,connector", [("sh", "py"), ("py", "sh")])
def test_handshake_script_refusal(listener, connector, mount_factory, tmp_path):
    """The attacher may not open the offered files: both ends fail, and the
    creator's side says why."""
    need_socat(listener)
    need_socat(connector)
    c = mount_factory()
    other = tmp_path / "othershm"
    other.mkdir(mode=0o700)
    a = mount_factory(mmap_dir=str(other))
    sock = str(tmp_path / "hs.sock")
    (r1, _, e1), (r2, _, e2) = run_pair(
        script_cmd(listener) + ["--role", "attacher", "--listen", f"unix:{sock}",
                                "--timeout", "20", a / "chan"],
        script_cmd(connector) + ["--connect", f"unix:{sock}", "--timeout", "20", c / "chan"])
    assert r1 == 1 and r2 == 1, f"listener: {e1}\nconnector: {e2}"
    assert "Permission denied" in e1, e1
    assert "the peer failed" in e2 and "Permission denied" in e2, e2
    assert a.status("chan")["state"] == "offered"


@pytest.mark.parametrize("kind", ["sh", "py"])
def test_handshake_script_usage(kind, tmp_path):
    need_socat(kind)
    h = subprocess.run(script_cmd(kind) + ["--help"], capture_output=True, text=True,
                       timeout=20)
    assert h.returncode == 0, h.stderr
    for word in ("--listen", "--connect", "--role", "--send", "--receive", "vsock"):
        assert word in h.stdout, word
    bad = subprocess.run(script_cmd(kind) + [str(tmp_path / "x")], capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode == 2
    assert not os.path.exists(tmp_path / "x")
    # nobody listening: a clear failure within the timeout
    t0 = time.monotonic()
    r = subprocess.run(script_cmd(kind) + ["--connect", f"unix:{tmp_path}/none.sock",
                                           "--timeout", "1", str(tmp_path / "chan")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr, r
    assert time.monotonic() - t0 < 15


# ---- mount(8), fstab and mount.fuse3 ----

def daemon_pids(mnt):
    """mmapfs processes serving mnt (daemonized ones have no Popen)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"mmapfs" and mnt.encode() in argv:
            pids.append(int(pid))
    return pids


def wait_daemon_gone(mnt, timeout=10):
    deadline = time.monotonic() + timeout
    while daemon_pids(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = daemon_pids(mnt)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"mmapfs on {mnt} did not exit after umount"


@pytest.fixture
def helper_mounts():
    """Mount points mounted by mount(8) or mount.fuse3: always unmounted."""
    points = []
    yield points
    for mnt in points:
        if mounted(mnt):
            subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fstab_env(tmp_path, shm):
    """A PATH with mmapfs on it, a configuration, a mount point, and
    sanitizer reports of daemonized processes sent to files."""
    if not shutil.which("mount.fuse3"):
        pytest.skip("mount.fuse3 (fuse3) not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mmapfs").symlink_to(MMAPFS)
    conf = write_conf(tmp_path / "fstab.conf", f"""
        mmap_dir = "{shm}";
        size = "64K";
        channels = ( {{ name = "declared"; }} );
        """)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    asan = tmp_path / "asan"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               ASAN_OPTIONS=f"log_path={asan}:" + os.environ.get("ASAN_OPTIONS", ""),
               UBSAN_OPTIONS=f"log_path={asan}:" + os.environ.get("UBSAN_OPTIONS", ""))
    return {"bin": str(bindir / "mmapfs"), "conf": conf, "mnt": str(mnt), "env": env,
            "asan": str(asan), "tmp": tmp_path}


def check_helper_mount(fx, helper_mounts, size):
    mnt = fx["mnt"]
    assert mounted(mnt)
    with open("/proc/self/mounts") as f:
        fstype = [line.split()[2] for line in f if line.split()[1] == mnt]
    assert fstype == ["fuse.mmapfs"]
    assert os.listdir(mnt) == ["declared"]
    os.mkdir(os.path.join(mnt, "made"))
    st = read_kv(os.path.join(mnt, "made", "status"))
    assert st["read.size"] == str(size)
    os.rmdir(os.path.join(mnt, "made"))
    r = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert not mounted(mnt)
    wait_daemon_gone(mnt)
    reports = [p for p in os.listdir(fx["tmp"]) if p.startswith("asan")]
    assert not reports, open(os.path.join(fx["tmp"], reports[0])).read()


def page_round(n):
    page = os.sysconf("SC_PAGESIZE")
    return (n + 8 + page - 1) // page * page


def test_fstab_mount(fstab_env, helper_mounts, tmp_path):
    """mount(8) with an fstab line: type fuse, source PROGRAM#SOURCE.

    mount(8) runs helpers with its own standard PATH, so the installed form
    (type fuse.mmapfs, source -c/etc/mmapfs/NAME.conf) needs mmapfs in
    /usr/bin; the older fuse type with the program's path in the source
    reaches the same mount.fuse3 code without installing anything."""
    fx = fstab_env
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{fx['bin']}#-c{fx['conf']}  {fx['mnt']}  fuse  "
                     f"noauto,size=128K  0 0\n")
    helper_mounts.append(fx["mnt"])
    r = subprocess.run(["mount", "-T", str(fstab), fx["mnt"]], capture_output=True,
                       text=True, timeout=30, env=fx["env"])
    assert r.returncode == 0, r.stderr
    check_helper_mount(fx, helper_mounts, page_round(128 << 10))


def test_mount_fuse3_type(fstab_env, helper_mounts):
    """Exactly what `mount -t fuse.mmapfs -c/CONF MNT -o OPTS` runs:
    mount.fuse3 SOURCE MNT -t fuse.mmapfs -o OPTS, which runs
    `mmapfs SOURCE MNT -o OPTS` from PATH. The source -cCONF is an option to
    mmapfs, so this works with a daemon that takes one operand."""
    fx = fstab_env
    helper_mounts.append(fx["mnt"])
    r = subprocess.run(["mount.fuse3", f"-c{fx['conf']}", fx["mnt"], "-t", "fuse.mmapfs",
                        "-o", "size=192K"],
                       capture_output=True, text=True, timeout=30, env=fx["env"])
    assert r.returncode == 0, r.stderr
    check_helper_mount(fx, helper_mounts, page_round(192 << 10))


def test_mount_fuse3_plain_source(fstab_env, helper_mounts):
    """The usual fstab form: a dummy source, the configuration as an option."""
    fx = fstab_env
    helper_mounts.append(fx["mnt"])
    r = subprocess.run(["mount.fuse3", "mmapfs", fx["mnt"], "-t", "fuse.mmapfs",
                        "-o", f"config={fx['conf']},size=128K"],
                       capture_output=True, text=True, timeout=30, env=fx["env"])
    assert r.returncode == 0, r.stderr
    check_helper_mount(fx, helper_mounts, page_round(128 << 10))


# ---- meson install ----

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`meson install --destdir` of the build the tested binary comes from."""
    build = os.path.dirname(os.path.dirname(MMAPFS))
    meson = shutil.which("meson")
    if not meson or not os.path.isdir(os.path.join(build, "meson-private")):
        pytest.skip(f"{build} is not a meson build directory (or no meson)")
    dest = tmp_path_factory.mktemp("destdir")
    # --no-rebuild: install what was tested, do not rebuild under the tests' feet
    r = subprocess.run([meson, "install", "--no-rebuild", "--quiet", "--destdir", str(dest),
                        "-C", build], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    opts = json.loads(subprocess.run([meson, "introspect", "--buildoptions", build],
                                     capture_output=True, text=True, check=True,
                                     timeout=60).stdout)
    o = {x["name"]: x["value"] for x in opts}
    prefix = o["prefix"]

    def under(*parts):
        return os.path.join(prefix, *parts)    # absolute parts win, as in meson

    paths = {
        "bin": os.path.join(under(o["bindir"]), "mmapfs"),
        "man": os.path.join(under(o["mandir"]), "man1", "mmapfs.1"),
        "unit": os.path.join(prefix, "lib", "systemd", "system", "mmapfs@.service"),
        "serial_unit": os.path.join(prefix, "lib", "systemd", "system",
                                    "mmapfs-serial@.service"),
        "sample": os.path.join(under(o["datadir"]), "doc", "mmapfs", "mmapfs.conf.sample"),
        "tmpfiles": os.path.join(under(o["datadir"]), "doc", "mmapfs",
                                 "mmapfs-tmpfiles.conf"),
        "guide": os.path.join(under(o["datadir"]), "doc", "mmapfs", "ivshmem.md"),
        "handshake.sh": os.path.join(under(o["datadir"]), "mmapfs", "handshake.sh"),
        "handshake.py": os.path.join(under(o["datadir"]), "mmapfs", "handshake.py"),
        "sysconfdir": under(o["sysconfdir"]),
        "lib": os.path.join(under(o["libdir"]), "libmmapfs.so"),
        "header": os.path.join(under(o["includedir"]), "mmapfs.h"),
        "pc": os.path.join(under(o["libdir"]), "pkgconfig", "mmapfs.pc"),
        "man3": os.path.join(under(o["mandir"]), "man3", "libmmapfs.3"),
    }
    return {"dest": str(dest), "paths": paths,
            "at": lambda key: str(dest) + paths[key]}


def test_install_layout(installed):
    at = installed["at"]
    for key in ("bin", "man", "unit", "serial_unit", "sample", "tmpfiles", "guide",
                "handshake.sh", "handshake.py"):
        assert os.path.isfile(at(key)), f"{key}: {at(key)} not installed"
    for key in ("bin", "handshake.sh", "handshake.py"):
        assert os.stat(at(key)).st_mode & stat.S_IXUSR, f"{key} not executable"
    v = subprocess.run([at("bin"), "--version"], capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and "mmapfs version" in v.stdout
    for key in ("handshake.sh", "handshake.py"):
        if key == "handshake.sh" and not shutil.which("socat"):
            continue
        h = subprocess.run([at(key), "--help"], capture_output=True, text=True, timeout=20)
        assert h.returncode == 0 and "--listen" in h.stdout, (key, h.stderr)


def test_install_library(installed):
    """libmmapfs: the library (its API alone exported), header, pkg-config
    file and man page."""
    at = installed["at"]
    for key in ("lib", "header", "pc", "man3"):
        assert os.path.exists(at(key)), f"{key}: {at(key)} not installed"
    assert os.path.realpath(at("lib")).endswith(".so.0.1.0")
    pc = open(at("pc")).read()
    assert "Name: mmapfs" in pc and "-lmmapfs" in pc
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", at("lib")], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        exported = {line.split()[-1].split("@")[0] for line in out.splitlines()
                    if line.split()[-2] != "A"}     # not the version node
        assert exported == {"mmapfs_open", "mmapfs_read", "mmapfs_write",
                            "mmapfs_read_begin", "mmapfs_read_end", "mmapfs_chunks_put",
                            "mmapfs_chunks_get", "mmapfs_fd", "mmapfs_close",
                            "mmapfs_reason"}, exported


def test_install_man_page(installed):
    page = installed["at"]("man")
    if shutil.which("groff"):
        g = subprocess.run(["groff", "-man", "-ww", "-z", page], capture_output=True,
                           text=True, timeout=30)
        assert g.returncode == 0 and not g.stderr.strip(), g.stderr
    if not shutil.which("man"):
        pytest.skip("man is not installed")
    r = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in dict(os.environ, MANWIDTH="80",
                                                   PAGER="cat").items()
                            if k != "MAN_KEEP_FORMATTING"})
    assert r.returncode == 0, r.stderr
    text = re.sub(r".\x08", "", r.stdout)
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "THE TREE", "CAPABILITIES",
                    "CONFIGURATION FILE", "MOUNTING FROM FSTAB", "ERRORS", "EXAMPLES",
                    "FILES", "SEE ALSO"):
        assert section in text, section
    for word in ("EBADMSG", "ENOTCONN", "ECONNRESET", "ENXIO", "EPIPE", "EACCES",
                 "read_file", "write_file", "allow_dirs", "mmap_dir", "token_index"):
        assert word in text, word


def test_install_unit(installed, tmp_path):
    """The unit names the installed binary and configuration directory, and
    systemd accepts it."""
    at, paths = installed["at"], installed["paths"]
    with open(at("unit")) as f:
        unit = f.read()
    assert not re.search(r"@\w+@", unit), "an unsubstituted @variable@ is left"
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    argv = shlex.split(exec_start)
    assert argv[0] == paths["bin"]
    assert argv[1:4] == ["-f", "-c", os.path.join(paths["sysconfdir"], "mmapfs", "%i.conf")]
    assert "NoNewPrivileges=yes" in unit and "DeviceAllow=/dev/fuse rw" in unit
    for setting in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "ReadWritePaths", "PrivateMounts"):
        # each would hide the mount from the host (see the unit's comment)
        assert not re.search(rf"^{setting}=", unit, re.M), setting
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # verify a copy whose binary path points into the destdir
    copy = tmp_path / "mmapfs@.service"
    copy.write_text(unit.replace(paths["bin"], at("bin")))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mmapfs@vm0.service")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, MANPATH=os.path.dirname(os.path.dirname(
                           at("man")))))
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_serial_unit(installed, tmp_path):
    """The guest's UART unit (docs/ivshmem.md, step 5): paths filled in,
    systemd accepts it, and its command opens a port, makes it raw and
    holds it open."""
    at, paths = installed["at"], installed["paths"]
    with open(at("serial_unit")) as f:
        unit = f.read()
    assert not re.search(r"@\w+@", unit), "an unsubstituted @variable@ is left"
    assert re.search(r"^Conflicts=serial-getty@%i\.service$", unit, re.M)
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    # the command itself, on a pty that socat holds (the guest's UART)
    if shutil.which("socat") and shutil.which("stty"):
        port = str(tmp_path / "ttyS1")
        holder = subprocess.Popen(["socat", f"PTY,link={port},echo=1,icanon=1",
                                   f"UNIX-LISTEN:{tmp_path}/s.sock"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        argv = [w.replace("/dev/%I", port) for w in shlex.split(exec_start)]
        held = None
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(port):
                assert holder.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            held = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 10
            while True:
                st = subprocess.run(["stty", "-a", "-F", port], capture_output=True,
                                    text=True, timeout=10).stdout
                if "-icanon" in st.split() and "-echo" in st.split():
                    break
                assert held.poll() is None, f"{argv} exited with {held.returncode}"
                assert time.monotonic() < deadline, st
                time.sleep(0.05)
            time.sleep(0.2)
            assert held.poll() is None, "the port is not held open"
            # the holder has the port open
            fds = [os.readlink(f"/proc/{held.pid}/fd/{fd}")
                   for fd in os.listdir(f"/proc/{held.pid}/fd")]
            assert os.path.realpath(port) in fds, fds
        finally:
            for p in (held, holder):
                if p is not None and p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                if p is not None:
                    p.wait()
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "mmapfs-serial@.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify",
                        str(tmp_path / "mmapfs-serial@ttyS1.service")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    assert paths["serial_unit"].endswith("/lib/systemd/system/mmapfs-serial@.service")


def test_install_tmpfiles(installed, tmp_path):
    """The installed tmpfiles line makes an empty file, mode 0660, with the
    given owner and group (applied under a scratch root)."""
    if not shutil.which("systemd-tmpfiles"):
        pytest.skip("systemd-tmpfiles is not installed")
    with open(installed["at"]("tmpfiles")) as f:
        text = f.read()
    lines = [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    kind, path, mode, user, group = lines[0].split()[:5]
    assert (kind, path, mode) == ("f", "/dev/shm/shmem-xpra", "0660")
    try:
        grp.getgrnam(group)
    except KeyError:
        text = text.replace(f" {group} ", " root ")
        group = "root"
    conf = tmp_path / "t.conf"
    conf.write_text(text)
    root = tmp_path / "root"
    (root / "dev" / "shm").mkdir(parents=True)
    (root / "etc").mkdir()
    for db in ("passwd", "group"):       # --root resolves names in root/etc
        shutil.copy(f"/etc/{db}", root / "etc" / db)
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = os.stat(root / "dev" / "shm" / "shmem-xpra")
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_size == 0
    assert st.st_gid == grp.getgrnam(group).gr_gid


def uncomment_channels(sample):
    """What an administrator does to use the sample's ivshmem channels:
    remove "# " from their lines."""
    return re.sub(r"^  # (\{ name = |  role = |  read_file = |  write_file = |\})", r"  \1",
                  sample, flags=re.M)


def run_unit_exec(installed, unit, conf_text, mnt, tmp_path, options):
    """The installed unit's ExecStart for mmapfs@vm0, relocated into the
    destdir, $OPTIONS replaced by `options`: (Mount, Popen)."""
    conf_dir = installed["dest"] + os.path.join(installed["paths"]["sysconfdir"], "mmapfs")
    os.makedirs(conf_dir, exist_ok=True)
    with open(os.path.join(conf_dir, "vm0.conf"), "w") as f:
        f.write(conf_text)
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    argv = []
    for word in shlex.split(exec_start.replace("%i", "vm0")):
        if word == "$OPTIONS":
            argv += options
        elif word == "${MOUNTPOINT}":
            argv.append(str(mnt))
        elif word.startswith("/"):
            argv.append(installed["dest"] + word)
        else:
            argv.append(word)
    log = str(tmp_path / "unit.log")
    with open(log, "w") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT)
    return Mount(str(mnt), proc, log), proc


def unit_start_post(unit, mnt, mainpid):
    """The unit's ExecStartPost (wait for the mount; fail at once when the
    main process is gone), as systemd runs it: exit status."""
    post = re.search(r"^ExecStartPost=(.*)$", unit, re.M).group(1)
    post = post.replace("$$", "$").replace("${MOUNTPOINT}", str(mnt))
    env = dict(os.environ, MAINPID=str(mainpid))
    return subprocess.run(shlex.split(post), env=env, timeout=30).returncode


def test_installed_unit_runs_sample(installed, tmp_path, shm):
    """The installed sample configuration run by the installed unit's
    ExecStart (relocated into the destdir). As it is, it mounts one local
    channel and touches no ivshmem path. With its two ivshmem channels
    uncommented, their device paths moved into a scratch directory, the
    installed handshake.py joins them (host's and guest's, one mount) and
    streams a file."""
    at = installed["at"]
    with open(at("sample")) as f:
        sample = f.read()
    with open(at("unit")) as f:
        unit = f.read()
    options = ["-o", f"size=64K,mmap_dir={shm}"]        # the sample's defaults, overridden
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    # as it is: safe to copy
    m, proc = run_unit_exec(installed, unit, sample, mnt, tmp_path, options)
    try:
        wait_mounted(m.path, proc, m.log)
        assert unit_start_post(unit, mnt, proc.pid) == 0
        assert os.listdir(m.path) == ["local"]
        unmount(m)
    finally:
        force_cleanup(m.path, proc)

    # the ExecStartPost fails at once when mmapfs is gone
    t0 = time.monotonic()
    assert unit_start_post(unit, mnt, proc.pid) == 1
    assert time.monotonic() - t0 < 2

    # the ivshmem channels, uncommented
    shmem = tmp_path / "shmem-xpra"
    with open(shmem, "wb") as f:
        f.truncate(AREA)
    bar = tmp_path / "resource2_wc"
    bar.symlink_to(shmem)
    conf = uncomment_channels(sample)
    moves = {
        '"/dev/shm/shmem-xpra"': f'"{shmem}"',
        '"/sys/bus/pci/devices/0000:00:05.0/resource2_wc"': f'"{bar}"',
    }
    for old, new in moves.items():
        assert old in conf, f"the sample no longer holds {old}"
        conf = conf.replace(old, new)
    m, proc = run_unit_exec(installed, unit, conf, mnt, tmp_path, options)
    try:
        wait_mounted(m.path, proc, m.log)
        assert unit_start_post(unit, mnt, proc.pid) == 0
        assert sorted(os.listdir(m.path)) == ["from-host", "local", "to-guest"]
        assert m.status("local")["read.size"] == str(page_round(64 << 10))
        src = random_file(tmp_path / "in.bin", 500_000)
        dst = str(tmp_path / "out.bin")
        sock = f"unix:{tmp_path}/hs.sock"
        (r1, _, e1), (r2, _, e2) = run_pair(
            [at("handshake.py"), "--listen", sock, "--receive", dst, m / "from-host"],
            [at("handshake.py"), "--connect", sock, "--send", src, m / "to-guest"])
        assert (r1, r2) == (0, 0), f"guest: {e1}\nhost: {e2}"
        assert sha256(dst) == sha256(src)
        unmount(m)
    finally:
        force_cleanup(m.path, proc)
    assert os.path.getsize(shmem) == AREA


def test_reused_area_stale_go_ahead_is_cleared(mount_factory, tmp_path, shm):
    """An administrator's file that still holds an earlier session's trailer
    (VERIFIED set): the new attacher must wait for the new creator's check."""
    area = os.path.join(shm, "ivshmem")
    with open(area, "wb") as f:
        f.truncate(1 << 20)
    size = os.path.getsize(area)
    with open(area, "r+b") as f:
        f.seek(((size - 64) & ~7) + 8)             # trailer word 2: flags
        f.write((1).to_bytes(4, "little"))         # VERIFIED, from before
    conf = tmp_path / "host.conf"
    conf.write_text(f'channels = ( {{ name = "vm"; write_file = "{area}"; }} );\n')
    host = mount_factory("-c", str(conf))
    guest = mount_factory()
    os.mkdir(guest / "vm")
    with open(guest / "vm/peer", "w") as f:
        f.write(open(host / "vm/capabilities").read())
    time.sleep(0.6)                                 # a few heartbeats
    assert guest.status("vm")["state"] == "attached"
    with open(host / "vm/peer", "w") as f:
        f.write(open(guest / "vm/capabilities").read())
    deadline = time.monotonic() + 3
    while guest.status("vm")["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
