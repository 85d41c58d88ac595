"""The handshake as file operations (DESIGN.md: Capabilities, The handshake,
Opening an offered file). Two mounts share one mmap_dir; `c` is the creator's,
`a` the attacher's. Every refusal must come from write() itself, leave a
reason in `status`, keep the daemon serving, and leave the channel usable:
the correct handshake that follows on the same channel must succeed."""
import errno
import os
import re
import select
import shutil
import stat
import time

import pytest

from conftest import (areas_in, finish_handshake, handshake, kv_text, read_kv, read_text, sh,
                      wait_state)

AREA_KEYS = ("file", "size", "token", "token_index", "token_bytes")
ANSWER_KEYS = ("token", "token_index", "token_bytes")
HEX = re.compile(r"0x[0-9a-f]+")


def caps(m, name="chan"):
    return read_kv(m / f"{name}/capabilities")


def token_in_file(path, index, nbytes):
    """The integer stored at index over nbytes, least significant byte first."""
    with open(path, "rb") as f:
        f.seek(index)
        raw = f.read(nbytes)
    assert len(raw) == nbytes
    return int.from_bytes(raw, "little")


def refused(m, text, err, reason, name="chan"):
    """Write text to peer in one write(): that write() fails with err, status
    holds a one-line reason containing `reason`, the daemon lives on."""
    fd = os.open(m / f"{name}/peer", os.O_WRONLY | os.O_TRUNC)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
    got = e.value.errno
    assert got == err, (f"write() failed with {errno.errorcode.get(got, got)}, "
                        f"expected {errno.errorcode[err]}")
    st = m.status(name)
    assert st["error"], f"no reason in status after a refusal: {st}"
    assert reason in st["error"], st["error"]
    assert m.proc.poll() is None, "the daemon died"
    assert name in os.listdir(m.path)
    return st


def refused_offer(c, a, offer, err, reason):
    """The attacher refuses a (bad) offer; then the right one works."""
    st = refused(a, kv_text(offer), err, reason)
    assert st["state"] == "offered" and st["role"] == "creator", st
    finish_handshake(c, a)


@pytest.fixture
def chans(pair):
    """Both mounts, each with a fresh channel `chan`."""
    c, a = pair
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    return c, a


# ---- 1. the handshake and what it shows ----

def test_shell_handshake(pair):
    c, a = pair
    handshake(c, a)
    sc, sa = c.status("chan"), a.status("chan")
    assert (sc["state"], sc["role"], sc["error"]) == ("ready", "creator", "")
    assert (sa["state"], sa["role"], sa["error"]) == ("ready", "attacher", "")
    assert sc["peer"] == sa["peer"] == "alive"


def test_python_handshake(pair):
    c, a = pair
    os.mkdir(c / "py")
    os.mkdir(a / "py")
    with open(c / "py/capabilities") as f:
        offer = f.read()
    with open(a / "py/peer", "w") as f:
        f.write(offer)
    with open(a / "py/capabilities") as f:
        answer = f.read()
    with open(c / "py/peer", "w") as f:
        f.write(answer)
    assert wait_state(c, "py", "ready")["role"] == "creator"
    assert wait_state(a, "py", "ready")["role"] == "attacher"
    with open(a / "py/data", "wb") as f:
        f.write(b"from python\n")
    with open(c / "py/data", "rb") as f:
        assert f.read() == b"from python\n"


def test_offer_format(chans, shm):
    c, _ = chans
    offer = caps(c)
    assert list(offer) == [f"{d}.{k}" for d in ("read", "write") for k in AREA_KEYS] + ["mmapfs"]
    assert offer["mmapfs"] == "2"
    for d in ("read", "write"):
        assert HEX.fullmatch(offer[f"{d}.token"]), offer[f"{d}.token"]
        assert offer[f"{d}.token_bytes"] == "128"
        path, size = offer[f"{d}.file"], int(offer[f"{d}.size"])
        index = int(offer[f"{d}.token_index"])
        assert os.path.dirname(path) == shm
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == size >= 64 * 1024
        assert 8 <= index and index + 128 <= size
        assert token_in_file(path, index, 128) == int(offer[f"{d}.token"], 16)
    assert offer["read.file"] != offer["write.file"]


