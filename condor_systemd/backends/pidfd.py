"""Process file descriptors where the kernel has them (Linux >= 5.3), and what to do without.

A pidfd names one process for good (a recycled pid cannot be mistaken for it) and becomes
readable when the process ends, so the wait loop can sleep on it. Older kernels (RHEL 8's 4.18,
for instance) lack pidfd_open: callers then get -1 and rely on SIGCHLD, which the runner's wait
loop also wakes on, and on signalling by pid after a fresh identity check.
"""

from __future__ import annotations

import errno
import os
import signal

NONE = -1


def open_pidfd(pid: int) -> int:
    """A pidfd for pid, or NONE where the kernel has no pidfd_open. Raises ProcessLookupError
    if pid is gone."""
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp filters that deny it
            return NONE
        raise


def send(pid: int, pidfd: int, signum: int) -> None:
    """Signal through the pidfd when there is one, else by pid."""
    if pidfd != NONE:
        signal.pidfd_send_signal(pidfd, signum)
    else:
        os.kill(pid, signum)
