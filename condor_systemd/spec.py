"""What to run and how: JobSpec, Limits, Sandbox, and parsers for the values users type.

Everything here validates eagerly and raises UsageError with a message that names the value, so
that a bad option is refused before anything is started. The records are NamedTuples, not
dataclasses: importing dataclasses pulls in inspect (~9 ms), paid again by every job start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple

from .command import resolve_command
from .errors import UsageError

__all__ = ["resolve_command"]  # (it lives in command.py, which the thin client imports alone)

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*", re.IGNORECASE)
_UNIT_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
# Unit names are at most 255 bytes; keep room for "condor-job-" and ".service".
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
_SLICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:.-]{0,240}\.slice")
MAX_CPU = 8191
MAX_SIZE = 2**63 - 1  # systemd takes uint64 with UINT64_MAX meaning "infinity"
MAX_PERCENT = 100.0 * (MAX_CPU + 1)
PROTECT_SYSTEM_VALUES = ("yes", "full", "strict")


def parse_size(text: str, allow_zero: bool = False) -> int:
    """'2G', '512MiB', '1.5g', '1048576' -> bytes. K/M/G/T/P are powers of 1024, as in systemd.
    Zero only where it means something (MemorySwapMax=0: no swap)."""
    m = _SIZE.fullmatch(text)
    if not m or (m.group(3) and m.group(3).upper() not in ("B", "IB")):
        raise UsageError(f"'{text}' is not a size (use bytes or a K/M/G/T suffix, e.g. 512M, 2G)")
    number, power = m.group(1), 1024 ** _UNIT_POWER[m.group(2).upper()]
    # whole numbers stay exact: a float would round sizes above 2**53
    value = int(number) * power if number.isdigit() else int(float(number) * power)
    if value < (0 if allow_zero else 1):
        raise UsageError(f"size '{text}' must be {'zero or ' if allow_zero else ''}more "
                         "than zero")
    if value > MAX_SIZE:
        raise UsageError(f"size '{text}' is too large")
    return value


def parse_percent(text: str) -> float:
    """'150%' or '150' -> 150.0 (percent of one CPU)."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"'{text}' is not a percentage (e.g. 150%)") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"percentage '{text}' must be more than zero")
    if value > MAX_PERCENT:
        raise UsageError(f"percentage '{text}' is more than {MAX_CPU + 1} CPUs")
    return value


def parse_cpu_count(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a number of CPUs (e.g. 2 or 0.5)") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"number of CPUs '{text}' must be more than zero")
    if value > MAX_CPU + 1:
        raise UsageError(f"number of CPUs '{text}' is too large")
    return value


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0-3,8' -> (0, 1, 2, 3, 8)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"'{text}' is not a CPU list (e.g. 0-3,8)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UsageError(f"CPU range '{part}' in '{text}' runs backwards")
        if hi > MAX_CPU:
            raise UsageError(f"CPU {hi} in '{text}' is out of range (0-{MAX_CPU})")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def parse_int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what} '{text}' is not a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"{what} '{text}' is out of range ({low}-{high})")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a number of seconds") from None
    if not 0 <= value < 10**9:
        raise UsageError(f"seconds '{text}' must be zero or more")
    return value


def parse_interval(text: str) -> float:
    """A sampling interval in seconds: 0.05 to 3600."""
    value = parse_seconds(text)
    if not 0.05 <= value <= 3600:
        raise UsageError(f"sampling interval '{text}' must be between 0.05 and 3600 seconds")
    return value


def format_cpu_list(cpus: tuple[int, ...]) -> str:
    out, start, prev = [], None, None
    for c in cpus:
        if start is None:
            start = prev = c
        elif c == prev + 1:  # type: ignore[operator]
            prev = c
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = c
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise UsageError(f"job id '{job_id}' is not allowed in a unit name (use letters, digits, "
                         "'.', '_', '-', ':'; at most 200 characters)")
    return job_id


def check_slice(name: str) -> str:
    if not _SLICE.fullmatch(name) or "--" in name or name.endswith("-.slice"):
        raise UsageError(f"'{name}' is not a slice name (e.g. condor.slice)")
    return name


