"""The job's /tmp and /var/tmp inside its HTCondor scratch directory, as MOUNT_UNDER_SCRATCH does.

HTCondor's starter binds <scratch>/tmp and <scratch>/var/tmp over /tmp and /var/tmp in the
wrapper's mount namespace: their files count against the slot's disk and go with the sandbox.
The job's unit is set up by systemd outside that namespace, so the unit binds the same two
directories itself (BindPaths=). The broker never looks a path up on a caller's behalf (nor
could it: it keeps only CAP_KILL, and the scratch directory is its owner's, mode 0700): the
client opens both directories as the job's user and sends them as O_PATH fds; the broker
checks that they are directories the caller owns and gives systemd /proc/<broker>/fd/<n>,
which names those very directories whatever is renamed meanwhile. A bind thus reaches nothing
the caller could not open itself, and a symlink planted as tmp to somebody else's directory is
refused. The fds stay open until systemd has let the unit go (session.py).
"""

from __future__ import annotations

import fcntl
import os
import stat


def job_tmp(fds: tuple[int, int], uid: int) -> tuple[list[int], str | None]:
    """Our own copies of the two directory fds, or ([], why they cannot be used)."""
    for name, fd in zip(("tmp", "var/tmp"), fds):
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            return [], f"the scratch directory's {name} is not a directory of the caller's"
    return [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds], None


def proc_path(fd: int) -> str:
    """What BindPaths= gets: the path through this process's fd names the directory itself."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def own_directory(fd: int, uid: int) -> int | None:
    """Our copy of the job's own directory, if it is a directory of the caller's; None
    otherwise. --isolate binds it from this fd (the one part of the execute root the job
    sees), and the I/O caps go on the disk under it."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return None
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def real_path(fd: int) -> str | None:
    """Where the directory behind the fd really is, as the kernel names it (never what the
    caller says it is); None for one that was removed or lies outside our mount namespace."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
    except OSError:
        return None
    if st.st_nlink == 0 or not path.startswith("/") or os.path.normpath(path) != path:
        return None  # "... (deleted)", or a mount we cannot name
    return path


def execute_root(path: str, roots: tuple[str, ...]) -> str | None:
    """The execute root (root's policy, HTCondor's EXECUTE) the job's directory lies under:
    the deepest one, strictly above it."""
    under = [root for root in roots if path.startswith(root.rstrip("/") + "/")]
    return max(under, key=len) if under else None
