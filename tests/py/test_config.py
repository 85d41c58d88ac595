"""The configuration: libconfig file, -o options, and their errors.

Every bad file or option must stop mmapfs before it mounts anything, with one
message that names the file, the line and the key (or the option), and a
non-zero exit status (DESIGN.md, "Command line"). The binary is run
directly; if it ever mounted on an error case, the mount is removed and the
test fails.
"""
import os
import re
import subprocess
import textwrap

import pytest

from conftest import MMAPFS, TOP, force_cleanup, mounted, read_kv, sh, wait_state

PAGE = os.sysconf("SC_PAGESIZE")


def area_size(ring):
    """The size of an area whose ring holds `ring` bytes (header, page-rounded)."""
    return (ring + 8 + PAGE - 1) // PAGE * PAGE


def run_bad(args, mnt, timeout=15):
    """Run mmapfs -f with args on mnt; it must fail at once and mount nothing."""
    proc = subprocess.Popen([MMAPFS, "-f", *args, mnt], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        force_cleanup(mnt, proc)
        out, err = proc.communicate()
        pytest.fail(f"mmapfs {args} kept running (it mounted?):\n{err}")
    was_mounted = mounted(mnt)
    if was_mounted:
        force_cleanup(mnt, proc)
    assert not was_mounted, f"mmapfs {args} left {mnt} mounted"
    assert proc.returncode != 0, f"mmapfs {args} exited 0:\n{err}"
    assert not re.search(r"Sanitizer|runtime error:", err), err
    return err


@pytest.fixture
def mnt(tmp_path):
    d = tmp_path / "mnt"
    d.mkdir()
    return str(d)


@pytest.fixture
def conf(tmp_path):
    """conf(text) -> path of a configuration file holding the dedented text."""
    def write(text, name="mmapfs.conf"):
        path = tmp_path / name
        text = textwrap.dedent(text)
        path.write_text(text[1:] if text.startswith("\n") else text)
        return str(path)
    return write


@pytest.fixture
def start(mount_factory):
    """start(*args) -> Mount, with exactly these options (no -o size added)."""
    return lambda *args: mount_factory(*args, bare=True)


# Each case: the file, the line at fault, what the message must name.
# Comments and blank lines come first so that a line number is not a guess.
BAD_FILES = {
    "syntax": ("""
        # a syntax error on line 3
        size = "64M";
        mmap_dir = ;
        """, 3, "syntax error"),
    "wrong type mmap_dir": ("""
        # mmap_dir must be a string

        mmap_dir = 5;
        """, 3, "mmap_dir"),
    "wrong type size": ("""
        size = [ "64M" ];
        """, 1, "size"),
    "wrong type role": ("""
        channels = (
          { name = "a";
            role = 1; }
        );
        """, 3, "role"),
    "size lots": ("""
        # the ring size

        size = "lots";
        """, 3, "size"),
    "size too small": ("""
        size = 1024;
        """, 1, "size"),
    "size too big": ("""
        size = "4G";
        """, 1, "size"),
    "size negative": ("""
        size = -65536;
        """, 1, "size"),
    "unknown role": ("""
        channels = (
          { name = "a";
            role = "creator"; },
          { name = "b";
            role = "boss"; }
        );
        """, 5, "role"),
    "relative mmap_dir": ("""
        mmap_dir = "dev/shm/x";
        """, 1, "mmap_dir"),
    "relative allow_dirs": ("""
        allow_dirs = [
          "/dev/shm",
          "shm" ];
        """, 3, "allow_dirs"),
    "relative read_file": ("""
        channels = (
          { name = "a";
            read_file = "shmem-xpra"; }
        );
        """, 3, "read_file"),
    "relative write_file": ("""
        channels = (
          { name = "a";

            write_file = "../x"; }
        );
        """, 4, "write_file"),
    "empty allow_dirs": ("""

        allow_dirs = [ ];
        """, 2, "allow_dirs"),
    "duplicate name": ("""
        channels = (
          { name = "vm0"; },
          { name = "vm1"; },
          { name = "vm0"; }
        );
        """, 4, "name"),
    "bad name": ("""
        channels = (
          { name = "a/b"; }
        );
        """, 2, "name"),
    "unknown key": ("""
        mmap_dir = "/dev/shm/x";
        sise = "64M";
        """, 2, "sise"),
    "unknown channel key": ("""
        channels = (
          { name = "a";
            readfile = "/dev/shm/x"; }
        );
        """, 3, "readfile"),
    "missing name": ("""
        channels = (
          { name = "a"; },
          { role = "attacher";
            read_file = "/dev/shm/x"; }
        );
        """, 3, "name"),
    "channels not a list": ("""
        channels = { name = "a"; };
        """, 1, "channels"),
    # libconfig reads 0770 as decimal 770: the mode is a string
    "mode an integer": ("""
        channels = (
          { name = "a";
            mode = 0770; }
        );
        """, 3, "mode: expected an octal mode as a string"),
    "unknown user": ("""
        channels = (
          { name = "a";

            user = "no-such-user-mmapfs"; }
        );
        """, 4, "user: no such user"),
    "unknown group": ("""
        channels = (
          { name = "a";
            group = "no-such-group-mmapfs"; }
        );
        """, 3, "group: no such group"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file(case, conf, mnt, shm):
    text, line, key = BAD_FILES[case]
    path = conf(text)
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", path], mnt)
    assert f"{path}:{line}:" in err, f"expected {path}:{line}: in {err!r}"
    assert key in err, f"expected {key!r} in {err!r}"
    assert len(err.strip().splitlines()) == 1, f"one message expected: {err!r}"


def test_bad_file_long_option(conf, mnt, shm):
    path = conf('size = "lots";\n')
    err = run_bad(["-o", f"mmap_dir={shm}", f"--config={path}"], mnt)
    assert f"{path}:1:" in err and "size" in err


def test_missing_config_file(tmp_path, mnt, shm):
    path = str(tmp_path / "nonexistent.conf")
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", path], mnt)
    assert path in err
    assert "No such file" in err


def test_config_is_a_directory(tmp_path, mnt, shm):
    # libconfig's scanner would exit(2) with "input in flex scanner failed"
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", str(tmp_path)], mnt)
    assert f"{tmp_path}: Is a directory" in err


def test_declared_file_cannot_open(conf, mnt, shm, tmp_path):
    """A declared creator's file in a missing directory: named with its line."""
    missing = tmp_path / "no" / "such" / "dir" / "area"
    path = conf(f"""
        channels = (
          {{ name = "ok"; }},
          {{ name = "broken";
            write_file = "{missing}"; }}
        );
        """)
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", path], mnt)
    assert f"{path}:3:" in err, err
    assert "broken" in err and str(missing) in err, err


@pytest.mark.parametrize("option,names", [
    ("size=lots", "size=lots"),
    ("size=32K", "size=32K"),
    ("size=4G", "size=4G"),
    ("size=", "size="),
    ("size=12Q", "size=12Q"),
    ("mmap_dir=relative/dir", "mmap_dir=relative/dir"),
    ("allow_dirs=/dev/shm:relative", "allow_dirs"),
    ("mkdir=no-such-group-mmapfs", "mkdir=no-such-group-mmapfs: expected owner, all"),
    ("max_channels=lots", "max_channels=lots: 'lots' is not a number of channels"),
    ("owner_max_channels=-1", "owner_max_channels=-1"),
    ("max_bytes=2T", "max_bytes=2T: '2T' is not a number with K, M or G"),
    ("owner_max_bytes=", "owner_max_bytes="),
])
def test_bad_option(option, names, mnt, shm):
    err = run_bad(["-o", f"mmap_dir={shm}", "-o", option], mnt)
    assert names in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_option_with_good_file(conf, mnt, shm):
    """-o is checked too when a file is given: the option is named."""
    path = conf('size = "128K";\n')
    err = run_bad(["-c", path, "-o", f"mmap_dir={shm},size=lots"], mnt)
    assert "size=lots" in err


def test_no_mountpoint():
    proc = subprocess.run([MMAPFS], capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0
    assert "usage" in proc.stderr.lower()


def test_help_and_version():
    h = subprocess.run([MMAPFS, "--help"], capture_output=True, text=True, timeout=10)
    assert h.returncode == 0, h.stderr
    for word in ("MOUNTPOINT", "-c CONFIG", "mmap_dir=", "size=", "allow_dirs="):
        assert word in h.stdout, word
    v = subprocess.run([MMAPFS, "--version"], capture_output=True, text=True, timeout=10)
    assert v.returncode == 0, v.stderr
    with open(os.path.join(TOP, "meson.build")) as f:
        version = re.search(r"version\s*:\s*'([^']+)'", f.read()).group(1)
    assert f"mmapfs version {version}" in v.stdout
    for short in ("-h", "-V"):
        r = subprocess.run([MMAPFS, short], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, short


# ---- what a good file does, and -o over it ----

def test_file_values_used(conf, start, shm, tmp_path):
    other = tmp_path / "fromfile"
    path = conf(f"""
        mmap_dir = "{other}";
        size = "128K";
        """)
    m = start("-c", path)
    os.mkdir(m / "c")
    st = m.status("c")
    assert st["read.size"] == str(area_size(128 << 10))
    assert st["write.size"] == str(area_size(128 << 10))
    caps = read_kv(m / "c/capabilities")
    assert os.path.dirname(caps["read.file"]) == str(other)
    assert oct(os.stat(other).st_mode & 0o777) == oct(0o700)


def test_integer_size(conf, start, shm):
    path = conf(f"""
        mmap_dir = "{shm}";
        size = 196608;
        """)
    m = start("-c", path)
    os.mkdir(m / "c")
    assert m.status("c")["read.size"] == str(area_size(196608))


@pytest.mark.parametrize("before", [False, True], ids=["o-after-c", "o-before-c"])
def test_option_overrides_file(before, conf, start, shm, tmp_path):
    path = conf(f"""
        mmap_dir = "{tmp_path / 'fromfile'}";
        size = "128K";
        """)
    o = ["-o", f"mmap_dir={shm},size=64K"]
    m = start(*(o + ["-c", path] if before else ["-c", path] + o))
    os.mkdir(m / "c")
    assert m.status("c")["read.size"] == str(area_size(64 << 10))
    caps = read_kv(m / "c/capabilities")
    assert os.path.dirname(caps["read.file"]) == shm
    assert not os.path.exists(tmp_path / "fromfile")


def test_allow_dirs_option_overrides_file(conf, start, mount_factory, shm, tmp_path):
    """allow_dirs from the file refuses the offer; -o allow_dirs=shm lets it in."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    path = conf(f"""
        mmap_dir = "{shm}";
        allow_dirs = [ "{elsewhere}" ];
        """)
    c = mount_factory()
    os.mkdir(c / "x")
    offer = open(c / "x/capabilities").read()

    refusing = start("-c", path, "-o", "size=64K")
    os.mkdir(refusing / "x")
    with pytest.raises(OSError) as e:
        with open(refusing / "x/peer", "w") as f:
            f.write(offer)
    assert e.value.errno == 13          # EACCES
    assert "allowed" in refusing.status("x")["error"]

    accepting = start("-c", path, "-o", f"size=64K,allow_dirs={elsewhere}:{shm}")
    os.mkdir(accepting / "x")
    with open(accepting / "x/peer", "w") as f:
        f.write(offer)
    assert accepting.status("x")["state"] in ("attached", "ready")


def test_declared_channels_appear(conf, start, shm, tmp_path):
    admin = tmp_path / "admin-area"
    path = conf(f"""
        mmap_dir = "{shm}";
        size = "64K";
        channels = (
          {{ name = "both"; }},
          {{ name = "host"; role = "creator"; write_file = "{admin}"; }},
          {{ name = "guest"; role = "attacher"; }}
        );
        """)
    m = start("-c", path)
    assert sorted(os.listdir(m.path)) == ["both", "guest", "host"]
    assert m.status("both")["role"] == "creator"
    assert m.status("guest")["role"] == "attacher"
    assert m.status("guest")["state"] == "offered"
    host = m.status("host")
    assert "write.size" in host and "read.size" not in host
    # a missing administrator's file is created for a creator, at the size
    assert os.path.getsize(admin) == area_size(64 << 10)
    caps = read_kv(m / "host/capabilities")
    assert caps["write.file"] == str(admin)
    assert "read.file" not in caps
    os.rmdir(m / "host")
    assert os.path.exists(admin), "an administrator's file is never deleted"


def test_default_config_file(tmp_path, start, shm):
    """Without -c, SYSCONFDIR/mmapfs.conf is read when it exists (only tried
    when that path is in a scratch prefix: never writes to a real /etc)."""
    h = subprocess.run([MMAPFS, "--help"], capture_output=True, text=True, timeout=10)
    m = re.search(r"\(default (/\S+), if present\)", h.stdout)
    if not m:
        pytest.skip("--help does not name the default configuration file")
    default = m.group(1)
    if not default.startswith(("/tmp/", "/var/tmp/")) or os.path.exists(default):
        pytest.skip(f"default configuration {default} is not a scratch path")
    os.makedirs(os.path.dirname(default), exist_ok=True)
    try:
        with open(default, "w") as f:
            f.write('channels = ( { name = "fromdefault"; } );\nsize = "lots";\n')
        err = run_bad(["-o", f"mmap_dir={shm}"], str(tmp_path))
        assert f"{default}:2:" in err
        with open(default, "w") as f:
            f.write('channels = ( { name = "fromdefault"; } );\n')
        mnt = start("-o", f"mmap_dir={shm},size=64K")
        assert os.listdir(mnt.path) == ["fromdefault"]
    finally:
        os.unlink(default)


def test_allow_uids_accepts_another_owner(tmp_path, mount_factory, shm):
    """An offered file of another owner is refused, unless allow_uids names it."""
    import errno as _errno
    from conftest import sh as _sh
    conf = tmp_path / "uids.conf"
    conf.write_text("allow_uids = [ 12345 ];\n")
    c = mount_factory()
    strict = mount_factory()
    lenient = mount_factory("-c", str(conf))
    os.mkdir(c / "x")
    for m in (strict, lenient):
        os.mkdir(m / "x")
    offer = open(c / "x/capabilities").read()
    for line in offer.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".file"):
            os.chown(value, 12345, -1)
    with pytest.raises(OSError) as e:
        with open(strict / "x/peer", "w") as f:
            f.write(offer)
    assert e.value.errno == _errno.EACCES
    assert "uid 12345" in open(strict / "x/status").read()
    with open(lenient / "x/peer", "w") as f:
        f.write(offer)
    assert "role=attacher" in open(lenient / "x/status").read()


def test_allow_uids_must_be_numbers(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('# owners\nallow_uids = [ "alice" ];\n')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([MMAPFS, "-f", "-c", str(conf), str(mnt)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode != 0
    assert f"{conf}:2: allow_uids" in r.stderr


def test_windows_of_one_file(conf, mount_factory, tmp_path):
    """One file (an ivshmem device) carries both directions of a channel
    and a second channel, as windows; both ends name their own windows."""
    dev = tmp_path / "dev"
    with open(dev, "wb") as f:
        f.truncate(1 << 20)
    host = conf(f"""
        channels = (
          {{ name = "a"; read_file = "{dev}"; read_offset = 0; read_size = "128K";
                         write_file = "{dev}"; write_offset = "128K"; write_size = "128K"; }},
          {{ name = "b"; write_file = "{dev}"; write_offset = "512K"; write_size = 65536; }}
        );
        """, "host.conf")
    guest = conf(f"""
        channels = (
          {{ name = "a"; role = "attacher";
             write_file = "{dev}"; write_offset = 0; write_size = "128K";
             read_file = "{dev}"; read_offset = "128K"; read_size = "128K"; }},
          {{ name = "b"; role = "attacher"; read_file = "{dev}";
             read_offset = "512K"; read_size = "64K"; }}
        );
        """, "guest.conf")
    h, g = mount_factory("-c", host), mount_factory("-c", guest)
    for name in ("a", "b"):
        sh(f"cat {h / name}/capabilities > {g / name}/peer")
        sh(f"cat {g / name}/capabilities > {h / name}/peer")
        wait_state(h, name, "ready")
    caps = read_kv(h / "a/capabilities")
    assert caps["read.size"] == caps["write.size"] == str(128 << 10)
    assert sh(f"echo one > {h / 'a'}/data; cat {g / 'a'}/data").stdout == "one\n"
    assert sh(f"echo two > {g / 'a'}/data; cat {h / 'a'}/data").stdout == "two\n"
    assert sh(f"echo three > {h / 'b'}/data; cat {g / 'b'}/data").stdout == "three\n"


def test_overlapping_windows_refused(conf, mnt, shm, tmp_path):
    dev = tmp_path / "dev"
    dev.write_bytes(b"\0" * (1 << 20))
    path = conf(f"""
        channels = (
          {{ name = "a"; write_file = "{dev}"; write_offset = 0; write_size = "128K"; }},
          {{ name = "b";
             read_file = "{dev}"; read_offset = "64K"; read_size = "128K"; }}
        );
        """)
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", path], mnt)
    assert f"{path}:3: channel b: read_file {dev} overlaps channel a's write_file (line 2)" in err
    bad = conf(f"""
        channels = ( {{ name = "a"; write_file = "{dev}"; write_offset = 100; write_size = "64K"; }} );
        """, "bad.conf")
    err = run_bad(["-o", f"mmap_dir={shm}", "-c", bad], mnt)
    assert f"{bad}:1: write_offset: not a multiple of the page size" in err


def test_window_beyond_the_file_waits_for_it(conf, mount_factory, tmp_path):
    """mmapfs started before the VM: the device's file is still empty. The
    channel is there, in error, with the configuration's line; once the file
    has its size, reading the offer sets it up."""
    dev = tmp_path / "dev"
    dev.write_bytes(b"")
    path = conf(f"""
        channels = ( {{ name = "vm";
            write_file = "{dev}"; write_offset = "64K"; write_size = "64K"; }} );
        """)
    m = mount_factory("-c", path)
    st = m.status("vm")
    assert st["state"] == "error", st
    assert f"{path}:1: {dev}: the window 65536+65536 is beyond its 0 bytes" in st["error"], st
    assert "read capabilities" in st["error"]
    with open(dev, "wb") as f:
        f.truncate(128 << 10)
    caps = read_kv(m / "vm/capabilities")
    assert caps["write.size"] == str(64 << 10)
    assert m.status("vm")["state"] == "offered"