class Limits(NamedTuple):
    """Resource limits; None means 'not limited'. Sizes in bytes, CPU quota in % of one CPU."""

    cpu_quota_percent: float | None = None
    memory_max: int | None = None
    memory_high: int | None = None
    swap_max: int | None = None
    allowed_cpus: tuple[int, ...] | None = None
    io_weight: int | None = None
    tasks_max: int | None = None
    # caps on the block device under the job's directory (blockdev.py): bytes/s, and IOPS
    io_read_bandwidth: int | None = None
    io_write_bandwidth: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None

    def asked(self) -> dict[str, object]:
        """The limits that were asked for, in the form the usage record shows them."""
        out: dict[str, object] = {}
        for name, value in self._asdict().items():
            if value is not None:
                out[name] = format_cpu_list(value) if name == "allowed_cpus" else value
        return out


class Sandbox(NamedTuple):
    private_tmp: bool = True
    private_users: bool = False
    protect_system: str | None = None  # "yes" | "full" | "strict"
    gpus: tuple[str, ...] | None = None  # GPU ids the job may open; None: no device rules
    isolate: bool = False  # its own PID namespace, and of the execute root its own directory

    def asked(self) -> dict[str, object]:
        out: dict[str, object] = {"private_tmp": self.private_tmp}
        if self.private_users:
            out["private_users"] = True
        if self.protect_system:
            out["protect_system"] = self.protect_system
        if self.gpus is not None:
            out["gpus"] = ",".join(self.gpus) or "none"
        if self.isolate:
            out["isolate"] = True
        return out


RLIMIT_NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS", "NPROC", "MEMLOCK")


class Inheritance(NamedTuple):
    """What a job forked by the wrapper would inherit from it and a unit does not, passed on:
    HTCondor sets some of it on the wrapper (affinity, oom_score_adj, rlimits, nice). None or
    empty: not known, nothing passed."""

    umask: int | None = None
    rlimits: tuple[tuple[str, int, int], ...] = ()  # (NOFILE, soft, hard); -1: infinity
    cpus: tuple[int, ...] | None = None  # sched_getaffinity
    oom_score_adj: int | None = None
    nice: int | None = None

    @classmethod
    def of_process(cls, pid: int = 0) -> Inheritance:
        """This process's (pid 0), or another's read from /proc (the broker's caller)."""
        import resource

        proc = f"/proc/{pid or 'self'}"
        umask = None
        try:
            with open(f"{proc}/status") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        umask = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if pid == 0:
            rlimits = tuple((name, *resource.getrlimit(getattr(resource, f"RLIMIT_{name}")))
                            for name in RLIMIT_NAMES)
        else:  # /proc/PID/limits needs no CAP_SYS_RESOURCE, which prlimit(2) would
            rlimits = _proc_limits(f"{proc}/limits")
        try:
            cpus: tuple[int, ...] | None = tuple(sorted(os.sched_getaffinity(pid)))
        except OSError:
            cpus = None
        try:
            with open(f"{proc}/oom_score_adj") as f:
                oom: int | None = int(f.read())
        except (OSError, ValueError):
            oom = None
        try:
            nice: int | None = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            nice = None
        return cls(umask, rlimits, cpus, oom, nice)

    def unread(self) -> list[str]:
        """What could not be read: through the broker, each would let the job get more than
        its caller has (higher rlimits, a lower nice or oom_score_adj, every CPU)."""
        return [name for name, value in (
            ("umask", self.umask), ("rlimits", self.rlimits or None), ("CPU affinity", self.cpus),
            ("oom_score_adj", self.oom_score_adj), ("nice", self.nice)) if value is None]

    def restricted_cpus(self) -> tuple[int, ...] | None:
        """The affinity, if it keeps to fewer CPUs than are online (HTCondor's
        ASSIGN_CPU_AFFINITY); None if it is no restriction or unknown."""
        if self.cpus is None or not self.cpus or self.cpus == online_cpus():
            return None
        return self.cpus

    def hard_limit(self, name: str) -> int:
        """The hard rlimit (-1: infinity or unknown)."""
        return next((hard for n, _soft, hard in self.rlimits if n == name), -1)


def online_cpus() -> tuple[int, ...] | None:
    """The CPUs online here, None if unknown."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpu_list(f.read().strip())
    except (OSError, UsageError):
        return None


# /proc/PID/limits' row names (fs/proc/base.c lnames) -> setrlimit names
_PROC_LIMITS = {"Max cpu time": "CPU", "Max file size": "FSIZE", "Max data size": "DATA",
                "Max stack size": "STACK", "Max core file size": "CORE",
                "Max open files": "NOFILE", "Max address space": "AS",
                "Max processes": "NPROC", "Max locked memory": "MEMLOCK"}


def _proc_limits(path: str) -> tuple[tuple[str, int, int], ...]:
    """(NAME, soft, hard) from /proc/PID/limits; -1 for "unlimited"."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return ()
    for line in lines:
        label = line[:26].strip()  # the kernel pads the row name to 25 columns
        name = _PROC_LIMITS.get(label)
        fields = line[26:].split()
        if name is None or len(fields) < 2:
            continue
        soft, hard = (-1 if v == "unlimited" else int(v) if v.isdigit() else None
                      for v in fields[:2])
        if soft is not None and hard is not None:
            out.append((name, soft, hard))
    return tuple(sorted(out, key=lambda entry: RLIMIT_NAMES.index(entry[0])))


