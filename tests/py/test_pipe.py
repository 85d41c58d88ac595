"""The pipe file: the stream as a FIFO the kernel serves (DESIGN.md, "Two ways
into the stream"; docs/mmapfs.1, DATA, pipe). Shell tools, Python, and the real
ends of the other files: data on the other side, a second user of the file,
a dead peer, rmdir and unmount."""
import errno
import hashlib
import os
import random
import select
import stat
import subprocess
import threading
import time

import pytest

from conftest import handshake, sh


def own_fds(m):
    """The daemon's descriptors on its own mount (its ends of FIFOs)."""
    d = f"/proc/{m.proc.pid}/fd"
    out = []
    for fd in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        if target.startswith(m.path + "/"):
            out.append(target)
    return out


def wait_for(cond, timeout=5, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_pipe_is_a_fifo_and_a_stat_opens_nothing(chan):
    cdir, adir, c, a = chan
    st = os.stat(cdir + "/pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert "pipe" in os.listdir(cdir)
    sh(f"test -p {cdir}/pipe && ls -l {cdir} > /dev/null && stat {cdir}/pipe > /dev/null")
    # a stat is not an open: no session, no descriptor held on the mount
    assert own_fds(c) == []
    # the writers' and the readers' FIFOs are two inodes
    r = subprocess.Popen(["cat", adir + "/pipe"], stdout=subprocess.PIPE)
    wait_for(lambda: own_fds(a), what="the daemon's end for a reader")
    sh(f"echo hello > {cdir}/pipe")
    assert r.communicate(timeout=10)[0] == b"hello\n"
    wait_for(lambda: own_fds(a) == [] and own_fds(c) == [], what="the ends closed")


def test_shell_tools_both_ways(chan, tmp_path):
    """dd with its default 512-byte blocks, printf, while read: every byte,
    in order, both directions."""
    cdir, adir, c, a = chan
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    for w, r in ((cdir, adir), (adir, cdir)):
        out = sh(f"sha256sum < {r}/pipe & dd if={src} of={w}/pipe status=none; wait")
        assert out.stdout.split()[0] == want
    out = sh(f"(while read -r line; do echo \"got $line\"; done < {adir}/pipe) & "
             f"for i in $(seq 1000); do printf 'line %d\\n' $i; done > {cdir}/pipe; wait")
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
            with open(cdir + "/pipe", "wb", buffering=0) as f:
                while i < len(data):
                    n = rnd.randrange(1, 70000)
                    i += f.write(data[i:i + n])
        except BrokenPipeError:
            wrote.append(("EPIPE", i))
            return
        wrote.append(("done", i))

    def read_stream(quota=None):
        got = bytearray()
        with open(adir + "/pipe", "rb", buffering=0) as f:
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
    # every byte that reached the ring was taken from it once: read, or
    # dropped (the abandoned stream's writer had up to `cut` bytes taken by
    # its FIFO, whose rest the pump discards with the stream)
    whole = sum(map(len, streams)) + len(streams[1])
    assert whole + len(part) <= int(a.status("chan")["read.bytes"]) <= whole + cut


def test_pipe_to_data_and_data_to_pipe(chan, tmp_path):
    """Either end may use either file: a pipe writer, a data reader, and the
    other way round, in the same run."""
    cdir, adir, c, a = chan
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    out = sh(f"sha256sum < {adir}/data & dd if={src} of={cdir}/pipe bs=4k status=none; "
             f"wait; sha256sum < {cdir}/pipe & dd if={src} of={adir}/data bs=1M status=none; "
             f"wait")
    assert out.stdout.split()[::2] == [want, want]


def test_open_errors_as_data(pair):
    """Before the handshake ENOTCONN; a second writer, or data and pipe at
    once, EBUSY; O_RDWR EINVAL (a FIFO carries one direction)."""
    c, a = pair
    sh(f"mkdir {c / 'chan'}")
    r = sh(f"echo x > {c / 'chan'}/pipe", check=False)
    assert r.returncode != 0 and "Transport endpoint is not connected" in r.stderr
    r = sh(f"cat {c / 'chan'}/pipe", check=False)
    assert r.returncode != 0 and "Transport endpoint is not connected" in r.stderr
    sh(f"rmdir {c / 'chan'}")
    handshake(c, a)
    cdir = c / "chan"
    holder = subprocess.Popen(["bash", "-c", f"exec 3>{cdir}/pipe; echo ok; sleep 30"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ok\n"
        r = sh(f"echo x > {cdir}/pipe", check=False)
        assert r.returncode != 0 and "busy" in r.stderr, r.stderr
        with pytest.raises(OSError) as e:
            os.open(cdir + "/data", os.O_WRONLY)
        assert e.value.errno == errno.EBUSY
        # the other direction is free: a reader of this same end
        r = subprocess.Popen(["cat", cdir + "/pipe"], stdout=subprocess.PIPE)
        sh(f"echo back > {a / 'chan'}/pipe")
        assert r.communicate(timeout=10)[0] == b"back\n"
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(OSError) as e:
        os.open(cdir + "/pipe", os.O_RDWR)
    assert e.value.errno == errno.EINVAL
    # data held: pipe is busy
    fd = os.open(cdir + "/data", os.O_WRONLY)
    try:
        r = sh(f"echo x > {cdir}/pipe", check=False)
        assert r.returncode != 0 and "busy" in r.stderr
    finally:
        os.close(fd)
    # the released data's end of stream lets the next writer in
    sh(f"echo after > {cdir}/pipe")


def test_back_to_back_streams(chan):
    """Each writer's close ends a stream: one cat per stream, none merged,
    and the next open never sees EBUSY from the last one's release."""
    cdir, adir, c, a = chan
    out = sh(f"(for i in $(seq 40); do cat {adir}/pipe; echo '|'; done) & "
             f"for i in $(seq 40); do echo $i > {cdir}/pipe; done; wait")
    assert out.stdout.split("\n|\n")[:40] == [str(i) for i in range(1, 41)]


def test_nonblocking_open_poll_and_eof(chan):
    cdir, adir, c, a = chan
    # a non-blocking writer's open never fails for want of our reader end
    for _ in range(30):
        fd = os.open(cdir + "/pipe", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        # each open and close is an empty stream: take it
        with open(adir + "/pipe", "rb") as f:
            assert f.read() == b""
    r = os.open(adir + "/pipe", os.O_RDONLY | os.O_NONBLOCK)
    w = None
    try:
        p = select.poll()
        p.register(r, select.POLLIN)
        assert p.poll(200) == []
        w = os.open(cdir + "/pipe", os.O_WRONLY)
        os.write(w, b"hello")
        ev = p.poll(5000)
        assert ev and ev[0][1] & select.POLLIN
        assert os.read(r, 100) == b"hello"
        with pytest.raises(BlockingIOError):
            os.read(r, 100)
        ep = select.epoll()
        ep.register(r, select.EPOLLIN)
        os.write(w, b" world")
        assert ep.poll(5)
        assert os.read(r, 100) == b" world"
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


def test_dead_peer(chan):
    """A pipe writer gets EPIPE (SIGPIPE in a shell) and a reader end of file
    within 2 s of the peer's death; status says why."""
    cdir, adir, c, a = chan
    writer = subprocess.Popen(["bash", "-c", f"yes | dd of={cdir}/pipe status=none"],
                              stderr=subprocess.PIPE)
    reader = subprocess.Popen(["cat", cdir + "/pipe"], stdout=subprocess.DEVNULL)
    wait_for(lambda: int(c.status("chan")["write.bytes"]) > 0, what="bytes out")
    a.kill()
    t0 = time.monotonic()
    assert writer.wait(5) != 0
    assert reader.wait(5) == 0
    assert time.monotonic() - t0 < 2.5
    st = c.status("chan")
    assert st["peer"] == "dead" and "dead" in st["error"]
    wait_for(lambda: own_fds(c) == [], what="the daemon's ends closed")


def test_rmdir_and_unmount_while_open(chan):
    cdir, adir, c, a = chan
    handshake(c, a, "two")
    holder = subprocess.Popen(["bash", "-c", f"exec 3>{cdir}/pipe; echo ok; read x"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "ok\n"
    assert sh(f"rmdir {cdir}", check=False).returncode != 0
    assert subprocess.run(["fusermount3", "-u", c.path], capture_output=True).returncode != 0
    holder.communicate("go\n", timeout=10)
    # as soon as the application let go, nothing of the daemon's holds it
    sh(f"rmdir {cdir}")
    reader = subprocess.Popen(["cat", f"{a / 'two'}/pipe"], stdout=subprocess.PIPE)
    wait_for(lambda: own_fds(a), what="the reader's session")
    # the daemon stopping ends the reader's stream: end of file
    subprocess.run(["fusermount3", "-u", "-z", a.path], check=True)
    a.proc.terminate()
    assert reader.wait(10) == 0
    a.proc.wait(10)
    a.killed = True


def test_many_blocked_readers_few_threads(mount_factory):
    """Many channels, each with a reader blocked on its pipe: the daemon
    keeps one pump thread, not a thread per reader; then one line reaches
    every reader."""
    n = 150
    c, a = mount_factory(), mount_factory()
    names = [f"c{i}" for i in range(n)]
    script = "".join(f"mkdir {c / x} {a / x}; cat {c / x}/capabilities > {a / x}/peer; "
                     f"cat {a / x}/capabilities > {c / x}/peer; " for x in names)
    sh(script, timeout=300)
    readers = [subprocess.Popen(["cat", f"{a / x}/pipe"], stdout=subprocess.PIPE)
               for x in names]
    try:
        wait_for(lambda: len(own_fds(a)) == n, timeout=30, what="every reader's session")
        threads = len(os.listdir(f"/proc/{a.proc.pid}/task"))
        assert threads < 40, threads
        sh("".join(f"echo {x} > {c / x}/pipe; " for x in names), timeout=120)
        for x, r in zip(names, readers):
            assert r.communicate(timeout=20)[0] == f"{x}\n".encode()
    finally:
        for r in readers:
            r.kill()
            r.wait()
    wait_for(lambda: own_fds(a) == [] and own_fds(c) == [], what="every end closed")
