"""Fixtures that mount real mmapfs filesystems.

Every mount is waited for (failing at once if the daemon died first), and
always unmounted with its daemon reaped, even when the test fails. A daemon
must exit 0 and print no sanitizer report, so ASan/UBSan/TSan findings fail
the test that caused them.
"""
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def find_mmapfs():
    exe = os.environ.get("MMAPFS")
    if exe:
        return os.path.abspath(exe)
    for build in ("build", "build-asan"):
        cand = os.path.join(TOP, build, "fs", "mmapfs")
        if os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("mmapfs binary not found: set MMAPFS=path/to/mmapfs")


MMAPFS = find_mmapfs()

# Every line a daemon may print in a passing test; any other line fails the
# test that caused it (a sanitizer report, "fuse: writing device: Bad
# address", anything new). Later work adds its benign lines here, and only
# here. Lines are matched whole.
BENIGN_LOG = [
    # refusals of a peer's half, logged at info level (the test provoked them)
    r"mmapfs: .+: peer refused: .+",
    # a mkdir that failed, with its reason (tests of full disks and limits)
    r"mmapfs: mkdir .+: .+",
    # restarts: a new session, a dead daemon's leftovers swept
    r"mmapfs: .+: new session for a new peer, fresh tokens; \d+ unread bytes dropped",
    r"mmapfs: .+: no new session: .+",
    r"mmapfs: .+: removed \d+ areas a dead mmapfs left behind",
    # the default mmap_dir's name held by another user (test_users.py)
    r"mmapfs: .+ is taken by uid \d+.*; areas go to .+ instead",
    # a declared file not ready at mount (an ivshmem device before its VM)
    r"mmapfs: .+: not ready: .+",
    # once at start; each handshake; each change of state or liveness
    r"mmapfs: mounted on .+ \(config .+, mmap_dir .+, ring \d+ bytes, id [0-9a-f]+\), "
    r"declared channels: .+",
    r"mmapfs: .+: peer accepted, role \w+, state \w+",
    r"mmapfs: .+: state \w+, peer \w+(, .+)?",
    r"mmapfs: unmounted .+",
    # -d: the trace of handshakes and rings
    r"mmapfs: .+: (created|declared|removed)\b.*",
    r"mmapfs: .+: peer accepted, role \w+, state \w+",
    r"mmapfs: .+: (read|write) area .+, \d+ bytes, ring 8\.\.\d+, our token at \d+",
    r"mmapfs: .+: data (opened|closed)[^:]*: (read|write) ring data_start=\d+ "
    r"data_end=\d+, \d+ bytes moved",
    r"mmapfs: .+: end of stream",
    r"mmapfs: .+: state \w+, peer \w+(, .+)?",
    r"mmapfs: .+: chunks.*",
    r"mmapfs: .+: (send|recv): (end of stream|stream cut, writers get EPIPE|reader gone|"
    r"claim given back|claim refused: .+)",
    r"mmapfs: removed .+, a dead mmapfs's FIFOs",
    # the ivshmem server's clients coming and going (test_ivshmem.py)
    r"mmapfs: ivshmem .+: (peer \d+ .+|a client refused: .+|the server sent -?\d+: ignored|"
    r"the server left \(.+\): no more doorbells)",
    # libfuse's own words at unmount and for -o fuse_debug runs
    r"unique: .*|INIT: .*|   .*|opcode: .*",
]
_BENIGN = re.compile("|".join(f"(?:{p})" for p in BENIGN_LOG))


def unexpected_log_lines(text):
    """The lines of a daemon's log that no entry of BENIGN_LOG explains."""
    return [line for line in text.splitlines() if line.strip() and not _BENIGN.fullmatch(line)]


_LEAK = re.compile(r"(?:Direct|Indirect) leak of \d+ byte\(s\) in \d+ object\(s\) allocated from:\n"
                   r"((?:\s+#\d+ .*\n?)+)")


