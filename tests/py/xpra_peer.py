"""xpra's own mmap code as a test peer, one generation per process.

Two generations are real peers in the field, and both install a Python
package named `xpra`, so they cannot share an interpreter:

- "3.1": Debian 12's xpra package, `xpra.net.mmap_pipe`, with the client's
  `MmapClient` mixin, the server's `MMAP_Connection` and python3-rencode;
- "6.6": xpra 6.6's own modules from ../shared/xpra-6.6 (`xpra.net.mmap.io`,
  `xpra.client.subsystem.mmap.MmapClient`, `xpra.server.source.mmap.
  MMAP_Connection`) and its packet encoder rencodeplus, built here once with
  Debian's cython3 into TOP/build-xpra6 (never into ../shared, read-only).

`Peer(gen)` runs this file as a script under /usr/bin/python3 with that
generation's PYTHONPATH; the script answers one JSON request a line. Where a
generation is missing the test skips with the reason, except under CI
(CI=true), where it fails: CI must run both.

The peer keeps xpra's own area names, from xpra's side: "read" is the area
xpra reads, "write" the one it writes, whether it is the client or the server.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from types import SimpleNamespace as NS

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"     # Debian's: its xpra 3.1, python3-gi, python3-rencode
GENERATIONS = ("3.1", "6.6")
MIN_SIZE = 64 << 20             # both servers refuse smaller areas


def digest(data):
    return {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---- the test's side -------------------------------------------------------

class PeerError(Exception):
    pass


def unavailable(reason):
    import pytest
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI runs both xpra generations: nothing may skip)")
    pytest.skip(reason)


def xpra6_dir():
    """xpra 6.6's modules: $XPRA6_DIR, or ../shared/xpra-6.6 beside the
    repository (for a git worktree, beside its main checkout too)."""
    tops = [TOP]
    if shutil.which("git"):
        git = subprocess.run(["git", "-C", TOP, "rev-parse", "--path-format=absolute",
                              "--git-common-dir"], capture_output=True, text=True)
        if git.returncode == 0:
            tops.append(os.path.dirname(git.stdout.strip()))
    for d in [os.environ.get("XPRA6_DIR")] + [os.path.join(t, "..", "shared", "xpra-6.6")
                                              for t in tops]:
        if d and os.path.isfile(os.path.join(d, "xpra", "net", "mmap", "io.py")):
            return os.path.realpath(d)
    return None


def build_rencodeplus(src):
    """TOP/build-xpra6/rencodeplus.so from src's rencodeplus.pyx, once."""
    out = os.path.join(TOP, "build-xpra6")
    so = os.path.join(out, "rencodeplus.so")
    pyx = os.path.join(src, "rencodeplus", "rencodeplus.pyx")
    if os.path.exists(so) and os.path.getmtime(so) >= os.path.getmtime(pyx):
        return out
    for tool, pkg in (("cython3", "cython3"), (PYTHON + "-config", "python3-dev"),
                      ("gcc", "gcc")):
        if not shutil.which(tool):
            unavailable(f"{tool} is missing to build xpra 6's rencodeplus "
                        f"(apt-get install {pkg})")
    os.makedirs(out, exist_ok=True)
    tmp = f"{so}.{os.getpid()}"
    includes = subprocess.run([PYTHON + "-config", "--includes"], check=True,
                              capture_output=True, text=True).stdout.split()
    try:
        for cmd in (["cython3", "-3", pyx, "-o", tmp + ".c"],
                    ["gcc", "-shared", "-fPIC", "-O2", *includes, tmp + ".c", "-o", tmp]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
        os.replace(tmp, so)
    finally:
        for f in (tmp, tmp + ".c"):
            if os.path.exists(f):
                os.unlink(f)
    return out


class Peer:
    """One generation of xpra in a process of its own: peer.OP(*args) runs
    OP there and returns its JSON result, or raises PeerError."""

    def __init__(self, gen, log):
        self.gen = gen
        self.name = f"xpra {gen}"
        self.log = log
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if gen == "6.6":
            src = xpra6_dir()
            if not src:
                unavailable("xpra 6.6's modules are not here: ../shared/xpra-6.6 "
                            "(or XPRA6_DIR) is absent")
            env["PYTHONPATH"] = f"{src}:{build_rencodeplus(src)}"
        with open(log, "w") as logf:
            self.proc = subprocess.Popen([PYTHON, os.path.abspath(__file__), gen], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, text=True)
        first = self._answer()
        if "unavailable" in first:
            self.close()
            unavailable(first["unavailable"])

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"{self.name} died:\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, lines=20):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def call(self, op, *args):
        self.proc.stdin.write(json.dumps([op, *args]) + "\n")
        self.proc.stdin.flush()
        out = self._answer()
        if "error" in out:
            raise PeerError(f"{self.name} {op}: {out['error']}\n"
                            f"--- peer log:\n{self.log_tail()}")
        return out["result"]

    def __getattr__(self, op):
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *args: self.call(op, *args)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


# ---- the peer's side: xpra's code -----------------------------------------

class Xpra31:
    """Debian's xpra 3.1: one area per connection, the one its server writes,
    under flat mmap_* hello keys."""

    def __init__(self):
        from xpra.util import typedict
        from xpra.net import mmap_pipe
        from xpra.client.mixins.mmap import MmapClient
        from xpra.server.source.mmap_connection import MMAP_Connection
        import rencode
        self.typedict, self.io, self.rencode = typedict, mmap_pipe, rencode
        self.MMAP_Connection = MMAP_Connection
        self.areas = {}         # xpra's name -> (mmap, size)

        class Client(MmapClient):
            def quit(self, code):
                self.exit_code = code
        self.client = Client()

    def client_hello(self, dirs):
        """The client makes its area in dirs[0]: xpra 3.1 makes one."""
        c = self.client
        c.init(NS(mmap=os.path.join(dirs[0], "xpra31.mmap"), mmap_group=""))
        c.setup_connection(NS(filename=""))
        return c.get_caps()

    def client_accept(self, hello):
        c = self.client
        c.server_capabilities = self.typedict(hello)
        c.parse_server_capabilities()
        if c.mmap_enabled:
            self.areas["read"] = (c.mmap, c.mmap_size)
        return {"read": bool(c.mmap_enabled)}

    def server_answer(self, hello, _dirs, name):
        """3.1's server takes the one area it is offered (by path: it checks
        no directory); the peer calls it once per area, `name` says which."""
        s = self.MMAP_Connection()
        s.init_from(None, NS(supports_mmap=True, mmap_filename=None,
                             min_mmap_size=MIN_SIZE))   # as xpra 3.1's mmap_server
        s.init_state()
        s.parse_client_caps(self.typedict(hello))
        if s.mmap:
            self.areas[name] = (s.mmap, s.mmap_size)
        return s.get_caps()

    def read(self, chunks):
        area, _size = self.areas["read"]
        return digest(bytes(self.io.mmap_read(area, *map(tuple, chunks))))

    def write(self, n):
        area, size = self.areas["write"]
        data = os.urandom(n)
        chunks, _free = self.io.mmap_write(area, size, data)
        return {"chunks": chunks, **digest(data)}

    def encode(self, hello):
        return self.rencode.loads(self.rencode.dumps(hello), decode_utf8=True)

    def close(self):
        for area, _ in self.areas.values():
            area.close()
        self.client.clean_mmap()


class Xpra66:
    """xpra 6.6: areas named from each side under mmap.read / mmap.write."""

    def __init__(self):
        from xpra.util.objects import typedict
        from xpra.client.subsystem.mmap import MmapClient
        from xpra.server.source.mmap import MMAP_Connection
        import rencodeplus
        self.typedict, self.rencodeplus = typedict, rencodeplus
        self.MMAP_Connection = MMAP_Connection
        self.areas = {}         # xpra's name -> MmapArea
        noop = lambda *_a: None
        self.client = MmapClient(NS(idle_add=noop, timeout_add=noop, source_remove=noop,
                                    quit=noop))

    def client_hello(self, dirs):
        """--mmap=DIR[:DIR]: one area (read) or two (read and write), made in
        those directories, at the client's default size (2 GiB)."""
        c = self.client
        c.init(NS(mmap=":".join(dirs), mmap_group=""))
        c.load()
        c.setup_connection(NS(filename=""))
        return c.get_caps()

    def client_accept(self, hello):
        c = self.client
        c.parse_server_capabilities(self.typedict(hello))
        out = {}
        for name, area in (("read", c.mmap_read_area), ("write", c.mmap_write_area)):
            out[name] = bool(area)
            if area:
                self.areas[name] = area
        return out

    def server_answer(self, hello, dirs, _name):
        """The server opens the offered files only in `dirs` (its --mmap=DIR),
        with safe_open_mmap_file, init_server_mmap(fd, size) and the token
        check, then writes its own tokens: MMAP_Connection.get_caps()."""
        s = self.MMAP_Connection()
        s.init_from(None, NS(subsystems={"mmap": NS(supported=True, dirs=tuple(dirs),
                                                    files=(), min_size=MIN_SIZE)}))
        s.init_state()
        s.parse_client_caps(self.typedict(hello))
        for name, area in (("read", s.mmap_read_area), ("write", s.mmap_write_area)):
            if area:
                self.areas[name] = area
        return s.get_caps()

    def read(self, chunks):
        data, free = self.areas["read"].mmap_read(*map(tuple, chunks))
        out = digest(bytes(data))
        free()                  # zero copy: data_start moves only now
        if isinstance(data, memoryview):
            data.release()
        return out

    def write(self, n):
        data = os.urandom(n)
        return {"chunks": self.areas["write"].write_data(data), **digest(data)}

    def encode(self, hello):
        # built by Debian's cython 0.29, rencodeplus reports its encoding
        # errors as "Exception ignored": catch them as the error they are
        ignored = []
        sys.unraisablehook = lambda u: ignored.append(u.exc_value)
        try:
            data = self.rencodeplus.dumps(hello)
            if not ignored:
                data = self.rencodeplus.loads(data)
        finally:
            sys.unraisablehook = sys.__unraisablehook__
        if ignored:
            raise ignored[0]
        return data

    def close(self):
        for area in self.areas.values():
            area.close()
        self.client.clean_areas()


def answerer():
    """The peer's side: a function that sends one JSON answer a line on the
    real stdout, which it keeps to itself (prints and logs go to the log)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()
    return answer


def serve_requests(peer, answer):
    """Run each request line (JSON [op, *args]) as peer.op(*args) and answer
    its result or its error; at the end of input, peer.close()."""
    for line in sys.stdin:
        op, *args = json.loads(line)
        try:
            answer({"result": getattr(peer, op)(*args)})
        except Exception as e:
            traceback.print_exc()
            answer({"error": "".join(traceback.format_exception_only(e)).strip()})
    peer.close()


def serve(gen):
    answer = answerer()
    try:
        peer = {"3.1": Xpra31, "6.6": Xpra66}[gen]()
    except ImportError as e:
        answer({"unavailable": f"xpra {gen} cannot be imported: {e}"})
        return
    answer({"ready": gen})
    serve_requests(peer, answer)


if __name__ == "__main__":
    serve(sys.argv[1])
