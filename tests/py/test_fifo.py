"""The FIFO entries `send` and `recv`: the stream as FIFOs the kernel serves
(DESIGN.md, "Two ways into the stream"; docs/mmapfs.1, DATA; docs/fifo-entries.md).
Shell tools, Python, io_uring, the O_PATH reopen, the other end's `data`, a
dead peer, rmdir, unmount and SIGTERM with callers blocked on the FIFOs."""
import errno
import hashlib
import os
import random
import select
import signal
import stat
import subprocess
import threading
import time

import pytest

from conftest import MMAPFS, handshake, sh

PEERS = os.path.join(os.path.dirname(os.path.dirname(MMAPFS)), "tests", "peers")
URING = os.path.join(PEERS, "uring_open")
FIFO32 = os.path.join(PEERS, "fifo32")


def wait_for(cond, timeout=5, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def own_fifo_fds(m):
    """The daemon's descriptors on FIFOs (its ends)."""
    d = f"/proc/{m.proc.pid}/fd"
    out = []
    for fd in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        if ".send." in target or ".recv." in target:
            out.append(target)
    return out


def test_entries_are_links_named_for_their_direction(chan):
    """`send` and `recv` are symbolic links to FIFOs; the FIFO of send takes
    only writers, the FIFO of recv only readers, even for the channel's
    owner's own group; a stat opens nothing of the stream."""
    cdir, adir, c, a = chan
    for name in ("send", "recv"):
        st = os.lstat(f"{cdir}/{name}")
        assert stat.S_ISLNK(st.st_mode), name
        target = os.readlink(f"{cdir}/{name}")
        assert os.path.isabs(target) and f".{name}." in target, target
        assert stat.S_ISFIFO(os.stat(f"{cdir}/{name}").st_mode)
    assert {"send", "recv"} <= set(os.listdir(cdir))
    ls = sh(f"ls -l {cdir}").stdout
    assert " send -> " in ls and " recv -> " in ls, ls
    # the links lead outside the mount: the daemon holds nothing on it
    sh(f"test -p {cdir}/send && stat -L {cdir}/recv > /dev/null")
    assert not [f for f in os.listdir(f"/proc/{c.proc.pid}/fd")
                if os.readlink(f"/proc/{c.proc.pid}/fd/{f}").startswith(str(c.path))]
    r = subprocess.Popen(["cat", f"{adir}/recv"], stdout=subprocess.PIPE)
    sh(f"echo hello > {cdir}/send")
    assert r.communicate(timeout=10)[0] == b"hello\n"


def test_shell_tools_both_ways(chan, tmp_path):
    """dd with its default 512-byte blocks, printf, while read: every byte,
    in order, both directions."""
    cdir, adir, c, a = chan
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    for w, r in ((cdir, adir), (adir, cdir)):
        out = sh(f"sha256sum < {r}/recv & dd if={src} of={w}/send status=none; wait")
        assert out.stdout.split()[0] == want
    out = sh(f"(while read -r line; do echo \"got $line\"; done < {adir}/recv) & "
             f"for i in $(seq 1000); do printf 'line %d\\n' $i; done > {cdir}/send; wait")
    assert out.stdout.splitlines() == [f"got line {i}" for i in range(1, 1001)]


@pytest.mark.parametrize("way", ["creator-to-attacher", "attacher-to-creator"])
def test_exactly_once_random_sizes_and_readers_that_leave(chan, way):
    """Random write and read sizes through a 64 KiB ring (it wraps hundreds of
    times), one stream after another: each arrives whole, once, in order.
    Then a reader that leaves in the middle of a stream abandons it: its
    writer gets EPIPE (the rest is dropped), and the next reader gets the
    next stream, nothing of the one before."""
    cdir, adir, c, a = chan
    if way == "attacher-to-creator":
        cdir, adir, c, a = adir, cdir, a, c
    rnd = random.Random(7)
    streams = [os.urandom(rnd.randrange(1, 3 << 20)) for _ in range(3)]
    wrote = []

    def writer(data):
        i = 0
        try:
            with open(cdir + "/send", "wb", buffering=0) as f:
                while i < len(data):
                    n = rnd.randrange(1, 70000)
                    i += f.write(data[i:i + n])
        except BrokenPipeError:
            wrote.append(("EPIPE", i))
            return
        wrote.append(("done", i))

    def read_stream(quota=None):
        got = bytearray()
        with open(adir + "/recv", "rb", buffering=0) as f:
            while quota is None or len(got) < quota:
                b = f.read(rnd.randrange(1, 9000))
                if not b:
                    break
                got += b
        return bytes(got)

    for data in streams:
        t = threading.Thread(target=writer, args=(data,))
        t.start()
        assert read_stream() == data
        t.join(10)
        assert not t.is_alive()
    # a reader that leaves early: its stream is dropped, not handed on
    t = threading.Thread(target=writer, args=(streams[0],))
    t.start()
    part = read_stream(quota=100000)
    assert part == streams[0][:len(part)]
    t.join(10)
    assert not t.is_alive(), "the abandoned stream's writer still waits"
    how, cut = wrote[-1]
    assert how == "EPIPE" and len(part) <= cut < len(streams[0]), wrote[-1]
    t = threading.Thread(target=writer, args=(streams[1],))
    t.start()
    assert read_stream() == streams[1]
    t.join(10)


def test_fifo_to_data_and_data_to_fifo(chan, tmp_path):
    """Either end may use either way in: a FIFO writer, a data reader, and
    the other way round, in the same run."""
    cdir, adir, c, a = chan
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    out = sh(f"sha256sum < {adir}/data & dd if={src} of={cdir}/send bs=4k status=none; "
             f"wait; sha256sum < {cdir}/recv & dd if={src} of={adir}/data bs=1M status=none; "
             f"wait")
    assert out.stdout.split()[::2] == [want, want]


def test_data_takes_the_direction_back_from_a_waiting_recv(chan):
    """recv looked at (its stream waiting in the FIFO, nobody reading) does
    not keep `data` out: an opener of data takes the stream, whole."""
    cdir, adir, c, a = chan
    os.readlink(f"{adir}/recv")         # the daemon watches recv from now on
    sh(f"echo first > {cdir}/send")
    time.sleep(0.3)                     # in recv's FIFO by now, untaken
    assert sh(f"timeout 10 cat {adir}/data").stdout == "first\n"
    sh(f"echo second > {cdir}/send")
    assert sh(f"timeout 10 cat {adir}/recv").stdout == "second\n"


def test_a_data_writer_makes_fifo_writers_wait(chan):
    """While `data` holds the write direction, a FIFO writer's bytes wait in
    the FIFO; they go once data lets go, as the next stream."""
    cdir, adir, c, a = chan
    fd = os.open(f"{cdir}/data", os.O_WRONLY)
    try:
        os.write(fd, b"from data\n")
        sh(f"echo from fifo > {cdir}/send")     # the FIFO takes it; not yet sent
        time.sleep(0.2)
        assert int(c.status("chan")["write.bytes"]) == len(b"from data\n")
    finally:
        os.close(fd)
    assert sh(f"timeout 10 cat {adir}/recv").stdout == "from data\n"
    assert sh(f"timeout 10 cat {adir}/recv").stdout == "from fifo\n"


def test_back_to_back_streams(chan, tmp_path):
    """Writers one after another, readers one after another: every line
    once, in order. (Writers that follow one another before the daemon saw
    the last one leave are one stream, as a FIFO's reader would see them;
    so the readers run until they have every line.)"""
    cdir, adir, c, a = chan
    out = tmp_path / "out"
    out.write_text("")
    sh(f"(while [ $(wc -l < {out}) -lt 40 ]; do cat {adir}/recv >> {out}; done) & "
       f"for i in $(seq 40); do echo $i > {cdir}/send; done; wait")
    assert out.read_text().split() == [str(i) for i in range(1, 41)]


def test_a_conversation_through_socat(chan):
    """Questions and answers through the FIFO entries, socat relaying the
    far end to `cat` (each answer waits for its question): 64-byte
    messages, then a 4 MiB burst (the pumps nap while bytes flow), then
    small messages again, each answered whole and in order. A pump that
    napped after the burst and missed the next question would hang here."""
    cdir, adir, c, a = chan
    relay = subprocess.Popen(["socat", "-b", "65536", f"GOPEN:{adir}/recv!!GOPEN:{adir}/send",
                              "EXEC:cat"], stderr=subprocess.PIPE)
    try:
        wfd = os.open(f"{cdir}/send", os.O_WRONLY)
        rfd = -1

        def ask(msg):
            nonlocal rfd
            os.write(wfd, msg)
            if rfd < 0:
                rfd = os.open(f"{cdir}/recv", os.O_RDONLY)   # waits for bytes
            got = b""
            while len(got) < len(msg):
                r, _, _ = select.select([rfd], [], [], 10)
                assert r, f"no answer after {len(got)} of {len(msg)} bytes"
                part = os.read(rfd, len(msg) - len(got))
                assert part, "end of file before the answer"
                got += part
            assert got == msg

        for i in range(300):
            ask(b"%063d\n" % i)
        burst = os.urandom(4 << 20)
        done = threading.Event()
        answers = []

        def read_burst():
            got = bytearray()
            while len(got) < len(burst):
                part = os.read(rfd, len(burst) - len(got))
                if not part:
                    break
                got += part
            answers.append(bytes(got))
            done.set()

        reader = threading.Thread(target=read_burst)
        reader.start()
        view = memoryview(burst)
        while view:
            view = view[os.write(wfd, view[:65536]):]
        assert done.wait(30), "the burst did not come back"
        reader.join()
        assert answers[0] == burst
        for i in range(300):
            ask(b"%063d\n" % (1000 + i))
        os.close(wfd)
        assert os.read(rfd, 1) == b""       # socat passed the end on
        os.close(rfd)
        assert relay.wait(10) == 0, relay.stderr.read()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    assert c.status("chan")["streams_failed"] == "0"


def test_fifo_rules_nonblocking_poll_and_eof(chan):
    """O_NONBLOCK, poll, epoll and end of file as for any FIFO; O_RDWR and
    the wrong direction are refused by the FIFO's access list, not guessed."""
    cdir, adir, c, a = chan
    fd = os.open(cdir + "/send", os.O_WRONLY | os.O_NONBLOCK)   # our reader is there
    os.close(fd)
    r = os.open(adir + "/recv", os.O_RDONLY | os.O_NONBLOCK)
    w = None
    try:
        p = select.poll()
        p.register(r, select.POLLIN)
        w = os.open(cdir + "/send", os.O_WRONLY)
        os.write(w, b"hello")
        ev = p.poll(5000)
        assert ev and ev[0][1] & select.POLLIN
        assert os.read(r, 100) == b"hello"
        with pytest.raises(BlockingIOError):
            os.read(r, 100)
        ep = select.epoll()
        ep.register(r, select.EPOLLIN | select.EPOLLET)
        os.write(w, b" world")
        assert ep.poll(5)
        assert os.read(r, 100) == b" world"
        os.write(w, b"!")
        assert ep.poll(5), "an edge lost"
        assert os.read(r, 100) == b"!"
        os.close(w)
        w = None
        ev = p.poll(5000)
        assert ev and ev[0][1] & select.POLLHUP
        assert os.read(r, 100) == b""
        ep.close()
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_before_ready_writers_wait_or_get_enxio(pair):
    """Before the handshake a writer's open waits (ENXIO with O_NONBLOCK), as
    for a FIFO with no reader, and goes on once the channel is ready."""
    c, a = pair
    sh(f"mkdir {c / 'chan'} {a / 'chan'}")
    with pytest.raises(OSError) as e:
        os.open(f"{c / 'chan'}/send", os.O_WRONLY | os.O_NONBLOCK)
    assert e.value.errno == errno.ENXIO
    w = subprocess.Popen(["bash", "-c", f"echo early > {c / 'chan'}/send"])
    r = subprocess.Popen(["cat", f"{a / 'chan'}/recv"], stdout=subprocess.PIPE)
    time.sleep(0.3)
    assert w.poll() is None and r.poll() is None
    sh(f"cat {c / 'chan'}/capabilities > {a / 'chan'}/peer")
    sh(f"cat {a / 'chan'}/capabilities > {c / 'chan'}/peer")
    assert w.wait(10) == 0
    assert r.communicate(timeout=10)[0] == b"early\n"



def test_a_32_bit_program(pair):
    """A 32-bit program without large-file support (tests/peers/fifo32.c,
    built -m32): it stats the entries (a link to a FIFO), its non-blocking
    open of send before the channel is ready gets ENXIO as from a FIFO with
    no reader, and its bytes through send reach a 32-bit reader of recv
    whole."""
    c, a = pair
    if not os.access(FIFO32, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("no 32-bit toolchain at build time (gcc-multilib)")
        pytest.skip("no 32-bit toolchain at build time (gcc-multilib)")

    def fifo32(*args, **kw):
        p = subprocess.run([FIFO32, *args], capture_output=True, timeout=30, **kw)
        assert p.returncode == 0, p.stderr
        return p.stdout

    sh(f"mkdir {c / 'chan'} {a / 'chan'}")
    assert fifo32("stat", f"{c / 'chan'}/send") == b"link fifo\n"
    assert fifo32("stat", f"{a / 'chan'}/recv") == b"link fifo\n"
    assert fifo32("nb", f"{c / 'chan'}/send") == b"ENXIO\n"
    sh(f"cat {c / 'chan'}/capabilities > {a / 'chan'}/peer")
    sh(f"cat {a / 'chan'}/capabilities > {c / 'chan'}/peer")
    wait_for(lambda: c.status("chan")["state"] == "ready", what="ready")
    blob = os.urandom(300_000)
    r = subprocess.Popen([FIFO32, "r", f"{a / 'chan'}/recv"], stdout=subprocess.PIPE)
    fifo32("w", f"{c / 'chan'}/send", input=blob)
    assert r.communicate(timeout=30)[0] == blob
    assert r.returncode == 0

def test_io_uring_and_o_path_reopen_follow_fifo_rules(chan):
    """Opens the daemon never sees: io_uring's OPENAT and OPENAT2, and an
    O_PATH descriptor reopened through /proc/self/fd, get the FIFO of the
    entry's direction and nothing else: the stream arrives whole, once."""
    cdir, adir, c, a = chan
    if not os.access(URING, os.X_OK):
        pytest.skip("no liburing at build time")
    for op in ("openat", "openat2"):
        r = subprocess.Popen([URING, op, "r", f"{adir}/recv"], stdout=subprocess.PIPE)
        w = subprocess.run([URING, op, "w", f"{cdir}/send"], input=b"u" * 24000, timeout=30)
        assert w.returncode == 0
        assert r.communicate(timeout=30)[0] == b"u" * 24000, op
    # O_PATH, then the reopen: the FIFO's own rules, whichever way
    for entry, mode, other in (("send", os.O_WRONLY, os.O_RDONLY),
                               ("recv", os.O_RDONLY, os.O_WRONLY)):
        path = f"{cdir}/{entry}"
        o = os.open(path, os.O_PATH)
        try:
            assert stat.S_ISFIFO(os.fstat(o).st_mode)
            if os.getuid() != 0:
                with pytest.raises(PermissionError):
                    os.open(f"/proc/self/fd/{o}", other | os.O_NONBLOCK)
        finally:
            os.close(o)
    o = os.open(f"{adir}/recv", os.O_PATH)
    r = subprocess.Popen(["cat", f"/proc/self/fd/{o}"], pass_fds=(o,), stdout=subprocess.PIPE)
    os.close(o)
    sh(f"echo reopened > {cdir}/send")
    assert r.communicate(timeout=10)[0] == b"reopened\n"


def test_callers_in_another_pid_namespace(chan):
    """A reader and a writer each in a pid namespace of their own (the
    daemon cannot see their pids, and needs not): the stream arrives."""
    cdir, adir, c, a = chan
    r = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "cat", f"{adir}/recv"],
                         stdout=subprocess.PIPE)
    sh(f"unshare --pid --fork --mount-proc sh -c 'seq 5000 > {cdir}/send'")
    assert r.communicate(timeout=20)[0].split() == [str(i).encode() for i in range(1, 5001)]