def libfuse_leak_only(rc, log):
    """libfuse 3.14 keeps an INTERRUPT whose request it cannot find (already
    answered: the caller's signal crossed the answer) on its session's list,
    to match a request that may still come, and fuse_session_destroy() never
    frees that list: LeakSanitizer then reports one struct fuse_req, 128
    bytes calloc'd by libfuse's request loop, at exit, now and then. The
    list is libfuse's own, out of mmapfs's reach. -> (True, the log without
    that report) when that is all the sanitizers said and the exit was
    theirs (1); a leak with any frame outside libfuse, or any other report,
    is not."""
    start = log.find("=================================================================\n")
    report = log[start:] if start >= 0 else ""
    if rc != 1 or "ERROR: LeakSanitizer: detected memory leaks" not in report or \
            "runtime error" in log or "AddressSanitizer: heap" in log:
        return False, log
    stacks = _LEAK.findall(report)
    if not stacks:
        return False, log
    for stack in stacks:
        frames = [f.strip() for f in stack.strip().splitlines()]
        if not re.search(r"(?:calloc|malloc|realloc)", frames[0]) or \
                not all("/libfuse3.so" in f for f in frames[1:]) or len(frames) < 2:
            return False, log
    return True, log[:start]


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Mount:
    """One running mmapfs daemon and its mount point."""

    def __init__(self, path, proc, log):
        self.path = path
        self.proc = proc
        self.log = log
        self.killed = False

    def kill(self):
        """Kill the daemon as a crash would (SIGKILL); the fixture then only
        cleans up the dead mount."""
        self.killed = True
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", self.path], stderr=subprocess.DEVNULL)

    def __truediv__(self, other):
        return os.path.join(self.path, other)

    def status(self, chan):
        return read_kv(os.path.join(self.path, chan, "status"))

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


def read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            out[key] = value
    return out


def wait_mounted(mnt, proc, log, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mounted(mnt):
            return
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                pytest.fail(f"mmapfs exited with {proc.returncode} before mounting:\n{f.read()}")
        time.sleep(0.02)
    pytest.fail(f"{mnt} was not mounted within {timeout} s")


def force_cleanup(mnt, proc):
    """Lazy unmount, then terminate, then kill: nothing may stay behind."""
    if mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unmount(m, timeout=10):
    """Unmount and require a clean exit of the daemon."""
    subprocess.run(["fusermount3", "-u", m.path], check=False, capture_output=True)
    if mounted(m.path):
        # still busy (a test left a file open): give it a moment
        time.sleep(0.5)
        subprocess.run(["fusermount3", "-u", m.path], check=False, capture_output=True)
    try:
        rc = m.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        force_cleanup(m.path, m.proc)
        pytest.fail(f"mmapfs on {m.path} did not exit after unmount:\n{m.log_text()}")
    log = m.log_text()
    libfuse_only, log = libfuse_leak_only(rc, log)
    assert rc == 0 or libfuse_only, f"mmapfs on {m.path} exited with {rc}:\n{log}"
    bad = unexpected_log_lines(log)
    assert not bad, f"mmapfs on {m.path} logged {bad[0]!r}:\n{log}"


@pytest.fixture
def shm(tmp_path):
    """A private mmap_dir shared by the mounts of one test."""
    d = tmp_path / "shm"
    d.mkdir(mode=0o700)
    return str(d)


@pytest.fixture
def mount_factory(tmp_path, shm):
    """mount_factory(*options) -> Mount; every mount is cleaned up."""
    mounts = []

    def start(*args, size="64K", mmap_dir=None, bare=False):
        """bare: exactly these options, without the test's mmap_dir and size."""
        n = len(mounts)
        mnt = str(tmp_path / f"mnt{n}")
        os.mkdir(mnt)
        log = str(tmp_path / f"mmapfs{n}.log")
        opts = [] if bare else ["-o", f"mmap_dir={mmap_dir or shm},size={size}"]
        cmd = [MMAPFS, "-f", *opts, *args, mnt]
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT)
        m = Mount(mnt, proc, log)
        mounts.append(m)
        wait_mounted(mnt, proc, log)
        return m

    yield start
    errors = []
    for m in reversed(mounts):
        try:
            if not m.killed:
                unmount(m)
        except BaseException as e:  # pytest.fail is not an Exception
            errors.append(e)
        finally:
            force_cleanup(m.path, m.proc)
    if errors:
        raise errors[0]


