"""The usage record: what a job did and what was enforced, rendered as JSON or a ClassAd.

Unknown values are None (JSON null, ClassAd ``undefined``), never a made-up 0. ``enforced`` maps
each limit and sandbox setting asked for to a :class:`Verdict`; the record renders it as ``true``
(verified in force) or as a string "<kind>: <why>" (not sent, not enforced on this cgroup layout,
not in force as asked, approximate without cgroups, ...). ``accuracy`` says, per measured
quantity, how it was measured and what that can miss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Verdict kinds, as they start the record's strings.
ENFORCED = "enforced"        # read back from the kernel (or set up by systemd at exec) and in force
APPROXIMATE = "approximate"  # without cgroups: something weaker stands in for it
NOT_ENFORCED = "not enforced"  # nothing enforces it here
NOT_SENT = "not sent"        # this systemd or unit type cannot take it
NOT_IN_FORCE = "not in force"  # sent, but the kernel shows something else
OFF = "off"                  # switched off for this job (e.g. a private /tmp would hide the job)
UNKNOWN = "unknown"          # could not be checked
VERDICT_KINDS = (ENFORCED, APPROXIMATE, NOT_ENFORCED, NOT_SENT, NOT_IN_FORCE, OFF, UNKNOWN)


@dataclass(frozen=True)
class Verdict:
    """How one limit or sandbox setting asked for turned out, and why."""

    kind: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in VERDICT_KINDS:
            raise ValueError(f"unknown verdict kind {self.kind!r}")

    @property
    def enforced(self) -> bool:
        return self.kind == ENFORCED

    def render(self) -> bool | str:
        """The record's documented form: true, or "kind: reason"."""
        return True if self.enforced else f"{self.kind}: {self.reason}"


IN_FORCE = Verdict(ENFORCED)
# allowed_cpus held by CPU affinity, not by a cpuset: read back, but a job may undo it
AFFINITY = ("affinity: every process of the job runs on the CPUs asked (read back from /proc), "
            "but a process may widen its own affinity; only a cpuset would stop that")


def render_verdict(verdict: Verdict | bool | str) -> bool | str:
    if isinstance(verdict, Verdict):
        return verdict.render()
    raise TypeError(f"enforced values are Verdicts, not {type(verdict).__name__}")


KEYS = ("unit", "backend", "job_id", "exit_code", "signal", "oom_killed", "wall_seconds",
        "cpu_user_seconds", "cpu_system_seconds", "memory_peak_bytes", "io_read_bytes",
        "io_write_bytes", "tasks_peak", "limits", "enforced", "capped", "cgroup_layout",
        "cgroup_controllers", "systemd_version", "backend_reason", "accuracy")


@dataclass(frozen=True)
class Usage:
    unit: str | None
    backend: str
    job_id: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool | None = None
    wall_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_peak_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    tasks_peak: int | None = None
    # each record its own containers: a shared default would carry one job's values into the next
    limits: dict = field(default_factory=dict)
    enforced: dict = field(default_factory=dict)
    # what the broker capped, and why (the caller's cgroup, the site's policy)
    capped: dict = field(default_factory=dict)
    cgroup_layout: str | None = None
    cgroup_controllers: list = field(default_factory=list)
    systemd_version: int | None = None
    backend_reason: str | None = None
    accuracy: dict = field(default_factory=dict)

    def to_json(self) -> str:
        import json

        return json.dumps(self.as_dict(), indent=2, sort_keys=False) + "\n"

    def as_dict(self) -> dict:
        """The record as documented: KEYS in order, verdicts rendered as true or "kind: why"."""
        out = asdict(self)
        out["enforced"] = {key: render_verdict(v) for key, v in self.enforced.items()}
        return out

    def to_classad(self) -> str:
        """HTCondor attribute names first, then the full record as CondorSystemd* attributes."""
        ended = self.exit_code is not None or self.signal is not None
        lines = [
            f"RemoteUserCpu = {_ad(self.cpu_user_seconds)}",
            f"RemoteSysCpu = {_ad(self.cpu_system_seconds)}",
            f"RemoteWallClockTime = {_ad(self.wall_seconds)}",
            f"ResidentSetSize = {_ad(_ceil_div(self.memory_peak_bytes, 1024))}",
            f"MemoryUsage = {_ad(_ceil_div(self.memory_peak_bytes, 1024 * 1024))}",
            f"BlockReadKbytes = {_ad(_ceil_div(self.io_read_bytes, 1024))}",
            f"BlockWriteKbytes = {_ad(_ceil_div(self.io_write_bytes, 1024))}",
            f"ExitBySignal = {_ad(self.signal is not None if ended else None)}",
            f"ExitCode = {_ad(self.exit_code)}",
            f"ExitSignal = {_ad(self.signal)}",
        ]
        record = self.as_dict()
        for key in KEYS:
            value = record[key]
            name = "CondorSystemd" + _camel(key)
            if isinstance(value, list):
                lines.append(f"{name} = {_ad(' '.join(value))}")
            elif isinstance(value, dict):
                for sub, subvalue in value.items():
                    subname = _camel(sub)
                    lines.append(f"{name}{subname} = {_ad(subvalue)}")
            else:
                lines.append(f"{name} = {_ad(value)}")
        return "\n".join(lines) + "\n"


CHIRPED = ("backend", "unit", "cpu_user_seconds", "cpu_system_seconds", "wall_seconds",
           "memory_peak_bytes", "io_read_bytes", "io_write_bytes", "tasks_peak", "oom_killed")


def job_attributes(usage: Usage) -> list[tuple[str, str]]:
    """The record for the HTCondor job ad (chirp.py): (ChirpCondorSystemd<Key>, ClassAd value).

    Our own names: the starter overwrites RemoteUserCpu, ResidentSetSize... with its figures
    for the slot's cgroup, which no longer holds the job. MemoryPeakMB and MemoryMaxMB are in
    the MB that HTCondor's own memory attributes use (for the OOM hold's reason); Limits is
    the limits applied, NotEnforced what was asked and did not hold ("" when all did)."""
    record = usage.as_dict()
    out = [(f"ChirpCondorSystemd{_camel(key)}", _ad(record[key])) for key in CHIRPED]
    memory_max = usage.limits.get("memory_max")
    out += [
        ("ChirpCondorSystemdMemoryPeakMB", _ad(_ceil_div(usage.memory_peak_bytes, 2**20))),
        ("ChirpCondorSystemdMemoryMaxMB",
         _ad(memory_max // 2**20 if isinstance(memory_max, int) else None)),
        ("ChirpCondorSystemdLimits",
         _ad(_fit(" ".join(f"{key}={_plain(value)}" for key, value in usage.limits.items())))),
        ("ChirpCondorSystemdNotEnforced",
         _ad(_fit("; ".join(f"{key}: {verdict}" for key, verdict in record["enforced"].items()
                            if verdict is not True)))),
    ]
    return out


def _fit(text: str, limit: int = 900) -> str:
    """Chirp takes at most 993 characters of expression: long text is cut, and says so."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _plain(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _camel(key: str) -> str:
    """memory_max -> MemoryMax; a property name such as PrivatePIDs stays as it is."""
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def _ceil_div(value: int | None, by: int) -> int | None:
    return None if value is None else -(-value // by)


def _ad(value: object) -> str:
    if value is None:
        return "undefined"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{text}"'
