"""libmmapfs with an xpra peer (docs/xpra.md, "Through the library"): a
library end, through the Python module in a process of its own
(lib_peer.py), exchanges bytes both ways with xpra's own mmap_read and
mmap_write, xpra 3.1's and xpra 6.6's (xpra_peer.py), the chunk lists going
through mmapfs_chunks_get/put as xpra's packets would carry them: xpra's
writer restarting at 8 and splitting a write in two, our writer wrapping,
an empty piece. Both roles: mmapfs creates (xpra's server attaches), and
xpra's client creates (mmapfs attaches). Then two library ends, and a
library end and the files, over a channel without the extension, and the
refusals.
"""
import errno
import os
import random

import pytest

from lib_peer import LibPeer
from test_lib import chan, chans_one_way, no_sanitizer_report, python_env  # noqa: F401
from test_xpra import xpra, xpra_attached, xpra_creates  # noqa: F401 (fixtures)


@pytest.fixture
def lib(tmp_path):
    """lib() -> a library end in a process of its own; each must exit
    cleanly, without a sanitizer report."""
    ends = []

    def start():
        end = LibPeer(str(tmp_path / f"lib{len(ends)}.log"), python_env())
        ends.append(end)
        return end
    yield start
    for end in ends:
        end.close()
        with open(end.log) as f:
            no_sanitizer_report(f.read())
        assert end.proc.returncode == 0, end.log_tail()


def refused(result, e):
    """A method of the library end failed with errno e: its message."""
    assert isinstance(result, dict) and result["errno"] == e, (result, e)
    return result["why"]


def same(sent):
    return {"len": sent["len"], "sha256": sent["sha256"]}


# ---- mmapfs creates, xpra's server attaches --------------------------------

def test_library_writes_xpra_reads(xpra_attached, lib):
    m, xpra = xpra_attached
    end = lib()
    end.open(str(m / "c"), "w")
    size = int(m.status("c")["write.size"])
    pieces = []
    for i, n in enumerate((1000, 50 << 20, 30 << 20, 64 << 20, 5, 40 << 20)):
        sent = end.write(n, i)
        chunks = sent["chunks"]
        assert chunks and all(off >= 8 and off + ln <= size for off, ln in chunks), chunks
        assert xpra.read(chunks) == same(sent)
        assert int(m.status("c")["write.used"]) == 0, "xpra's reader freed the space"
        pieces.append(len(chunks))
    assert 2 in pieces, "a write wrapped around the ring's end: two pieces"


@pytest.mark.parametrize("how", ["copy", "view"])
def test_xpra_writes_library_reads(xpra_attached, lib, how):
    m, xpra = xpra_attached
    end = lib()
    end.open(str(m / "c"), "r")

    def send(n, seed):
        sent = xpra.write(n)
        assert sent["chunks"], "xpra's mmap_write found no room"
        assert end.read(sent["chunks"], how, seed) == same(sent)
        return sent["chunks"]
    assert send(60 << 20, 1) == [[8, 60 << 20]]
    # no room at the end, plenty at the start: xpra restarts at 8, which
    # only the chunk list says
    assert send(20 << 20, 2) == [[8, 20 << 20]]
    # too big to restart: split around the end of the area
    split = send(48 << 20, 3)
    assert len(split) == 2 and split[0][0] == 8 + (20 << 20) and split[1][0] == 8, split
    # data_start moved as xpra's reader moves it: xpra sees the space free
    assert int(m.status("c")["read.data_start"]) == split[1][0] + split[1][1]
    # mmap_write(b""): one empty piece, then more
    assert send(0, 4)[0][1] == 0
    send(1000, 5)


# ---- xpra's client creates, mmapfs attaches --------------------------------

def test_xpra_creator_library_attacher(xpra, mount_factory, shm, lib):
    m = mount_factory()
    offered = xpra_creates(xpra, m, shm)
    # xpra's client deleted its files once answered: the library maps the
    # daemon's, through its descriptor
    assert not os.path.exists(m.status("x")["write.file"])
    end = lib()
    end.open(str(m / "x"), "rw")        # what the channel has: one way with 3.1
    for i, n in enumerate((300000, 5 << 20)):
        sent = end.write(n, i)
        assert xpra.read(sent["chunks"]) == same(sent)
    if "write" in offered:
        for i, n in enumerate((300000, 5 << 20)):
            sent = xpra.write(n)
            assert end.read(sent["chunks"], "copy", i) == same(sent)
    else:                               # the handle has no read direction
        assert refused(end.method("chunks_put", [[8, 1]]), errno.EBADF)


# ---- without xpra: two library ends, a library end and the files -----------

