"""The data file: a byte stream like a connected socket (DESIGN.md, "Data")."""
import errno
import hashlib
import os
import random
import select
import signal
import subprocess
import threading
import time

import pytest

from conftest import handshake, nothing_to_read, sh, sigint_default, wait_state


def sha_of_stream(cmd):
    return sh(cmd).stdout.split()[0]


def test_dd_both_ways_at_once(mount_factory, tmp_path):
    c, a = mount_factory(size="16M"), mount_factory(size="16M")
    handshake(c, a)
    src1, src2 = tmp_path / "one", tmp_path / "two"
    for f in (src1, src2):
        with open(f, "wb") as out:
            out.write(os.urandom(200 << 20))
    cmd = (f"dd if={src1} of={c / 'chan'}/data bs=1M status=none & "
           f"dd if={src2} of={a / 'chan'}/data bs=1M status=none & "
           f"dd if={a / 'chan'}/data bs=1M status=none | sha256sum > {tmp_path}/got1 & "
           f"dd if={c / 'chan'}/data bs=1M status=none | sha256sum > {tmp_path}/got2; wait")
    sh(cmd)
    want1 = sha_of_stream(f"sha256sum {src1}")
    want2 = sha_of_stream(f"sha256sum {src2}")
    assert open(tmp_path / "got1").read().split()[0] == want1
    assert open(tmp_path / "got2").read().split()[0] == want2
    st = c.status("chan")
    assert int(st["write.bytes"]) == 200 << 20
    assert int(st["read.bytes"]) == 200 << 20


def test_odd_sizes_wrap_thousands_of_times(chan):
    """A 64 KiB ring, writes and reads of awkward sizes: every byte once, in order."""
    cdir, adir, c, a = chan
    rng = random.Random(1234)
    sizes = [1, 3, 4093, 65537, 7, 65535, 131071, 8191, 12345]
    total = 200 << 20
    payload = rng.randbytes(1 << 20)

    def chunks():
        sent = 0
        while sent < total:
            n = min(rng.choice(sizes), total - sent)
            off = sent % len(payload)
            piece = (payload * 2)[off:off + n] if n <= len(payload) else None
            yield piece
            sent += n

    def writer():
        with open(cdir + "/data", "wb", buffering=0) as f:
            for piece in chunks():
                view = memoryview(piece)
                while view:
                    n = f.write(view)
                    view = view[n:]

    t = threading.Thread(target=writer)
    t.start()
    got = 0
    rsizes = [1, 3, 4093, 65537, 100000, 5]
    rr = random.Random(99)
    with open(adir + "/data", "rb", buffering=0) as f:
        while True:
            data = f.read(rr.choice(rsizes))
            if not data:
                break
            off = got % len(payload)
            want = (payload * 2)[off:off + len(data)]
            assert data == want, f"mismatch at byte {got}"
            got += len(data)
    t.join()
    assert got == total
    wraps = total // (64 * 1024)
    assert wraps > 3000


def test_end_of_file_and_next_stream(chan):
    cdir, adir, c, a = chan
    sh(f"echo one > {cdir}/data; echo two > {cdir}/data")
    assert sh(f"cat {adir}/data").stdout == "one\n"
    assert sh(f"cat {adir}/data").stdout == "two\n"
    # nothing more: a third reader blocks (non-blocking: EAGAIN)
    nothing_to_read(a, "chan")


def test_partial_read_returns_what_is_there(chan):
    cdir, adir, c, a = chan
    w = os.open(cdir + "/data", os.O_WRONLY)
    r = os.open(adir + "/data", os.O_RDONLY)
    try:
        os.write(w, b"abc")
        assert os.read(r, 1 << 20) == b"abc"
    finally:
        os.close(w)
        os.close(r)


def test_nonblocking_write_fills_then_eagain(chan):
    cdir, adir, c, a = chan
    fd = os.open(cdir + "/data", os.O_WRONLY | os.O_NONBLOCK)
    try:
        total = 0
        with pytest.raises(BlockingIOError):
            while True:
                n = os.write(fd, b"x" * 100000)
                assert n > 0
                total += n
        st = c.status("chan")
        assert int(st["write.free"]) == 0
        assert total == int(st["write.used"]) == int(st["write.size"]) - 128 - 8 - 1
    finally:
        os.close(fd)


