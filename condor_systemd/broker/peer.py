"""Who is calling, and what they already have: identity and the caller's own limits.

The caller is who the kernel says: SO_PEERCRED (uid, gid, pid at connect time), plus
SO_PEERPIDFD where the kernel has it (Linux >= 6.5), a pidfd that cannot be confused with a
process that later reuses the pid; on older kernels a pidfd opened at accept, whose process
must have started before the accept (its start time). Everything else about the caller is
read from /proc/PID (its cgroup, rlimits, nice, oom_score_adj), never taken from its message,
and re-checked against the pidfd afterwards: a caller that died (and whose pid was reused)
meanwhile is gone.

A job must not escape its HTCondor slot by leaving the slot's cgroup: :func:`cgroup_caps` reads
the limits in force on the caller's cgroup and every ancestor (memory, CPU quota, cpuset, pids),
on cgroup v2 and on v1/hybrid, so that the broker can cap the job's unit by them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
from typing import NamedTuple

from ..backends import cgroupfs
from ..backends.pidfd import open_pidfd
from ..errors import LaunchError

SO_PEERPIDFD = 77  # include/uapi/asm-generic/socket.h, Linux 6.5; not in Python 3.11's socket
NO_PIDFD = -1


class Peer(NamedTuple):
    uid: int
    gid: int
    pid: int
    pidfd: int  # NO_PIDFD: the kernel has no pidfds (before 5.3), or the caller is gone
    start_time: int | None = None  # /proc/PID/stat's starttime (clock ticks after boot)

    def alive(self) -> bool:
        """Is the process we identified still there (not a successor with its pid)?"""
        if self.pidfd == NO_PIDFD:  # gone at accept (None), or a kernel without pidfds
            return self.start_time is not None and start_time(self.pid) == self.start_time
        try:
            signal.pidfd_send_signal(self.pidfd, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self.pidfd != NO_PIDFD:
            os.close(self.pidfd)


def identify(sock: socket.socket, accepted_at: float | None = None) -> Peer:
    """Who is at the other end. The pid is bound to its process at once: SO_PEERPIDFD where
    the kernel has it (6.5), else a pidfd opened now, checked by the start time: a process
    that started after we accepted the connection (its pid reused) is not the caller, and
    the caller counts as gone."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:  # ENOPROTOOPT before 6.5
        try:
            pidfd = open_pidfd(pid)
        except ProcessLookupError:
            return Peer(uid, gid, pid, NO_PIDFD, None)  # gone already
        started = start_time(pid)
        if started is None or (accepted_at is not None and started > _ticks(accepted_at)):
            if pidfd != NO_PIDFD:  # a successor: it must never be taken for the caller
                os.close(pidfd)
            return Peer(uid, gid, pid, NO_PIDFD, None)
        return Peer(uid, gid, pid, pidfd, started)
    return Peer(uid, gid, pid, pidfd, start_time(pid))


