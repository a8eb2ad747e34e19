"""The few Linux calls the fallback backend needs that Python's os module lacks (3.11).

Loaded through ctypes only by the fallback backend; the systemd path never imports this.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
# ioprio_set has no libc wrapper, and its number depends on the architecture's syscall table
# (arch/*/entry/syscalls/*.tbl, arch/*/kernel/syscalls/syscall.tbl; the newer architectures
# share include/uapi/asm-generic/unistd.h). Keyed by the userland ABI (see ioprio_set_number).
SYS_IOPRIO_SET = {
    "x86_64": 251,
    "i386": 289,
    "aarch64": 30,
    "arm": 314,
    "ppc64": 273,
    "ppc": 273,
    "s390x": 282,
    "riscv64": 30,
    "riscv32": 30,
    "loongarch64": 30,
}
_MACHINE_ABI = {"amd64": "x86_64", "i486": "i386", "i586": "i386", "i686": "i386",
                "arm64": "aarch64", "ppc64le": "ppc64", "s390": "s390x"}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_SHIFT = 13

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def get_child_subreaper() -> bool:
    flag = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0), "prctl")
    return bool(flag.value)


def set_child_subreaper(on: bool) -> None:
    """Orphans of our descendants are reparented to us instead of to init, so that we can
    find, kill and reap them, and their CPU time reaches our RUSAGE_CHILDREN."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0), "prctl")


def ioprio_set_number(machine: str, pointer_bits: int) -> int | None:
    """ioprio_set's number for a process of this kernel machine (uname -m) and word size; None
    if unknown. A 32-bit userland on a 64-bit x86 or arm kernel uses the 32-bit table: uname
    reports the kernel's machine, but libc's syscall() enters through the process's ABI."""
    abi = _MACHINE_ABI.get(machine, machine)
    if abi.startswith("arm"):
        abi = "arm"  # armv6l, armv7l, armv8l (32-bit userland on aarch64)
    if pointer_bits == 32:
        abi = {"x86_64": "i386", "aarch64": "arm", "ppc64": "ppc"}.get(abi, abi)
    return SYS_IOPRIO_SET.get(abi)


def set_best_effort_io_priority(level: int) -> None:
    """ionice -c 2 -n level for the calling process (inherited by its children)."""
    machine = platform.machine()
    number = ioprio_set_number(machine, struct.calcsize("P") * 8)
    if number is None:
        raise OSError(errno.ENOSYS, f"ioprio_set: syscall number unknown on this architecture "
                                    f"({machine or 'unknown'})")
    prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level
    _check(_libc.syscall(number, IOPRIO_WHO_PROCESS, 0, prio), "ioprio_set")


def private_tmp() -> None:
    """Give the calling process its own mount namespace with empty /tmp and /var/tmp."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    # our mounts must not propagate back to the host's namespace
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount / private")
    for path in (b"/tmp", b"/var/tmp"):
        _check(_libc.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777"),
               f"mount tmpfs on {path.decode()}")
