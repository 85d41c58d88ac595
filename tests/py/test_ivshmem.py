"""The host daemon as the ivshmem server of QEMU's ivshmem-doorbell devices
(docs/ivshmem.md, "Doorbells"; QEMU's docs/specs/ivshmem-spec.rst): this
test plays QEMU on the socket. Each client gets version 0, its id, the
memory's descriptor, peer 0's (the daemon's) eventfd, the others' and its
own; the others hear of its coming and going. Hostile clients (gone in the
middle of their setup, sending bytes or descriptors the protocol has not)
cost the daemon nothing. A write on the host rings a guest that sleeps
(an attacher on the same memory, its reader blocked), and a guest's ring
of peer 0 is heard. A library on the host gets both through its daemon
(MM_IOC_RING, MM_IOC_WAIT), whose ioctls refuse what they cannot mean."""
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import sh, wait_state, write_conf
from test_lib import python_env

MEM = 1 << 20           # the device's memory: a power of two
WIN = 256 << 10         # each direction's window


def recv_msg(s, timeout=5.0):
    """One message: (value, fd or None)."""
    s.settimeout(timeout)
    data, fds, _, _ = socket.recv_fds(s, 8, 1)
    assert len(data) == 8, f"short message {data!r}"
    return struct.unpack("<q", data)[0], (fds[0] if fds else None)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def setup_msgs(s):
    """The messages of a client's setup, up to its own eventfd."""
    version, fd = recv_msg(s)
    assert (version, fd) == (0, None)
    my_id, fd = recv_msg(s)
    assert fd is None and 1 <= my_id <= 65535
    minus1, memfd = recv_msg(s)
    assert minus1 == -1 and memfd is not None
    peers = {}
    while True:
        pid, fd = recv_msg(s)
        assert fd is not None, f"a descriptor-less message {pid} in the setup"
        peers.setdefault(pid, []).append(fd)
        if pid == my_id:
            return my_id, memfd, peers


def close_all(memfd, peers):
    os.close(memfd)
    for fds in peers.values():
        for fd in fds:
            os.close(fd)


@pytest.fixture
def server(tmp_path, mount_factory):
    """A host daemon serving the protocol, a channel "vm" in windows of its
    memory; -> (mount, socket path, memory path, conf writer)."""
    mem = tmp_path / "ivshmem"
    with open(mem, "wb") as f:
        f.truncate(MEM)
    sock = str(tmp_path / "ivshmem.sock")
    conf = write_conf(tmp_path / "host.conf", f"""
        ivshmem_server = "{sock}";
        ivshmem_memory = "{mem}";
        ivshmem_poll = false;
        channels = ( {{ name = "vm";
            write_file = "{mem}"; write_offset = 0; write_size = {WIN};
            read_file = "{mem}"; read_offset = {WIN}; read_size = {WIN}; }} );
        """)
    m = mount_factory("-c", conf)
    return m, sock, str(mem)


def test_socket_group(tmp_path, mount_factory):
    """ivshmem_group: the socket is that group's, mode 0660."""
    mem = tmp_path / "ivshmem"
    with open(mem, "wb") as f:
        f.truncate(MEM)
    sock = tmp_path / "g.sock"
    m = mount_factory("-o", f"ivshmem_server={sock},ivshmem_memory={mem},ivshmem_group=1")
    st = os.stat(sock)
    assert st.st_gid == 1 and st.st_mode & 0o777 == 0o660
    c = connect(str(sock))
    setup = setup_msgs(c)
    close_all(setup[1], setup[2])
    c.close()