def test_poll_select_epoll(chan):
    cdir, adir, c, a = chan
    r = os.open(adir + "/data", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(cdir + "/data", os.O_WRONLY)
    try:
        # writable at once, not readable while empty
        assert select.select([], [w], [], 1)[1] == [w]
        assert select.select([r], [], [], 0.2)[0] == []
        p = select.poll()
        p.register(r, select.POLLIN)
        threading.Timer(0.3, lambda: os.write(w, b"ping")).start()
        t0 = time.monotonic()
        events = p.poll(5000)
        assert events and events[0][1] & select.POLLIN
        assert time.monotonic() - t0 < 2
        assert os.read(r, 100) == b"ping"
        ep = select.epoll()
        ep.register(r, select.EPOLLIN)
        assert ep.poll(0.1) == []
        os.write(w, b"pong")
        assert ep.poll(5)
        assert os.read(r, 100) == b"pong"
        ep.close()
    finally:
        os.close(r)
        os.close(w)


def test_one_reader_one_writer(chan):
    cdir, adir, c, a = chan
    r = os.open(adir + "/data", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.open(adir + "/data", os.O_RDONLY)
        assert e.value.errno == errno.EBUSY
        # the writer side of the same end is free
        os.close(os.open(adir + "/data", os.O_WRONLY))
    finally:
        os.close(r)
    # closed: a new reader gets in at once, release on its way or not
    for _ in range(20):
        os.close(os.open(adir + "/data", os.O_RDONLY))


def test_back_to_back_writers_never_ebusy(chan, tmp_path):
    """Each echo is a stream; the next open comes before the last release."""
    cdir, adir, c, a = chan
    reader = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq 50); do cat {adir}/data; echo .; done"],
        stdout=subprocess.PIPE, text=True)
    sh(f"for i in $(seq 50); do echo $i > {cdir}/data || exit 1; done", timeout=30)
    out, _ = reader.communicate(timeout=30)
    assert out.split("\n.\n")[:50] == [str(i) for i in range(1, 51)]


def test_closing_a_duplicate_ends_nothing(chan, tmp_path):
    """A child that inherited the writer's descriptor exits, a dup is closed:
    FUSE sends FLUSH for each, but the stream goes on until the last copy is
    closed, as with a pipe or a socket."""
    cdir, adir, c, a = chan
    out = tmp_path / "out"
    reader = subprocess.Popen(["bash", "-c", f"cat {adir}/data > {out}"])
    # the shell's own way: a subshell inherits the redirection, runs its
    # children (each holds and closes a copy), and the stream ends with it
    sh(f"(echo one; /bin/echo two; sleep 0.3; /bin/echo three) > {cdir}/data")
    w = os.open(cdir + "/data", os.O_WRONLY)
    try:
        os.write(w, b"four\n")
        os.close(os.dup(w))                      # FLUSH of a duplicate
        pid = os.fork()
        if pid == 0:                             # a child holding a copy exits
            os._exit(0)
        os.waitpid(pid, 0)
        # still ours: another writer is refused, rmdir too
        with pytest.raises(OSError) as e:
            os.open(cdir + "/data", os.O_WRONLY)
        assert e.value.errno == errno.EBUSY
        with pytest.raises(OSError) as e:
            os.rmdir(cdir)
        assert e.value.errno == errno.EBUSY
        os.write(w, b"five\n")                  # and the original writes on
    finally:
        os.close(w)
    # the reader saw the first stream end, not the second: it is still there
    time.sleep(0.3)
    assert reader.poll() == 0
    assert out.read_text() == "one\ntwo\nthree\n"
    assert sh(f"cat {adir}/data").stdout == "four\nfive\n"
    reader.wait(5)


def test_unread_streams_hold_the_next_open(chan):
    """Six ends of stream wait for the reader; the seventh stream waits for room."""
    cdir, adir, c, a = chan
    sh(f"for i in 1 2 3 4 5 6; do echo $i > {cdir}/data; done")
    with pytest.raises(BlockingIOError):
        os.open(cdir + "/data", os.O_WRONLY | os.O_NONBLOCK)
    assert sh(f"cat {adir}/data").stdout == "1\n"
    os.close(os.open(cdir + "/data", os.O_WRONLY | os.O_NONBLOCK))


def test_enotconn_before_ready(pair):
    c, a = pair
    sh(f"mkdir {c / 'x'}")
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        with pytest.raises(OSError) as e:
            os.open(c / "x/data", flags)
        assert e.value.errno == errno.ENOTCONN


def test_blocked_read_leaves_daemon_answering(chan):
    cdir, adir, c, a = chan
    cat = subprocess.Popen(["cat", adir + "/data"], stdout=subprocess.PIPE,
                           preexec_fn=sigint_default)
    try:
        time.sleep(0.3)
        assert cat.poll() is None
        # status, other files and other channels still answer
        for _ in range(20):
            assert c.status("chan")["state"] == "ready"
        sh(f"mkdir {c / 'other'} && ls {c / 'other'} && rmdir {c / 'other'}")
        # Ctrl-C on the blocked reader ends it at once
        t0 = time.monotonic()
        cat.send_signal(signal.SIGINT)
        cat.wait(2)
        assert time.monotonic() - t0 < 1.5
    finally:
        cat.kill()
        cat.wait()


