#!/usr/bin/python3
"""mmapfs between a QEMU host and its guest over real ivshmem-plain devices.

Boots a Debian kernel with a busybox initramfs (mkinitramfs.sh) under QEMU,
mounts mmapfs on both sides from configuration files, runs the handshake over
a serial port (and once more: nothing to do), streams 64 MiB each way checked
by sha256, and checks a dead peer: the monitor's `stop` mid-stream and
SIGKILL of the guest's daemon must fail the host's blocked reader with
ECONNRESET and its writer with EPIPE within 2 s while the host daemon keeps
serving; after `cont` the guest's own writer and reader are told too, both
statuses count the failure, and the next streams carry no byte of the
failed ones (format version 2); the restarted guest daemon handshakes again
with the same scripts. An ivshmem-doorbell device (the default layout's
second) has the host daemon as its ivshmem server and the guest's daemon
taking its interrupts through vfio-pci (a q35 machine with QEMU's
intel-iommu), both with polling of its waits off: a message each way
arrives all the same, so the doorbells are what woke them, also to and from
the build's libmmapfs on either side (its daemon rings and waits for it);
it streams both
ways, its doorbell is heard after the guest daemon's restart, and the host
daemon restarts with QEMU left running (the channel goes on by polling).

    tests/vm/run.sh [MMAPFS]        (root; installs the tools it needs, and
                                    unpacks Debian's kernel into build-vm/)
    tests/vm/vmtest.py --mmapfs PATH --work DIR [--kernel-root DIR]
                       [--accel auto|kvm|tcg] [--layout two-devices|one-device|doorbell]
                       [--bench]

The guest's kernel is ROOT/boot/vmlinuz-KVER, its fuse.ko under
ROOT/lib/modules/KVER (or ROOT/usr/lib/modules/KVER), ROOT being
--kernel-root: run.sh passes the one it unpacked from Debian's
linux-image-amd64 (apt-get download, dpkg-deb), which is never installed on
this host; the default, /, takes this host's own installed kernel.

Prints PASS/FAIL lines and ends with "N passed, N failed"; exits 1 on any
failure. Every wait is bounded, and QEMU, the mounts and the /dev/shm files
are gone when it returns, whatever happened.

The guest's serial ports: ttyS0 the kernel console (WORK/console.log),
ttyS1 the handshake (a unix socket; contrib/handshake.py on the host,
contrib/handshake-serial.sh in the guest), ttyS2 a command shell the host drives.
"""
import argparse
import errno
import glob
import hashlib
import multiprocessing
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
HANDSHAKE = os.path.join(TOP, "contrib", "handshake.py")
PYTHON = sys.executable or "/usr/bin/python3"
MiB = 1 << 20
STREAM = 64 * MiB          # each way, on the main channel
SMALL = 4 * MiB            # other channels, and after a stall
DEAD_LIMIT = 2.0           # seconds for a blocked call to fail once the peer is gone
GUEST_MNT = "/mnt/mm"
GUEST_CONF = "/etc/mmapfs.conf"
BAD_LOG = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|"
                     r"==\d+==ERROR|\bBUG\b", re.I)


class Fail(Exception):
    """A check failed; the message says what and why."""


class Stop(BaseException):
    """A signal or the overall time limit: clean up and leave."""


# ---- the layout: which device carries which channel ----
#
# The one place that says what the ivshmem devices are and which channel
# uses what; the host's and the guest's configurations are both made from it
# (configs()). A window is (device, offset, size): offset and size None mean
# the whole device, as mmapfs supports today. The first channel is the main
# one (64 MiB streams, the dead-peer checks); any other gets a small stream
# each way.

# Devices whose index is here are ivshmem-doorbell devices (the others are
# ivshmem-plain): the host daemon is their ivshmem server (ivshmem_server,
# ivshmem_memory) with polling of their waits switched off
# (ivshmem_poll = false), so that only a doorbell wakes the host; the
# guest rings through the device's BAR0 (ivshmem_device).
DOORBELL_DEVS = {"one-device": {1}, "two-devices": set(), "doorbell": {0}}
BELL_SIZE = 4 * MiB
# The doorbell device's MSI-X vectors (QEMU's vectors=) and the server's
# eventfds a peer (ivshmem_vectors): each side shares them out between its
# doorbell channels in the order of its configuration.
BELL_VECTORS = 2


def layout(name):
    """-> (device sizes in PCI order, [(channel, host's write window,
    host's read window)])."""
    if name == "doorbell":
        # one ivshmem-doorbell device alone: both directions of "vm"
        return [BELL_SIZE * 16], [("vm", (0, 0, 16 * MiB), (0, 16 * MiB, 16 * MiB))]
    if name == "two-devices":
        # Today: one device is one area, so a duplex channel takes two.
        return [64 * MiB, 64 * MiB], [("vm", (0, None, None), (1, None, None))]
    if name == "one-device":
        # One device carrying both directions of "vm" and a second channel,
        # as windows of the device's file (read_offset/read_size,
        # write_offset/write_size).
        # And a second device, an ivshmem-doorbell one, carrying "bell"
        # and "bell2" (vectors 0 and 1).
        return [256 * MiB, BELL_SIZE], [
            ("vm", (0, 0, 64 * MiB), (0, 64 * MiB, 64 * MiB)),
            ("vm2", (0, 128 * MiB, MiB), (0, 129 * MiB, MiB)),
            ("bell", (1, 0, MiB), (1, MiB, MiB)),
            ("bell2", (1, 2 * MiB, MiB), (1, 3 * MiB, MiB))]
    raise SystemExit(f"unknown layout {name!r}")


def configs(lay, host_files, guest_bars, host_mmap_dir, bells=(), server=None):
    """The host's and the guest's configuration texts. The host creates and
    offers; the guest attaches, its read window being the host's write
    window and the other way round. bells: the doorbell devices' indexes
    (one at most: a daemon serves one), server: the host's socket."""
    _, chans = lay
    bell = min(bells) if bells else None

    def one(role, files, mmap_dir, swap):
        out = [f'mmap_dir = "{mmap_dir}";'] if mmap_dir else []
        # the doorbell's waits are not polled: only doorbells wake them
        # (VMTEST_DOORBELL_POLL=on: they are, as by default; for the bench)
        nopoll = [] if os.environ.get("VMTEST_DOORBELL_POLL") == "on" else \
            ["ivshmem_poll = false;"]
        if bell is not None and role == "creator":
            out += [f'ivshmem_server = "{server}";', f'ivshmem_memory = "{files[bell]}";',
                    f"ivshmem_vectors = {BELL_VECTORS};", *nopoll]
        elif bell is not None:
            out += [f'ivshmem_device = "{os.path.dirname(files[bell])}";', *nopoll]
        out += ["channels = ("]
        for i, (name, wr, rd) in enumerate(chans):
            if swap:
                wr, rd = rd, wr
            keys = [f'name = "{name}";', f'role = "{role}";']
            for key, (dev, off, size) in (("write", wr), ("read", rd)):
                keys.append(f'{key}_file = "{files[dev]}";')
                if off is not None:
                    keys.append(f"{key}_offset = {off}; {key}_size = {size};")
            out.append("  { " + " ".join(keys) + " }" + ("," if i < len(chans) - 1 else ""))
        out.append(");")
        return "\n".join(out) + "\n"

    # the guest's areas are all declared: it uses no mmap_dir (it takes its
    # default, /dev/shm/mmapfs-0, at start all the same)
    return (one("creator", host_files, host_mmap_dir, False),
            one("attacher", guest_bars, None, True))


def timed_trips(trip, back, idle):
    """Round trips, trip() -> ms each: 10 to warm up, `back` back to back,
    then `idle` each after 20 ms idle. -> (back to back, idle), sorted."""
    for _ in range(10):
        trip()
    b2b = sorted(trip() for _ in range(back))
    idl = []
    for _ in range(idle):
        time.sleep(0.02)
        idl.append(trip())
    return b2b, sorted(idl)


# ---- output ----

class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, name, detail=""):
        self.passed += 1
        print(f"PASS: {name}" + (f" ({detail})" if detail else ""), flush=True)

    def bad(self, name, why):
        self.failed += 1
        print(f"FAIL: {name}: {why}", flush=True)

    def check(self, name, fn, *args):
        """Run one check: PASS with what it returns, FAIL with its Fail."""
        try:
            detail = fn(*args)
        except Fail as e:
            self.bad(name, e)
            return False
        self.ok(name, detail or "")
        return True


def info(msg):
    print(f"  {msg}", flush=True)


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"({path}: {e.strerror})"


