"""libmmapfs (docs/libmmapfs.3, docs/PROTOCOL.md "Native access") against
real mounts: a library end against a file end and against another library
end, both roles, both directions; exactly once under random sizes and
wrap-around; ends of stream; EBUSY, ENOTCONN, ENXIO; a dead peer; a hostile
peer; SIGBUS chaining; and the Python module.

Nothing is built here: the programs come from the build directory of the
daemon under test (MMAPFS=BUILD/fs/mmapfs): BUILD/tests/lib/mmapfs-libtest
(tests/lib/mmapfs-libtest.c), BUILD/contrib/examples/mmapfs-cat, and
BUILD/core/lib/libmmapfs.so for contrib/python/mmapfs.py.
"""
import errno
import os
import random
import select
import subprocess
import sys
import threading
import time

import pytest

from conftest import MMAPFS, TOP, handshake, kv_text, read_kv, sh, wait_state

BUILD = os.path.dirname(os.path.dirname(MMAPFS))
LIBTEST = os.path.join(BUILD, "tests", "lib", "mmapfs-libtest")
CAT = os.path.join(BUILD, "contrib", "examples", "mmapfs-cat")
LIBSO = os.path.join(BUILD, "core", "lib", "libmmapfs.so")
PYDIR = os.path.join(TOP, "contrib", "python")


def no_sanitizer_report(err):
    assert "Sanitizer" not in err and "runtime error" not in err, err