def test_library_ends_pass_chunk_lists(chans_one_way, lib, tmp_path):
    """A channel without the extension (its offer left mmapfs=1 out, as
    xpra's do): the lists one library end takes go into the other, and into
    the `chunks` file of the files; exactly once, random sizes, hundreds of
    wraps of the 64 KiB rings."""
    c, a = chans_one_way                # a writes, c reads
    w, r = lib(), lib()
    w.open(str(a / "chan"), "w")
    r.open(str(c / "chan"), "r")
    rng = random.Random(7)
    for i in range(300):
        sent = w.write(rng.randint(0, 60000), i)
        assert r.read(sent["chunks"], ("copy", "view")[i % 2], i) == same(sent)
    r.done()
    # the library's list, in the file's format: the files read by it
    for i in range(20):
        sent = w.write(rng.randint(1, 60000), i)
        with open(c / "chan/chunks", "w") as f:
            f.write("".join(f"{off} {n}\n" for off, n in sent["chunks"]))
        got = b""
        with open(c / "chan/data", "rb", buffering=0) as f:
            while len(got) < sent["len"]:
                got += f.read(sent["len"] - len(got))
        assert len(got) == sent["len"]
    w.done()
    # and the other way: the files write, their list goes into the library
    r.open(str(c / "chan"), "r")
    for i in range(20):
        data = os.urandom(rng.randint(1, 60000))
        with open(a / "chan/data", "wb", buffering=0) as f:
            f.write(data)
        with open(a / "chan/chunks") as f:
            chunks = [[int(x) for x in line.split()] for line in f]
        assert r.read(chunks, "copy", i)["len"] == len(data)


def test_chunks_file_while_a_library_holds_the_stream(chans_one_way, lib):
    """The `chunks` file serves the files' stream: while a library end
    holds the direction, its lists go through its calls, and the file says
    so (EBUSY) rather than keep a list nobody reads."""
    c, a = chans_one_way
    r, w = lib(), lib()
    r.open(str(c / "chan"), "r")
    w.open(str(a / "chan"), "w")
    with pytest.raises(OSError) as e:
        with open(c / "chan/chunks", "w") as f:
            f.write("8 1\n")
    assert e.value.errno == errno.EBUSY
    assert "mmapfs_chunks_put" in c.status("chan")["error"]
    with pytest.raises(OSError) as e:
        open(a / "chan/chunks").close()
    assert e.value.errno == errno.EBUSY
    assert "mmapfs_chunks_get" in a.status("chan")["error"]
    # and what the library ends moved is in status
    sent = w.write(30000, 1)
    assert r.read(sent["chunks"], "copy", 1) == same(sent)
    r.done()
    w.done()
    assert int(a.status("chan")["write.bytes"]) == int(c.status("chan")["read.bytes"]) == 30000
    with open(c / "chan/chunks", "w") as f:
        f.write("8 0\n")
    assert open(a / "chan/chunks").read() == ""


def test_chunk_lists_refused(chans_one_way, lib):
    """A list is the peer's text: every line is checked, all or nothing."""
    c, a = chans_one_way
    r, w = lib(), lib()
    r.open(str(c / "chan"), "r")
    w.open(str(a / "chan"), "w")
    end = int(c.status("chan")["read.ring_end"])
    for bad in ("0 10\n", "4 10\n", f"{end - 5} 10\n", "8 -1\n", "x y\n", "8\n",
                f"8 {1 << 40}\n", "8 1\n" * 65):
        why = refused(r.method("chunks_put", bad), errno.EINVAL)
        assert why.startswith("mmapfs_chunks_put: chunks"), why     # what is wrong
    # each call on its own direction
    assert refused(r.method("chunks_get"), errno.EBADF)
    assert refused(w.method("chunks_put", "8 1\n"), errno.EBADF)
    # nothing refused was queued: the next list reads as sent
    sent = w.write(50000, 1)
    assert r.read(sent["chunks"], "view", 1) == same(sent)
    # at most 1024 pieces wait
    for _ in range(16):
        assert r.method("chunks_put", "8 0\n" * 64) is None
    assert refused(r.method("chunks_put", "8 0\n"), errno.ENOSPC)


def test_chunk_lists_with_an_mmapfs_peer(chan, lib):
    """An mmapfs writer always wraps: no list, EOPNOTSUPP."""
    c, a = chan
    r, w = lib(), lib()
    r.open(str(c / "chan"), "r")
    w.open(str(a / "chan"), "w")
    assert refused(r.method("chunks_put", "8 1\n"), errno.EOPNOTSUPP)
    assert refused(w.method("chunks_get"), errno.EOPNOTSUPP)