def test_answer_format(chans, shm):
    """The answer: tokens only, named from the attacher's side; its read token
    lies in the creator's write area. The attacher's own unused areas are gone."""
    c, a = chans
    offer = caps(c)
    sh(f"cat {c / 'chan/capabilities'} > {a / 'chan/peer'}")
    answer = caps(a)
    assert {k for k in answer if k != "mmapfs"} == \
        {f"{d}.{k}" for d in ("read", "write") for k in ANSWER_KEYS}
    assert answer.get("mmapfs") == "2"
    for mine, theirs in (("read", "write"), ("write", "read")):
        assert HEX.fullmatch(answer[f"{mine}.token"])
        assert answer[f"{mine}.token_bytes"] == "128"
        path = offer[f"{theirs}.file"]
        found = token_in_file(path, int(answer[f"{mine}.token_index"]), 128)
        assert found == int(answer[f"{mine}.token"], 16)
    assert areas_in(shm) == sorted(os.path.basename(offer[f"{d}.file"])
                                             for d in ("read", "write"))


def test_peer_reads_back_what_was_accepted(chans):
    c, a = chans
    assert read_text(c / "chan/peer") == read_text(a / "chan/peer") == ""
    offer = read_text(c / "chan/capabilities")
    sh(f"cat {c / 'chan/capabilities'} > {a / 'chan/peer'}")
    assert read_text(a / "chan/peer") == offer
    answer = read_text(a / "chan/capabilities")
    sh(f"cat {a / 'chan/capabilities'} > {c / 'chan/peer'}")
    assert read_text(c / "chan/peer") == answer
    wait_state(a, "chan", "ready")
    # reading it back hands nothing over again: the attacher taking its
    # offer anew would start a new session, a restart to the creator
    assert read_text(a / "chan/peer") == offer and read_text(c / "chan/peer") == answer
    assert read_text(a / "chan/capabilities") == answer
    assert c.status("chan")["state"] == a.status("chan")["state"] == "ready"


def token_lines(m):
    cp = caps(m)
    return [f"{d} {cp[d + '.token']} {cp[d + '.token_index']} {cp[d + '.token_bytes']}"
            for d in ("read", "write")]


def test_token_file(chans):
    c, a = chans
    assert read_text(c / "chan/token").splitlines() == token_lines(c)
    finish_handshake(c, a)
    for m in (c, a):
        assert read_text(m / "chan/token").splitlines() == token_lines(m)


def test_status_keys(chans):
    c, a = chans
    area = ("size", "data_start", "data_end", "used", "free", "bytes")
    keys = ["state", "role", "peer", "error", "mmapfs", "streams_failed"] + [
        f"{d}.{k}" for d in ("read", "write") for k in area]
    st = c.status("chan")
    assert list(st) == keys                 # no area usable yet: no file, ring_end
    assert (st["state"], st["role"], st["error"], st["mmapfs"]) == ("offered", "creator", "", "0")
    assert st["read.size"] == caps(c)["read.size"]
    finish_handshake(c, a)
    # where a library finds the areas (docs/PROTOCOL.md, "Native access")
    keys = keys[:6] + [f"{d}.{k}" for d in ("read", "write")
                       for k in area + ("file", "offset", "ring_end", "local", "dev", "ino")]
    for m in (c, a):
        st = m.status("chan")
        assert list(st) == keys
        assert st["mmapfs"] == "2"
        assert st["streams_failed"] == "0"
        for k in keys[6:]:
            if not k.endswith(".file"):
                assert st[k].isdigit(), (k, st[k])
        assert int(st["write.used"]) + int(st["write.free"]) < int(st["write.size"])
        for d in ("read", "write"):
            assert os.path.getsize(st[f"{d}.file"]) == int(st[f"{d}.size"])
            assert int(st[f"{d}.ring_end"]) == ((int(st[f"{d}.size"]) - 64) & ~7) - 64
            assert st[f"{d}.local"] == "1"          # created here, not a declared path
            # the file itself: its identity; no descriptor is kept of a
            # file an mmapfs end made (only of an xpra client's: test_lib_xpra)
            f = os.stat(st[f"{d}.file"])
            assert (int(st[f"{d}.dev"]), int(st[f"{d}.ino"])) == (f.st_dev, f.st_ino)
    assert c.status("chan")["read.file"] == a.status("chan")["write.file"]