def test_peer_killed_blocked_read_fails(chan):
    cdir, adir, c, a = chan
    r = os.open(cdir + "/data", os.O_RDONLY)
    w = os.open(cdir + "/data", os.O_WRONLY)
    result = {}

    def reader():
        t0 = time.monotonic()
        try:
            os.read(r, 100)
            result["err"] = None
        except OSError as e:
            result["err"] = e.errno
        result["t"] = time.monotonic() - t0

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    a.kill()
    killed = time.monotonic()
    t.join(5)
    assert not t.is_alive(), "read still blocked 5 s after the peer died"
    assert result["err"] in (errno.ECONNRESET, errno.EPIPE)
    assert time.monotonic() - killed < 2.5
    st = c.status("chan")
    assert st["peer"] == "dead"
    # a write fails too, instead of filling the ring and hanging
    with pytest.raises(OSError) as e:
        for _ in range(100):
            os.write(w, b"y" * 65536)
    assert e.value.errno in (errno.EPIPE, errno.ECONNRESET)
    os.close(r)
    os.close(w)


def area_file(m, chan, which):
    caps = dict(l.split("=", 1) for l in open(os.path.join(m.path, chan, "capabilities"))
                .read().split("\n") if "=" in l)
    return caps[which + ".file"]


def start_stream(cdir, adir, tmp_path, name, mib=64):
    """A writer and a reader on one channel, in the background: one stream
    of `mib` MiB, a MiB every 20 ms, so it is still flowing a second later."""
    src = tmp_path / f"{name}.src"
    with open(src, "wb") as f:
        f.write(os.urandom(mib << 20))
    proc = subprocess.Popen(
        ["bash", "-c",
         f"for i in $(seq 0 {mib - 1}); do dd if={src} bs=1M skip=$i count=1 status=none;"
         f" sleep 0.02; done > {cdir}/data & sha256sum < {adir}/data; wait"],
        stdout=subprocess.PIPE, text=True)
    return src, proc


def test_corrupt_pointers_break_one_channel_only(pair, tmp_path):
    c, a = pair
    handshake(c, a, "bad")
    handshake(c, a, "good")
    # the good channel streams all along, through what follows
    src, proc = start_stream(c / "good", a / "good", tmp_path, "good", 64)
    bad_read = area_file(c, "bad", "read")   # the area c reads and a writes
    with open(bad_read, "r+b") as f:
        f.seek(4)
        f.write((0xFFFFFFF0).to_bytes(4, "little"))    # data_end far past the end
    with pytest.raises(OSError) as e:
        with open(c / "bad/data", "rb") as f:
            f.read(10)
    assert e.value.errno in (errno.EPROTO, errno.EIO)
    st = c.status("bad")
    assert st["state"] == "error" and "corrupt" in st["error"]
    assert proc.poll() is None, "the good stream ended before the corruption"
    out, _ = proc.communicate(timeout=60)
    assert out.split()[0] == sh(f"sha256sum {src}").stdout.split()[0]


def test_truncated_area_no_sigbus(pair, tmp_path):
    c, a = pair
    handshake(c, a, "victim")
    handshake(c, a, "good")
    src, proc = start_stream(c / "good", a / "good", tmp_path, "good2", 64)
    sh(f"echo before > {c / 'victim'}/data")
    assert sh(f"cat {a / 'victim'}/data").stdout == "before\n"
    victim = area_file(c, "victim", "write")        # c writes, a reads
    os.truncate(victim, 0)
    for path, flags in ((c / "victim/data", os.O_WRONLY), (a / "victim/data", os.O_RDONLY)):
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as e:
            assert e.errno in (errno.EIO, errno.EPROTO)
            continue
        try:
            with pytest.raises(OSError) as e:
                if flags == os.O_WRONLY:
                    os.write(fd, b"z" * 100)
                else:
                    os.read(fd, 100)
            assert e.value.errno in (errno.EIO, errno.EPROTO, errno.EAGAIN)
        finally:
            os.close(fd)
    assert c.proc.poll() is None and a.proc.poll() is None
    out, _ = proc.communicate(timeout=60)
    assert out.split()[0] == sh(f"sha256sum {src}").stdout.split()[0]


def trailer_word(path, word):
    size = os.path.getsize(path)
    return ((size - 64) & ~7) + 4 * word


def wait_peer_dead(m, since, within=2.0):
    """m's status says peer=dead within `within` s of `since` (monotonic:
    when the peer stopped or died)."""
    while m.status("chan")["peer"] != "dead":
        assert time.monotonic() - since < within, m.status("chan")
        time.sleep(0.05)


