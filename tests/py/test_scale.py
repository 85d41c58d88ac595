"""Many channels on a mount (issue 17): made and handshaken, a few bytes
through a handful of them, all removed; the daemons' descriptors stay as
few as with one channel (an area keeps no descriptor once mapped).
MMAPFS_SCALE sets how many (2,000 by default, which CI runs);
contrib/bench/scale.sh does the same at 10,000 from a shell, and measures
time, idle CPU, status latency and memory."""
import os

from conftest import areas_in, read_text

N = int(os.environ.get("MMAPFS_SCALE", "2000"))


def descriptors(m):
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def through(src, dst, name, payload):
    """payload written into src's data, read back from dst's."""
    fd = os.open(src / f"{name}/data", os.O_WRONLY)
    try:
        assert os.write(fd, payload) == len(payload)
    finally:
        os.close(fd)
    with open(dst / f"{name}/data", "rb") as f:
        assert f.read() == payload          # up to the end of stream


def test_many_channels(pair, shm):
    c, a = pair
    before = [descriptors(m) for m in (c, a)]
    names = [f"c{i}" for i in range(N)]
    for name in names:
        os.mkdir(c / name)
        os.mkdir(a / name)
        write_file(a / f"{name}/peer", read_text(c / f"{name}/capabilities"))
        write_file(c / f"{name}/peer", read_text(a / f"{name}/capabilities"))
    for name in names:
        assert c.status(name)["state"] == "ready" and a.status(name)["state"] == "ready", name
    assert len(areas_in(shm)) == 2 * N
    # no descriptor per channel: what there was with none, and a few
    # more at most (a FUSE worker's, a handshake's in flight)
    for m, fds in zip((c, a), before):
        assert descriptors(m) <= fds + 4, (m.path, fds, descriptors(m))
    for name in sorted({names[0], names[N // 3], names[N // 2], names[-1]}):
        through(c, a, name, f"to {name}\n".encode())
        through(a, c, name, f"from {name}\n".encode())
        assert c.status(name)["peer"] == "alive"
    for name in names:
        os.rmdir(c / name)
        os.rmdir(a / name)
    assert os.listdir(c.path) == os.listdir(a.path) == []
    assert areas_in(shm) == []