def test_setup_and_peers(server):
    m, sock, mem = server
    a = connect(sock)
    a_id, a_mem, a_peers = setup_msgs(a)
    assert os.fstat(a_mem).st_size == MEM
    assert os.fstat(a_mem).st_ino == os.stat(mem).st_ino
    assert sorted(a_peers) == sorted({0, a_id}) and all(len(v) == 1 for v in a_peers.values())
    st = m.status("vm")
    assert st["doorbell"] == "ivshmem-server" and st["doorbell.peers"] == "1"

    b = connect(sock)
    b_id, b_mem, b_peers = setup_msgs(b)
    assert b_id != a_id and sorted(b_peers) == sorted({0, a_id, b_id})
    # a hears of b, with b's eventfd
    pid, fd = recv_msg(a)
    assert pid == b_id and fd is not None
    os.close(fd)
    b.close()
    pid, fd = recv_msg(a)
    assert (pid, fd) == (b_id, None), "a was not told that b left"
    close_all(b_mem, b_peers)
    close_all(a_mem, a_peers)
    a.close()


def test_hostile_clients(server, tmp_path):
    m, sock, _ = server
    # gone at once, in the middle of the setup, many times
    for _ in range(50):
        connect(sock).close()
    # one that sends what the protocol has not: bytes, and a descriptor
    j = connect(sock)
    setup = setup_msgs(j)
    with open(os.devnull) as f:
        socket.send_fds(j, [b"x" * 8], [f.fileno()])
    try:
        j.sendall(os.urandom(64 << 10))
    except OSError:
        pass                            # dropped meanwhile
    j.settimeout(5)
    try:
        while j.recv(4096):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    j.close()
    close_all(setup[1], setup[2])
    # the server still serves
    c = connect(sock)
    c_id, c_mem, c_peers = setup_msgs(c)
    assert 0 in c_peers
    close_all(c_mem, c_peers)
    c.close()
    assert "dropped: it sends what the protocol has not" in m.log_text()


def attacher_on(m, mem, tmp_path, mount_factory):
    """A mount attaching channel vm to m's, on the same memory file (the
    guest's view, here on the same host), handshaken: the mount."""
    conf = write_conf(tmp_path / "guest.conf", f"""
        channels = ( {{ name = "vm"; role = "attacher";
            read_file = "{mem}"; read_offset = 0; read_size = {WIN};
            write_file = "{mem}"; write_offset = {WIN}; write_size = {WIN}; }} );
        """)
    a = mount_factory("-c", conf)
    sh(f"cat {m / 'vm/capabilities'} > {a / 'vm/peer'}")
    sh(f"cat {a / 'vm/capabilities'} > {m / 'vm/peer'}")
    wait_state(m, "vm", "ready")
    wait_state(a, "vm", "ready")
    return a


def write_to_sleeper(m, rd, efd, who):
    """rd, the attacher's data, has nothing and its reader sleeps; `hello`
    written into m's data rings the eventfd efd (who: for the message)."""
    p = select.poll()
    p.register(rd, select.POLLIN)
    assert not p.poll(200)
    sh(f"printf hello > {m / 'vm/data'}")
    assert select.select([efd], [], [], 5)[0], f"{who} was not rung"


def read_hello(rd):
    """`hello` and its end of stream from the nonblocking rd, within 5 s."""
    got = b""
    deadline = time.monotonic() + 5
    while got != b"hello" and time.monotonic() < deadline:
        try:
            got += os.read(rd, 64)
        except BlockingIOError:
            time.sleep(0.01)
    assert got == b"hello"
    while True:
        try:
            assert os.read(rd, 64) == b"", "more than hello"
            return
        except BlockingIOError:
            assert time.monotonic() < deadline, "no end of stream"
            time.sleep(0.01)