def run(*args, timeout=120, **kw):
    """One command of the driver: its line of output (exit status 0)."""
    p = subprocess.run([LIBTEST, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, **kw)
    no_sanitizer_report(p.stderr)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout.strip()


def start(*args):
    return subprocess.Popen([LIBTEST, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    no_sanitizer_report(err)
    assert p.returncode == 0, (p.args, out, err)
    return out.strip()


def first_line(p):
    line = p.stdout.readline().strip()
    assert line == "open", (line, p.stderr.read() if p.poll() is not None else "")


@pytest.fixture
def chan(pair):
    c, a = pair
    handshake(c, a)
    return c, a


def src_file(tmp_path, name, size):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return str(path)


# ---- the stream: library and files, both roles, both directions ----

@pytest.mark.parametrize("zc", ["", "zc"])
def test_library_to_library_both_ways(chan, tmp_path, zc):
    c, a = chan
    for n, (w, r) in enumerate(((c, a), (a, c))):
        src = src_file(tmp_path, f"src{n}", 3_000_000 + n)
        reader = start("read", r / "chan", src, 10 + n, zc)
        nb = ["nb"] if n else []       # the second writer polls mmapfs_fd()
        assert run("write", w / "chan", src, 20 + n, *nb) == f"ok {os.path.getsize(src)}"
        assert finish(reader) == f"ok {os.path.getsize(src)}"
    # the library moved the pointers, the daemons saw them move
    for m in (c, a):
        st = m.status("chan")
        assert st["read.used"] == st["write.used"] == "0"


def random_pieces(rng, total):
    sizes = [1, 3, 4093, 65535, 65537, 131071, 7, 100000]
    done = 0
    while done < total:
        n = min(rng.choice(sizes), total - done)
        yield done, n
        done += n


def file_writer(path, payload, seed):
    with open(path, "wb", buffering=0) as f:
        for off, n in random_pieces(random.Random(seed), len(payload)):
            view = memoryview(payload)[off:off + n]
            while view:
                view = view[f.write(view):]


def file_reader(path, payload, seed):
    rng = random.Random(seed)
    got = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(rng.choice([1, 5, 4093, 65537, 100000]))
            if not data:
                break
            assert data == payload[got:got + len(data)], f"mismatch at byte {got}"
            got += len(data)
    assert got == len(payload)


@pytest.mark.parametrize("lib_end", ["creator", "attacher"])
def test_library_against_files(chan, tmp_path, lib_end):
    """Exactly once, random sizes on both sides, thousands of wraps of the
    64 KiB rings: library writer and file reader, file writer and library
    reader (zero copy, then copying and non-blocking with poll)."""
    c, a = chan
    lib, files = (c, a) if lib_end == "creator" else (a, c)
    src = src_file(tmp_path, "src", 40 << 20)
    payload = open(src, "rb").read()
    t = threading.Thread(target=file_reader, args=(files / "chan/data", payload, 1))
    t.start()
    assert run("write", lib / "chan", src, 2) == f"ok {len(payload)}"
    t.join(120)
    assert not t.is_alive()
    for mode in (["zc"], ["nb"], ["zc", "nb"]):
        t = threading.Thread(target=file_writer, args=(files / "chan/data", payload, 3))
        t.start()
        assert run("read", lib / "chan", src, 4, *mode) == f"ok {len(payload)}"
        t.join(120)
        assert not t.is_alive()
    assert int(files.status("chan")["write.bytes"]) == 3 * len(payload)
    # the library told its daemon what it moved: status counts it too
    st = lib.status("chan")
    assert (int(st["write.bytes"]), int(st["read.bytes"])) == (len(payload), 3 * len(payload))


def write_way(way, chan, src, seed):
    """SRC's bytes into chan as one stream: the library, data or send."""
    if way == "lib":
        assert run("write", chan, src, seed) == f"ok {os.path.getsize(src)}"
        return
    payload = open(src, "rb").read()
    file_writer(os.path.join(chan, "data" if way == "data" else "send"), payload, seed)


def test_working_window_mixed_ends(mount_factory, tmp_path):
    """The working window (PROTOCOL.md): on 8 MiB rings, one stream for each
    way in at the writing end (the library, data, send) and out at the
    reading end (the library, data, recv), 36 MiB in all, each exact to its
    end of stream, while the writer starts again at the ring's start behind
    marks its reader follows; the write area's trailer says it left marks."""
    c, a = mount_factory(size="8M"), mount_factory(size="8M")
    handshake(c, a)
    ways = ("lib", "data", "fifo")
    n = 0
    for w in ways:
        for r in ways:
            src = src_file(tmp_path, f"src{n}", (4 << 20) + n)
            payload = open(src, "rb").read()
            if r == "lib":
                reader = start("read", a / "chan", src, 100 + n)
            else:
                reader = threading.Thread(target=file_reader, args=(
                    os.path.join(a / "chan", "data" if r == "data" else "recv"), payload,
                    100 + n))
                reader.start()
            write_way(w, c / "chan", src, 200 + n)
            if r == "lib":
                assert finish(reader) == f"ok {len(payload)}", (w, r)
            else:
                reader.join(120)
                assert not reader.is_alive(), (w, r)
            n += 1
    st = c.status("chan")
    assert st["mmapfs"] == "2" and st["streams_failed"] == "0"
    assert int(st["write.bytes"]) == sum(os.path.getsize(tmp_path / f"src{i}") for i in range(n))
    # version 2's words: mark_on (7) is 2 once the writer started again at
    # the aligned place, its reader following there (6: follows, 8: there too)
    with open(st["write.file"], "rb") as f:
        words = f.read()[int(st["write.ring_end"]):][:4 * 9]
    word = lambda i: int.from_bytes(words[4 * i:4 * i + 4], "little")
    assert (word(7), word(6), word(8)) == (2, 1, 1)


def test_ends_of_stream_between_library_and_files(chan, tmp_path):
    """Streams end at the library's close; the ends a library reader took
    are the daemon's too when a file reader comes next, and back."""
    c, a = chan
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"one\n")
    two.write_bytes(b"two\n")
    sh(f"{CAT} -w {c / 'chan'} < {one}; {CAT} -w {c / 'chan'} < {two}; "
       f"echo three > {c / 'chan'}/data; {CAT} -w {c / 'chan'} < /dev/null")
    assert sh(f"{CAT} {a / 'chan'}").stdout == "one\n"
    assert sh(f"cat {a / 'chan'}/data").stdout == "two\n"
    assert sh(f"{CAT} {a / 'chan'}").stdout == "three\n"
    assert sh(f"cat {a / 'chan'}/data").stdout == ""        # an empty stream
    # nothing more: a non-blocking reader, file or library, would wait
    fd = os.open(a / "chan/data", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
    finally:
        os.close(fd)
    # six unread ends of stream hold the next library writer, as a file's
    for _ in range(6):
        sh(f"{CAT} -w {a / 'chan'} < /dev/null")
    time.sleep(0.2)        # the last release lands (else EBUSY, non-blocking)
    assert run("open", a / "chan", "wn") == "EAGAIN"
    assert sh(f"cat {c / 'chan'}/data").stdout == ""
    assert run("open", a / "chan", "wn") == "ok"


# ---- opening ----

def test_enotconn_before_ready(pair):
    c, a = pair
    os.mkdir(c / "x")
    for mode in ("r", "w", "rw"):
        assert run("open", c / "x", mode) == "ENOTCONN"


@pytest.mark.parametrize("mode", ["r", "w"])
def test_ebusy_against_file_openers(chan, mode):
    c, a = chan
    flags = os.O_RDONLY if mode == "r" else os.O_WRONLY
    fd = os.open(a / "chan/data", flags)
    try:
        assert run("open", a / "chan", mode) == "EBUSY"
        assert run("open", a / "chan", "rw") == "EBUSY"
    finally:
        os.close(fd)
    holder = start("hold", a / "chan", mode)
    try:
        first_line(holder)
        with pytest.raises(OSError) as e:
            os.close(os.open(a / "chan/data", flags))
        assert e.value.errno == errno.EBUSY
        assert run("open", a / "chan", mode) == "EBUSY"
    finally:
        assert finish(holder) == ""        # its stdin closed: it closes

    # given back at close: a file opener gets in (after the release lands)
    os.close(os.open(a / "chan/data", flags))


def test_enxio_and_a_peer_without_the_extension(chans_one_way):
    """An xpra-style offer of one direction, without mmapfs=1: the missing
    direction is ENXIO as for the files; the other one opens (its chunk
    lists: test_lib_xpra.py), and a refusal gives the claim back."""
    c, a = chans_one_way
    assert run("open", c / "chan", "w") == "ENXIO"
    assert run("open", a / "chan", "r") == "ENXIO"
    assert run("open", c / "chan", "r") == "ok"
    assert run("open", a / "chan", "rw") == "ok"
    # the refusals gave the claim back: the files work
    sh(f"echo one way > {a / 'chan/data'}")
    fd = os.open(c / "chan/data", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"one way\n"
    finally:
        os.close(fd)


@pytest.fixture
def chans_one_way(pair):
    c, a = pair
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    offer = {k: v for k, v in read_kv(c / "chan/capabilities").items() if k.startswith("read.")}
    with open(a / "chan/peer", "w") as f:
        f.write(kv_text(offer))
    with open(c / "chan/peer", "w") as f:
        f.write(open(a / "chan/capabilities").read())
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")
    return c, a


# ---- the peer ----

def test_dead_peer(chan):
    """kill -9 of the peer's daemon: a blocked library read fails with
    ECONNRESET, a library write with EPIPE, within 2.5 s."""
    c, a = chan
    reader = start("error", a / "chan", "r")
    writer = start("error", a / "chan", "w")
    first_line(reader)
    first_line(writer)
    time.sleep(0.5)
    assert reader.poll() is None and writer.poll() is None
    c.kill()
    killed = time.monotonic()
    assert finish(reader, 5).endswith("ECONNRESET")
    assert finish(writer, 5).endswith("EPIPE")
    assert time.monotonic() - killed < 2.5
    # the daemon, which looks every 250 ms, says so too
    deadline = time.monotonic() + 2
    while a.status("chan")["peer"] != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_peer_library_killed_ends_its_stream(chan, tmp_path):
    """A library writer killed: its descriptor closes, the daemon ends the
    stream, the reader sees end of file after what was written."""
    c, a = chan
    writer = start("hold", c / "chan", "w")
    first_line(writer)
    reader = start("error", a / "chan", "r")
    first_line(reader)
    writer.kill()
    writer.communicate()
    assert finish(reader, 10).endswith("eof")


def area_path(m, chan, which):
    return read_kv(os.path.join(m.path, chan, "status"))[which + ".file"]


@pytest.mark.parametrize("mode", ["r", "w"])
def test_hostile_corrupt_pointers(chan, mode):
    """The peer's pointer past the end of the ring: data_end under a
    reader, data_start under a writer (which has filled the ring and
    waits): EPROTO, and both daemons go on."""
    c, a = chan
    p = start("error", a / "chan", mode)
    first_line(p)
    time.sleep(0.2)
    with open(area_path(a, "chan", "read" if mode == "r" else "write"), "r+b") as f:
        f.seek(4 if mode == "r" else 0)
        f.write((0xFFFFFFF0).to_bytes(4, "little"))
    assert finish(p, 5).endswith("EPROTO")
    assert c.proc.poll() is None and a.proc.poll() is None


@pytest.mark.parametrize("mode", ["r", "w"])
def test_hostile_truncated_area(chan, mode):
    """The area truncated under a library end: EIO from the call, not a
    SIGBUS that kills the program."""
    c, a = chan
    p = start("error", a / "chan", mode)
    first_line(p)
    time.sleep(0.2)
    os.truncate(area_path(a, "chan", "read" if mode == "r" else "write"), 0)
    assert finish(p, 5).endswith("EIO")
    assert c.proc.poll() is None and a.proc.poll() is None


def test_area_path_replaced(chan, tmp_path):
    """Another file put in an area's place, or the path gone: the library
    never maps what the path names now. The daemon keeps no descriptor of
    a file an mmapfs end made (it stays as long as its channel), so the
    open fails; an xpra client's files, which it deletes once answered,
    are mapped through the daemon's descriptor (test_lib_xpra.py)."""
    c, a = chan
    path = area_path(a, "chan", "read")
    os.rename(path, path + ".moved")
    with open(path, "wb") as f:
        f.truncate(os.path.getsize(path + ".moved"))
    assert run("open", a / "chan", "r") == "ESTALE"
    with open(path, "rb") as f:
        assert f.read(4096) == bytes(4096), "the impostor was written"
    os.unlink(path)
    assert run("open", a / "chan", "r") == "ENOENT"
    os.rename(path + ".moved", path)        # the file itself again
    src = src_file(tmp_path, "src", 1 << 20)
    reader = start("read", a / "chan", src, 1, "zc")
    assert run("write", c / "chan", src, 2) == f"ok {1 << 20}"
    assert finish(reader) == f"ok {1 << 20}"


def test_sigbus_goes_to_the_programs_handler(chan):
    c, a = chan
    assert run("sigbus", a / "chan") == "chained"


def test_declared_areas_as_an_ivshmem_host_and_guest(mount_factory, tmp_path):
    """Administrator's paths (an ivshmem backing file on the host, its BAR,
    here a symlink, in the guest): the library maps what status names, and
    waits as for a peer in another VM (local=0)."""
    area = tmp_path / "hostshm" / "shmem-xpra"
    area.parent.mkdir(mode=0o700)
    with open(area, "wb") as f:
        f.truncate(1 << 20)
    bar = tmp_path / "resource2_wc"
    bar.symlink_to(area)
    nowhere = tmp_path / "guest-allowed"
    nowhere.mkdir(mode=0o700)
    host_conf, guest_conf = tmp_path / "host.conf", tmp_path / "guest.conf"
    host_conf.write_text(f'channels = ( {{ name = "vm0"; role = "creator"; '
                         f'write_file = "{area}"; }} );\n')
    guest_conf.write_text(f'allow_dirs = [ "{nowhere}" ];\nchannels = ( {{ name = "host"; '
                          f'role = "attacher"; read_file = "{bar}"; }} );\n')
    host, guest = mount_factory("-c", str(host_conf)), mount_factory("-c", str(guest_conf))
    with open(guest / "host/peer", "w") as f:
        f.write(open(host / "vm0/capabilities").read())
    with open(host / "vm0/peer", "w") as f:
        f.write(open(guest / "host/capabilities").read())
    wait_state(guest, "host", "ready")
    wait_state(host, "vm0", "ready")
    assert (host.status("vm0")["write.file"], host.status("vm0")["write.local"]) == (str(area), "0")
    assert (guest.status("host")["read.file"], guest.status("host")["read.local"]) == (str(bar), "0")
    src = src_file(tmp_path, "src", 5 << 20)
    reader = start("read", guest / "host", src, 1, "zc")
    assert run("write", host / "vm0", src, 2) == f"ok {5 << 20}"
    assert finish(reader) == f"ok {5 << 20}"
    assert run("open", guest / "host", "w") == "ENXIO"


# ---- the example, the module, the build ----

def test_mmapfs_cat(chan, tmp_path):
    c, a = chan
    src = src_file(tmp_path, "src", 5 << 20)
    out = sh(f"{CAT} -w {a / 'chan'} < {src} & {CAT} {c / 'chan'} | sha256sum; wait").stdout
    assert out.split()[0] == sh(f"sha256sum {src}").stdout.split()[0]


def asan_runtime():
    """The sanitizer runtime an ASan (or TSan) build of the library needs
    loaded first: gcc's libasan (libtsan), which the library names, or
    clang's, which it expects from the program (core/meson.build); None for
    a plain build."""
    for line in subprocess.run(["ldd", LIBSO], capture_output=True, text=True).stdout.splitlines():
        if ("libasan" in line or "libtsan" in line) and "=>" in line:
            return line.split("=>")[1].split()[0]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", LIBSO], capture_output=True,
                               text=True).stdout
    if "__asan_" in undefined:
        return subprocess.run(["clang", "-print-file-name=libclang_rt.asan-x86_64.so"],
                              capture_output=True, text=True, check=True).stdout.strip()
    return None


def python_env():
    """The module in a child interpreter, with the ASan runtime of an ASan
    build loaded first (and Python's own leaks are not ours)."""
    env = dict(os.environ, MMAPFS_LIB=LIBSO, PYTHONPATH=PYDIR)
    runtime = asan_runtime()
    if runtime:
        env["LD_PRELOAD"] = runtime
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return env


PY_TEST = r'''
import errno, os, select, sys, threading
import mmapfs

c, a, empty = sys.argv[1:4]
payload = os.urandom(3 << 20)

def write(chan, data, **kw):
    with mmapfs.open(chan, "w", **kw) as ch:
        assert ch.writable() and not ch.readable()
        n = 0
        while n < len(data):
            n += ch.write(memoryview(data)[n:n + 100000]) or 0
            if kw:
                select.select([], [ch], [], 1)

# file-like, zero copy, both directions, both roles
for w, r in ((c, a), (a, c)):
    t = threading.Thread(target=write, args=(w, payload))
    t.start()
    got = bytearray()
    with mmapfs.open(r) as ch:
        while True:
            view = ch.read_view(77777)
            if not view:
                break
            got += view
            ch.release()
    t.join()
    assert got == payload
    # read() to the end, readinto, non-blocking with select on fileno()
    t = threading.Thread(target=write, args=(w, payload), kwargs={"nonblock": True})
    t.start()
    with mmapfs.open(r) as ch:
        head = bytearray(1000)
        n = ch.readinto(head)
        assert head[:n] == payload[:n]
        assert bytes(head[:n]) + ch.read() == payload
    t.join()
    with mmapfs.open(r, nonblock=True) as ch:
        assert ch.read(10) is None
        write(w, b"ping")
        select.select([ch], [], [], 5)
        assert ch.read(10) == b"ping"
        assert select.select([ch], [], [], 5)[0] and ch.read(10) == b""
for path, mode, want in ((empty, "r", errno.ENOTCONN), (c, "x", None)):
    try:
        mmapfs.open(path, mode)
        raise AssertionError("opened")
    except OSError as e:
        assert e.errno == want and path + "/data" in str(e), e     # the file at fault
    except ValueError:
        assert want is None
ch = mmapfs.open(c, "rw")
try:
    mmapfs.open(c, "r")
    raise AssertionError("opened")
except OSError as e:
    assert e.errno == errno.EBUSY
ch.close()
ch.close()
print("ok")
'''


def test_python_module(chan):
    c, a = chan
    os.mkdir(c / "empty")
    p = subprocess.run([sys.executable, "-c", PY_TEST, c / "chan", a / "chan", c / "empty"],
                       capture_output=True, text=True, timeout=120, env=python_env())
    no_sanitizer_report(p.stderr)
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr


def test_pkg_config_uninstalled():
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(BUILD, "meson-uninstalled"))
    out = subprocess.run(["pkg-config", "--cflags", "--libs", "mmapfs"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "-lmmapfs" in out and f"-L{BUILD}/core/lib" in out
    assert os.path.exists(os.path.join(TOP, "core", "lib", "mmapfs.h"))
