"""run(): launch a job through a backend, wait for it, forward signals, return its Usage.

The wrapper sleeps in exactly one place, a poll() on the backend's fds and on the self-pipe that
Python's signal machinery writes to (signal.set_wakeup_fd). The systemd backend needs no timer
(no polling); the fallback asks for one to sample the job's processes. SIGCHLD also wakes the
loop: where the kernel has no pidfds, a child's end is news only that way.
"""

from __future__ import annotations

import os
import select
import signal
import time

from .backends import STOPPING, Backend
from .backends import select as select_backend
from .log import Log
from .spec import JobSpec
from .usage import Usage

# Signals HTCondor (or an administrator) sends to the wrapper, meant for the whole job.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
WAKING = FORWARDED + (signal.SIGCHLD,)


class _SignalInbox:
    """Catches FORWARDED signals (and SIGCHLD, which only wakes) into a pipe poll() waits on."""

    def __enter__(self) -> _SignalInbox:
        self.read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.write_fd = write_fd
        self.old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.old_handlers = {s: signal.signal(s, _ignore) for s in WAKING}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.old_handlers.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self.old_wakeup)
        os.close(self.read_fd)
        os.close(self.write_fd)

    def drain(self) -> list[int]:
        try:
            return list(os.read(self.read_fd, 512))
        except BlockingIOError:
            return []


def _ignore(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the handler itself has nothing to do."""


def run(spec: JobSpec, stdio: tuple[int, int, int] = (0, 1, 2),
        backend: str | Backend = "auto", log: Log | None = None) -> Usage:
    """Run spec to completion; raises a condor_systemd.errors exception if it cannot start.
    backend: a name for select(), or one it returned."""
    log = log or Log()
    chosen = select_backend(backend) if isinstance(backend, str) else backend
    with _SignalInbox() as inbox:
        job = chosen.start(spec, stdio, log)
        try:
            fds: list[int] | None = None
            deadline: float | None = None
            killed = False
            while not job.poll():
                if job.fds() != fds:  # first time, or the backend reconnected
                    fds = job.fds()
                    poller = select.poll()
                    for fd in fds + [inbox.read_fd]:
                        poller.register(fd, select.POLLIN | select.POLLPRI)
                waits = [job.timeout()]
                if deadline is not None and not killed:
                    waits.append(max(0.0, deadline - time.monotonic()))
                known = [w for w in waits if w is not None]
                poller.poll(min(known) * 1000 if known else None)
                for signum in inbox.drain():
                    if signum in FORWARDED:
                        job.send_signal(signum)
                        if signum in STOPPING and deadline is None:
                            deadline = time.monotonic() + spec.stop_timeout
                if deadline is not None and not killed and time.monotonic() >= deadline:
                    job.kill()
                    killed = True
            return job.finish()
        except BaseException:
            job.abort()  # a failed finish() too: nothing of the job may outlive the wrapper
            raise
