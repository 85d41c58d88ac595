"""Interoperability with xpra's own mmap code, as peer: the same checks against
both generations in the field (tests/py/xpra_peer.py runs each in a process
of its own): Debian's xpra 3.1 (`xpra.net.mmap_pipe`) and xpra 6.6
(`xpra.net.mmap.io`, from ../shared/xpra-6.6).

xpra as creator (its client, `MmapClient`) and as attacher (its server,
`MMAP_Connection`, which opens our files with its own safe-open, size and
token checks); data both ways, including the cases where xpra's writer
restarts at offset 8 or splits a write in two, which only the chunk list
describes (the `chunks` file); a zero-length write; xpra 6's answer as it
sends it; and the hello itself through xpra's own packet encoder.

The hello <-> capabilities conversions below are the ones docs/xpra.md
describes.
"""
import errno
import os

import pytest

from conftest import sh, wait_state
from xpra_peer import GENERATIONS, Peer, digest

AREA_KEYS = ("file", "size", "token", "token_index", "token_bytes")
TOKEN_KEYS = ("token", "token_index", "token_bytes")


def caps_of(path):
    out = {}
    for line in open(path):
        key, _, value = line.strip().partition("=")
        if key:
            out[key] = value
    return out


def caps_text(caps):
    return "".join(f"{k}={v}\n" for k, v in caps.items())


# ---- xpra's hello and mmapfs's capabilities (docs/xpra.md) -----------------

def areas_of(caps):
    """{"read": {"file": ..., "size": int, ...}, "write": ...} from mmapfs text."""
    out = {}
    for k, v in caps.items():
        name, _, key = k.partition(".")
        if name in ("read", "write") and key in AREA_KEYS:
            out.setdefault(name, {})[key] = v if key == "file" else int(v, 0)
    return out


def hello31(area):
    """One area as xpra 3.1's client puts it in its hello: an `mmap` dict, and
    the same keys flat as mmap_*, which is what 3.1's server reads."""
    return {"mmap": dict(area, namespace=True), "mmap_namespace": True,
            **{f"mmap_{k}": v for k, v in area.items()}}


def offer_hello(gen, caps):
    """A creator's capabilities as an xpra client's hello. xpra 3.1 offers
    one area, the one its server writes: our `read`."""
    areas = areas_of(caps)
    if gen == "3.1":
        return hello31(areas["read"])
    return {"mmap": areas}


def answer_hello(gen, caps):
    """An attacher's capabilities as an xpra server's hello."""
    areas = areas_of(caps)
    if gen == "3.1":    # the one area 3.1's server writes
        return {"mmap_enabled": True, **{f"mmap_{k}": v for k, v in areas["write"].items()}}
    return {"mmap": areas}


def hello_caps(gen, hello, name31, keys=AREA_KEYS):
    """xpra's hello (a client's offer or a server's answer) as mmapfs text.
    Both name the areas from their own side, so names carry over; xpra 6's
    unprefixed mmap.* keys repeat one area for old peers and are dropped.
    xpra 3.1's flat mmap_* keys describe one area, here named name31."""
    if gen == "3.1":
        areas = {name31: {k: hello[f"mmap_{k}"] for k in keys if f"mmap_{k}" in hello}}
    else:
        areas = {n: a for n, a in hello["mmap"].items() if n in ("read", "write")}
    return {f"{n}.{k}": v for n, a in areas.items() for k, v in a.items() if k in keys}


# ---- the peer --------------------------------------------------------------

@pytest.fixture(params=GENERATIONS)
def xpra(request, tmp_path):
    peer = Peer(request.param, str(tmp_path / f"xpra-{request.param}.log"))
    yield peer
    peer.close()


def chunks_of(text):
    return [[int(x) for x in line.split()] for line in text.splitlines()]


def mmapfs_to_xpra(m, chan, xpra, n):
    """n bytes written to our `data`, read by xpra's mmap_read from the chunks
    we report; returns the chunk list."""
    payload = os.urandom(n)
    with open(m / f"{chan}/data", "wb", buffering=0) as f:
        assert f.write(payload) == n
    with open(m / f"{chan}/chunks") as f:
        chunks = chunks_of(f.read())
    assert chunks, "mmapfs reported no chunks"
    assert xpra.read(chunks) == digest(payload)
    return chunks


