#!/bin/bash
# Round trips across a VM: boots the VM test's guest (tests/vm/run.sh: a
# Debian kernel, a busybox initramfs, QEMU) with its default layout, an
# ivshmem-plain device (channel vm) and an ivshmem-doorbell device whose
# ivshmem server is the host's mmapfs (channel bell, the host's polling of
# its waits off: only doorbells wake it), handshakes, then measures 64-byte
# round trips through data: the host writes, an echo in the guest (busybox
# cat of its data into its data) writes back, the host reads. Back to back
# (BENCH_TRIPS, 200), then each after 20 ms idle (BENCH_IDLE_TRIPS, 40);
# medians and 90th percentiles, in ms, on lines starting "BENCH:".
#
#   contrib/bench/ivshmem-rtt.sh [MMAPFS]          as root; one QEMU at a time
#
# Then the CPU a reader of data blocked while nothing moves costs, % of a
# core over BENCH_IDLE_S (5) s: the host daemon's and QEMU's for a reader
# on the host, QEMU's for one in the guest. The guest binds the doorbell
# device to vfio-pci, so both sides take the other's rings; both run with
# ivshmem_poll = false unless VMTEST_DOORBELL_POLL=on (the default of a
# real setup: a 10 ms recheck besides the doorbells).
#
# Then the same round trips with the host's end the build's libmmapfs
# (contrib/python/mmapfs.py; MMAPFS_LIB names another build of the
# library), on the doorbell channel: its daemon rings and waits for it.
#
# Last, the doorbell's own round trip, without mmapfs: the guest's daemon
# stops, contrib/bench/bellprobe.c (built static with cc, put in the
# guest's initramfs) takes the device's interrupt through VFIO and rings
# back; the host joins its daemon's ivshmem server as a further peer, rings
# the guest and waits. The floor that any doorbell round trip on this VM
# stands on.
#
# VMTEST_ACCEL=kvm|tcg as for the VM test (auto: KVM if it works).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
VMTEST_BENCH=1 exec "$top/tests/vm/run.sh" "$@"