def test_ring_a_sleeping_guest_and_hear_it(server, tmp_path, mount_factory):
    """The host's write rings the guest's eventfd only while its reader
    sleeps; a ring of peer 0 is heard by the host."""
    m, sock, mem = server
    g = connect(sock)
    g_id, g_mem, g_peers = setup_msgs(g)
    mine = g_peers[g_id][0]
    # the guest: an attacher on the same memory (here: the same host)
    a = attacher_on(m, mem, tmp_path, mount_factory)

    rung0 = int(m.status("vm")["doorbell.rung"])
    rd = os.open(a / "vm/data", os.O_RDONLY | os.O_NONBLOCK)
    try:
        # a blocked reader: the guest's ticker counts itself as a sleeper
        write_to_sleeper(m, rd, mine, "the guest's eventfd")
        assert os.read(mine, 8)
        assert int(m.status("vm")["doorbell.rung"]) > rung0
        read_hello(rd)
    finally:
        os.close(rd)
    # the guest rings peer 0 (QEMU writes the eventfd the server gave it)
    heard0 = int(m.status("vm")["doorbell.heard"])
    os.write(g_peers[0][0], struct.pack("=Q", 1))
    deadline = time.monotonic() + 5
    while int(m.status("vm")["doorbell.heard"]) == heard0:
        assert time.monotonic() < deadline, "the host did not hear the ring"
        time.sleep(0.02)
    close_all(g_mem, g_peers)
    g.close()


LIB_END = r"""
import sys
import mmapfs

chan, mode = sys.argv[1:3]
with mmapfs.open(chan, mode) as ch:
    print("open", flush=True)
    if mode == "w":
        assert ch.write(b"hello") == 5
        print("written", flush=True)
        sys.stdin.readline()            # the test has seen the ring
    else:
        print(ch.read(64).decode(), flush=True)
"""


def readers_asleep(mem, window):
    """Who sleeps on data_end of the area at `window`: the low half of the
    version-1 trailer's waiters word (15; docs/PROTOCOL.md, "Waking")."""
    with open(mem, "rb") as f:
        f.seek(window + WIN - 64 + 4 * 15)
        return struct.unpack("<I", f.read(4))[0] & 0xffff


def wait_parked(mem):
    """Until the host's read area has a sleeper: the daemon, for a library
    whose read waits in it (MM_IOC_WAIT)."""
    deadline = time.monotonic() + 10
    while readers_asleep(mem, WIN) == 0:
        assert time.monotonic() < deadline, "the library's read never slept"
        time.sleep(0.01)