@pytest.fixture
def pair(mount_factory):
    """Two mounts sharing one mmap_dir: the creator's and the attacher's."""
    return mount_factory(), mount_factory()


@pytest.fixture
def chan(pair):
    """A handshaken channel: (creator's dir, attacher's dir, creator, attacher)."""
    c, a = pair
    handshake(c, a)
    return c / "chan", a / "chan", c, a


def sigint_default():
    """preexec_fn for a program a test sends SIGINT (a terminal's Ctrl-C):
    its default action, even where the suite was started in the background
    (a shell's `&` ignores SIGINT, and so does everything started from it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sh(cmd, check=True, **kw):
    """Run a shell command line as a user would type it."""
    kw.setdefault("timeout", 60)
    return subprocess.run(["bash", "-c", cmd], check=check, capture_output=True,
                          text=True, **kw)


def handshake(c, a, name="chan"):
    """Both ends through the whole handshake, with shell commands only."""
    sh(f"mkdir {c / name} {a / name}")
    sh(f"cat {c / name}/capabilities > {a / name}/peer")
    sh(f"cat {a / name}/capabilities > {c / name}/peer")
    wait_state(a, name, "ready")
    wait_state(c, name, "ready")


def wait_state(m, name, state, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        st = m.status(name)
        if st["state"] == state:
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"{m.path}/{name}: state {st['state']}, expected {state}: {st}")
        time.sleep(0.05)


# ---- two ends on declared shared files, as over ivshmem (test_restart.py,
# test_handshake_again.py) ----

SHARED_RING = 64 << 10


def write_conf(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def shared_files(tmp_path):
    """Two shared files, as the two directions of an ivshmem device."""
    d = tmp_path / "dev"
    d.mkdir(mode=0o700)
    for name in ("up", "down"):
        with open(d / name, "wb") as f:
            f.truncate(SHARED_RING + 4096)
    return str(d / "up"), str(d / "down")


@pytest.fixture
def shared_confs(tmp_path, shared_files):
    """The creator's and the attacher's configurations of channel "vm",
    naming the shared files."""
    up, down = shared_files
    c = write_conf(tmp_path / "c.conf", f"""
        channels = ( {{ name = "vm"; read_file = "{up}"; write_file = "{down}"; }} );
        """)
    a = write_conf(tmp_path / "a.conf", f"""
        channels = ( {{ name = "vm"; role = "attacher";
                       read_file = "{down}"; write_file = "{up}"; }} );
        """)
    return c, a


def leave_unread(m, n, name="vm"):
    """Write n bytes that nobody will read (the peer is about to die)."""
    fd = os.open(os.path.join(m.path, name, "data"), os.O_WRONLY)
    try:
        assert os.write(fd, b"S" * n) == n
    finally:
        os.close(fd)


def nothing_to_read(m, name="vm"):
    fd = os.open(os.path.join(m.path, name, "data"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
    finally:
        os.close(fd)


def areas_in(d):
    """The area files in an mmap_dir (not the daemons' lock files)."""
    return sorted(f for f in os.listdir(d) if f.endswith(".mmap"))


def which(prog):
    return shutil.which(prog)


# ---- handshake text helpers (tests/py/test_handshake.py, test_tree.py) ----

def read_text(path):
    with open(path) as f:
        return f.read()


def kv_text(d):
    """The key=value text of an ordered dict, one line each."""
    return "".join(f"{k}={v}\n" for k, v in d.items())


def finish_handshake(c, a, name="chan"):
    """From two fresh channels (or after refused attempts): offer, answer, ready."""
    sh(f"cat {c / name}/capabilities > {a / name}/peer")
    sh(f"cat {a / name}/capabilities > {c / name}/peer")
    wait_state(a, name, "ready")
    wait_state(c, name, "ready")