def wait_for(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(step)


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            out[k] = v
    return out


# ---- host-side readers and writers, in child processes ----
#
# A call blocked in a FUSE request can only be ended by killing its process,
# so each stream end on the host is a forked child, killed if it overstays.

def _child_write(path, src, limit, moved, conn):
    res = {"bytes": 0, "errno": 0, "t_end": 0.0}
    chunk = b"\0" * MiB
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            f = open(src, "rb") if src else None
            while res["bytes"] < limit:
                buf = f.read(MiB) if f else chunk[:min(MiB, limit - res["bytes"])]
                if not buf:
                    break
                view = memoryview(buf)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    res["bytes"] += n
                    moved.value = res["bytes"]
        finally:
            os.close(fd)
    except OSError as e:
        res["errno"] = e.errno
    res["t_end"] = time.monotonic()
    conn.send(res)


def _child_read(path, moved, conn):
    res = {"bytes": 0, "errno": 0, "t_end": 0.0, "t_first": 0.0}
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                buf = os.read(fd, MiB)
                if not buf:
                    break
                if not res["t_first"]:
                    res["t_first"] = time.monotonic()
                h.update(buf)
                res["bytes"] += len(buf)
                moved.value = res["bytes"]
        finally:
            os.close(fd)
    except OSError as e:
        res["errno"] = e.errno
    res["t_end"] = time.monotonic()
    res["sha256"] = h.hexdigest()
    conn.send(res)


class Job:
    """A host reader or writer of a channel's data file."""
    live = []
    ctx = multiprocessing.get_context("fork")

    def __init__(self, fn, *args):
        self.moved = self.ctx.Value("q", 0, lock=False)
        self.rx, tx = self.ctx.Pipe(duplex=False)
        self.proc = self.ctx.Process(target=fn, args=(*args, self.moved, tx), daemon=True)
        self.t_start = time.monotonic()
        self.proc.start()
        tx.close()
        self.res = None
        Job.live.append(self)

    @classmethod
    def write(cls, path, src=None, limit=1 << 62):
        return cls(_child_write, path, src, limit)

    @classmethod
    def read(cls, path):
        return cls(_child_read, path)

    def result(self, timeout):
        """Its outcome, or None if it is still running after timeout s."""
        if self.res is None and self.rx.poll(timeout):
            try:
                self.res = self.rx.recv()
            except EOFError:
                self.res = {"bytes": self.moved.value, "errno": -1, "t_end": time.monotonic()}
            self.proc.join(5)
        return self.res

    def kill(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    @classmethod
    def kill_all(cls):
        for j in cls.live:
            j.kill()
        cls.live = []


def errname(n):
    return errno.errorcode.get(n, str(n)) if n > 0 else ("none" if n == 0 else "died")


# ---- QEMU and the guest ----

def kvm_works(kernel, work):
    """Boot the kernel without a root under KVM: it must reach its panic
    (QEMU then exits, -no-reboot) within 20 s. A nested /dev/kvm that
    cannot run a guest aborts or hangs here instead."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    log = os.path.join(work, "kvm-probe.log")
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256M",
           "-nographic", "-nodefaults", "-no-reboot", "-kernel", kernel,
           "-append", "console=ttyS0 panic=-1", "-serial", f"file:{log}"]
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return "Kernel panic" in tail(log, 200)


class Guest:
    def __init__(self, work, kernel, initrd, accel, dev_files, dev_sizes, bells=(),
                 server=None):
        self.work = work
        self.accel = accel
        self.sock = {n: os.path.join(work, f"{n}.sock") for n in ("handshake", "control", "monitor")}
        self.console = os.path.join(work, "console.log")
        # a doorbell device's interrupts reach the guest's daemon through
        # VFIO, which needs an IOMMU: q35 and its intel-iommu (first)
        iommu = ["-machine", "q35", "-device", "intel-iommu"] if bells else []
        cmd = ["qemu-system-x86_64", "-accel", accel, "-m", "512M", "-smp", "1",
               "-nographic", "-nodefaults", "-no-reboot", *iommu,
               "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1" + (" intel_iommu=on" if bells else ""),
               "-chardev", f"file,id=con,path={self.console}", "-serial", "chardev:con",
               "-chardev", f"socket,id=hs,path={self.sock['handshake']},server=on,wait=off",
               "-serial", "chardev:hs",
               "-chardev", f"socket,id=ctl,path={self.sock['control']},server=on,wait=off",
               "-serial", "chardev:ctl",
               "-monitor", f"unix:{self.sock['monitor']},server=on,wait=off",
               "-pidfile", os.path.join(work, "qemu.pid")]
        if accel == "kvm":
            cmd[3:3] = ["-cpu", "host"]
        for i, (path, size) in enumerate(zip(dev_files, dev_sizes)):
            # fixed PCI slots: the guest takes the devices in address order
            if i in bells:
                # the memory comes from the server, the host's daemon
                cmd += ["-chardev", f"socket,id=ivs{i},path={server}",
                        "-device", f"ivshmem-doorbell,chardev=ivs{i},vectors={BELL_VECTORS},addr={4 + i:#x}"]
                continue
            cmd += ["-object", f"memory-backend-file,id=shm{i},share=on,mem-path={path},"
                    f"size={size}",
                    "-device", f"ivshmem-plain,memdev=shm{i},addr={4 + i:#x}"]
        self.cmd = cmd
        self.proc = None
        self.ctl = None
        self.buf = b""
        self.seq = 0
        self.wedged = None

    def start(self, timeout):
        """Start QEMU and wait for the guest's command shell: the boot time."""
        t0 = time.monotonic()
        with open(os.path.join(self.work, "qemu.log"), "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        # connect before the guest writes: QEMU drops output nobody reads
        self.ctl = self._connect(self.sock["control"], 10)
        self._until(b"\n@@ready\n", timeout, "the guest's command shell")
        self.buf = b""
        return time.monotonic() - t0

    def _connect(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except OSError as e:
                s.close()
                if self.proc.poll() is not None:
                    raise Fail(f"QEMU exited with {self.proc.returncode}: "
                               f"{tail(os.path.join(self.work, 'qemu.log'))}")
                if time.monotonic() > deadline:
                    raise Fail(f"cannot connect to {path}: {e.strerror}")
                time.sleep(0.05)

    def _until(self, marker, timeout, what):
        """Read the command line until marker; -> what came before it."""
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail(f"no answer from {what} within {timeout} s")
            r, _, _ = select.select([self.ctl], [], [], min(left, 1.0))
            if r:
                data = self.ctl.recv(65536)
                if not data:
                    raise Fail(f"QEMU closed the command line (exit {self.proc.poll()})")
                self.buf += data
            elif self.proc.poll() is not None:
                raise Fail(f"QEMU exited with {self.proc.returncode}")
        out, _, self.buf = self.buf.partition(marker)
        return out

    def sh(self, cmd, timeout=30, check=True):
        """Run a busybox shell command in the guest: -> (status, output)."""
        if self.wedged:
            raise Fail(f"the guest's command line is stuck since: {self.wedged}")
        self.seq += 1
        # in a subshell: an `exit` in cmd must not end the command line
        self.ctl.sendall(f"( {cmd}\n)\nprintf '\\n@@{self.seq}:%s\\n' \"$?\"\n".encode())
        try:
            out = self._until(f"\n@@{self.seq}:".encode(), timeout, f"guest command {cmd!r}")
            rest = self._until(b"\n", 5, "the guest's command line")
        except Fail:
            self.wedged = cmd
            raise
        rc = int(rest)
        text = out.decode(errors="replace").strip("\n")
        if check and rc != 0:
            raise Fail(f"guest: {cmd!r} failed ({rc}): {text[-800:]}")
        return rc, text

    def monitor(self, command):
        """One HMP command on QEMU's monitor; -> its output."""
        s = self._connect(self.sock["monitor"], 5)
        s.settimeout(10)
        try:
            buf = b""
            while not buf.endswith(b"(qemu) "):
                buf += s.recv(4096) or b"(qemu) "
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"(qemu) "):
                data = s.recv(4096)
                if not data:
                    break
                buf += data
            return buf.decode(errors="replace")
        except socket.timeout:
            raise Fail(f"QEMU's monitor did not answer {command!r}")
        finally:
            s.close()

    def kill(self):
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ---- mmapfs on the host ----

class HostMount:
    def __init__(self, mmapfs, conf, mnt, log):
        self.mnt, self.log = mnt, log
        os.makedirs(mnt, exist_ok=True)
        with open(log, "w") as f:
            self.proc = subprocess.Popen([mmapfs, "-d", "-c", conf, mnt],
                                         stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT)
        with open(os.path.join(os.path.dirname(mnt), "host-mmapfs.pid"), "w") as f:
            f.write(f"{self.proc.pid}\n")     # for run.sh's trap
        if not wait_for(lambda: mounted(mnt) or self.proc.poll() is not None, 10) \
                or not mounted(mnt):
            raise Fail(f"host mmapfs did not mount (exit {self.proc.poll()}): {tail(log)}")

    def chan(self, name):
        return os.path.join(self.mnt, name)

    def status(self, name):
        return read_kv(os.path.join(self.mnt, name, "status"))

    def unmount(self):
        """Unmount and reap; -> the daemon's exit status (None: it had to
        be killed)."""
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], stderr=subprocess.DEVNULL)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], stderr=subprocess.DEVNULL)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


