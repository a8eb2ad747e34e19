"""What a forked child does before it execs the job (scope jobs, and the fallback backend).

These run between fork() and exec(): no allocation-heavy work, no locks, and failures are
reported to the parent through a pipe, never raised past os._exit(). Both forking launchers (the
fallback and systemd scopes) speak one protocol on that pipe: the child writes
"stage NUL errno NUL message" with :func:`report_failure` and the parent turns it into the
error the user sees with :func:`launch_error`; nothing at all means exec succeeded.
"""

from __future__ import annotations

import errno as errnos
import os
import signal

from ..errors import CommandNotExecutable, CommandNotFound, LaunchError

EXEC = "exec"  # the stage whose ENOENT means "command not found"


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


def under_tmp(path: str, resolve: bool = True) -> bool:
    """Is path, as given or resolved, in /tmp or /var/tmp (which a private /tmp replaces)?
    The broker does not resolve a caller's paths (a hung file system would stall it): as
    given only."""
    paths = {os.path.abspath(path)} | ({os.path.realpath(path)} if resolve else set())
    return any(p == d or p.startswith(d + "/") for p in paths for d in ("/tmp", "/var/tmp"))


def private_tmp_conflict(cwd: str, executable: str, resolve: bool = True) -> str | None:
    """Why a private /tmp must stay off for this job, or None."""
    hidden = [what for what, path in (("working directory", cwd), ("command", executable))
              if under_tmp(path, resolve)]
    if not hidden:
        return None
    return f"the {' and '.join(hidden)} under /tmp or /var/tmp would be hidden by it"


def report_failure(err_w: int, stage: str, exc: BaseException) -> None:
    """In the child: tell the parent which stage failed and why (then the child exits)."""
    if isinstance(exc, OSError):
        number, text = exc.errno or 0, exc.strerror or str(exc)
    else:
        number, text = 0, str(exc) or type(exc).__name__
    os.write(err_w, f"{stage}\0{number}\0{text}".encode(errors="replace"))


def launch_error(command: str, failure: bytes) -> LaunchError:
    """In the parent: the error for what report_failure() said. Only a failed exec is about the
    command itself; a failed chdir is not "command not found"."""
    stage, _, rest = failure.decode(errors="replace").partition("\0")
    number_text, _, text = rest.partition("\0")
    number = int(number_text) if number_text.isdigit() else 0
    if stage == EXEC:
        if number == errnos.ENOENT:
            return CommandNotFound(f"{command}: command not found")
        if number in (errnos.EACCES, errnos.ENOEXEC, errnos.EISDIR, errnos.EPERM):
            return CommandNotExecutable(f"{command}: {text}")
    return LaunchError(f"could not start the job: {stage}: {text}")
