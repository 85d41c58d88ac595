import os

from conftest import handshake, sh


def test_mount_empty(mount_factory):
    m = mount_factory()
    assert os.listdir(m.path) == []


def test_handshake_and_hello(pair):
    c, a = pair
    handshake(c, a)
    sh(f"echo hello > {c / 'chan'}/data")
    assert sh(f"cat {a / 'chan'}/data").stdout == "hello\n"