class _JobSpecFields(NamedTuple):
    argv: tuple[str, ...]
    executable: str
    job_id: str
    cwd: str
    environment: Mapping[str, str]
    limits: Limits = Limits()
    sandbox: Sandbox = Sandbox()
    slot: str | None = None
    scope: bool = False
    slice: str = "condor.slice"
    user: str | None = None
    group: str | None = None
    stop_timeout: float = 20.0
    # Fallback backend only: seconds between samples of the process family (RSS, new members).
    sample_interval: float = 1.0
    # Extra unit properties from -p NAME=VALUE, already validated against the property table.
    properties: tuple[tuple[str, str], ...] = ()
    # What the job inherits from the wrapper; None: this process's, read at launch.
    inherit: Inheritance | None = None
    # Under HTCondor (htcondor.py): the job's ClusterId.ProcId and owner, for the
    # description, and FIELD=value pairs for every journal line the job logs (LogExtraFields=).
    htcondor_job: str | None = None
    owner: str | None = None
    log_fields: tuple[str, ...] = ()
    # The job's /tmp and /var/tmp: directories to bind there instead of PrivateTmp (the
    # broker's /proc/self/fd paths of the HTCondor scratch directory's tmp and var/tmp).
    tmp_binds: tuple[str, ...] = ()
    # Through the broker (an unprivileged caller): the job's own directory as the broker's
    # /proc/self/fd path of the directory the caller opened (None: the path itself, as root;
    # its disk gets the I/O caps); if it is the caller's own, its real path (read from that
    # fd, never from the caller's strings) and the execute root it lies under (root's policy
    # or HTCondor's EXECUTE): --isolate hides that root and binds the directory back at its
    # real path. for_caller: no path the caller named is looked up.
    scratch_bind: str | None = None
    scratch_target: str | None = None
    execute_root: str | None = None
    for_caller: bool = False

    @property
    def scratch_dir(self) -> str:
        """The job's own directory: HTCondor's scratch directory, else the working one."""
        scratch = self.environment.get("_CONDOR_SCRATCH_DIR", "")
        return scratch if scratch.startswith("/") else self.cwd



class JobSpec(_JobSpecFields):
    """One job: the command (argv[0] already resolved to ``executable``) and how to run it.

    Validated on construction: a JobSpec that exists is one condor-systemd can try to launch.
    """

    __slots__ = ()

    def __new__(cls, *args: object, **kwargs: object) -> JobSpec:
        self = super().__new__(cls, *args, **kwargs)  # type: ignore[arg-type]
        check_job_id(self.job_id)
        check_slice(self.slice)
        if not self.argv:
            raise UsageError("missing command")
        if self.scope and self.sandbox.isolate:
            raise UsageError("--isolate needs a service; scopes cannot be sandboxed")
        if self.scope and (self.sandbox.private_users or self.sandbox.protect_system):
            raise UsageError("--private-users and --protect-system need a service; "
                             "scopes cannot be sandboxed")
        return self

    def with_inherited_cpus(self) -> JobSpec:
        """Without --allowed-cpus, a job keeps to the CPUs its wrapper (or the broker's caller)
        may use: a forked job would inherit that affinity; a unit gets it as its CPU set."""
        if self.limits.allowed_cpus is not None:
            return self
        inherit = self.inherit or Inheritance.of_process()
        cpus = inherit.restricted_cpus()
        return self if cpus is None else self._replace(
            limits=self.limits._replace(allowed_cpus=cpus))

    @property
    def unit_name(self) -> str:
        return f"condor-job-{self.job_id}.{'scope' if self.scope else 'service'}"

    @property
    def description(self) -> str:
        where = (f" of {self.owner}" if self.owner else "") + \
            (f" on {self.slot}" if self.slot else "")
        command = " ".join(self.argv)
        if len(command) > 120:
            command = command[:117] + "..."
        return f"HTCondor job {self.htcondor_job or self.job_id}{where}: {command}"