def xpra_to_mmapfs(m, chan, xpra, n):
    """n bytes written by xpra's mmap_write, read from our `data` after its
    chunk list went into `chunks`; returns the chunk list."""
    sent = xpra.write(n)
    chunks = sent["chunks"]
    assert chunks, "xpra's mmap_write found no room"
    fd = os.open(m / f"{chan}/chunks", os.O_WRONLY)
    try:
        os.write(fd, "".join(f"{off} {ln}\n" for off, ln in chunks).encode())
    except OSError as e:
        pytest.fail(f"`chunks` refused xpra's chunk list {chunks}: {e}; "
                    f"status: error={m.status(chan)['error']}")
    finally:
        os.close(fd)
    got = bytearray()
    with open(m / f"{chan}/data", "rb", buffering=0) as f:
        while len(got) < n:
            got += f.read(n - len(got))
    assert digest(bytes(got)) == {"len": n, "sha256": sent["sha256"]}
    return chunks


# ---- xpra creates, mmapfs attaches -----------------------------------------

def xpra_creates(xpra, m, shm, chan="x"):
    """xpra's client offers, m/chan attaches and answers, xpra's client
    accepts: the areas xpra offered, by xpra's names."""
    # xpra's client makes its areas in our allowed directory, at its own
    # default size (3.1: one area of 256 MiB, the one its server writes;
    # 6.6 with --mmap=DIR:DIR: two of 2 GiB), and says so in its hello,
    # which goes through xpra's own encoder
    hello = xpra.encode(xpra.client_hello([shm, shm]))
    offer = hello_caps(xpra.gen, hello, "read")
    offered = {"3.1": {"read"}, "6.6": {"read", "write"}}[xpra.gen]
    assert set(offer) == {f"{n}.{k}" for n in offered for k in AREA_KEYS}
    assert all(int(offer[f"{n}.size"]) >= 64 << 20 for n in offered)
    os.mkdir(m / chan)
    with open(m / f"{chan}/peer", "w") as f:
        f.write(caps_text(offer))
    st = wait_state(m, chan, "ready")
    assert st["role"] == "attacher" and st["peer"] == "unknown"
    answer = caps_of(m / f"{chan}/capabilities")
    # named from our side: xpra's read area is the one we write
    ours = {"read": "write", "write": "read"}
    assert set(answer) == {f"{ours[n]}.{k}" for n in offered for k in TOKEN_KEYS}
    # xpra's client checks our tokens in its own areas, with its own code
    assert xpra.client_accept(answer_hello(xpra.gen, answer)) == {n: True for n in offered}
    return offered


def test_xpra_creator_mmapfs_attacher(xpra, mount_factory, shm):
    m = mount_factory()
    offered = xpra_creates(xpra, m, shm)
    # our bytes, read by xpra's mmap_read from the chunks we report
    mmapfs_to_xpra(m, "x", xpra, 300000)
    assert int(m.status("x")["write.used"]) == 0, "xpra's reader freed the space"
    if "write" in offered:
        xpra_to_mmapfs(m, "x", xpra, 300000)
    else:               # the other direction was not offered
        with pytest.raises(OSError) as e:
            open(m / "x/data", "rb")
        assert e.value.errno == errno.ENXIO


# ---- mmapfs creates, xpra's server attaches --------------------------------

def attach(m, xpra, shm, chan="c", verbatim=False):
    """xpra's server opens our offered areas (xpra 6: only in the directory
    it is given, as --mmap=DIR) and answers; its answer goes into our `peer`:
    verbatim, or only its token keys (the answer's documented form)."""
    offer = caps_of(m / f"{chan}/capabilities")
    assert offer["mmapfs"] == "2"
    assert all(int(offer[f"{n}.size"]) >= 64 << 20 for n in ("read", "write"))
    keys = AREA_KEYS if verbatim else TOKEN_KEYS
    if xpra.gen == "3.1":
        # 3.1's server takes one area per client, the one it writes; run it
        # once for each of ours (our read area is the one xpra writes)
        answer = {}
        for area, theirs in (("read", "write"), ("write", "read")):
            got = xpra.server_answer(hello31(areas_of(offer)[area]), [shm], theirs)
            assert got["mmap_enabled"], f"xpra 3.1 refused our {area} area"
            answer.update(hello_caps("3.1", got, theirs, keys))
    else:
        got = xpra.server_answer(offer_hello("6.6", offer), [shm], None)
        assert set(got["mmap"]) >= {"read", "write"}, f"xpra 6.6 refused an area: {got}"
        answer = hello_caps("6.6", got, None, keys)
    with open(m / f"{chan}/peer", "w") as f:
        f.write(caps_text(answer))
    return answer


