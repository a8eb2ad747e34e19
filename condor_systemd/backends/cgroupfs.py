"""READ-ONLY access to a unit's cgroup files: layout probing, accounting, limit read-back.

systemd owns the cgroup tree; we never write to it. We read what systemd 252 does not export
over D-Bus (user/system CPU split, peak memory, OOM kills) and read limits back to verify that
what systemd accepted is really in force. Every reader returns None when the file is absent or
unreadable: absent means unknown, never zero.

Layouts: ``unified`` (cgroup v2 only), ``hybrid`` (v1 controllers + a v2 tree at
/sys/fs/cgroup/unified that systemd uses for process tracking), ``legacy`` (v1 only).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..usage import IN_FORCE, NOT_ENFORCED, NOT_IN_FORCE, Verdict

# cgroup v1 super options that are not controllers (see cgroup1_parse_param in the kernel)
V1_MOUNT_OPTIONS = frozenset(("rw", "ro", "xattr", "clone_children", "noprefix", "none",
                              "cpuset_v2_mode", "all", "favordynmods"))


class Layout(NamedTuple):
    kind: str                 # "unified" | "hybrid" | "legacy" | "none"
    unified: str | None       # cgroup2 mount point
    v1: dict[str, str]        # v1 controller -> mount point

    def v1_dir(self, controller: str, cgroup: str) -> str | None:
        mnt = self.v1.get(controller)
        return mnt + cgroup if mnt else None

    def v2_dir(self, cgroup: str) -> str | None:
        return self.unified + cgroup if self.unified else None

    def controllers(self) -> list[str]:
        """Controllers systemd can use here: v2 root's cgroup.controllers, or mounted v1 ones."""
        if self.kind == "unified" and self.unified:
            return (_read(os.path.join(self.unified, "cgroup.controllers")) or "").split()
        return sorted(c for c in self.v1 if not c.startswith("name="))


