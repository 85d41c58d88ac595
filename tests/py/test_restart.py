"""Restarts on either side (docs/PROTOCOL.md, "Restarts"): a daemon killed
and started again with the same configuration handshakes again with a peer
that kept running, by the first handshake's own file operations; every
session starts on empty rings; a dead daemon's area files are swept by the
next one on the same mmap_dir, and a live one's are left alone."""
import os
import struct
import time

import pytest

from conftest import (SHARED_RING as RING, areas_in, leave_unread, nothing_to_read, sh,
                      wait_state)


def do_handshake(c, a):
    sh(f"cat {c / 'vm/capabilities'} > {a / 'vm/peer'}")
    sh(f"cat {a / 'vm/capabilities'} > {c / 'vm/peer'}")
    wait_state(c, "vm", "ready")
    wait_state(a, "vm", "ready")


def stream(src, dst, n, tmp_path):
    """n random bytes from src's data to dst's data, checked."""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(n))
    got = sh(f"dd if={dst / 'vm/data'} bs=64K status=none | sha256sum & "
             f"dd if={blob} of={src / 'vm/data'} bs=64K status=none; wait")
    assert got.stdout.split()[0] == sh(f"sha256sum {blob}").stdout.split()[0], got.stderr


def test_attacher_restarts(mount_factory, shared_confs, tmp_path):
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    do_handshake(c, a)
    offer = open(c / "vm/capabilities").read()
    stream(c, a, 8 * RING, tmp_path)        # the tokens are long overwritten
    stream(a, c, 8 * RING, tmp_path)
    leave_unread(c, 1000)
    leave_unread(a, 500)
    a.kill()
    st = wait_state(c, "vm", "ready")
    deadline = time.monotonic() + 3
    while c.status("vm")["peer"] != "dead":
        assert time.monotonic() < deadline, c.status("vm")
        time.sleep(0.1)
    st = c.status("vm")
    assert "read capabilities" in st["error"], st
    # the creator's reader still gets what the dead peer wrote
    assert sh(f"timeout 5 cat {c / 'vm/data'}", check=False).stdout == "S" * 500
    # the same configuration, started again: the first handshake's own
    # commands, nothing more
    a2 = mount_factory("-c", a_conf)
    do_handshake(c, a2)
    assert open(c / "vm/capabilities").read() != offer      # fresh tokens
    nothing_to_read(a2)                     # the unread 1000 bytes are gone
    nothing_to_read(c)
    stream(c, a2, 4 * RING, tmp_path)
    stream(a2, c, 4 * RING, tmp_path)
    assert "new session" in c.log_text()


def test_creator_restarts(mount_factory, shared_confs, tmp_path):
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    do_handshake(c, a)
    stream(c, a, 8 * RING, tmp_path)
    leave_unread(a, 700)
    leave_unread(c, 300)
    c.kill()
    c2 = mount_factory("-c", c_conf)
    # the attacher sees its creator restart, and says what to do
    st = wait_state(a, "vm", "error")
    assert "restarted" in st["error"] and "new offer into peer" in st["error"], st
    assert c2.status("vm")["write.used"] == "0"         # empty rings from the start
    do_handshake(c2, a)
    nothing_to_read(a)
    nothing_to_read(c2)
    stream(c2, a, 4 * RING, tmp_path)
    stream(a, c2, 4 * RING, tmp_path)


def test_offer_unchanged_while_the_peer_lives(mount_factory, shared_confs):
    """Nothing restarted: reading the offer again starts nothing new."""
    c_conf, a_conf = shared_confs
    c, a = mount_factory("-c", c_conf), mount_factory("-c", a_conf)
    do_handshake(c, a)
    offer = open(c / "vm/capabilities").read()
    time.sleep(1.5)
    assert open(c / "vm/capabilities").read() == offer
    assert c.status("vm")["state"] == "ready"


def test_old_pointers_in_a_file(mount_factory, shared_confs, shared_files):
    """A file holding an earlier session's pointers: the creator starts on
    empty rings."""
    c_conf, _ = shared_confs
    for path in shared_files:
        with open(path, "r+b") as f:
            f.write(struct.pack("<II", 1000, 5000))
    c = mount_factory("-c", c_conf)
    st = c.status("vm")
    assert st["read.used"] == "0" and st["write.used"] == "0", st


def test_leftovers_swept(mount_factory, shm):
    live = mount_factory()
    os.mkdir(live / "chan")
    kept = areas_in(shm)
    dead = mount_factory()
    os.mkdir(dead / "chan")
    os.mkdir(dead / "chan2")
    dead.kill()
    assert len(areas_in(shm)) == 6
    fresh = mount_factory()
    assert areas_in(shm) == kept
    assert "removed 4 areas a dead mmapfs left behind" in fresh.log_text()
    # and files that are not a dead daemon's are never touched
    stranger = os.path.join(shm, "mmapfs.deadbeef.AAAAAA.mmap")
    open(stranger, "w").close()
    again = mount_factory()
    assert os.path.exists(stranger)
    os.unlink(stranger)
    assert again.log_text() == "" or "removed" not in again.log_text()
