"""What a forked child does before it execs the job (scope jobs, and the fallback backend).

These run between fork() and exec(): no allocation-heavy work, no locks, and failures are
reported to the parent through a pipe by the caller, never raised past os._exit().
"""

from __future__ import annotations

import os
import signal


def dup_stdio(stdio: tuple[int, int, int]) -> None:
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target, inheritable=True)


def set_identity(user: str | None, group: str | None) -> None:
    if group:
        os.setgid(gid_of(group))
    if user:
        os.setgroups([])
        os.setuid(uid_of(user))


def reset_signals() -> None:
    """The job starts with every signal at its default and none blocked, whatever the wrapper
    had set (exec keeps ignored signals ignored and the mask as it was)."""
    for s in range(1, signal.NSIG):
        try:
            signal.signal(s, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def uid_of(user: str) -> int:
    import pwd

    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def gid_of(group: str) -> int:
    import grp

    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 256):
        data += chunk
    return data


def under_tmp(path: str) -> bool:
    """Is path, as given or resolved, in /tmp or /var/tmp (which a private /tmp replaces)?"""
    paths = {os.path.abspath(path), os.path.realpath(path)}
    return any(p == d or p.startswith(d + "/") for p in paths for d in ("/tmp", "/var/tmp"))


def private_tmp_conflict(cwd: str, executable: str) -> str | None:
    """Why a private /tmp must stay off for this job, or None."""
    hidden = [what for what, path in (("working directory", cwd), ("command", executable))
              if under_tmp(path)]
    if not hidden:
        return None
    return f"off: the {' and '.join(hidden)} under /tmp or /var/tmp would be hidden by it"