def lib_end(chan, mode):
    """A library end (contrib/python/mmapfs.py) on chan, in a process of its
    own, past its open."""
    p = subprocess.Popen([sys.executable, "-c", LIB_END, str(chan), mode], env=python_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline() == "open\n", p.stderr.read()
    return p


def test_library_rings_and_hears_through_its_daemon(server, tmp_path, mount_factory):
    """A library on the host cannot ring the guest nor hear it: its daemon
    does both for it (MM_IOC_RING, MM_IOC_WAIT). Its write rings a guest
    whose reader sleeps; its blocked read sleeps in the daemon, which no
    futex wake reaches (the peer is across a VM) and which does not poll
    here: bytes the guest writes without ringing stay unread until the
    guest rings."""
    m, sock, mem = server
    g = connect(sock)
    g_id, g_mem, g_peers = setup_msgs(g)
    mine = g_peers[g_id][0]
    a = attacher_on(m, mem, tmp_path, mount_factory)
    st = m.status("vm")
    assert (st["read.doorbell"], st["write.doorbell"]) == ("hears", "hears")

    rd = os.open(a / "vm/data", os.O_RDONLY | os.O_NONBLOCK)
    w = None
    try:
        p = select.poll()
        p.register(rd, select.POLLIN)
        assert not p.poll(200)          # the guest's reader sleeps
        w = lib_end(m / "vm", "w")
        assert w.stdout.readline() == "written\n"
        assert select.select([mine], [], [], 5)[0], "the library's write rang nobody"
        assert os.read(mine, 8)
        w.stdin.write("\n")
        w.stdin.flush()
        assert w.wait(timeout=30) == 0, w.stderr.read()
        read_hello(rd)
    finally:
        os.close(rd)
        if w and w.poll() is None:
            w.kill()

    r = lib_end(m / "vm", "r")
    try:
        wait_parked(mem)
        sh(f"printf hello > {a / 'vm/data'}")
        assert not select.select([r.stdout], [], [], 0.5)[0], \
            "the library's read was woken without a ring"
        os.write(g_peers[0][0], struct.pack("=Q", 1))
        assert select.select([r.stdout], [], [], 5)[0], "the ring did not wake the library"
        assert r.stdout.readline() == "hello\n"
        assert r.wait(timeout=30) == 0, r.stderr.read()
    finally:
        if r.poll() is None:
            r.kill()
            r.wait()
    close_all(g_mem, g_peers)
    g.close()


# core/channel.h: _IOW('M', 2, struct mm_ioc_wait), _IOW('M', 3, struct mm_ioc_ring)
MM_IOC_WAIT = (1 << 30) | (28 << 16) | (ord("M") << 8) | 2
MM_IOC_RING = (1 << 30) | (8 << 16) | (ord("M") << 8) | 3
MM_RD, MM_WR = 1, 2

INTERRUPTED = r"""
import signal, sys
import mmapfs

class Alarm(Exception):
    pass

def alarm(*_):
    raise Alarm

signal.signal(signal.SIGALRM, alarm)
with mmapfs.open(sys.argv[1], "r") as ch:
    print("open", flush=True)
    try:
        ch.read(64)
        print("read")
    except Alarm:
        print("interrupted")
"""


def test_library_waits_interrupted_and_ioctls_checked(server, tmp_path, mount_factory):
    """A library's wait in the daemon ends at a signal (EINTR) or the
    caller's death; the ioctls refuse what they cannot mean."""
    m, sock, mem = server
    g = connect(sock)
    g_id, g_mem, g_peers = setup_msgs(g)
    a = attacher_on(m, mem, tmp_path, mount_factory)

    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(m / "vm")], env=python_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "open\n"
    wait_parked(mem)
    p.send_signal(signal.SIGALRM)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (0, "interrupted\n"), err
    deadline = time.monotonic() + 10
    while readers_asleep(mem, WIN):                 # its wait was answered
        assert time.monotonic() < deadline
        time.sleep(0.01)
    k = lib_end(m / "vm", "r")
    wait_parked(mem)
    k.kill()
    assert k.wait(timeout=30) == -9
    assert m.status("vm")["state"] == "ready"

    fd = os.open(m / "vm/data", os.O_RDONLY)
    try:
        for events in (0, select.POLLOUT, select.POLLIN | select.POLLOUT, 0x8000):
            with pytest.raises(OSError) as e:
                fcntl.ioctl(fd, MM_IOC_WAIT, struct.pack("7I", events, *[0] * 6))
            assert e.value.errno == errno.EINVAL, events
        # a state the stream is not in: at once
        fcntl.ioctl(fd, MM_IOC_WAIT, struct.pack("7I", select.POLLIN, *[0xffffffff] * 6))
        for d in (0, MM_WR, 7):
            with pytest.raises(OSError) as e:
                fcntl.ioctl(fd, MM_IOC_RING, struct.pack("2I", d, 0))
            assert e.value.errno == errno.EINVAL, d
        # a vector nobody has: vector 0
        rung = int(m.status("vm")["doorbell.rung"])
        fcntl.ioctl(fd, MM_IOC_RING, struct.pack("2I", MM_RD, 0xffffffff))
        assert select.select([g_peers[g_id][0]], [], [], 5)[0]
        assert int(m.status("vm")["doorbell.rung"]) == rung + 1
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, MM_IOC_RING + 6, struct.pack("2I", MM_RD, 0))     # 'M', 9
        assert e.value.errno == errno.ENOTTY
    finally:
        os.close(fd)
    # without a doorbell
    fd = os.open(a / "vm/data", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, MM_IOC_RING, struct.pack("2I", MM_RD, 0))
        assert e.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    close_all(g_mem, g_peers)
    g.close()