def test_stalled_peer_is_dead_then_alive(chan):
    cdir, adir, c, a = chan
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_peer_dead(c, time.monotonic())
    finally:
        a.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 2
    while c.status("chan")["peer"] != "alive":
        assert time.monotonic() < deadline, "peer not alive again after SIGCONT"
        time.sleep(0.05)
    # a stall is not a restart: the channel still works
    assert c.status("chan")["state"] == "ready"
    sh(f"echo again > {cdir}/data")
    assert sh(f"cat {adir}/data").stdout == "again\n"


def test_restarted_peer_is_told_apart(chan):
    """A new session id in the peer's slot is a restart: the channel errors."""
    cdir, adir, c, a = chan
    area = area_file(c, "chan", "read")
    a.proc.send_signal(signal.SIGSTOP)     # so it does not write its own id back
    try:
        with open(area, "r+b") as f:
            f.seek(trailer_word(area, 13))            # attacher_session
            old = int.from_bytes(f.read(4), "little")
            f.seek(trailer_word(area, 13))
            f.write(((old + 1) & 0xFFFFFFFF or 1).to_bytes(4, "little"))
        time.sleep(0.6)
        st = c.status("chan")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert st["state"] == "error" and "restarted" in st["error"]
    with pytest.raises(OSError) as e:
        os.open(cdir + "/data", os.O_RDONLY)
    assert e.value.errno == errno.ECONNRESET


def test_bytes_written_before_the_peer_died_still_arrive(chan):
    """The writer writes, closes, and its daemon goes away: the reader still
    gets every byte and the end of stream, then ECONNRESET."""
    cdir, adir, c, a = chan
    payload = os.urandom(50000)            # fits the 64 KiB ring unread
    with open(adir + "/data", "wb") as f:
        f.write(payload)
    time.sleep(0.2)                        # the release (end of stream) lands
    killed = time.monotonic()
    a.kill()
    wait_peer_dead(c, killed)
    with open(cdir + "/data", "rb") as f:
        assert f.read() == payload          # up to the end of stream
        with pytest.raises(OSError) as e:
            f.read(1)
        assert e.value.errno == errno.ECONNRESET


def test_poll_reader_and_writer_fds_at_once(chan):
    """Separate read and write descriptors of one end in one poll set: the
    reader's wakeup is not lost to the writer's registration."""
    cdir, adir, c, a = chan
    r = os.open(cdir + "/data", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(cdir + "/data", os.O_WRONLY | os.O_NONBLOCK)
    peer = os.open(adir + "/data", os.O_WRONLY)
    try:
        ep = select.epoll()
        ep.register(r, select.EPOLLIN)
        assert ep.poll(0.1) == []
        ep.register(w, select.EPOLLOUT)
        assert (w, select.EPOLLOUT) in ep.poll(1)
        ep.unregister(w)
        threading.Timer(0.3, lambda: os.write(peer, b"hi")).start()
        events = ep.poll(5)
        assert events and events[0][0] == r
        assert os.read(r, 10) == b"hi"
        ep.close()
    finally:
        for fd in (r, w, peer):
            os.close(fd)


def test_sigterm_with_a_blocked_reader(chan):
    """The daemon shuts down on SIGTERM even while a read waits in it."""
    cdir, adir, c, a = chan
    cat = subprocess.Popen(["cat", cdir + "/data"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert cat.poll() is None
        c.proc.terminate()
        assert c.proc.wait(5) == 0
        assert cat.wait(5) != 0          # its read failed, it did not hang
    finally:
        cat.kill()
        cat.wait()


def test_chunks_written_during_a_stream(chan, tmp_path):
    """Between two mmapfs ends there is no chunk list: writing `chunks` in a
    loop while a stream runs is refused (EOPNOTSUPP) and changes nothing. (It
    used to queue the piece, and a reader between its two steps charged ring
    bytes to it: EIO and "fuse: writing device: Bad address".)"""
    cdir, adir, c, a = chan
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 << 20))
    stop = threading.Event()
    refused = []

    def meddle():
        while not stop.is_set():
            try:
                with open(adir + "/chunks", "w") as f:
                    f.write("8 16\n")
            except OSError as e:
                refused.append(e.errno)

    t = threading.Thread(target=meddle)
    t.start()
    try:
        got = sha_of_stream(f"dd if={src} of={cdir}/data bs=64K status=none & "
                            f"dd if={adir}/data bs=64K status=none | sha256sum; wait")
    finally:
        stop.set()
        t.join()
    assert got == sha_of_stream(f"sha256sum {src}")
    assert refused and set(refused) == {errno.EOPNOTSUPP}
    assert "peer is mmapfs" in a.status("chan")["error"]
    assert a.status("chan")["state"] == "ready"
