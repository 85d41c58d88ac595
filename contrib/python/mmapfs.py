"""mmapfs channels through the shared memory itself: libmmapfs over ctypes.

The files of a mount are the way in for every language; this module gives a
Python program the library's path (no FUSE request per read or write), with
the standard library only and no build step:

    import mmapfs

    with mmapfs.open("/mnt/a/chan", "w") as ch:      # as open(CHAN/data)
        ch.write(b"hello")                           # the reader sees EOF at close

    with mmapfs.open("/mnt/b/chan") as ch:
        data = ch.read()                             # to the end of the stream
        view = ch.read_view(1 << 20)                 # zero copy: a memoryview
        ...                                          # of the shared area
        ch.release()                                 # gives the bytes back

A Channel is an io.RawIOBase: read, readinto, readall, write, fileno (for
select/poll/epoll), close, and the with statement; io.BufferedReader can wrap
it (not with an xpra peer's chunk lists: it reads ahead). Errors are OSError
with the errno of libmmapfs(3), and its reason (the file or value at fault,
mmapfs_reason) in the message: ENOTCONN (not ready), EBUSY (taken), ENXIO (a
direction the peer did not offer), ECONNRESET and EPIPE (the peer died),
EPROTO and EIO (the peer broke the area). In non-blocking mode
(nonblock=True) read and write return None where they would block.

With an xpra peer, whose data is described by chunk lists that travel in its
own packets (docs/xpra.md), chunks_put(pairs) gives the list an xpra writer
sent, before its bytes are read (read exactly their total: each read returns
at most one piece, and a read past the list would follow the pointers), and
chunks_get() returns where the bytes written since the last call went, for
an xpra reader:

    ch.chunks_put(packet_chunks)                     # e.g. [(69000, 632), (8, 29368)]
    data = ch.read(632) + ch.read(29368)             # exactly those bytes
    ch.write(pixels)
    send(ch.chunks_get())                            # e.g. [(29376, 500000)]

The library is loaded by its SONAME, libmmapfs.so.0, as the dynamic loader
finds it (installed, or through LD_LIBRARY_PATH), unless MMAPFS_LIB names a
file; run from a source tree, a build directory of that tree is the last
resort.

A view from read_view() is the shared memory itself: it is valid until
release() or close(), and a peer that truncates its area makes touching it
raise SIGBUS, which kills the interpreter (read() copies under the
library's guard and fails with EIO instead).
"""
import ctypes
import errno
import glob
import io
import os

__all__ = ["open", "Channel", "library_path"]

SONAME = "libmmapfs.so.0"       # the library's ABI this module speaks
CHUNKS_TEXT_MAX = 22529         # mmapfs.h's MMAPFS_CHUNKS_TEXT_MAX
_lib = _path = None


def _candidates():
    """MMAPFS_LIB, else the SONAME as the dynamic loader finds it (the
    package's libmmapfs0, a prefix in ld.so.conf or LD_LIBRARY_PATH), else
    a build directory of the source tree this file is in."""
    env = os.environ.get("MMAPFS_LIB")
    if env:
        yield env
        return
    yield SONAME
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(top, "contrib", "python", "mmapfs.py")):
        for build in ["build", "build-release"] + sorted(glob.glob(os.path.join(top, "build*"))):
            cand = os.path.join(top, build, "core", "lib", SONAME)
            if os.path.exists(cand):
                yield cand


def library_path():
    """Where libmmapfs is taken from (see the module's docstring): a path,
    or the SONAME the dynamic loader resolved."""
    _load()
    return _path


def _load():
    global _lib, _path
    if _lib is None:
        lib = None
        for cand in _candidates():
            try:
                lib = ctypes.CDLL(cand, use_errno=True)
                break
            except OSError as e:
                why = e
        if lib is None:
            raise OSError(errno.ENOENT, f"libmmapfs not found ({why}): install libmmapfs0, "
                          f"or set LD_LIBRARY_PATH to its directory, or "
                          f"MMAPFS_LIB=path/to/{SONAME}")
        _path = cand
        vp, sz, ssz = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ssize_t
        for name, res, args in (
                ("mmapfs_open", vp, [ctypes.c_char_p, ctypes.c_int]),
                ("mmapfs_read", ssz, [vp, vp, sz]),
                ("mmapfs_write", ssz, [vp, vp, sz]),
                ("mmapfs_read_begin", ssz, [vp, ctypes.POINTER(vp), sz]),
                ("mmapfs_read_end", ctypes.c_int, [vp, sz]),
                ("mmapfs_chunks_put", ctypes.c_int, [vp, ctypes.c_char_p]),
                ("mmapfs_chunks_get", ssz, [vp, ctypes.c_char_p, sz]),
                ("mmapfs_fd", ctypes.c_int, [vp]),
                ("mmapfs_reason", ctypes.c_char_p, []),
                ("mmapfs_close", ctypes.c_int, [vp])):
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        _lib = lib
    return _lib


