"""The backend interface. Backends are private; condor_systemd.run() is the public entry point.

A backend starts a job and hands back a :class:`Job`, which the runner drives with one event
loop shared by all backends::

    job = backend.start(spec, stdio, log)   # the job runs; raises LaunchError if it cannot
    while not job.poll():                    # poll() never blocks; True once the job has ended
        select(job.fds() + [signal fd], ..., timeout)   # the only place the wrapper sleeps
        job.send_signal(sig) / job.kill()    # forwarded signals, stop-timeout escalation
    usage = job.finish()                      # kill what is left, read accounting, clean up

``finish()`` must leave no process and no unit behind, and may be called after any failure;
``abort()`` is the best-effort version for the wrapper's own errors. Backends raise only
condor_systemd.errors exceptions: each maps its transport's failures at its edge.

``select(choice)`` probes once per process and keeps the reason a backend is unavailable, so
that ``--backend auto`` can say why it chose what it chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    from ..log import Log
    from ..spec import JobSpec
    from ..usage import Usage

BACKENDS = ("auto", "systemd", "psutil")


class Job(Protocol):
    unit: str | None

    def fds(self) -> list[int]:
        """File descriptors that become readable when poll() has something to do."""

    def poll(self) -> bool:
        """Handle pending events without blocking; True once the job's main process ended."""

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

    def start(self, spec: JobSpec, stdio: tuple[int, int, int], log: Log) -> Job:
        """Launch the job with these fds as its stdin/stdout/stderr."""


def select(choice: str = "auto") -> Backend:
    """The backend to use; raises BackendUnavailable naming why when there is none."""
    if choice not in BACKENDS:
        raise UsageError(f"unknown backend '{choice}' (choose from {', '.join(BACKENDS)})")
    if choice == "psutil":
        raise BackendUnavailable("the psutil fallback backend is not available in this version "
                                 "(planned); use --backend systemd")
    from .systemd import SystemdBackend

    try:
        return SystemdBackend.connect()
    except BackendUnavailable as exc:
        if choice == "auto":
            raise BackendUnavailable(f"{exc}; the psutil fallback backend is not available in "
                                     "this version (planned)") from None
        raise