def probe_layout(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    unified: str | None = None
    v1: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return Layout("none", None, {})
    for line in lines:
        left, _, right = line.partition(" - ")
        parts = right.split()
        if len(parts) < 3:
            continue
        fstype, opts, mnt = parts[0], parts[2], _unescape(left.split()[4])
        if fstype == "cgroup2" and unified is None:
            unified = mnt
        elif fstype == "cgroup":
            for o in opts.split(","):
                if o in V1_MOUNT_OPTIONS or ("=" in o and not o.startswith("name=")):
                    continue
                v1.setdefault(o, mnt)
    if unified and not v1:
        return Layout("unified", unified, v1)
    if v1:
        return Layout("hybrid" if unified else "legacy", unified, v1)
    return Layout("none", None, {})


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _read(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _keyed(path: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _int(path: str | None) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _path(base: str | None, name: str) -> str | None:
    return os.path.join(base, name) if base else None


def unit_cgroup(layout: Layout, slice_name: str, unit: str) -> str | None:
    """systemd's ControlGroup for unit in slice_name ('a-b.slice' nests in 'a.slice'), if the
    directory is there; None means: ask systemd."""
    parts = slice_name[: -len(".slice")].split("-")
    path = "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    cgroup = f"{path}/{unit}"
    base = layout.v2_dir(cgroup) or layout.v1_dir("name=systemd", cgroup)
    return cgroup if base and os.path.isdir(base) else None


# -- processes -------------------------------------------------------------------------------
def procs(layout: Layout, cgroup: str) -> list[int] | None:
    """Pids in the unit's cgroup (systemd's tracking hierarchy), None if it cannot be read."""
    base = layout.v2_dir(cgroup) or layout.v1_dir("name=systemd", cgroup)
    text = _read(_path(base, "cgroup.procs"))
    return None if text is None else [int(p) for p in text.split()]


def cpus_allowed(pid: int) -> tuple[int, ...] | None:
    """The CPUs a process may run on (its affinity within its cpuset), None if it is gone."""
    from ..spec import parse_cpu_list

    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return parse_cpu_list(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return None


def pid_namespace_depth(pid: int | str) -> int | None:
    """How many PID namespaces deep a process is (the NSpid line of /proc/PID/status, which,
    unlike /proc/PID/ns, needs no ptrace rights over it); None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        pass
    return None


def device_rules(layout: Layout, cgroup: str) -> list[str] | None:
    """cgroup v1's devices.list of the unit ("c 195:0 rw", ...); None where there is none
    (on v2 the filter is a BPF program, which the kernel does not show back as rules)."""
    text = _read(_path(layout.v1_dir("devices", cgroup), "devices.list"))
    return None if text is None else text.splitlines()


# -- accounting ------------------------------------------------------------------------------
class Accounting(NamedTuple):
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_peak_bytes: int | None = None
    oom_kills: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    tasks_peak: int | None = None


# where read_accounting takes the peak from, by layout kind (the record says it)
PEAK_FILES = {"unified": "memory.peak", "hybrid": "memory.max_usage_in_bytes",
              "legacy": "memory.max_usage_in_bytes", "none": "nothing"}


def read_accounting(layout: Layout, cgroup: str) -> Accounting:
    v2 = layout.v2_dir(cgroup)
    user = system = None
    stat = _keyed(_path(v2, "cpu.stat"))
    if "user_usec" in stat:  # exact, and present in the v2 tree even on hybrid systems
        user, system = stat["user_usec"] / 1e6, stat["system_usec"] / 1e6
    else:
        ticks = _keyed(_path(layout.v1_dir("cpuacct", cgroup), "cpuacct.stat"))
        if "user" in ticks:
            hz = os.sysconf("SC_CLK_TCK")
            user, system = ticks["user"] / hz, ticks["system"] / hz

    if layout.kind == "unified":
        peak = _int(_path(v2, "memory.peak"))
        oom = _keyed(_path(v2, "memory.events")).get("oom_kill")
        io = _io_stat(_path(v2, "io.stat"))
        tasks = _int(_path(v2, "pids.peak"))
    else:
        mem = layout.v1_dir("memory", cgroup)
        peak = _int(_path(mem, "memory.max_usage_in_bytes"))
        oom = _keyed(_path(mem, "memory.oom_control")).get("oom_kill")
        io = (None, None)  # v1 blkio misses buffered writes (writeback is charged to root)
        tasks = _int(_path(layout.v1_dir("pids", cgroup), "pids.peak"))
    return Accounting(user, system, peak, oom, io[0], io[1], tasks)


def _io_stat(path: str | None) -> tuple[int | None, int | None]:
    text = _read(path)
    if text is None:
        return None, None
    rbytes = wbytes = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                rbytes += int(value)
            elif key == "wbytes":
                wbytes += int(value)
    return rbytes, wbytes


# -- limit read-back -------------------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")
UNLIMITED = "unlimited"


def _limit_bytes(text: str | None) -> int | str | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max" or (text.isdigit() and int(text) >= 2**62):
        return UNLIMITED
    return int(text) if text.isdigit() else None


IO_MAX_KEYS = {"rbps": "io_read_bandwidth", "wbps": "io_write_bandwidth",
               "riops": "io_read_iops", "wiops": "io_write_iops"}
BLKIO_THROTTLE = {"read_bps_device": "io_read_bandwidth", "write_bps_device": "io_write_bandwidth",
                  "read_iops_device": "io_read_iops", "write_iops_device": "io_write_iops"}


def read_limits(layout: Layout, cgroup: str, disk: str | None = None) -> dict[str, object]:
    """What the kernel has in force for the unit, keyed like Limits; missing files are absent.
    disk ("MAJ:MIN"): also the I/O caps on that device (io.max; v1: blkio.throttle.*).

    Values: bytes / percent / CPU tuple / weight / count, or "unlimited".
    """
    out: dict[str, object] = {}
    v2 = layout.v2_dir(cgroup) if layout.kind == "unified" else None
    if v2 and disk:
        for line in (_read(_path(v2, "io.max")) or "").splitlines():
            if line.split(" ", 1)[0] == disk:
                for item in line.split()[1:]:
                    name, _, text = item.partition("=")
                    if name in IO_MAX_KEYS:
                        out[IO_MAX_KEYS[name]] = UNLIMITED if text == "max" else int(text)
    elif disk:
        blkio = layout.v1_dir("blkio", cgroup)
        for name, key in BLKIO_THROTTLE.items():
            for line in (_read(_path(blkio, f"blkio.throttle.{name}")) or "").splitlines():
                device, _, text = line.partition(" ")
                if device == disk and text.strip().isdigit():
                    out[key] = int(text)
    if v2:
        files = {"memory_max": "memory.max", "memory_high": "memory.high",
                 "swap_max": "memory.swap.max", "tasks_max": "pids.max"}
        for key, name in files.items():
            value = _limit_bytes(_read(_path(v2, name)))
            if value is not None:
                out[key] = value
        cpu_max = (_read(_path(v2, "cpu.max")) or "").split()
        if len(cpu_max) == 2:
            out["cpu_quota_percent"] = (UNLIMITED if cpu_max[0] == "max"
                                        else int(cpu_max[0]) * 100 / int(cpu_max[1]))
        cpus = _read(_path(v2, "cpuset.cpus"))
        if cpus is not None and cpus.strip():
            from ..spec import parse_cpu_list

            out["allowed_cpus"] = parse_cpu_list(cpus.strip())
        weight = _keyed(_path(v2, "io.weight")).get("default") or \
            _keyed(_path(v2, "io.bfq.weight")).get("default")
        if weight:
            out["io_weight"] = weight
        return out
    mem = layout.v1_dir("memory", cgroup)
    for key, name in (("memory_max", "memory.limit_in_bytes"),
                      ("swap_max", "memory.memsw.limit_in_bytes")):
        value = _limit_bytes(_read(_path(mem, name)))
        if value is not None:
            out[key] = value
    tasks = _limit_bytes(_read(_path(layout.v1_dir("pids", cgroup), "pids.max")))
    if tasks is not None:
        out["tasks_max"] = tasks
    cpu = layout.v1_dir("cpu", cgroup)
    quota, period = _read(_path(cpu, "cpu.cfs_quota_us")), _int(_path(cpu, "cpu.cfs_period_us"))
    if quota is not None and period:
        q = int(quota)
        out["cpu_quota_percent"] = UNLIMITED if q < 0 else q * 100 / period
    blkio = layout.v1_dir("blkio", cgroup)
    weight = _int(_path(blkio, "blkio.weight"))  # absent unless the CFQ scheduler is in use
    if weight:
        out["io_weight"] = weight
    return out


def verify(asked: dict[str, object], actual: dict[str, object],
           layout: Layout) -> dict[str, Verdict]:
    """Per asked limit: in force if the kernel has it as asked, else why not."""
    result: dict[str, Verdict] = {}
    for key, want in asked.items():
        have = actual.get(key)
        if have is None:
            result[key] = _why_missing(key, layout)
        elif _matches(key, _effective(key, want, layout), have):
            result[key] = IN_FORCE
        else:
            result[key] = Verdict(NOT_IN_FORCE, f"asked {want}, the cgroup has {have}")
    return result


def _matches(key: str, want: object, have: object) -> bool:
    if have == UNLIMITED:
        return False
    if key in ("memory_max", "memory_high", "swap_max"):
        return abs(int(have) - int(want)) < PAGE  # type: ignore[call-overload]
    if key == "cpu_quota_percent":
        return abs(float(have) - float(want)) <= max(1.0, float(want) * 0.01)  # type: ignore[arg-type]
    if key == "allowed_cpus":
        from ..spec import format_cpu_list

        return format_cpu_list(have) == want  # type: ignore[arg-type]
    return have == want


def _effective(key: str, want: object, layout: Layout) -> object:
    """The value the kernel file should show for what was asked."""
    if key == "io_weight" and layout.kind != "unified":
        # systemd maps IOWeight (1..10000, default 100) to blkio.weight (10..1000, default 500)
        return min(1000, max(10, int(want) * 5))  # type: ignore[call-overload]
    return want


def _why_missing(key: str, layout: Layout) -> Verdict:
    v1_reasons = {
        "memory_high": "cgroup v1 has no memory.high",
        "swap_max": "systemd sets swap limits only on cgroup v2",
        "allowed_cpus": "systemd manages cpusets only on cgroup v2",
        "io_read_iops": "systemd sets no blkio IOPS throttle on cgroup v1",
        "io_write_iops": "systemd sets no blkio IOPS throttle on cgroup v1",
        "io_weight": "no blkio.weight in the unit's cgroup (cgroup v1 weights need the CFQ I/O "
                     "scheduler)",
    }
    if layout.kind != "unified" and key in v1_reasons:
        return Verdict(NOT_ENFORCED, v1_reasons[key])
    return Verdict(NOT_ENFORCED, f"no {key} control file in the unit's cgroup (controller not "
                                 "enabled?)")
