"""The few Linux calls the fallback backend needs that Python's os module lacks (3.11).

Loaded through ctypes only by the fallback backend; the systemd path never imports this.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
SYS_IOPRIO_SET = 251  # x86_64
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


def set_best_effort_io_priority(level: int) -> None:
    """ionice -c 2 -n level for the calling process (inherited by its children)."""
    prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | level
    _check(_libc.syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, prio), "ioprio_set")


def private_tmp() -> None:
    """Give the calling process its own mount namespace with empty /tmp and /var/tmp."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    # our mounts must not propagate back to the host's namespace
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount / private")
    for path in (b"/tmp", b"/var/tmp"):
        _check(_libc.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777"),
               f"mount tmpfs on {path.decode()}")