# ---- 2. input tolerance ----

def decorate(d):
    """The same message as a human might type it: comments, blank lines,
    spaces around '=', unknown keys, decimal tokens, CRLF line ends."""
    out = ["# written by hand\r\n", "\r\n", "xpra.version = 6.1\r\n"]
    for k, v in d.items():
        if k.endswith(".token"):
            v = str(int(v, 16))
        out.append(f"  {k} \t=  {v}  \r\n")
        out.append(f"{k.split('.')[0]}.colour=blue\r\n\r\n")
    out.append("# the end\r\n")
    return "".join(out)


def test_tolerant_input(chans):
    c, a = chans
    offer = caps(c)
    with open(a / "chan/peer", "w", newline="") as f:
        f.write(decorate(offer))
    assert read_kv(a / "chan/peer") == offer
    with open(c / "chan/peer", "w", newline="") as f:
        f.write(decorate(caps(a)))
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")


def worst_case_pad(text, step):
    """A comment line that makes a chunk of `step` bytes end right after the
    first area's last line, where the message looks complete but is not."""
    cut = text.index("\n", text.index("token_bytes=")) + 1
    n = (-(cut + 2)) % step + 2
    return "#" + "-" * (n - 2) + "\n" + text


def test_dd_seven_byte_writes(chans, tmp_path):
    c, a = chans
    for src, dst in ((c, a), (a, c)):
        f = tmp_path / "msg"
        f.write_text(worst_case_pad(read_text(src / "chan/capabilities"), 7))
        r = sh(f"dd if={f} of={dst / 'chan/peer'} bs=7 status=none", check=False)
        assert (r.returncode, dst.status("chan")["error"]) == (0, ""), r.stderr
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")
    assert read_kv(c / "chan/peer") == caps(a)
    assert read_kv(a / "chan/peer") == caps(c)


def test_python_five_byte_writes(chans):
    c, a = chans
    for src, dst in ((c, a), (a, c)):
        text = worst_case_pad(read_text(src / "chan/capabilities"), 5)
        with open(dst / "chan/peer", "w") as f:
            for i in range(0, len(text), 5):
                f.write(text[i:i + 5])
                f.flush()
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")
    assert read_kv(c / "chan/peer") == caps(a)


def test_one_write_per_line(chans):
    """A shell loop writing the message line by line, one write() each."""
    c, a = chans
    for src, dst in ((c, a), (a, c)):
        sh(f"while IFS= read -r l; do printf '%s\\n' \"$l\"; done "
           f"< {src / 'chan/capabilities'} > {dst / 'chan/peer'}")
        assert dst.status("chan")["error"] == ""
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")
    for d in ("read", "write"):
        assert f"{d}.token" in caps(a), caps(a)


def test_no_final_newline(chans):
    c, a = chans
    sh(f"printf %s \"$(cat {c / 'chan/capabilities'})\" > {a / 'chan/peer'}")
    assert a.status("chan")["role"] == "attacher"
    sh(f"printf %s \"$(cat {a / 'chan/capabilities'})\" > {c / 'chan/peer'}")
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")


# ---- 3. refusals ----

def test_garbage_refused(chans):
    c, a = chans
    refused_offer(c, a, {"hello world\nthis is not": "a handshake"}, errno.EINVAL, "line 1")


def test_garbage_from_shell_fails_visibly(chans):
    c, a = chans
    r = sh(f"echo 'no equals sign here' > {a / 'chan/peer'}", check=False)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    finish_handshake(c, a)