@pytest.fixture
def xpra_attached(xpra, mount_factory, shm):
    """mmapfs creates both areas (64 MiB, the smallest xpra accepts); xpra's
    server opens them, checks our tokens and answers with its own."""
    m = mount_factory(size="64M")
    os.mkdir(m / "c")
    attach(m, xpra, shm)
    st = wait_state(m, "c", "ready")
    assert st["role"] == "creator" and st["peer"] == "unknown"
    return m, xpra


def test_mmapfs_writes_xpra_reads(xpra_attached):
    m, xpra = xpra_attached
    size = int(m.status("c")["write.size"])
    for n in (1000, 50 << 20, 30 << 20, 64 << 20, 5, 40 << 20):     # wraps the ring
        chunks = mmapfs_to_xpra(m, "c", xpra, n)
        assert all(off >= 8 and off + ln <= size for off, ln in chunks)
        assert int(m.status("c")["write.used"]) == 0       # xpra moved data_start


def test_xpra_writes_mmapfs_reads_restart_and_split(xpra_attached):
    m, xpra = xpra_attached
    # plain: one chunk at data_end
    first = xpra_to_mmapfs(m, "c", xpra, 60 << 20)
    assert first == [[8, 60 << 20]]
    # does not fit at the end, plenty of room: xpra restarts at 8 and the
    # pointers alone would describe garbage
    restart = xpra_to_mmapfs(m, "c", xpra, 20 << 20)
    assert restart == [[8, 20 << 20]]
    # too big to restart: split in two around the end of the area
    split = xpra_to_mmapfs(m, "c", xpra, 48 << 20)
    assert len(split) == 2 and split[0][0] == 8 + (20 << 20) and split[1][0] == 8, split
    # data_start moved as xpra's reader moves it: xpra sees the space free
    assert int(m.status("c")["read.data_start"]) == split[1][0] + split[1][1]


def test_zero_length_write(xpra_attached):
    """xpra's mmap_write(b"") gives the chunk (8, 0): a valid, empty piece."""
    m, xpra = xpra_attached
    empty = xpra_to_mmapfs(m, "c", xpra, 0)
    assert empty == [[8, 0]]
    assert xpra_to_mmapfs(m, "c", xpra, 1000) == [[8, 1000]]


@pytest.mark.parametrize("xpra", ["6.6"], indirect=True)
def test_xpra6_answer_verbatim(xpra, mount_factory, shm):
    """xpra 6's server answers with `file` and `size` besides the tokens (its
    own areas, named from its side): written as it is, it is still our
    answer, not an offer."""
    m = mount_factory(size="64M")
    os.mkdir(m / "c")
    answer = attach(m, xpra, shm, verbatim=True)
    assert {"read.file", "read.size", "write.file", "write.size"} <= set(answer)
    st = wait_state(m, "c", "ready")
    assert st["role"] == "creator", st
    mmapfs_to_xpra(m, "c", xpra, 1000)


def test_chunks_are_validated(xpra_attached):
    m, _xpra = xpra_attached
    size = int(m.status("c")["read.size"])
    for bad in ("0 10\n", "4 10\n", f"{size - 5} 10\n", "8 -1\n", "x y\n",
                f"8 {1 << 40}\n"):
        with pytest.raises(OSError) as e:
            with open(m / "c/chunks", "w") as f:
                f.write(bad)
        assert e.value.errno == 22, bad
    assert "chunks line 1" in m.status("c")["error"]
    assert sh(f"test -d {m.path}/c").returncode == 0


# ---- the hello, through xpra's own packet encoder --------------------------
# rencodeplus (xpra 6) and python3-rencode (xpra 3.1) carry integers of at
# most 63 decimal digits: a token must fit.

def test_offer_in_xpra_hello(xpra, mount_factory):
    m = mount_factory()
    os.mkdir(m / "c")
    hello = offer_hello(xpra.gen, caps_of(m / "c/capabilities"))
    assert xpra.encode(hello) == hello


def test_answer_in_xpra_hello(xpra, mount_factory, shm):
    m = mount_factory()
    offer = hello_caps(xpra.gen, xpra.client_hello([shm]), "read")
    os.mkdir(m / "x")
    with open(m / "x/peer", "w") as f:
        f.write(caps_text(offer))
    wait_state(m, "x", "ready")
    hello = answer_hello(xpra.gen, caps_of(m / "x/capabilities"))
    decoded = xpra.encode(hello)
    assert decoded == hello
    expect = {"3.1": {"read": True}, "6.6": {"read": True, "write": False}}[xpra.gen]
    assert xpra.client_accept(decoded) == expect
