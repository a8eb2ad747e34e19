"""What HTCondor's suspend does to a wrapper, mirrored onto the job that left its cgroup.

condor_suspend freezes the slot's cgroup (cgroup v2: `cgroup.freeze`), which holds the wrapper
but no longer the job's unit. The broker watches the caller's `cgroup.events` with inotify (the
kernel reports every change of its "frozen" line as a modification: no polling) and freezes the
job's unit while the caller is frozen, thawing it with it. Where the caller's suspension is a
SIGSTOP instead (HTCondor's procd on cgroup v1), nothing notifies: the caller's state is looked
at every POLL_INTERVAL seconds (/proc/PID/stat: T) while its job runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

POLL_INTERVAL = 1.0
IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)


class Inotify:
    """inotify(7) over ctypes (the standard library has none): watches files for changes."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd

    def watch(self, path: str) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def unwatch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if the cgroup is gone

    def changed(self) -> set[int]:
        """The watches that saw a change since the last call."""
        out: set[int] = set()
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                out.add(wd)
                pos += _EVENT.size + length


def frozen(events_file: str) -> bool | None:
    """cgroup.events' "frozen" (1 also when an ancestor is frozen); None if unreadable."""
    try:
        with open(events_file) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "frozen":
                    return value.strip() == "1"
    except OSError:
        return None
    return None


def stopped(pid: int) -> bool | None:
    """Is the process stopped by a signal (state T)? None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2:raw.rindex(b")") + 3] == b"T"