def test_wrong_token_in_offer(chans):
    c, a = chans
    offer = caps(c)
    offer["write.token"] = hex(int(offer["write.token"], 16) ^ 1)
    refused_offer(c, a, offer, errno.EBADMSG, "write.token")


def test_wrong_token_in_answer(chans):
    c, a = chans
    sh(f"cat {c / 'chan/capabilities'} > {a / 'chan/peer'}")
    answer = caps(a)
    answer["read.token"] = hex(int(answer["read.token"], 16) ^ 0x100)
    st = refused(c, kv_text(answer), errno.EBADMSG, "read.token")
    assert st["state"] == "offered"
    sh(f"cat {a / 'chan/capabilities'} > {c / 'chan/peer'}")
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")


@pytest.mark.parametrize("nbytes", ["0", "513", "99999999999999999999999"])
def test_token_bytes_out_of_range(chans, nbytes):
    c, a = chans
    offer = caps(c)
    offer["read.token_bytes"] = nbytes
    refused_offer(c, a, offer, errno.EINVAL, "token_bytes")


@pytest.mark.parametrize("where", ["past_end", "straddles_end"])
def test_token_index_outside_area(chans, where):
    c, a = chans
    offer = caps(c)
    size = int(offer["read.size"])
    offer["read.token_index"] = str(size if where == "past_end" else size - 64)
    refused_offer(c, a, offer, errno.EINVAL, "token_index")


def test_size_beyond_file(chans):
    c, a = chans
    offer = caps(c)
    offer["write.size"] = str(int(offer["write.size"]) + 4096)
    refused_offer(c, a, offer, errno.EINVAL, "beyond")


def test_size_below_64k(chans):
    c, a = chans
    offer = caps(c)
    offer["read.size"] = str(64 * 1024 - 1)
    refused_offer(c, a, offer, errno.EINVAL, "65535")


def test_file_outside_allowed_dirs(chans, tmp_path):
    c, a = chans
    offer = caps(c)
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o700)
    copy = str(other / "copy.mmap")
    shutil.copyfile(offer["read.file"], copy)
    offer["read.file"] = copy
    refused_offer(c, a, offer, errno.EACCES, "copy.mmap")


def test_symlink_in_mmap_dir(chans, shm):
    c, a = chans
    offer = caps(c)
    link = os.path.join(shm, "link.mmap")
    os.symlink(offer["read.file"], link)
    offer["read.file"] = link
    refused_offer(c, a, offer, errno.EACCES, "symbolic link")


def test_hard_link_to_area(chans, shm):
    c, a = chans
    offer = caps(c)
    hard = os.path.join(shm, "hard.mmap")
    os.link(offer["write.file"], hard)
    offer["write.file"] = hard
    st = refused(a, kv_text(offer), errno.EACCES, "links")
    assert st["state"] == "offered"
    os.unlink(hard)
    finish_handshake(c, a)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_file_of_another_uid(chans, shm):
    c, a = chans
    offer = caps(c)
    theirs = os.path.join(shm, "theirs.mmap")
    shutil.copyfile(offer["read.file"], theirs)   # same bytes, same token
    os.chown(theirs, 12345, 12345)
    offer["read.file"] = theirs
    refused_offer(c, a, offer, errno.EACCES, "12345")


def test_text_over_64k(chans):
    c, a = chans
    text = "# padding padding padding padding\n" * 2000 + read_text(c / "chan/capabilities")
    assert len(text) > 64 * 1024
    st = refused(a, text, errno.EFBIG, "65536")
    assert st["state"] == "offered"
    finish_handshake(c, a)


def test_text_over_64k_in_pieces(chans):
    c, a = chans
    fd = os.open(a / "chan/peer", os.O_WRONLY)
    try:
        os.write(fd, b"#" * 40000 + b"\n")
        with pytest.raises(OSError) as e:
            os.write(fd, b"#" * 40000 + b"\n")
    finally:
        os.close(fd)
    assert e.value.errno == errno.EFBIG
    finish_handshake(c, a)


