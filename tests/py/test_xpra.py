"""Interoperability with xpra's own mmap code (xpra.net.mmap_pipe), as peer.

xpra as creator (its client) and as attacher (its server); data both ways,
including the cases where xpra's writer restarts at offset 8 or splits a
write in two, which only the chunk list describes (the `chunks` file).
"""
import os
import random

import pytest

from conftest import sh, wait_state

mmap_pipe = pytest.importorskip(
    "xpra.net.mmap_pipe",
    reason="xpra is not installed (apt-get install --no-install-recommends xpra)")

TOKEN_BYTES = 128


def caps_of(path):
    out = {}
    for line in open(path):
        key, _, value = line.strip().partition("=")
        if key:
            out[key] = value
    return out


def new_token():
    return random.getrandbits(TOKEN_BYTES * 8 - 8) | 1 << (TOKEN_BYTES * 8 - 9)


def open_area(path, size):
    area, real = mmap_pipe.init_server_mmap(path, size)
    assert area is not None and real == size
    return area


def xpra_read(area, chunks_text):
    chunks = [tuple(int(x) for x in line.split()) for line in chunks_text.splitlines()]
    assert chunks, "mmapfs reported no chunks"
    return bytes(mmap_pipe.mmap_read(area, *chunks)), chunks


def test_xpra_creator_mmapfs_attacher(mount_factory, shm):
    m = mount_factory()
    # xpra's client makes an area in our allowed directory and offers it as
    # its `read` area (the one the server writes), as it does by default
    ok, _delete, area, size, _tmp, filename = mmap_pipe.init_client_mmap(
        size=64 << 20, filename=os.path.join(shm, "xpra-client.mmap"))
    assert ok
    try:
        token = new_token()
        index = random.randrange(8, size - TOKEN_BYTES)
        mmap_pipe.write_mmap_token(area, token, index, TOKEN_BYTES)
        offer = (f"read.file={filename}\nread.size={size}\nread.token={token:#x}\n"
                 f"read.token_index={index}\nread.token_bytes={TOKEN_BYTES}\n")
        os.mkdir(m / "x")
        with open(m / "x/peer", "w") as f:
            f.write(offer)
        st = wait_state(m, "x", "ready")
        assert st["role"] == "attacher" and st["peer"] == "unknown"
        answer = caps_of(m / "x/capabilities")
        # named from our side: xpra's read area is the one we write
        assert set(answer) == {"write.token", "write.token_index", "write.token_bytes"}
        # xpra checks our answer in its own area, with its own function
        found = mmap_pipe.read_mmap_token(area, int(answer["write.token_index"]),
                                          int(answer["write.token_bytes"]))
        assert found == int(answer["write.token"], 16)
        # the other direction was not offered
        with pytest.raises(OSError):
            open(m / "x/data", "rb")
        # our bytes, read by xpra's mmap_read from the chunks we report
        payload = os.urandom(300000)
        with open(m / "x/data", "wb", buffering=0) as f:
            f.write(payload)
        got, _ = xpra_read(area, open(m / "x/chunks").read())
        assert got == payload
        assert int(m.status("x")["write.used"]) == 0, "xpra's reader freed the space"
    finally:
        area.close()
        os.unlink(filename)


@pytest.fixture
def xpra_attached(mount_factory):
    """mmapfs creates both areas; xpra's server opens them, checks our tokens
    and answers with its own, named from its side."""
    m = mount_factory(size="64K")
    os.mkdir(m / "c")
    offer = caps_of(m / "c/capabilities")
    assert offer["mmapfs"] == "1"
    areas, answer = {}, []
    # the offer's read area is the one mmapfs reads: xpra writes it
    for ours, theirs in (("read", "write"), ("write", "read")):
        size = int(offer[f"{ours}.size"])
        area = open_area(offer[f"{ours}.file"], size)
        assert mmap_pipe.read_mmap_token(area, int(offer[f"{ours}.token_index"]),
                                         int(offer[f"{ours}.token_bytes"])) \
            == int(offer[f"{ours}.token"], 16)
        token, index = new_token(), size - TOKEN_BYTES    # as xpra 3.1's server
        mmap_pipe.write_mmap_token(area, token, index, TOKEN_BYTES)
        answer.append(f"{theirs}.token={token}\n{theirs}.token_index={index}\n"
                      f"{theirs}.token_bytes={TOKEN_BYTES}\n")
        areas[ours] = (area, size)
    with open(m / "c/peer", "w") as f:
        f.write("".join(answer))
    st = wait_state(m, "c", "ready")
    assert st["peer"] == "unknown"
    yield m, areas
    for area, _ in areas.values():
        area.close()


def test_mmapfs_writes_xpra_reads(xpra_attached):
    m, areas = xpra_attached
    area, size = areas["write"]
    rng = random.Random(7)
    with open(m / "c/data", "wb", buffering=0) as f:
        for n in (1000, 50000, 30000, 69000, 5, 40000):   # wraps the 64K ring
            payload = rng.randbytes(n)
            assert f.write(payload) == n
            got, chunks = xpra_read(area, open(m / "c/chunks").read())
            assert got == payload
            assert all(off >= 8 and off + ln <= size for off, ln in chunks)
            st = m.status("c")
            assert int(st["write.used"]) == 0     # xpra moved data_start


def xpra_write_then_read(m, area, size, payload, expect_chunks):
    chunks, _free = mmap_pipe.mmap_write(area, size, payload)
    assert chunks is not None
    assert len(chunks) == expect_chunks, chunks
    with open(m / "c/chunks", "w") as f:
        f.write("".join(f"{off} {ln}\n" for off, ln in chunks))
    got = b""
    with open(m / "c/data", "rb", buffering=0) as f:
        while len(got) < len(payload):
            got += f.read(len(payload) - len(got))
    assert got == payload
    return chunks


def test_xpra_writes_mmapfs_reads_restart_and_split(xpra_attached):
    m, areas = xpra_attached
    area, size = areas["read"]
    rng = random.Random(3)
    # plain: one chunk at data_end
    first = xpra_write_then_read(m, area, size, rng.randbytes(60000), 1)
    assert first == [(8, 60000)]
    # does not fit at the end, plenty of room: xpra restarts at 8 and the
    # pointers alone would describe garbage
    restart = xpra_write_then_read(m, area, size, rng.randbytes(20000), 1)
    assert restart == [(8, 20000)]
    # too big to restart: split in two around the end of the area
    split = xpra_write_then_read(m, area, size, rng.randbytes(50000), 2)
    assert split[0][0] == 20008 and split[1][0] == 8
    # data_start moved as xpra's reader moves it: xpra sees the space free
    start = int.from_bytes(area[0:4], "little")
    assert start == split[1][0] + split[1][1]


def test_chunks_are_validated(xpra_attached):
    m, areas = xpra_attached
    _area, size = areas["read"]
    for bad in ("0 10\n", "4 10\n", f"{size - 5} 10\n", "8 0\n", "8 -1\n", "x y\n",
                f"8 {1 << 40}\n"):
        with pytest.raises(OSError) as e:
            with open(m / "c/chunks", "w") as f:
                f.write(bad)
        assert e.value.errno == 22, bad
    assert "chunks line 1" in m.status("c")["error"]
    assert sh(f"test -d {m.path}/c").returncode == 0
