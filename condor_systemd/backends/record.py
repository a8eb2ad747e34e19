"""What a systemd job's end becomes: the usage record, or the error for a job that never ran.

Everything measured comes from the unit's cgroup (or from systemd, which reads the same kernel
counters): exact, whatever the job did; the record's ``accuracy`` names each source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LaunchError
from ..usage import IN_FORCE, Usage
from . import cgroupfs, properties

if TYPE_CHECKING:
    from .unitjob import SystemdJob

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
# ExecMainStatus values systemd uses when it fails to set up the job (systemd.exec(5)).
SETUP_FAILURES = {200: "cannot change to the working directory", 203: "cannot execute the command",
                  216: "unknown group", 217: "unknown user", 218: "cannot set up output",
                  226: "cannot set up namespaces (sandboxing)", 228: "cannot set up /tmp"}
SETUP_STATUSES = range(200, 244)  # EXIT_CHDIR .. EXIT_CREDENTIALS: systemd's own failures


def start_failure(job: SystemdJob, code: int, status: int) -> LaunchError:
    from ..errors import CommandNotExecutable

    what = None
    if code == CLD_EXITED and status in SETUP_STATUSES:
        what = SETUP_FAILURES.get(status, "could not set up the job's environment")
        if status == 200:
            what += f" {job.spec.cwd}"
    detail = f" ({what}, status {status})" if what else ""
    if status == 203 and code == CLD_EXITED:
        return CommandNotExecutable(f"{job.spec.argv[0]}: systemd {what}")
    return LaunchError(f"systemd could not start {job.unit}: {job.start_result}{detail}; "
                       f"see journalctl -u {job.unit}")

def make_usage(job: SystemdJob, code: int, status: int, acct: cgroupfs.Accounting,
               wall: float | None, result: str = "",
               memory_peak_property: int | None = None) -> Usage:
    peak_source = cgroupfs.PEAK_FILES[job.layout.kind]
    if memory_peak_property not in (None, properties.UINT64_MAX):
        # systemd >= 256 exports the unit's memory.peak itself: the same kernel counter,
        # read by the manager that owns the cgroup
        acct = acct._replace(memory_peak_bytes=memory_peak_property)
        peak_source = "systemd's MemoryPeak property"
    exit_code = status if code == CLD_EXITED else None
    signum = status if code in (CLD_KILLED, CLD_DUMPED) else None
    oom = None if acct.oom_kills is None else acct.oom_kills > 0
    if result == "oom-kill":  # cgroup v2: systemd saw memory.events' oom_kill itself
        oom = True
    enforced = dict(job.enforced)
    for key, value in job.spec.sandbox.asked().items():
        if value and key not in enforced:
            enforced[key] = IN_FORCE  # systemd sets these up at exec or fails the start
    usage = Usage(
        unit=job.unit, backend="systemd", job_id=job.spec.job_id, exit_code=exit_code,
        signal=signum, oom_killed=oom, wall_seconds=None if wall is None else round(wall, 6),
        cpu_user_seconds=acct.cpu_user_seconds, cpu_system_seconds=acct.cpu_system_seconds,
        memory_peak_bytes=acct.memory_peak_bytes, io_read_bytes=acct.io_read_bytes,
        io_write_bytes=acct.io_write_bytes, tasks_peak=acct.tasks_peak,
        limits={**job.spec.limits.asked(), **job.spec.sandbox.asked()},
        enforced=enforced, cgroup_layout=job.layout.kind,
        cgroup_controllers=job.layout.controllers(), systemd_version=job.version,
        backend_reason=job.backend_reason,
        accuracy=_accuracy(acct, job.layout.kind, peak_source))
    outcome = f"exit code {exit_code}" if signum is None else f"signal {signum}"
    job.log.info(f"finished: {outcome}, cpu user {_fmt(acct.cpu_user_seconds)} s, "
                  f"system {_fmt(acct.cpu_system_seconds)} s, peak memory "
                  f"{acct.memory_peak_bytes} bytes{', OOM kill' if oom else ''}")
    return usage


def _accuracy(acct: cgroupfs.Accounting, layout: str, peak_source: str) -> dict[str, str]:
    """Everything measured comes from the unit's cgroup: exact, whatever the job did."""
    sources = {"cpu": "cpu.stat" if layout == "unified" else "cpu.stat or cpuacct.stat",
               "memory_peak": peak_source, "io": "io.stat", "tasks_peak": "pids.peak"}
    measured = {"cpu": acct.cpu_user_seconds, "memory_peak": acct.memory_peak_bytes,
                "io": acct.io_read_bytes, "tasks_peak": acct.tasks_peak}
    return {key: f"exact: the unit's cgroup ({sources[key]})" if value is not None
            else "unknown on this layout" for key, value in measured.items()}


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"