def test_dead_peer(chan):
    """A FIFO writer gets EPIPE (SIGPIPE in a shell) and a reader end of file
    within 2.5 s of the peer's death; status says why."""
    cdir, adir, c, a = chan
    writer = subprocess.Popen(["bash", "-c", f"yes | dd of={cdir}/send status=none"],
                              stderr=subprocess.PIPE)
    reader = subprocess.Popen(["cat", cdir + "/recv"], stdout=subprocess.DEVNULL)
    wait_for(lambda: int(c.status("chan")["write.bytes"]) > 0, what="bytes out")
    a.kill()
    t0 = time.monotonic()
    assert writer.wait(5) != 0
    assert reader.wait(5) == 0
    assert time.monotonic() - t0 < 2.5
    st = c.status("chan")
    assert st["peer"] == "dead" and "dead" in st["error"]


def test_rmdir_unmount_and_sigterm_with_callers_blocked(chan):
    """rmdir waits for nobody that only looked; unmount works while callers
    sit in the FIFOs (nothing of the daemon's is on its mount); SIGTERM with
    readers and writers blocked in the FIFOs ends the daemon within a second,
    and lets them go (the readers see end of file, the writers EPIPE)."""
    cdir, adir, c, a = chan
    handshake(c, a, "two")
    sh(f"ls -l {cdir}/ > /dev/null")
    sh(f"rmdir {cdir}")         # nothing in flight: free to go
    fifo_dir = os.path.dirname(os.readlink(f"{a / 'two'}/recv"))
    readers = [subprocess.Popen(["cat", f"{a / 'two'}/recv"], stdout=subprocess.PIPE)
               for _ in range(3)]
    writer = subprocess.Popen(["bash", "-c", f"yes > {a / 'two'}/send"],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    assert all(r.poll() is None for r in readers) and writer.poll() is None
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(5)
    assert time.monotonic() - t0 < 1.5
    a.killed = True
    subprocess.run(["fusermount3", "-u", "-z", a.path], check=False)
    for r in readers:
        assert r.wait(5) == 0
    assert writer.wait(5) != 0
    assert not os.path.exists(fifo_dir), "its FIFOs' directory stayed"


def test_many_blocked_readers_few_threads(mount_factory):
    """Many channels, each with a reader blocked on its recv: the daemon
    keeps one pump thread, not a thread per reader; then one line reaches
    every reader."""
    n = 150
    c, a = mount_factory(), mount_factory()
    names = [f"c{i}" for i in range(n)]
    script = "".join(f"mkdir {c / x} {a / x}; cat {c / x}/capabilities > {a / x}/peer; "
                     f"cat {a / x}/capabilities > {c / x}/peer; " for x in names)
    sh(script, timeout=300)
    readers = [subprocess.Popen(["cat", f"{a / x}/recv"], stdout=subprocess.PIPE)
               for x in names]
    try:
        time.sleep(1)
        threads = len(os.listdir(f"/proc/{a.proc.pid}/task"))
        assert threads < 40, threads
        sh("".join(f"echo {x} > {c / x}/send; " for x in names), timeout=120)
        for x, r in zip(names, readers):
            assert r.communicate(timeout=20)[0] == f"{x}\n".encode()
    finally:
        for r in readers:
            r.kill()
            r.wait()
    # between streams: one descriptor per channel at most, on either side
    assert len(own_fifo_fds(a)) <= n and len(own_fifo_fds(c)) <= n


def test_hang_loop_under_load(chan):
    """200 back-to-back `echo N > send` / `cat recv`, with two busy loops
    beside them, 5 times over: each cat gets its own line and end of file,
    nothing hangs (MMAPFS_LONG: 1,000 times 20)."""
    cdir, adir, c, a = chan
    n, rounds = (1000, 20) if os.environ.get("MMAPFS_LONG") else (200, 5)
    busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
    try:
        for _ in range(rounds):
            out = sh(f"for i in $(seq {n}); do echo $i > {cdir}/send; cat {adir}/recv; done",
                     timeout=600)
            assert out.stdout.split() == [str(i) for i in range(1, n + 1)]
    finally:
        for b in busy:
            b.kill()
            b.wait()


def test_a_dead_daemons_fifos_are_swept(mount_factory):
    """kill -9 leaves the daemon's FIFOs' directory behind; the next daemon
    on that mmap_dir removes it (and nothing of a live one's)."""
    m, live = mount_factory(), mount_factory()
    os.mkdir(m / "c")
    os.mkdir(live / "c")
    dead_dir = os.path.dirname(os.readlink(m / "c/send"))
    live_dir = os.path.dirname(os.readlink(live / "c/recv"))
    assert os.listdir(dead_dir) and dead_dir != live_dir
    m.kill()
    assert os.path.isdir(dead_dir)
    mount_factory()
    wait_for(lambda: not os.path.exists(dead_dir), what="the dead daemon's FIFOs swept")
    assert os.path.isdir(live_dir) and os.listdir(live_dir)


def test_recv_waiting_lets_a_new_session_in(pair, mount_factory):
    """recv waiting for a stream holds the read claim only softly: when the
    peer dies, reading the offer still starts a new session, and recv then
    serves the new peer's streams."""
    c, a = pair
    handshake(c, a)
    os.readlink(c / "chan/recv")
    time.sleep(0.2)
    a.kill()
    wait_for(lambda: c.status("chan")["peer"] == "dead", what="the peer seen dead")
    b = mount_factory()
    sh(f"mkdir {b / 'chan'} && cat {c / 'chan'}/capabilities > {b / 'chan'}/peer && "
       f"cat {b / 'chan'}/capabilities > {c / 'chan'}/peer")
    wait_for(lambda: c.status("chan")["state"] == "ready" and c.status("chan")["peer"] == "alive",
             what="the new session ready")
    r = subprocess.Popen(["cat", f"{c / 'chan'}/recv"], stdout=subprocess.PIPE)
    sh(f"echo new peer > {b / 'chan'}/send")
    assert r.communicate(timeout=10)[0] == b"new peer\n"