def _error(what):
    """The last call's failure: its errno, and the library's reason (the
    file or the value at fault) in the message."""
    e = ctypes.get_errno()
    why = _lib.mmapfs_reason().decode(errors="replace") or os.strerror(e)
    return OSError(e, f"{what}: {why}")


_MODES = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "r+": os.O_RDWR}


def open(chan_dir, mode="r", nonblock=False):  # noqa: A001 (as io.open)
    """Take the channel's stream as open(CHAN/data) would: mode "r", "w" or
    "rw"."""
    return Channel(chan_dir, mode, nonblock)


class Channel(io.RawIOBase):
    """One end of a channel's stream through libmmapfs."""

    def __init__(self, chan_dir, mode="r", nonblock=False):
        super().__init__()
        self._c = self._view = None
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        self._lib = _load()
        self._mode = mode
        self._nonblock = nonblock
        flags = _MODES[mode] | (os.O_NONBLOCK if nonblock else 0)
        self._c = self._lib.mmapfs_open(os.fsencode(chan_dir), flags)
        if not self._c:
            raise _error(f"mmapfs_open {chan_dir}")

    def _call(self, fn, *args):
        """A call of the library: its result, None for EAGAIN; a signal's
        EINTR runs Python's handlers (KeyboardInterrupt) and goes on."""
        if self.closed:
            raise ValueError("I/O operation on closed channel")
        while True:
            n = fn(self._c, *args)
            if n >= 0:
                return n
            e = ctypes.get_errno()
            if e == errno.EINTR:
                continue
            if e == errno.EAGAIN and self._nonblock:
                return None
            raise _error(fn.__name__)

    def readable(self):
        return self._mode != "w"

    def writable(self):
        return self._mode != "r"

    def fileno(self):
        """A descriptor for select/poll/epoll; never read or write it."""
        if self.closed:
            raise ValueError("I/O operation on closed channel")
        return self._lib.mmapfs_fd(self._c)

    def readinto(self, b):
        """Read into a writable buffer: the count, 0 at the end of a stream."""
        view = memoryview(b).cast("B")
        if len(view) == 0:
            return 0
        buf = (ctypes.c_char * len(view)).from_buffer(view)
        return self._call(self._lib.mmapfs_read, buf, len(view))

    def write(self, data):
        """Write bytes-like data: the count (all of it, unless non-blocking)."""
        view = memoryview(data).cast("B")
        if len(view) == 0:
            return 0
        if view.readonly:
            keep = data if isinstance(data, bytes) else bytes(view)   # bytes: no copy
            ptr = ctypes.cast(ctypes.c_char_p(keep), ctypes.c_void_p)
        else:
            ptr = (ctypes.c_char * len(view)).from_buffer(view)
        return self._call(self._lib.mmapfs_write, ptr, len(view))

    def read_view(self, max_bytes=1 << 20):
        """Zero copy: up to max_bytes of the stream as a read-only memoryview
        of the shared area (empty at the end of a stream; None if
        non-blocking and nothing is there). Call release() when done."""
        self._drop_view()
        p = ctypes.c_void_p()
        n = self._call(self._lib.mmapfs_read_begin, ctypes.byref(p), max_bytes)
        if not n:
            return memoryview(b"") if n == 0 else None
        area = (ctypes.c_char * n).from_address(p.value)
        self._view = memoryview(area).cast("B").toreadonly()
        return self._view

    def release(self, n=None):
        """Give back the first n bytes of the last view (all by default): the
        writer may reuse their space, and the view is no longer valid."""
        if self._view is None:
            raise ValueError("no view to release")
        n = len(self._view) if n is None else n
        self._drop_view()
        if self._lib.mmapfs_read_end(self._c, n) < 0:
            raise _error("mmapfs_read_end")

    def _drop_view(self):
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:         # something still holds it: not ours
                pass
            self._view = None

    def chunks_put(self, chunks):
        """An xpra writer's chunk list, given before reading its bytes: the
        next reads return exactly those pieces. chunks: (offset, length)
        pairs as xpra's packets carry them, or the text of "OFFSET LENGTH"
        lines."""
        if not isinstance(chunks, str):
            chunks = "".join(f"{int(off)} {int(n)}\n" for off, n in chunks)
        self._call(self._lib.mmapfs_chunks_put, chunks.encode())

    def chunks_get(self):
        """For an xpra reader: where the bytes written since the last call
        went, as a list of (offset, length) pairs for its packet."""
        buf = ctypes.create_string_buffer(CHUNKS_TEXT_MAX)
        self._call(self._lib.mmapfs_chunks_get, buf, len(buf))
        return [tuple(int(x) for x in line.split()) for line in buf.value.decode().splitlines()]

    def readall(self):
        """Everything to the end of the stream (None: non-blocking, none yet)."""
        parts = []
        while True:
            part = self.read(1 << 20)
            if not part:
                return b"".join(parts) if parts or part is not None else None
            parts.append(part)

    def close(self):
        """End the stream (the reader sees end of file) and unmap."""
        if self.closed:
            return
        super().close()
        self._drop_view()
        c, self._c = self._c, None
        if c and self._lib.mmapfs_close(c) < 0:
            raise _error("mmapfs_close")