def test_stale_answer_to_an_untaken_offer(pair):
    """An answer reaches a creator whose offer nobody took (here, the
    answer of another channel): its tokens are not in our areas."""
    c, a = pair
    handshake(c, a, "old")
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    st = refused(c, read_text(a / "old/capabilities"), errno.EBADMSG, "not found")
    assert (st["state"], st["role"]) == ("offered", "creator")
    finish_handshake(c, a)


def test_answer_written_to_the_attacher(chans):
    c, a = chans
    sh(f"cat {c / 'chan/capabilities'} > {a / 'chan/peer'}")
    answer = read_text(a / "chan/capabilities")
    st = refused(a, answer, errno.EINVAL, "attacher")
    assert st["role"] == "attacher"
    sh(f"cat {a / 'chan/capabilities'} > {c / 'chan/peer'}")
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")


def test_refused_offer_leaves_creator_areas_untouched(chans):
    """An offer whose read area checks out but whose write token is wrong is
    refused; the attacher must not have written into the creator's read area
    (a token of its own could land on the creator's, and the next, correct
    attempt would then fail)."""
    c, a = chans
    offer = caps(c)

    def snapshot():
        return [open(offer[f"{d}.file"], "rb").read() for d in ("read", "write")]

    before = snapshot()
    bad = dict(offer, **{"write.token": hex(int(offer["write.token"], 16) ^ 1)})
    refused(a, kv_text(bad), errno.EBADMSG, "write.token")
    for d, old, new in zip(("read", "write"), before, snapshot()):
        changed = [i for i in range(len(old)) if old[i] != new[i]]
        assert not changed, (f"the refused attempt wrote into the creator's {d} area "
                             f"at bytes {changed[0]}..{changed[-1]}")
    finish_handshake(c, a)


def read_some(path, n, timeout=5):
    """Read n bytes from a data file without ever blocking the test."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            select.select([fd], [], [], 0.1)
            try:
                got += os.read(fd, n - len(got))
            except BlockingIOError:
                pass
    finally:
        os.close(fd)
    return got


def test_offer_of_one_direction(chans):
    """xpra's default: the creator offers `read` alone (and no mmapfs key)."""
    c, a = chans
    offer = {k: v for k, v in caps(c).items() if k.startswith("read.")}
    with open(a / "chan/peer", "w") as f:
        f.write(kv_text(offer))
    answer = caps(a)
    assert set(answer) == {f"write.{k}" for k in ANSWER_KEYS}
    with open(c / "chan/peer", "w") as f:
        f.write(kv_text(answer))
    wait_state(a, "chan", "ready")
    wait_state(c, "chan", "ready")
    for m, mode in ((c, os.O_WRONLY), (a, os.O_RDONLY)):
        with pytest.raises(OSError) as e:
            os.close(os.open(m / "chan/data", mode))
        assert e.value.errno == errno.ENXIO
    sh(f"echo one way > {a / 'chan/data'}")
    assert read_some(c / "chan/data", 8) == b"one way\n"


# ---- 5. the daemon's trace ----

def test_debug_trace(mount_factory):
    c, a = mount_factory("-d"), mount_factory("-d")
    os.mkdir(c / "chan")
    os.mkdir(a / "chan")
    offer = caps(c)
    bad = dict(offer, **{"read.token": hex(int(offer["read.token"], 16) ^ 1)})
    reason = refused(a, kv_text(bad), errno.EBADMSG, "read.token")["error"]
    finish_handshake(c, a)
    log_c, log_a = c.log_text(), a.log_text()
    assert re.search(r"\bchan: created\b.*" + re.escape(offer["read.file"]), log_c)
    assert re.search(r"\bchan: peer accepted, role attacher\b", log_a)
    assert re.search(r"\bchan: peer accepted, role creator, state ready\b", log_c)
    refusal = [l for l in log_a.splitlines() if "refused" in l]
    assert len(refusal) == 1 and reason in refusal[0], log_a
