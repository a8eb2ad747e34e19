"""The backend interface. Backends are private; condor_systemd.run() is the public entry point.

A backend starts a job and hands back a :class:`Job`, which the runner drives with one event
loop shared by all backends::

    job = backend.start(spec, stdio, log)   # the job runs; raises LaunchError if it cannot
    while not job.poll():                    # True once the job has ended
        select(job.fds() + [signal fd], ..., job.timeout())  # where the wrapper waits for news
        job.send_signal(sig) / job.kill()    # forwarded signals, stop-timeout escalation
    usage = job.finish()                      # kill what is left, read accounting, clean up

What may block, and for how long: poll(), send_signal() and kill() never wait for the JOB, but
they are not free of waits. The systemd backend makes D-Bus round trips in them (systemd answers
within milliseconds; a hung manager is given up on after bus.CALL_TIMEOUT, 120 s) and, after
`systemctl daemon-reexec` closed its connection, reconnects (up to RECONNECT_TIMEOUT, 30 s).
The fallback's kill() stops and kills the family in rounds until none is left (up to 10 s).
finish() waits for the unit to go (up to the stop timeout + 10 s). One wrapper drives one job,
so these bounds cost only that job; a loop driving many jobs must not call them inline.

``finish()`` must leave no process and no unit behind; if it fails, the runner calls
``abort()``, the best-effort version also used for the wrapper's own errors. Backends raise only
condor_systemd.errors exceptions: each maps its transport's failures at its edge. Without
pidfds (Linux < 5.3) ``fds()`` may lack the job's process: the runner also wakes on SIGCHLD.

``select(choice)`` probes once per process and keeps the reason a backend is unavailable, so
that ``--backend auto`` can say why it chose what it chose.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Protocol

from ..errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    from ..log import Log
    from ..spec import JobSpec
    from ..usage import Usage

BACKENDS = ("auto", "systemd", "psutil")
# Forwarded signals that start a stop: whatever is left when --stop-timeout expires is killed,
# and until then the job's processes get their grace, even once its main process has ended.
STOPPING = (signal.SIGTERM, signal.SIGINT)


class Job(Protocol):
    unit: str | None

    def fds(self) -> list[int]:
        """File descriptors that become readable when poll() has something to do."""

    def timeout(self) -> float | None:
        """Seconds until poll() must run even if no fd is readable; None: only on events.
        The systemd backend never needs one; the fallback samples its process family."""

    def poll(self) -> bool:
        """Handle what has arrived, never waiting for the job (but see "What may block");
        True once the job's main process ended."""

    def send_signal(self, signum: int) -> None:
        """Deliver signum to every process of the job."""

    def kill(self) -> None:
        """SIGKILL every process of the job."""

    def finish(self) -> Usage:
        """Kill leftovers, read accounting, remove the unit; the job's final record."""

    def abort(self) -> None:
        """Best effort: kill everything and remove the unit, for when the wrapper fails."""


class Backend(Protocol):
    name: str
    reason: str  # why this backend was chosen: the usage record's backend_reason

    def start(self, spec: JobSpec, stdio: tuple[int, int, int], log: Log) -> Job:
        """Launch the job with these fds as its stdin/stdout/stderr. Without allowed_cpus,
        the job keeps to the CPUs of the caller's affinity (spec.inherit, else this process's):
        the limits in its record say so."""


def select(choice: str = "auto") -> Backend:
    """The backend to use; raises BackendUnavailable naming why when there is none.

    auto takes systemd when it is really usable here: the init system of this PID namespace,
    we may start system units (root), and it answers on D-Bus. Otherwise the psutil fallback,
    which keeps the reason (the usage record's backend_reason; `condor-systemd probe`)."""
    if choice not in BACKENDS:
        raise UsageError(f"unknown backend '{choice}' (choose from {', '.join(BACKENDS)})")
    if choice == "psutil":
        return _fallback("forced by --backend psutil")
    from .systemd import SystemdBackend

    try:
        if choice == "auto":
            _check_systemd_usable()
        backend = SystemdBackend.connect()
    except BackendUnavailable as exc:
        if choice == "systemd":
            raise
        try:
            return _fallback(f"auto: {exc}")
        except BackendUnavailable as fallback_exc:
            raise BackendUnavailable(f"{exc}; and {fallback_exc}") from None
    backend.reason = f"{'auto' if choice == 'auto' else 'forced by --backend systemd'}: " \
                     f"{backend.reason}"
    return backend


def _check_systemd_usable() -> None:
    if not os.path.isdir("/run/systemd/system"):
        raise BackendUnavailable("systemd is not the init system here (no /run/systemd/system)")
    try:
        with open("/proc/1/comm") as f:
            init = f.read().strip()
    except OSError:
        init = "unknown"
    if init != "systemd":
        raise BackendUnavailable(f"PID 1 of this PID namespace is {init!r}, not systemd")
    if os.geteuid() != 0:
        raise BackendUnavailable(f"uid {os.geteuid()} may not start system units "
                                 "(only root may)")


def _fallback(reason: str) -> Backend:
    try:
        from .fallback import FallbackBackend
    except ImportError as exc:
        raise BackendUnavailable(f"the psutil fallback backend needs {exc.name or 'psutil'}, "
                                 "which is not installed (pip install "
                                 "'condor-systemd[fallback]')") from None
    return FallbackBackend(reason)
