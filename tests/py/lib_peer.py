"""A library end as a test peer: contrib/python/mmapfs.py (libmmapfs over
ctypes) in a process of its own, answering one JSON request a line, as
xpra_peer.py's peers do, so a test can pass chunk lists between it and
xpra's own mmap code step by step.

`LibPeer(log)` starts it (with test_lib.py's python_env(): the library of
the build under test, the sanitizer's runtime preloaded for an ASan build);
`peer.open(chan, mode)`, then `peer.write(n, seed)`, `peer.read(chunks,
how, seed)`, `peer.method(name, *args)`, `peer.done()` (closes the channel;
`peer.close()` ends the process). Only digests travel, never the bytes.
"""
import os
import random
import subprocess
import sys

from xpra_peer import Peer, answerer, digest, serve_requests

SIZES = [1, 5, 4093, 65535, 65537, 100000, 1 << 20]


class LibPeer(Peer):
    def __init__(self, log, env):
        self.name = "the library end"
        self.log = log
        with open(log, "w") as logf:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, text=True)
        assert self._answer() == {"ready": "library"}


class End:
    def __init__(self):
        import mmapfs
        self.mmapfs = mmapfs
        self.ch = None

    def open(self, chan, mode):
        self.ch = self.mmapfs.open(chan, mode)

    def write(self, n, seed):
        """n random bytes in writes of random sizes; the chunk list."""
        rng = random.Random(seed)
        data = os.urandom(n)
        done = 0
        while done < n:
            done += self.ch.write(memoryview(data)[done:done + rng.choice(SIZES)])
        return {"chunks": self.ch.chunks_get(), **digest(data)}

    def read(self, chunks, how, seed):
        """The bytes the chunk list describes, put first, then read in reads
        of random sizes ("copy") or zero-copy views ("view")."""
        rng = random.Random(seed)
        want = sum(n for _off, n in chunks)
        self.ch.chunks_put(chunks)
        got = bytearray()
        while len(got) < want:
            size = min(rng.choice(SIZES), want - len(got))
            if how == "view":
                view = self.ch.read_view(size)
                assert view, "end of stream from an xpra peer"
                got += view
                self.ch.release()
            else:
                part = self.ch.read(size)
                assert part, "end of stream from an xpra peer"
                got += part
        return digest(bytes(got))

    def method(self, method, *args):
        """Any other method of the channel, for the refusals: its result, or
        {"errno": number, "why": its message} for an OSError."""
        try:
            return getattr(self.ch, method)(*args)
        except OSError as e:
            return {"errno": e.errno, "why": e.strerror}

    def done(self):
        """Close the channel (the process goes on)."""
        if self.ch:
            self.ch.close()
            self.ch = None

    close = done                # at the end of the requests


if __name__ == "__main__":
    answer = answerer()
    end = End()
    answer({"ready": "library"})
    serve_requests(end, answer)