# ---- the test ----

class VMTest:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.rep = Report()
        self.lay = layout(args.layout)
        self.tag = os.path.basename(self.work.rstrip("/"))
        self.dev_files = [f"/dev/shm/{self.tag}-dev{i}" for i in range(len(self.lay[0]))]
        self.chans = [c[0] for c in self.lay[1]]
        self.bells = DOORBELL_DEVS.get(args.layout, set())
        self.server = os.path.join(self.work, "ivshmem.sock")
        # the channels on a doorbell device
        self.bell_chans = [c[0] for c in self.lay[1] if c[1][0] in self.bells]
        self.guest = None
        self.host = None
        self.said = ("", "")     # what the last handshake said: host's log, guest's

    # -- pieces --

    def gchan(self, name):
        return f"{GUEST_MNT}/{name}"

    def guest_mount(self):
        g = self.guest
        g.sh(f"mkdir -p {GUEST_MNT} /tmp/mmapfs; "
             f"mmapfs -d -c {GUEST_CONF} {GUEST_MNT} </dev/null >>/tmp/mmapfs.log 2>&1 & "
             "echo $! > /tmp/mmapfs.pid")
        rc, _ = g.sh(f"i=0; until grep -q ' {GUEST_MNT} fuse' /proc/mounts; do "
                     "kill -0 $(cat /tmp/mmapfs.pid) 2>/dev/null || exit 1; "
                     "i=$((i+1)); [ $i -le 100 ] || exit 1; sleep 0.1; done", check=False)
        if rc != 0:
            raise Fail("guest mmapfs did not mount: " + g.sh("tail -20 /tmp/mmapfs.log")[1])

    def handshake(self, name):
        """The host's contrib/handshake.py against the guest's busybox
        script, over the serial port."""
        log = os.path.join(self.work, f"handshake-{name}.log")
        with open(log, "w") as f:
            host = subprocess.Popen([PYTHON, HANDSHAKE, "-v", "--role", "creator",
                                     "--timeout", "60",
                                     "--connect", f"unix:{self.guest.sock['handshake']}",
                                     self.host.chan(name)],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        try:
            # QEMU drops what the guest sends while nobody is connected
            if not wait_for(lambda: "connected to" in tail(log) or host.poll() is not None, 10):
                raise Fail(f"contrib/handshake.py did not connect: {tail(log, 5).strip()}")
            rc, out = self.guest.sh(f"handshake-serial.sh {self.gchan(name)} /dev/ttyS1 60 "
                                    "</dev/null 2>&1", timeout=90, check=False)
            try:
                hrc = host.wait(30)
            except subprocess.TimeoutExpired:
                hrc = None
        finally:
            if host.poll() is None:
                host.kill()
                host.wait()
        self.said = (tail(log, 20), out)
        if rc != 0 or hrc != 0:
            host_said = " / ".join(tail(log, 5).strip().splitlines())
            raise Fail(f"guest said {out!r}; host (exit {hrc}): {host_said}")
        st = self.host.status(name)
        if st.get("state") != "ready":
            raise Fail(f"host state {st.get('state')}: {st.get('error')}")
        return "state=ready on both sides"

    def handshake_again(self, name):
        """Both scripts run again on the ready pair: nothing to do, said on
        both sides, the same tokens."""
        g, gc = self.guest, self.gchan(name)
        with open(os.path.join(self.host.chan(name), "token")) as f:
            host_tokens = f.read()
        _, guest_tokens = g.sh(f"cat {gc}/token")
        self.handshake(name)
        nothing = "already ready, peer alive: nothing to do"
        host_said, guest_said = self.said
        if nothing not in host_said or nothing not in guest_said:
            raise Fail(f"not both said {nothing!r}: host {host_said.strip()!r}, "
                       f"guest {guest_said!r}")
        with open(os.path.join(self.host.chan(name), "token")) as f:
            same = f.read() == host_tokens
        same = same and g.sh(f"cat {gc}/token")[1] == guest_tokens
        if not same:
            raise Fail("the tokens changed")
        return "nothing to do on both sides, the same tokens"

    def host_to_guest(self, name, size, src):
        """Stream size bytes of src into the host's data; the guest copies
        them to a file and checks the sha256. -> MB/s."""
        g = self.guest
        want = sha256_file(src)
        t0 = time.monotonic()
        w = Job.write(os.path.join(self.host.chan(name), "data"), src)
        rc, out = g.sh(f"timeout 120 dd if={self.gchan(name)}/data of=/tmp/in.bin bs=1M "
                       "</dev/null 2>&1", timeout=150, check=False)
        t1 = time.monotonic()
        res = w.result(5)
        if res is None:
            w.kill()
            werr = "the host's writer was still blocked 5 s after the guest's reader ended"
        else:
            werr = f"the host's writer wrote {res['bytes']} bytes, errno {errname(res['errno'])}"
        _, got = g.sh("sha256sum /tmp/in.bin; wc -c < /tmp/in.bin; rm -f /tmp/in.bin",
                      check=False)
        got_sum, got_len = (got.split() + ["", "", ""])[0], (got.split() + ["", "", ""])[2]
        if rc != 0 or got_sum != want:
            _, why = g.sh("grep -E 'Bad address|failed|error' /tmp/mmapfs.log | tail -2",
                          check=False)
            raise Fail(f"guest dd exit {rc}: {out.strip()[-300:]!r}; guest got {got_len} "
                       f"of {size} bytes, sha256 {'matches' if got_sum == want else 'differs'}; "
                       f"{werr}" + (f"; the guest's mmapfs logged: {why!r}" if why else ""))
        return size / (t1 - t0) / 1e6

    def guest_to_host(self, name, size):
        """The guest writes size random bytes into its data; the host reads
        them and checks the sha256. -> MB/s."""
        g = self.guest
        g.sh(f"head -c {size} /dev/urandom > /tmp/out.bin", timeout=120)
        _, want = g.sh("sha256sum /tmp/out.bin", timeout=120)
        want = want.split()[0]
        r = Job.read(os.path.join(self.host.chan(name), "data"))
        t0 = time.monotonic()
        rc, out = g.sh(f"timeout 120 dd if=/tmp/out.bin of={self.gchan(name)}/data bs=1M "
                       "</dev/null 2>&1", timeout=150, check=False)
        res = r.result(10)
        g.sh("rm -f /tmp/out.bin")
        if res is None:
            r.kill()
            raise Fail(f"guest dd exit {rc} ({out.strip()[-200:]!r}); the host's reader "
                       f"had {r.moved.value} bytes and no end of stream 10 s later")
        if rc != 0 or res["errno"] or res["bytes"] != size or res["sha256"] != want:
            raise Fail(f"guest dd exit {rc} ({out.strip()[-200:]!r}); host read "
                       f"{res['bytes']} of {size} bytes, errno {errname(res['errno'])}, sha256 "
                       f"{'matches' if res['sha256'] == want else 'differs'}")
        return size / (res["t_end"] - t0) / 1e6

    def both_ways(self, name, size):
        self.host_to_guest(name, size, self.small_file)
        self.guest_to_host(name, size)
        return f"{size // MiB} MiB each way, sha256 ok"

    def fifo_both_ways(self, name):
        """The FIFO entries each way: the host's dd into its send, the
        guest's cat of its recv; then the guest's dd (512-byte blocks) into
        its send, the host's cat of its recv. sha256 both."""
        g, host = self.guest, self.host.chan(name)
        want = sha256_file(self.small_file)
        w = subprocess.Popen(["dd", f"if={self.small_file}", f"of={host}/send", "bs=4k",
                              "status=none"])
        rc, out = g.sh(f"timeout 120 cat {self.gchan(name)}/recv | sha256sum", timeout=150,
                       check=False)
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
        if rc != 0 or out.split()[:1] != [want] or w.returncode != 0:
            raise Fail(f"host->guest: guest got {out.strip()!r} (exit {rc}), host dd exit "
                       f"{w.returncode}, want {want}")
        g.sh(f"head -c {SMALL} /dev/urandom > /tmp/f.bin", timeout=120)
        want = g.sh("sha256sum /tmp/f.bin")[1].split()[0]
        r = subprocess.Popen(["sh", "-c", f"sha256sum < {host}/recv"], stdout=subprocess.PIPE,
                             text=True)
        rc, out = g.sh(f"timeout 120 dd if=/tmp/f.bin of={self.gchan(name)}/send bs=512 2>&1; "
                       "rm -f /tmp/f.bin", timeout=150, check=False)
        try:
            got = r.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            r.kill()
            got = r.communicate()[0] + " (no end of file)"
        if rc != 0 or got.split()[:1] != [want]:
            raise Fail(f"guest->host: guest dd exit {rc} ({out.strip()[-200:]!r}), host got "
                       f"{got.strip()!r}, want {want}")
        return f"{SMALL // MiB} MiB each way through send and recv, sha256 ok"

    def dead_fails(self, what, reader, writer, t_dead):
        """The host's blocked reader must get ECONNRESET and its writer
        EPIPE within DEAD_LIMIT s of t_dead."""
        r = reader.result(DEAD_LIMIT + 4)
        w = writer.result(max(0.1, t_dead + DEAD_LIMIT + 4 - time.monotonic()))
        msgs = []
        for job, res, want, role in ((reader, r, errno.ECONNRESET, "reader"),
                                     (writer, w, errno.EPIPE, "writer")):
            if res is None:
                job.kill()
                msgs.append((False, f"{role}: still blocked {DEAD_LIMIT + 4:.0f} s after {what}"))
                continue
            dt = res["t_end"] - t_dead
            ok = res["errno"] == want and dt <= DEAD_LIMIT
            msgs.append((ok, f"{role}: {errname(res['errno'])} after {dt:.2f} s, "
                             f"{res['bytes']} bytes moved"))
        for (ok, msg), role in zip(msgs, ("reader", "writer")):
            want = "ECONNRESET" if role == "reader" else "EPIPE"
            name = f"{what}: host's blocked {role} fails with {want} within {DEAD_LIMIT:.0f} s"
            if ok:
                self.rep.ok(name, msg)
            else:
                self.rep.bad(name, msg)

    def host_serving(self, name):
        if self.host.proc.poll() is not None:
            raise Fail(f"the host daemon exited with {self.host.proc.returncode}")
        st = self.host.status(name)
        if st.get("peer") != "dead":
            raise Fail(f"host status says peer={st.get('peer')}, not dead")
        probe = self.host.chan("probe")
        os.mkdir(probe)
        try:
            pst = read_kv(os.path.join(probe, "status"))
        finally:
            os.rmdir(probe)
        return f"status peer=dead, a new channel made and removed (state={pst.get('state')})"

    # -- the steps --

    def run(self):
        a, rep = self.args, self.rep
        boot = os.path.join(a.kernel_root, "boot")
        kernels = sorted(glob.glob(os.path.join(boot, "vmlinuz-*")),
                         key=lambda p: [int(x) if x.isdigit() else x
                                        for x in re.split(r"(\d+)", p)])
        if not kernels:
            raise Fail(f"no kernel in {boot} (tests/vm/run.sh unpacks Debian's there "
                       "without installing it: apt-get download linux-image-amd64 "
                       "linux-image-VERSION-amd64, dpkg-deb -x; then --kernel-root)")
        kernel = kernels[-1]
        kver = os.path.basename(kernel)[len("vmlinuz-"):]
        modules = os.path.join(a.kernel_root, "lib", "modules")
        if not os.path.isdir(os.path.join(modules, kver)):
            modules = os.path.join(a.kernel_root, "usr", "lib", "modules")
        initrd = os.path.join(self.work, "initrd.cpio")
        # the build's library in the guest, with its test driver
        build = os.path.dirname(os.path.dirname(os.path.abspath(a.mmapfs)))
        self.g_libtest = os.path.join(build, "tests", "lib", "mmapfs-libtest")
        extra = [self.g_libtest]
        if a.bench:
            # the doorbell's floor, without mmapfs (bench_floor)
            extra.append(os.path.join(self.work, "bellprobe"))
            subprocess.run(["cc", "-static", "-O2", "-o", extra[-1],
                            os.path.join(HERE, "..", "..", "contrib", "bench", "bellprobe.c")],
                           check=True)
        subprocess.run([os.path.join(HERE, "mkinitramfs.sh"), initrd, a.mmapfs, kver, modules,
                        *extra], check=True)
        accel = a.accel
        if accel == "auto":
            accel = "kvm" if kvm_works(kernel, self.work) else "tcg"
        info(f"kernel {kver}, accelerator {accel}, layout {a.layout}, mmapfs {a.mmapfs}")

        # test data
        self.big_file = os.path.join(self.work, "h2g.bin")
        self.small_file = os.path.join(self.work, "small.bin")
        with open(self.big_file, "wb") as f:
            f.write(os.urandom(STREAM))
        with open(self.small_file, "wb") as f:
            f.write(os.urandom(SMALL))

        # the devices' files, at their final size: QEMU and mmapfs then
        # agree on it whichever starts first
        for path, size in zip(self.dev_files, self.lay[0]):
            with open(path, "wb") as f:
                f.truncate(size)

        # the host's configuration needs only its own paths: written (and,
        # for a doorbell device, mounted: QEMU connects to its server at
        # start) before the guest boots
        host_conf, _ = configs(self.lay, self.dev_files, self.dev_files,
                               os.path.join(self.work, "host-shm"), self.bells, self.server)
        conf = os.path.join(self.work, "host.conf")
        with open(conf, "w") as f:
            f.write(host_conf)

        def mount_host():
            self.host = HostMount(a.mmapfs, conf, os.path.join(self.work, "host"),
                                  os.path.join(self.work, "host-mmapfs.log"))
            return f"ivshmem server on {self.server}" if self.bells else ""
        if self.bells and not rep.check("host mmapfs mounts first: the ivshmem server for "
                                        "QEMU's ivshmem-doorbell", mount_host):
            raise Fail("cannot go on without the host's mount")

        self.guest = g = Guest(self.work, kernel, initrd, accel, self.dev_files, self.lay[0],
                               self.bells, self.server)
        boot = g.start(a.boot_timeout)
        rep.ok("guest boots", f"{boot:.1f} s under {accel}")
        self.figures = {"boot_s": boot, "accel": accel}

        # the devices, by vendor:device
        _, out = g.sh("for d in /sys/bus/pci/devices/*; do "
                      "[ \"$(cat $d/vendor):$(cat $d/device)\" = 0x1af4:0x1110 ] || continue; "
                      "if [ -e $d/resource2_wc ]; then echo $d/resource2_wc; "
                      "else echo $d/resource2; fi; done")
        bars = out.split()
        if len(bars) != len(self.dev_files):
            raise Fail(f"the guest sees {len(bars)} ivshmem devices (1af4:1110), "
                       f"not {len(self.dev_files)}: {bars}")
        rep.ok("guest finds the ivshmem devices by 1af4:1110", " ".join(bars))

        for i in sorted(self.bells):
            dev = self.bell_dev = os.path.dirname(bars[i])
            rep.check(f"guest binds vfio-pci to the doorbell device {os.path.basename(dev)}",
                      self.bind_vfio, dev)
        _, guest_conf = configs(self.lay, self.dev_files, bars,
                                os.path.join(self.work, "host-shm"), self.bells, self.server)
        g.sh(f"cat > {GUEST_CONF} <<'EOF'\n{guest_conf}EOF")
        with open(os.path.join(self.work, "guest.conf"), "w") as f:
            f.write(guest_conf)

        def mount_both():
            if not self.host:
                mount_host()
            self.guest_mount()
            _, ls = g.sh(f"ls {GUEST_MNT}")
            missing = [c for c in self.chans
                       if c not in ls.split() or not os.path.isdir(self.host.chan(c))]
            if missing:
                raise Fail(f"channels missing: {missing}")
            return "channels " + ", ".join(self.chans)
        if not rep.check("mmapfs mounts on host and guest from configuration files",
                         mount_both):
            raise Fail("cannot go on without both mounts")

        for name in self.chans:
            if not rep.check(f"handshake over the serial port: {name}", self.handshake, name):
                raise Fail("cannot go on without a handshake")

        main = self.chans[0]
        if self.args.bench:
            self.bench()
            return
        rep.check(f"handshake run again on the ready pair: {main}", self.handshake_again, main)
        for what, fn, args, key in (
                ("host->guest", self.host_to_guest, (main, STREAM, self.big_file), "h2g"),
                ("guest->host", self.guest_to_host, (main, STREAM), "g2h")):
            def stream(fn=fn, args=args, key=key):
                mbs = fn(*args)
                self.figures[key] = mbs
                return f"{mbs:.0f} MB/s"
            rep.check(f"{what} {STREAM // MiB} MiB, sha256: {main}", stream)
        for name in self.chans[1:]:
            rep.check(f"both ways, second channel on the device: {name}",
                      self.both_ways, name, SMALL)
        rep.check(f"the FIFO entries both ways: {main}", self.fifo_both_ways, main)
        for name in self.bell_chans:
            self.doorbell_checks(name)

        self.stall(main)
        self.kill_peer(main)
        for name in self.bell_chans:
            def again(name=name):
                if name != main:
                    self.handshake(name)
                return self.bell_g2h(name) + "; " + self.bell_h2g(name)
            rep.check(f"guest daemon restarted: the doorbells still ring both ways: {name}",
                      again)
        for name in self.bell_chans[:1]:
            rep.check(f"host daemon restarted, QEMU left running: the channel goes on by "
                      f"polling: {name}", self.host_restart, name)

    # -- the benchmark (contrib/bench/ivshmem-rtt.sh): round trips --

    def bench(self):
        """64-byte round trips through data: the host writes, an echo in
        the guest (cat of its data into its data) writes back, the host
        reads; back to back, then each after 20 ms idle. Medians, per
        channel: a plain device's (polling both sides) and a doorbell
        device's; the same through the FIFO entries of the first channel
        and the doorbell's."""
        g = self.guest
        back, idle = int(os.environ.get("BENCH_TRIPS", "200")), \
            int(os.environ.get("BENCH_IDLE_TRIPS", "40"))
        rows = []
        def trips(hc, gc, host_w, host_r, guest_r, guest_w):
            """(back to back, after idle), sorted: the host writes host_w
            and reads host_r; the guest's cat reads guest_r into guest_w."""
            info(f"round trips: {hc}/{host_w}, {host_r}")
            g.sh(f"cat {gc}/{guest_r} > {gc}/{guest_w} 2>/tmp/echo.log </dev/null & "
                 "echo $! > /tmp/echo.pid")
            time.sleep(0.5)
            msg = b"m" * 64
            wfd = os.open(os.path.join(hc, host_w), os.O_WRONLY)
            # a first message before the reader opens: the FIFO entry's
            # open waits for a writer, which the daemon is once bytes come
            os.write(wfd, msg)
            rfd = os.open(os.path.join(hc, host_r), os.O_RDONLY)
            left = len(msg)
            while left > 0:
                if not select.select([rfd], [], [], 10)[0]:
                    os.close(wfd)
                    os.close(rfd)
                    raise Fail(f"{host_r}: no echo within 10 s")
                left -= len(os.read(rfd, 4096))

            def trip():
                t0 = time.perf_counter()
                os.write(wfd, msg)
                got = 0
                while got < len(msg):
                    if not select.select([rfd], [], [], 10)[0]:
                        raise Fail(f"{host_r}: no echo within 10 s")
                    n = len(os.read(rfd, 4096))
                    if not n:
                        raise Fail(f"{host_r}: the echo ended")
                    got += n
                return (time.perf_counter() - t0) * 1e3

            try:
                return timed_trips(trip, back, idle)
            finally:
                os.close(wfd)
                g.sh("kill $(cat /tmp/echo.pid) 2>/dev/null; sleep 0.3", check=False)
                os.close(rfd)

        fifo_rows = []
        for name in self.chans:
            gc, hc = self.gchan(name), self.host.chan(name)
            path = os.path.join(hc, "data")
            b2b, idl = trips(hc, gc, "data", "data", "data", "data")
            kind = "doorbell" if name in self.bell_chans else "plain"
            med = lambda v: v[len(v) // 2]
            # what a blocked reader costs while nothing moves: the host's
            # reader (its daemon's CPU), then the guest's (QEMU's CPU)
            secs = float(os.environ.get("BENCH_IDLE_S", "5"))
            r = Job.read(path)
            time.sleep(1.0)
            h0, q0 = self.cpu_s(self.host.proc.pid), self.cpu_s(g.proc.pid)
            time.sleep(secs)
            h1, q1 = self.cpu_s(self.host.proc.pid), self.cpu_s(g.proc.pid)
            r.kill()
            g.sh(f"cat {gc}/data > /dev/null 2>&1 </dev/null & echo $! > /tmp/idle.pid")
            time.sleep(1.0)
            q2 = self.cpu_s(g.proc.pid)
            time.sleep(secs)
            q3 = self.cpu_s(g.proc.pid)
            g.sh("kill $(cat /tmp/idle.pid) 2>/dev/null; sleep 0.3", check=False)
            rows.append((name, kind, med(b2b), b2b[len(b2b) * 9 // 10], med(idl),
                         idl[len(idl) * 9 // 10], (h1 - h0) / secs * 100,
                         (q1 - q0) / secs * 100, (q3 - q2) / secs * 100))
        lib_rows = []
        for name in self.bell_chans[:1]:
            both, reads = self.lib_trips(name, back, idle)
            lib_rows += [(name, "lib-both", *both), (name, "lib-reads", *reads)]
        # the FIFO entries last: from their first use the daemons keep
        # their ends, and a plain channel's keep polling (the CPU above)
        for name in [self.chans[0]] + [n for n in self.bell_chans if n != self.chans[0]]:
            gc, hc = self.gchan(name), self.host.chan(name)
            fb, fi = trips(hc, gc, "send", "recv", "recv", "send")
            fifo_rows.append((name, "doorbell" if name in self.bell_chans else "plain", fb, fi))
        print("BENCH: 64-byte round trips through data, host -> guest echo -> host, "
              f"ms ({back} back to back, {idle} after 20 ms idle; "
              f"{self.figures.get('accel')})", flush=True)
        print("BENCH: channel  device    b2b-median  b2b-p90  idle-median  idle-p90  "
              "idle/b2b  host-rd:daemon%  host-rd:qemu%  guest-rd:qemu%", flush=True)
        for name, kind, bm, b9, im, i9, hd, hq, gq in rows:
            print(f"BENCH: {name:8} {kind:9} {bm:10.2f} {b9:8.2f} {im:12.2f} {i9:9.2f} "
                  f"{im / bm:8.1f}x {hd:16.1f} {hq:14.1f} {gq:15.1f}", flush=True)
        print("BENCH: (the last three: CPU, % of a core, while a reader of data is blocked "
              "and nothing moves: on the host, its daemon's and QEMU's; in the guest, "
              "QEMU's)", flush=True)
        print("BENCH: the FIFO entries (host: send, recv; guest: cat recv > send), ms",
              flush=True)
        for name, kind, fb, fi in fifo_rows:
            m, p9 = (lambda v: v[len(v) // 2]), (lambda v: v[len(v) * 9 // 10])
            print(f"BENCH: {name:8} {kind:9} {m(fb):10.2f} {p9(fb):8.2f} {m(fi):12.2f} "
                  f"{p9(fi):9.2f} {m(fi) / m(fb):8.1f}x", flush=True)
        print("BENCH: the library on the host (its daemon rings and waits for it; guest: "
              "cat data > data), ms: lib-both, the library writes and reads; lib-reads, the "
              "files write, the library reads in a thread (after idle, it has waited 20 ms)",
              flush=True)
        for name, kind, fb, fi in lib_rows:
            m, p9 = (lambda v: v[len(v) // 2]), (lambda v: v[len(v) * 9 // 10])
            print(f"BENCH: {name:8} {kind:9} {m(fb):10.2f} {p9(fb):8.2f} {m(fi):12.2f} "
                  f"{p9(fi):9.2f} {m(fi) / m(fb):8.1f}x", flush=True)
        for name in self.bell_chans:
            st = self.host.status(name)
            print(f"BENCH: doorbells: host rang {st.get('doorbell.rung')}, heard "
                  f"{st.get('doorbell.heard')}, host polling {st.get('doorbell.poll')}",
                  flush=True)
        if self.bell_chans:
            fb, fi = self.bench_floor(back, idle)
            m, p9 = (lambda v: v[len(v) // 2]), (lambda v: v[len(v) * 9 // 10])
            print("BENCH: the doorbell alone, without mmapfs (a peer of the host's server "
                  "rings the guest's vector 0; bellprobe in the guest, through VFIO, rings "
                  "back), ms", flush=True)
            print(f"BENCH: {'-':8} {'doorbell':9} {m(fb):10.3f} {p9(fb):8.3f} {m(fi):12.3f} "
                  f"{p9(fi):9.3f} {m(fi) / m(fb):8.1f}x", flush=True)
        self.rep.ok("benchmark: round trips measured")

    def lib_trips(self, name, back, idle):
        """64-byte round trips as bench()'s, the host's end being the
        build's libmmapfs (contrib/python/mmapfs.py; a build without
        sanitizers, as the bench's is): writing and reading, then reading
        only, in a thread that stays blocked between trips. -> two pairs
        (back to back, after idle)."""
        g, gc = self.guest, self.gchan(name)
        build = os.path.dirname(os.path.dirname(os.path.abspath(self.args.mmapfs)))
        os.environ.setdefault("MMAPFS_LIB", os.path.join(build, "core", "lib", "libmmapfs.so"))
        sys.path.insert(0, os.path.join(TOP, "contrib", "python"))
        import mmapfs
        info(f"round trips: the library on {name}")
        msg = b"m" * 64

        def echo(on):
            """The guest's echo started, or stopped (its stream then ends,
            and with it the one our reader left)."""
            g.sh(f"cat {gc}/data > {gc}/data 2>/tmp/echo.log </dev/null & "
                 "echo $! > /tmp/echo.pid" if on else
                 "kill $(cat /tmp/echo.pid) 2>/dev/null; sleep 0.3", check=False)
            time.sleep(0.5 if on else 0)

        def trip():
            t0 = time.perf_counter()
            ch.write(msg)
            got = 0
            while got < len(msg):
                n = len(ch.read(4096))
                if not n:
                    raise Fail(f"{name}: the echo ended")
                got += n
            return (time.perf_counter() - t0) * 1e3

        echo(True)
        ch = mmapfs.open(self.host.chan(name), "rw")
        try:
            both = timed_trips(trip, back, idle)
        finally:
            ch.close()
            echo(False)
        echo(True)
        # the files write, the library reads in a thread of its own: after
        # idle it has waited the 20 ms (a futex wait's bound grows meanwhile)
        wfd = os.open(os.path.join(self.host.chan(name), "data"), os.O_WRONLY)
        ch = mmapfs.open(self.host.chan(name), "r")
        came = threading.Semaphore(0)
        times = []

        def reader():
            got = 0
            while True:
                n = len(ch.read(4096))
                if not n:
                    return
                got += n
                while got >= len(msg):
                    got -= len(msg)
                    times.append(time.perf_counter())
                    came.release()

        def trip_files():
            t0 = time.perf_counter()
            os.write(wfd, msg)
            if not came.acquire(timeout=10):
                raise Fail(f"{name}: no echo to the library within 10 s")
            return (times[-1] - t0) * 1e3

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            blocked = timed_trips(trip_files, back, idle)
        finally:
            os.close(wfd)
            echo(False)
            t.join(10)
            ch.close()
        return both, blocked

    def bench_floor(self, back, idle):
        """The floor of a doorbell round trip on this VM: the guest's
        daemon stopped (VFIO is one process's), contrib/bench/bellprobe
        takes the device's interrupts and rings back; this joins the host
        daemon's ivshmem server as a further peer, rings the guest and
        waits on its own eventfd. -> (back to back, after 20 ms idle),
        sorted, ms."""
        g = self.guest
        g.sh(f"umount -l {GUEST_MNT}; i=0; while kill -0 $(cat /tmp/mmapfs.pid) 2>/dev/null; "
             "do i=$((i+1)); [ $i -le 100 ] || break; sleep 0.1; done", check=False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.server)
        s.settimeout(5)
        peers, me = {}, None

        def msg():
            data, fds, _, _ = socket.recv_fds(s, 8, 1)
            return int.from_bytes(data, "little", signed=True), (fds[0] if fds else None)
        msg()                                   # the version
        me = msg()[0]
        os.close(msg()[1])                      # the memory
        while len(peers.get(me, [])) < BELL_VECTORS:
            pid, fd = msg()
            peers.setdefault(pid, []).append(fd)
        guest = [p for p in peers if p not in (0, me)][0]
        g.sh(f"bellprobe {self.bell_dev} {me} > /tmp/probe.log 2>&1 & "
             "echo $! > /tmp/probe.pid; sleep 0.5")
        _, out = g.sh("cat /tmp/probe.log")
        if "ready" not in out:
            raise Fail(f"bellprobe: {out.strip()}")
        ring, mine = peers[guest][0], peers[me][0]

        def trip():
            t0 = time.perf_counter()
            os.write(ring, (1).to_bytes(8, "little"))
            if not select.select([mine], [], [], 10)[0]:
                raise Fail("bellprobe did not ring back within 10 s")
            os.read(mine, 8)
            return (time.perf_counter() - t0) * 1e3
        try:
            return timed_trips(trip, back, idle)
        finally:
            g.sh("kill $(cat /tmp/probe.pid)", check=False)
            s.close()
            for fds in peers.values():
                for fd in fds:
                    os.close(fd)

    @staticmethod
    def cpu_s(pid):
        """A process's CPU time so far, all threads, in s."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- doorbells (an ivshmem-doorbell device, the host daemon its server) --

    def doorbell_checks(self, name):
        """The host's polling of the device's waits is off: a message from
        the guest reaches the host's blocked reader only by the doorbell."""
        g, rep = self.guest, self.rep

        def setup():
            st = self.host.status(name)
            _, out = g.sh(f"grep ^doorbell {self.gchan(name)}/status")
            gst = dict(line.split("=", 1) for line in out.split())
            if (st.get("doorbell"), st.get("doorbell.peers"), st.get("doorbell.poll")) != \
                    ("ivshmem-server", "1", "off"):
                raise Fail(f"host status: {st}")
            if gst.get("doorbell") != "ivshmem-guest" or gst.get("doorbell.id") in (None, "0") \
                    or gst.get("doorbell.hears") != "vfio-msix":
                raise Fail(f"guest status: {gst}")
            # both sides share their vectors out in the order of the channels
            vec = str(self.bell_chans.index(name) % BELL_VECTORS)
            for who, d in (("host", st), ("guest", gst)):
                if (d.get("doorbell.vectors"), d.get("doorbell.vector")) != \
                        (str(BELL_VECTORS), vec):
                    raise Fail(f"{who}: vectors {d.get('doorbell.vectors')}, this channel's "
                               f"{d.get('doorbell.vector')}, expected {BELL_VECTORS} and {vec}")
            return (f"host: server of 1 peer, polling off; guest: peer {gst['doorbell.id']}, "
                    f"interrupts by VFIO, polling off; both hear it on vector {vec} of "
                    f"{BELL_VECTORS}")
        rep.check(f"doorbell device: the host serves it, the guest is its peer: {name}", setup)
        rep.check(f"doorbell: guest->host, the host's blocked reader woken with polling "
                  f"off: {name}", self.bell_g2h, name)
        rep.check(f"doorbell: host->guest, the sleeping guest rung: {name}", self.bell_h2g, name)
        rep.check(f"doorbell: guest->host, the host's library woken by its daemon: {name}",
                  self.lib_g2h, name)
        rep.check(f"doorbell: host->guest, the host's library rings through its daemon: "
                  f"{name}", self.lib_h2g, name)
        if name == self.bell_chans[0]:
            rep.check(f"doorbell: host->guest, the guest's library woken by its daemon: {name}",
                      self.glib_reads, name)
            rep.check(f"doorbell: guest->host, the guest's library rings through its daemon: "
                      f"{name}", self.glib_writes, name)

    def host_restart(self, name):
        """docs/ivshmem.md, "Restarts with doorbells": QEMU cannot connect to
        a restarted server, so the old QEMU's doorbells reach nobody; the
        daemons' default polling carries the channel. Both daemons run with
        polling on (the guest's restarted first for that), then the host's
        restarts: QEMU runs on, the new server has no peer, and after the
        handshake the channel streams both ways."""
        g = self.guest
        g.sh(f"umount -l {GUEST_MNT}; sed -i /ivshmem_poll/d {GUEST_CONF}; "
             "echo '--- restarted, polling on' >> /tmp/mmapfs.log")
        self.guest_mount()
        Job.kill_all()
        rc = self.host.unmount()
        if rc != 0:
            raise Fail(f"the host daemon exited with {rc} at its unmount")
        conf = os.path.join(self.work, "host-2.conf")
        with open(os.path.join(self.work, "host.conf")) as f, open(conf, "w") as out:
            out.writelines(line for line in f if "ivshmem_poll" not in line)
        self.host = HostMount(self.args.mmapfs, conf, os.path.join(self.work, "host"),
                              os.path.join(self.work, "host-2-mmapfs.log"))
        time.sleep(1.0)
        if g.proc.poll() is not None:
            raise Fail(f"QEMU exited ({g.proc.returncode}) when its ivshmem server went away")
        st = self.host.status(name)
        if st.get("doorbell.peers") != "0":
            raise Fail(f"the new server has peers: {st.get('doorbell.peers')}")
        self.handshake(name)
        return "QEMU runs on, the new server has no peer; " + self.both_ways(name, SMALL)

    def bind_vfio(self, dev):
        g = self.guest
        g.sh(f"echo vfio-pci > {dev}/driver_override; "
             f"echo {os.path.basename(dev)} > /sys/bus/pci/drivers_probe")
        rc, out = g.sh(f"readlink {dev}/driver; readlink {dev}/iommu_group; ls /dev/vfio",
                       check=False)
        if "vfio-pci" not in out:
            raise Fail(f"not bound: {out!r}")
        return " ".join(out.split())

    def bell_g2h(self, name):
        heard0 = int(self.host.status(name)["doorbell.heard"])
        vheard0 = int(self.host.status(name)["doorbell.vector_heard"])
        r = Job.read(os.path.join(self.host.chan(name), "data"))
        time.sleep(1.0)         # parked: nothing but a doorbell wakes it now
        t0 = time.monotonic()
        self.guest.sh(f"printf ping > {self.gchan(name)}/data")
        res = r.result(10)
        if res is None:
            r.kill()
            raise Fail(f"the host's reader had {r.moved.value} bytes and no end of stream "
                       "10 s after the guest wrote: no doorbell heard")
        heard = int(self.host.status(name)["doorbell.heard"])
        vheard = int(self.host.status(name)["doorbell.vector_heard"])
        if res["bytes"] != 4 or res["errno"] or heard <= heard0 or vheard <= vheard0:
            raise Fail(f"host read {res['bytes']} bytes, errno {errname(res['errno'])}, "
                       f"doorbells heard {heard0} -> {heard}, on this channel's vector "
                       f"{vheard0} -> {vheard}")
        return (f"4 bytes and the end of stream {(res['t_end'] - t0) * 1000:.0f} ms after the "
                f"guest's command was sent; {heard - heard0} rings heard, {vheard - vheard0} "
                "on this channel's vector")

    def bell_h2g(self, name):
        g, gc = self.guest, self.gchan(name)
        g.sh(f"rm -f /tmp/pong; cat {gc}/data > /tmp/pong 2>&1 </dev/null &")
        time.sleep(1.0)         # the guest's reader waits: its daemon sleeps
        rung0 = int(self.host.status(name)["doorbell.rung"])
        heard0 = self.guest_heard(name)
        vheard0 = self.guest_heard(name, "vector_heard")
        with open(os.path.join(self.host.chan(name), "data"), "w") as f:
            f.write("pong")
        rc, out = g.sh(f"i=0; until [ \"$(cat /tmp/pong)\" = pong ]; do i=$((i+1)); "
                       "[ $i -le 100 ] || break; sleep 0.1; done; cat /tmp/pong", check=False)
        rung = int(self.host.status(name)["doorbell.rung"])
        heard = self.guest_heard(name)
        vheard = self.guest_heard(name, "vector_heard")
        if out.strip() != "pong" or rung <= rung0 or heard <= heard0 or vheard <= vheard0:
            raise Fail(f"guest got {out.strip()!r}, the host rang {rung - rung0} times, the "
                       f"guest heard {heard - heard0}, {vheard - vheard0} on this channel's "
                       "vector")
        return (f"pong arrived, polling off in the guest too; the host rang "
                f"{rung - rung0} times, the guest heard {heard - heard0} (VFIO, MSI-X), "
                f"{vheard - vheard0} on this channel's vector")

    def libtest(self, *args):
        """The build's libmmapfs driver (tests/lib/mmapfs-libtest.c) on the
        host, started."""
        build = os.path.dirname(os.path.dirname(os.path.abspath(self.args.mmapfs)))
        return subprocess.Popen([os.path.join(build, "tests", "lib", "mmapfs-libtest"), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def lib_g2h(self, name):
        """The host's library reads; it waits in its daemon (MM_IOC_WAIT),
        which only the guest's doorbell wakes (polling off)."""
        src = os.path.join(self.work, "ping")
        with open(src, "w") as f:
            f.write("ping")
        heard0 = int(self.host.status(name)["doorbell.heard"])
        r = self.libtest("read", self.host.chan(name), src, "1")
        time.sleep(1.0)
        t0 = time.monotonic()
        self.guest.sh(f"printf ping > {self.gchan(name)}/data")
        try:
            out, err = r.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            r.kill()
            r.communicate()
            raise Fail("the host's library had no end of stream 10 s after the guest wrote")
        t = time.monotonic() - t0
        heard = int(self.host.status(name)["doorbell.heard"])
        if r.returncode != 0 or out.strip() != "ok 4" or heard <= heard0:
            raise Fail(f"the library: {out.strip()!r} {err.strip()!r}, exit {r.returncode}; "
                       f"doorbells heard {heard0} -> {heard}")
        return f"ping and its end of stream in {t * 1000:.0f} ms; {heard - heard0} rings heard"

    def lib_h2g(self, name):
        """The host's library writes to the guest's sleeping reader, and holds
        its claim (no end of stream, no ring of the daemon's own) until the
        guest has the bytes: its daemon rang for it (MM_IOC_RING)."""
        g, gc = self.guest, self.gchan(name)
        g.sh(f"rm -f /tmp/pong; cat {gc}/data > /tmp/pong 2>&1 </dev/null &")
        time.sleep(1.0)
        rung0 = int(self.host.status(name)["doorbell.rung"])
        w = self.libtest("put", self.host.chan(name), "pong")
        try:
            line = w.stdout.readline().strip()
            if line != "written":
                raise Fail(f"the library: {line!r} {w.stderr.read()!r}")
            rc, out = g.sh("i=0; until [ \"$(cat /tmp/pong)\" = pong ]; do i=$((i+1)); "
                           "[ $i -le 100 ] || break; sleep 0.1; done; cat /tmp/pong",
                           check=False)
            rung = int(self.host.status(name)["doorbell.rung"])
            out2, err = w.communicate("", timeout=10)
        finally:
            if w.poll() is None:
                w.kill()
                w.communicate()
        if out.strip() != "pong" or rung <= rung0 or w.returncode != 0 or out2.strip() != "ok 4":
            raise Fail(f"guest got {out.strip()!r} while the library held its claim; the host "
                       f"rang {rung - rung0} times; the library: {out2.strip()!r} "
                       f"{err.strip()!r}, exit {w.returncode}")
        return f"pong arrived before the library's close; the host rang {rung - rung0} times"

    def glib_reads(self, name):
        """The guest's library (the build's mmapfs-libtest, mapping the BAR
        its daemon names) reads what the host writes, waiting in the guest's
        daemon, which the host's doorbell wakes."""
        g, gc = self.guest, self.gchan(name)
        g.sh(f"printf ping > /tmp/ping; rm -f /tmp/libr.out; "
             f"{self.g_libtest} read {gc} /tmp/ping 1 > /tmp/libr.out 2>&1 </dev/null &")
        time.sleep(1.0)
        heard0 = self.guest_heard(name)
        with open(os.path.join(self.host.chan(name), "data"), "w") as f:
            f.write("ping")
        rc, out = g.sh("i=0; until grep -q ok /tmp/libr.out; do i=$((i+1)); [ $i -le 100 ] "
                       "|| break; sleep 0.1; done; cat /tmp/libr.out", check=False)
        heard = self.guest_heard(name)
        if out.strip() != "ok 4" or heard <= heard0:
            raise Fail(f"the guest's library: {out.strip()!r}; the guest heard {heard0} -> "
                       f"{heard}")
        return f"ping and its end of stream; the guest heard {heard - heard0} rings"

    def glib_writes(self, name):
        """The guest's library writes to the host's blocked reader and holds
        its claim: the bytes arrive before its close, rung by its daemon
        (polling off on the host: nothing else wakes the reader)."""
        g, gc = self.guest, self.gchan(name)
        heard0 = int(self.host.status(name)["doorbell.heard"])
        r = Job.read(os.path.join(self.host.chan(name), "data"))
        time.sleep(1.0)
        g.sh(f"rm -f /tmp/libw.out; (sleep 6 | {self.g_libtest} put {gc} ping "
             "> /tmp/libw.out 2>&1 &)")
        deadline = time.monotonic() + 4.5
        while r.moved.value < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        early = r.moved.value
        res = r.result(15)
        _, out = g.sh("cat /tmp/libw.out", check=False)
        heard = int(self.host.status(name)["doorbell.heard"])
        if res is None:
            r.kill()
        if early != 4 or res is None or res["bytes"] != 4 or out.split()[-2:] != ["ok", "4"] \
                or heard <= heard0:
            raise Fail(f"the host's reader had {early} bytes while the guest's library held "
                       f"its claim, {res and res['bytes']} at the end; the library: "
                       f"{out.strip()!r}; the host heard {heard0} -> {heard}")
        return (f"ping while the library held its claim, then the end of stream; the host "
                f"heard {heard - heard0} rings")

    def guest_heard(self, name, key="heard"):
        _, out = self.guest.sh(f"sed -n 's/^doorbell.{key}=//p' {self.gchan(name)}/status")
        return int(out.strip() or 0)

    def streams_running(self, name, guest_read=True, guest_write=True):
        """The host's writer and reader of name, and the guest's other
        ends in the background (pids in /tmp/bg.pids)."""
        g, gc = self.guest, self.gchan(name)
        cmds = []
        if guest_read:
            cmds.append(f"dd if={gc}/data of=/dev/null bs=1M </dev/null >/tmp/bg-r.log 2>&1 &"
                        " echo $! >> /tmp/bg.pids")
        if guest_write:
            cmds.append(f"dd if=/dev/zero of={gc}/data bs=1M count=8192 </dev/null "
                        ">/tmp/bg-w.log 2>&1 & echo $! >> /tmp/bg.pids")
        if cmds:
            g.sh("; ".join(cmds))
        w = Job.write(os.path.join(self.host.chan(name), "data"))
        r = Job.read(os.path.join(self.host.chan(name), "data"))
        return w, r

    def stop_guest_jobs(self):
        self.guest.sh("[ -f /tmp/bg.pids ] && kill $(cat /tmp/bg.pids) 2>/dev/null; "
                      "rm -f /tmp/bg.pids; sleep 0.2", check=False)

    def stall(self, name):
        """QEMU's monitor stops the VM mid-stream, then lets it go on."""
        g, rep = self.guest, self.rep
        w, r = self.streams_running(name)
        time.sleep(1.5)
        info(f"before stop: host wrote {w.moved.value} bytes, read {r.moved.value} bytes")
        t_stop = time.monotonic()
        out = g.monitor("stop")
        info(f"monitor: stop {'ok' if 'error' not in out.lower() else out.strip()}")
        self.dead_fails("VM stopped", r, w, t_stop)
        rep.check("VM stopped: the host daemon keeps serving", self.host_serving, name)
        g.monitor("cont")

        def alive_again():
            st = wait_for(lambda: self.host.status(name).get("peer") == "alive" and
                          self.host.status(name), 10)
            if not st:
                raise Fail(f"host status after 10 s: peer={self.host.status(name).get('peer')}")
            return f"peer=alive, state={st.get('state')}"
        rep.check("after cont: the host sees the peer alive", alive_again)

        def guest_told():
            """The stalled end's callers learn it when it resumes: its
            writer EPIPE, its reader ECONNRESET (format version 2)."""
            want = {"/tmp/bg-w.log": "Broken pipe", "/tmp/bg-r.log": "Connection reset"}
            logs = {}

            def told():
                for path in want:
                    _, logs[path] = g.sh(f"cat {path}", check=False)
                return all(w in logs[p] for p, w in want.items())
            if not wait_for(told, 10):
                raise Fail(f"guest jobs after cont: {logs}")
            return "writer EPIPE, reader ECONNRESET"
        rep.check("after cont: the guest's writer and reader are told", guest_told)

        def counted():
            _, out = g.sh(f"sed -n 's/^streams_failed=//p' {self.gchan(name)}/status")
            host = self.host.status(name).get("streams_failed", "0")
            if int(host) < 1 or int(out.strip() or 0) < 1:
                raise Fail(f"streams_failed: host {host}, guest {out.strip()}")
            return f"streams_failed: host {host}, guest {out.strip()}"
        rep.check("after cont: both ends' status count the failed streams", counted)
        self.stop_guest_jobs()
        # no draining: the next streams carry no byte of the failed ones
        rep.check(f"after cont: host->guest {SMALL // MiB} MiB, sha256",
                  lambda: f"{self.host_to_guest(name, SMALL, self.small_file):.0f} MB/s")
        rep.check(f"after cont: guest->host {SMALL // MiB} MiB, sha256",
                  lambda: f"{self.guest_to_host(name, SMALL):.0f} MB/s")

    def kill_peer(self, name):
        """SIGKILL of the guest's daemon; then it restarts and the same
        channel is handshaken again without restarting the host's."""
        g, rep = self.guest, self.rep
        w, r = self.streams_running(name, guest_read=False, guest_write=False)
        time.sleep(1.0)
        info(f"before kill: host wrote {w.moved.value} bytes (no guest reader), "
             f"read {r.moved.value}")
        t_kill = time.monotonic()
        g.sh("kill -9 $(cat /tmp/mmapfs.pid)")
        self.dead_fails("guest daemon killed", r, w, t_kill)
        rep.check("guest daemon killed: the host daemon keeps serving", self.host_serving, name)

        rep.check("guest daemon restarted: the same channel handshaken again, "
                  "the host untouched, nothing stale", self.restarted, name)

    def restarted(self, name):
        """The guest's daemon started again with the same configuration: the
        first handshake's own commands make a new session (reading the
        host's capabilities while its peer is dead), on empty rings."""
        g = self.guest
        g.sh(f"umount -l {GUEST_MNT}; echo '--- restarted' >> /tmp/mmapfs.log")
        self.guest_mount()
        self.handshake(name)
        st = self.host.status(name)
        _, gst = g.sh(f"grep -E '^(read|write).used=' {self.gchan(name)}/status")
        stale = [k for k in ("read.used", "write.used") if st.get(k) != "0"]
        if stale or "used=0" not in gst or any(l and not l.endswith("=0")
                                               for l in gst.split("\n")):
            raise Fail(f"bytes of the old session: host {st}, guest {gst!r}")
        return self.both_ways(name, SMALL)

    # -- the end --

    def finish(self):
        """Stop everything; -> problems found (a list of strings)."""
        problems = []
        Job.kill_all()
        g = self.guest
        if g and g.proc and g.proc.poll() is None and not g.wedged:
            try:
                _, glog = g.sh("cat /tmp/mmapfs.log", timeout=10, check=False)
                with open(os.path.join(self.work, "guest-mmapfs.log"), "w") as f:
                    f.write(glog + "\n")
            except Fail:
                pass
        if g:
            g.kill()
        if self.host:
            rc = self.host.unmount()
            if rc != 0:
                problems.append(f"host mmapfs exited with {rc} at unmount")
        for side in ("host", "guest", "host-2"):
            bad = BAD_LOG.search(tail(os.path.join(self.work, f"{side}-mmapfs.log"), 100000))
            if bad:
                problems.append(f"{side} mmapfs logged {bad.group(0)!r}")
        for path in self.dev_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        left = [p for p in self.dev_files if os.path.exists(p)]
        if g and g.proc and g.proc.poll() is None:
            left.append(f"QEMU pid {g.proc.pid}")
        if self.host and mounted(self.host.mnt):
            left.append(self.host.mnt)
        if left:
            problems.append("left behind: " + ", ".join(left))
        return problems


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(MiB), b""):
            h.update(buf)
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mmapfs", required=True, help="the mmapfs binary (host and guest)")
    p.add_argument("--work", required=True, help="scratch directory (made if missing)")
    p.add_argument("--kernel-root", default="/",
                   help="where boot/vmlinuz-KVER and lib/modules/KVER are (default: /, "
                        "this host's installed kernel; run.sh: the one it unpacked)")
    p.add_argument("--accel", default=os.environ.get("VMTEST_ACCEL", "auto"),
                   choices=("auto", "kvm", "tcg"),
                   help="auto: KVM if a probe boots, else TCG (default)")
    p.add_argument("--layout", default=os.environ.get("VMTEST_LAYOUT", "one-device"),
                   choices=("two-devices", "one-device", "doorbell"))
    p.add_argument("--boot-timeout", type=float, default=300)
    p.add_argument("--bench", action="store_true",
                   default=os.environ.get("VMTEST_BENCH", "") == "1",
                   help="measure round trips after the handshakes, then stop "
                        "(contrib/bench/ivshmem-rtt.sh)")
    p.add_argument("--time-limit", type=int, default=900, help="for the whole test, s")
    a = p.parse_args()
    a.mmapfs = os.path.abspath(a.mmapfs)
    a.kernel_root = os.path.abspath(a.kernel_root)
    os.makedirs(a.work, exist_ok=True)
    a.work = os.path.abspath(a.work)

    def on_signal(sig, frame):
        raise Stop(f"signal {sig}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(a.time_limit)

    t0 = time.monotonic()
    t = VMTest(a)
    t.figures = {}
    try:
        t.run()
    except (Fail, Stop, subprocess.CalledProcessError, OSError) as e:
        t.rep.bad("the VM test could not go on", e)
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        problems = t.finish()
    if problems:
        t.rep.bad("clean end: logs and leftovers", "; ".join(problems))
    else:
        t.rep.ok("clean end: logs and leftovers", "QEMU gone, mounts gone, /dev/shm files removed")
    f = t.figures
    info("figures: boot {} s ({}), host->guest {} MB/s, guest->host {} MB/s, "
         "test {:.0f} s".format(
             f"{f['boot_s']:.1f}" if "boot_s" in f else "?", f.get("accel", "?"),
             f"{f['h2g']:.0f}" if "h2g" in f else "-",
             f"{f['g2h']:.0f}" if "g2h" in f else "-", time.monotonic() - t0))
    if t.rep.failed:
        for name in ("console.log", "host-mmapfs.log", "guest-mmapfs.log"):
            info(f"--- last lines of {name}:")
            for line in tail(os.path.join(a.work, name), 15).splitlines():
                info(f"    {line}")
    print(f"{t.rep.passed} passed, {t.rep.failed} failed", flush=True)
    return 1 if t.rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