def word2_at(window, word):
    """Where trailer word `word` of version 2 lies in the window at offset
    `window` (docs/PROTOCOL.md: 64 bytes before version 1's last 64)."""
    return window + WIN - 64 - 64 + 4 * word


def bell_word(mem, window, word):
    with open(mem, "rb") as f:
        f.seek(word2_at(window, word))
        return struct.unpack("<I", f.read(4))[0]


def set_bell_word(mem, window, word, value):
    with open(mem, "r+b") as f:
        f.seek(word2_at(window, word))
        f.write(struct.pack("<I", value))


BELL_END, BELL_START = 9, 10


def test_vectors_shared_out(tmp_path, mount_factory):
    """ivshmem_vectors = 2: each peer gets two eventfds; the channels take
    the vectors in turn (status); a sleeper says its vector in the trailer,
    the host rings a guest on the vector its word asks for (vector 0 for
    one the guest does not have), and a ring of the host's vector 1 is
    heard as that channel's."""
    mem = tmp_path / "ivshmem"
    with open(mem, "wb") as f:
        f.truncate(MEM)
    sock = str(tmp_path / "ivshmem.sock")
    chans = "".join(f"""{{ name = "{n}";
            write_file = "{mem}"; write_offset = {w}; write_size = {WIN};
            read_file = "{mem}"; read_offset = {r}; read_size = {WIN}; }},"""
                    for n, w, r in (("vm", 0, WIN), ("vm2", 2 * WIN, 3 * WIN)))
    conf = write_conf(tmp_path / "host.conf", f"""
        ivshmem_server = "{sock}";
        ivshmem_memory = "{mem}";
        ivshmem_vectors = 2;
        ivshmem_poll = false;
        channels = ( {chans.rstrip(",")} );
        """)
    m = mount_factory("-c", conf)
    g = connect(sock)
    g_id, g_mem, g_peers = setup_msgs(g)
    g_peers[g_id].append(recv_msg(g)[1])        # its second vector
    assert all(len(v) == 2 for v in g_peers.values()), g_peers
    st, st2 = m.status("vm"), m.status("vm2")
    assert (st["doorbell.vectors"], st["doorbell.vector"]) == ("2", "0")
    assert (st2["doorbell.vectors"], st2["doorbell.vector"]) == ("2", "1")

    # the guest: an attacher on the same memory, both channels
    gconf = write_conf(tmp_path / "guest.conf", "channels = (" + ",".join(
        f"""{{ name = "{n}"; role = "attacher";
            read_file = "{mem}"; read_offset = {r}; read_size = {WIN};
            write_file = "{mem}"; write_offset = {w}; write_size = {WIN}; }}"""
        for n, r, w in (("vm", 0, WIN), ("vm2", 2 * WIN, 3 * WIN))) + ");")
    a = mount_factory("-c", gconf)
    for n in ("vm", "vm2"):
        sh(f"cat {m / n}/capabilities > {a / n}/peer")
        sh(f"cat {a / n}/capabilities > {m / n}/peer")
        wait_state(m, n, "ready")
        wait_state(a, n, "ready")

    # the host's reader of vm2 sleeps: its word names vector 1 (+ 1)
    hr = os.open(m / "vm2/data", os.O_RDONLY | os.O_NONBLOCK)
    try:
        p = select.poll()
        p.register(hr, select.POLLIN)
        assert not p.poll(200)
        assert bell_word(mem, 3 * WIN, BELL_END) == 2
    finally:
        os.close(hr)

    # a guest that asks for vector 1 on vm is rung there, not on 0
    mine = g_peers[g_id]
    set_bell_word(mem, 0, BELL_END, 2)
    rd = os.open(a / "vm/data", os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_to_sleeper(m, rd, mine[1], "the guest's vector 1")
        assert not select.select([mine[0]], [], [], 0.2)[0], "vector 0 rang too"
        assert os.read(mine[1], 8)
        # one it does not have (vector 7): rung on 0
        read_hello(rd)
        set_bell_word(mem, 0, BELL_END, 8)
        write_to_sleeper(m, rd, mine[0], "the guest's vector 0 (for 7)")
    finally:
        os.close(rd)

    # the guest rings the host's vector 1: heard as vm2's
    before = {n: m.status(n) for n in ("vm", "vm2")}
    os.write(g_peers[0][1], struct.pack("=Q", 1))
    deadline = time.monotonic() + 5
    while m.status("vm2")["doorbell.vector_heard"] == before["vm2"]["doorbell.vector_heard"]:
        assert time.monotonic() < deadline, "the host did not hear vector 1"
        time.sleep(0.02)
    assert m.status("vm")["doorbell.vector_heard"] == before["vm"]["doorbell.vector_heard"]
    close_all(g_mem, g_peers)
    g.close()


@pytest.mark.parametrize("size", [3 << 20, 4096])
def test_memory_refused(tmp_path, size):
    """QEMU exits on a BAR whose size is no power of two: refused at start,
    naming the key, nothing mounted, no socket left."""
    from conftest import MMAPFS
    mem = tmp_path / "odd"
    with open(mem, "wb") as f:
        f.truncate(size)
    sock = tmp_path / "s.sock"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = sh(f"{MMAPFS} -f -o ivshmem_server={sock},ivshmem_memory={mem} {mnt}",
           check=False, timeout=10)
    assert r.returncode != 0 and "ivshmem_memory" in r.stderr and "power of two" in r.stderr
    assert not sock.exists()


def test_settings_checked(tmp_path):
    from conftest import MMAPFS
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    notdev = tmp_path / "notdev"
    notdev.mkdir()
    for opts, says in ((f"ivshmem_server={tmp_path}/s.sock", "go together"),
                       ("ivshmem_peer=70000", "0..65535"),
                       ("ivshmem_poll=maybe", "on or off"),
                       (f"ivshmem_server={tmp_path}/s.sock,ivshmem_memory={notdev},"
                        "ivshmem_vectors=33", "1..32"),
                       ("ivshmem_vectors=2", "is the server's"),
                       (f"ivshmem_device={notdev}", "not an ivshmem device"),
                       ("ivshmem_device=relative", "not an absolute path"),
                       (f"ivshmem_device={notdev},ivshmem_server={tmp_path}/s.sock,"
                        f"ivshmem_memory={notdev}", "exclude each other")):
        r = sh(f"{MMAPFS} -f -o {opts} {mnt}", check=False, timeout=10)
        assert r.returncode != 0 and says in r.stderr, r.stderr


@pytest.mark.parametrize("line,says", [
    ('ivshmem_poll = "no";', "ivshmem_poll: expected true or false"),
    ("ivshmem_peer = 70000;", "ivshmem_peer: 70000: expected a peer id"),
    ('ivshmem_server = "rel.sock";', "ivshmem_server: not an absolute path"),
    ('ivshmem_bogus = 1;', "ivshmem_bogus: unknown key"),
    ("ivshmem_vectors = 0;", "ivshmem_vectors: 0: expected a number of vectors, 1..32"),
])
def test_file_keys_checked(tmp_path, line, says):
    """A bad ivshmem key of the file: its line and key named, nothing mounted."""
    from conftest import MMAPFS
    conf = write_conf(tmp_path / "bad.conf", f"""
        # line 2
        {line}
        """)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = sh(f"{MMAPFS} -f -c {conf} {mnt}", check=False, timeout=10)
    assert r.returncode != 0 and f"{conf}:3: {says}" in r.stderr, r.stderr


def test_join_an_existing_server(tmp_path, mount_factory):
    """ivshmem_client: the daemon joins a server (played here) as a peer:
    it hears its own eventfds, rings a sleeping peer's on the vector the
    peer names, forgets a peer gone, ignores nonsense, and goes on
    (polling) when the server leaves."""
    mem = tmp_path / "ivshmem"
    with open(mem, "wb") as f:
        f.truncate(MEM)
    path = str(tmp_path / "server.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    conf = write_conf(tmp_path / "host.conf", f"""
        ivshmem_client = "{path}";
        channels = ( {{ name = "vm";
            write_file = "{mem}"; write_offset = 0; write_size = {WIN};
            read_file = "{mem}"; read_offset = {WIN}; read_size = {WIN}; }} );
        """)
    peer0, peer0b, mine, mine2 = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(4))
    memfd = os.open(mem, os.O_RDWR)

    def msg(s, v, fd=None):
        data = struct.pack("<q", v)
        if fd is None:
            s.sendall(data)
        else:
            socket.send_fds(s, [data], [fd])

    import threading
    conns = []

    def serve():
        c, _ = lsock.accept()
        conns.append(c)
        msg(c, 0)
        msg(c, 3)                      # its id
        msg(c, -1, memfd)
        msg(c, 0, peer0)               # peer 0, two vectors
        msg(c, 0, peer0b)
        msg(c, 3, mine)                # its own two
        msg(c, 3, mine2)
    t = threading.Thread(target=serve)
    t.start()
    m = mount_factory("-c", conf)
    t.join(5)
    c = conns[0]
    deadline = time.monotonic() + 5
    while m.status("vm").get("doorbell.vectors") != "2":
        assert time.monotonic() < deadline, m.status("vm")
        time.sleep(0.02)
    st = m.status("vm")
    assert (st["doorbell"], st["doorbell.id"], st["doorbell.vector"]) == \
        ("ivshmem-client", "3", "0")
    # a ring of ours (the eventfd the server gave us) is heard
    os.write(mine, struct.pack("=Q", 1))
    deadline = time.monotonic() + 5
    while m.status("vm")["doorbell.heard"] == "0":
        assert time.monotonic() < deadline, "the ring was not heard"
        time.sleep(0.02)
    # an attacher on the same memory sleeps in a read: the daemon rings peer 0
    a = attacher_on(m, mem, tmp_path, mount_factory)
    rd = os.open(a / "vm/data", os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_to_sleeper(m, rd, peer0, "peer 0")
        read_hello(rd)
        # the peer asks for its vector 1
        set_bell_word(mem, 0, BELL_END, 2)
        write_to_sleeper(m, rd, peer0b, "peer 0's vector 1")
    finally:
        os.close(rd)
    # nonsense, a peer gone, the server gone: logged, the daemon goes on
    msg(c, 70000)
    msg(c, 0)
    deadline = time.monotonic() + 5
    while "peer 0 left" not in m.log_text():
        assert time.monotonic() < deadline, m.log_text()
        time.sleep(0.02)
    c.close()
    lsock.close()
    deadline = time.monotonic() + 5
    while "the server left" not in m.log_text():
        assert time.monotonic() < deadline, m.log_text()
        time.sleep(0.02)
    assert "the server sent 70000: ignored" in m.log_text()
    assert m.status("vm")["state"] == "ready"
    for fd in (peer0, mine, memfd):
        os.close(fd)


def test_join_refuses_another_protocol(tmp_path):
    """A server whose first words are not version 0: refused at start."""
    from conftest import MMAPFS
    import threading
    path = str(tmp_path / "odd.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)

    def serve():
        c, _ = lsock.accept()
        c.sendall(struct.pack("<q", 7))
        time.sleep(1)
        c.close()
    t = threading.Thread(target=serve)
    t.start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = sh(f"{MMAPFS} -f -o ivshmem_client={path} {mnt}", check=False, timeout=10)
    t.join(5)
    lsock.close()
    assert r.returncode != 0 and "not QEMU's ivshmem protocol" in r.stderr, r.stderr
