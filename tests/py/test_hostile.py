"""Hundreds of mutated offers and answers written to peer: each is refused
with a clear errno or accepted, the daemons never crash (ASan watches), and
a correct handshake and a stream work afterwards."""
import errno
import os
import random

from conftest import sh, wait_state

ALLOWED = {errno.EINVAL, errno.EACCES, errno.EBADMSG, errno.EFBIG}


def mutate(rng, text):
    lines = text.splitlines()
    op = rng.randrange(8)
    i = rng.randrange(len(lines))
    key, _, value = lines[i].partition("=")
    if op == 0:                                   # a number out of range
        lines[i] = f"{key}={rng.choice([0, 1, 7, 8, 65535, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 10**400])}"
    elif op == 1:                                 # a hex value, maybe huge
        lines[i] = f"{key}=0x{rng.getrandbits(rng.choice([8, 64, 4096, 4200])):x}"
    elif op == 2:                                 # garbage bytes in a value
        lines[i] = key + "=" + "".join(chr(rng.randrange(1, 256)) for _ in range(rng.randrange(1, 40)))
    elif op == 3:                                 # drop a line
        del lines[i]
    elif op == 4:                                 # duplicate a line
        lines.insert(i, lines[i])
    elif op == 5:                                 # a file elsewhere
        lines[i] = f"{key}=" + rng.choice(["/", "/etc/passwd", "..", ".", "/dev/zero", "x" * 5000,
                                            "/proc/self/mem", ""])
    elif op == 6:                                 # swap the directions
        lines[i] = lines[i].replace("read.", "w").replace("write.", "read.").replace("w", "write.", 1)
    else:                                         # truncate the text
        return text[:rng.randrange(len(text))]
    return "\n".join(lines) + "\n"


def write_peer(path, text):
    try:
        with open(path, "w", errors="surrogateescape") as f:
            f.write(text)
    except OSError as e:
        assert e.errno in ALLOWED, (e, text[:200])
        return e.errno
    return 0


def test_mutated_offers_and_answers(pair, tmp_path):
    c, a = pair
    rng = random.Random(2026)
    os.mkdir(c / "x")
    offer = open(c / "x/capabilities").read()
    outcomes = {}
    for n in range(300):
        os.mkdir(a / f"t{n}")
        r = write_peer(a / f"t{n}/peer", mutate(rng, offer))
        outcomes[r] = outcomes.get(r, 0) + 1
        if n % 50 == 0:
            # an answer from a mutated attacher, fed to the creator
            r = write_peer(c / "x/peer", mutate(rng, open(a / f"t{n}/capabilities").read() or "x=1\n"))
            outcomes[r] = outcomes.get(r, 0) + 1
        os.rmdir(a / f"t{n}")
    assert set(outcomes) - {0} and outcomes.get(0, 0) < 300, outcomes
    assert c.proc.poll() is None and a.proc.poll() is None
    # the creator's channel is still good for a real handshake and a stream
    os.mkdir(a / "x")
    sh(f"cat {c / 'x'}/capabilities > {a / 'x'}/peer")
    sh(f"cat {a / 'x'}/capabilities > {c / 'x'}/peer")
    wait_state(a, "x", "ready")
    wait_state(c, "x", "ready")
    payload = os.urandom(1 << 20)
    src = tmp_path / "src"
    src.write_bytes(payload)
    out = sh(f"cat {src} > {c / 'x'}/data & sha256sum < {a / 'x'}/data; wait").stdout
    assert out.split()[0] == sh(f"sha256sum {src}").stdout.split()[0]