def start_time(pid: int, proc: str = "/proc") -> int | None:
    """The process's start, in clock ticks after boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces and ')'
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _ticks(monotonic: float) -> int:
    """A time.monotonic() reading as /proc's starttime counts (boot time, clock ticks); the
    one-tick slack covers the rounding of both."""
    boot = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return int((monotonic + boot) * os.sysconf("SC_CLK_TCK")) + 1


class Caps(NamedTuple):
    """The caller's cgroup's limits (the tightest on the way to the root); None: no limit."""

    memory_max: int | None = None
    cpu_quota_percent: float | None = None
    cpus: tuple[int, ...] | None = None
    tasks_max: int | None = None
    cgroup: str | None = None  # the caller's cgroup (the unified one if any), for the record
    freeze_file: str | None = None  # its cgroup.events on cgroup v2: "frozen 1" when suspended
    cpu_weight: int | None = None  # its own cpu.weight (v1: cpu.shares as a weight)
    swap_max: int | None = None  # memory.swap.max on the way up (v2)
    mems: tuple[int, ...] | None = None  # its cpuset's memory nodes
    # its I/O caps: (device "MAJ:MIN", Limits field, value), the tightest on the way up
    io: tuple[tuple[str, str, int], ...] = ()


def cgroup_caps(pid: int, layout: cgroupfs.Layout | None = None,
                proc: str = "/proc") -> Caps:
    """The limits in force where the caller runs. Fails closed: LaunchError when they cannot be
    read (the caller's /proc hidden, no fds left...), never "no limit". A limit file that is not
    there (its controller not enabled) is no limit."""
    layout = layout or cgroupfs.probe_layout()
    paths = _cgroup_paths(f"{proc}/{pid}/cgroup")
    memory = cpu = tasks = weight = swap = None
    io: dict[tuple[str, str], int] = {}
    mems: tuple[int, ...] | None = None
    cpus: tuple[int, ...] | None = None
    events = None
    unified = paths.get("")
    if layout.kind == "unified" and unified is not None and layout.unified:
        for directory in _ancestors(layout.unified, unified):
            memory = _min(memory, _bytes(directory, "memory.max"))
            swap = _min(swap, _bytes(directory, "memory.swap.max"))
            tasks = _min(tasks, _bytes(directory, "pids.max"))
            cpu = _min(cpu, _v2_quota(directory))
            _io_caps(io, _v2_io(_read(directory, "io.max")))
        cpus = _cpus(layout.unified + unified, "cpuset.cpus.effective")
        mems = _cpus(layout.unified + unified, "cpuset.mems.effective")
        weight = _bytes(layout.unified + unified, "cpu.weight") if unified != "/" else None
        events = os.path.join(layout.unified + unified, "cgroup.events")
    else:
        for controller, read in (("memory", "memory.limit_in_bytes"),
                                 ("pids", "pids.max")):
            mount, path = layout.v1.get(controller), paths.get(controller)
            if mount and path is not None:
                for directory in _ancestors(mount, path):
                    value = _bytes(directory, read)
                    if controller == "memory":
                        memory = _min(memory, value)
                    else:
                        tasks = _min(tasks, value)
        mount, path = layout.v1.get("cpu"), paths.get("cpu")
        if mount and path is not None:
            for directory in _ancestors(mount, path):
                cpu = _min(cpu, _v1_quota(directory))
            shares = _bytes(mount + path, "cpu.shares") if path != "/" else None
            weight = None if shares is None else max(1, min(10000, round(shares * 100 / 1024)))
        mount, path = layout.v1.get("blkio"), paths.get("blkio")
        if mount and path is not None:
            for directory in _ancestors(mount, path):
                for name, key in V1_IO_FILES.items():
                    _io_caps(io, _v1_io(_read(directory, name), key))
        mount, path = layout.v1.get("cpuset"), paths.get("cpuset")
        if mount and path is not None:
            cpus = _cpus(mount + path, "cpuset.effective_cpus")
            mems = _cpus(mount + path, "cpuset.effective_mems")
        if unified is not None and layout.unified:
            events = os.path.join(layout.unified + unified, "cgroup.events")
    cgroup = unified if unified is not None else paths.get("name=systemd")
    return Caps(memory, cpu, cpus, tasks, cgroup, events if events and os.path.exists(events)
                else None, weight, swap, mems,
                tuple(sorted((device, key, value) for (device, key), value in io.items())))


# io.max's keys (v2), and v1's throttle files, as Limits fields
V2_IO_KEYS = {"rbps": "io_read_bandwidth", "wbps": "io_write_bandwidth",
              "riops": "io_read_iops", "wiops": "io_write_iops"}
V1_IO_FILES = {"blkio.throttle.read_bps_device": "io_read_bandwidth",
               "blkio.throttle.write_bps_device": "io_write_bandwidth",
               "blkio.throttle.read_iops_device": "io_read_iops",
               "blkio.throttle.write_iops_device": "io_write_iops"}


def _io_caps(caps: dict[tuple[str, str], int], entries: list[tuple[str, str, str]]) -> None:
    """Fold (device, Limits field, value) entries of one cgroup into caps, keeping the
    tightest per device and kind; "max" is no cap."""
    for device, key, value in entries:
        if re.fullmatch(r"\d+:\d+", device) and value.isdigit():
            current = caps.get((device, key))
            caps[(device, key)] = int(value) if current is None else min(current, int(value))


def _v2_io(text: str | None) -> list[tuple[str, str, str]]:
    """io.max: "8:0 rbps=1048576 wbps=max riops=max wiops=max", a line per device."""
    out = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        device, *pairs = line.split()
        for name, _, value in (pair.partition("=") for pair in pairs):
            if name in V2_IO_KEYS:
                out.append((device, V2_IO_KEYS[name], value))
    return out


def _v1_io(text: str | None, key: str) -> list[tuple[str, str, str]]:
    """A blkio.throttle.*_device file: "8:0 1048576", a line per device."""
    return [(fields[0], key, fields[1]) for fields in
            (line.split() for line in (text or "").splitlines()) if len(fields) == 2]


def _cgroup_paths(path: str) -> dict[str, str]:
    """/proc/PID/cgroup: controller -> path ('' for the unified hierarchy)."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise LaunchError(f"cannot read the caller's cgroup ({path}: {exc.strerror}): the job "
                          "is refused rather than run without its caller's limits") from None
    for line in lines:
        _id, _, rest = line.partition(":")
        controllers, _, cgroup = rest.partition(":")
        if not controllers:
            out[""] = cgroup
        for controller in controllers.split(","):
            if controller:
                out[controller] = cgroup
    return out


def _ancestors(mount: str, cgroup: str) -> list[str]:
    """The cgroup's directory and its parents, up to (not including) the hierarchy's root."""
    parts = [p for p in cgroup.split("/") if p]
    return [os.path.join(mount, *parts[:n]) for n in range(len(parts), 0, -1)]


def _read(directory: str, name: str) -> str | None:
    path = os.path.join(directory, name)
    try:
        with open(path) as f:
            return f.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None  # the controller is not enabled there: no limit from it
    except OSError as exc:
        raise LaunchError(f"cannot read the caller's limits ({path}: {exc.strerror}): the job "
                          "is refused rather than run without them") from None


def _bytes(directory: str, name: str) -> int | None:
    text = _read(directory, name)
    if text is None or not text.isdigit():
        return None  # "max", absent, unreadable
    value = int(text)
    return None if value >= 2**62 else value  # v1's "unlimited" is a huge page-rounded number


def _v2_quota(directory: str) -> float | None:
    text = _read(directory, "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) * 100 / int(period)


def _v1_quota(directory: str) -> float | None:
    quota, period = _read(directory, "cpu.cfs_quota_us"), _read(directory, "cpu.cfs_period_us")
    if not quota or not period or not quota.isdigit() or not period.isdigit():
        return None  # -1: no quota
    return int(quota) * 100 / int(period) if int(period) else None


def _cpus(directory: str, name: str) -> tuple[int, ...] | None:
    text = _read(directory, name)
    if not text:
        return None
    from ..errors import UsageError
    from ..spec import parse_cpu_list

    try:
        return parse_cpu_list(text)
    except UsageError:
        return None


def _min(current, value):  # noqa: ANN001, ANN202 - int or float, None meaning "no limit"
    if value is None:
        return current
    return value if current is None else min(current, value)
