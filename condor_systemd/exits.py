"""The wrapper's ends: its stdio, the job's status passed on, the usage and error files.

Shared by the full CLI and the thin client, so it imports nothing beyond os and _signal.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # signal.py wraps these in enums: enum alone costs ~2.5 ms of every start
    import _signal as signal

WRAPPER_ERROR_FILE = "_CONDOR_WRAPPER_ERROR_FILE"
CORE_SIGNALS = {signal.SIGQUIT, signal.SIGILL, signal.SIGABRT, signal.SIGFPE, signal.SIGSEGV,
                signal.SIGBUS, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU, signal.SIGXFSZ}


def stdio_fds() -> tuple[int, int, int]:
    """fds 0-2 as the caller set them up; a closed one is replaced by /dev/null."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return fds[0], fds[1], fds[2]


def tell_htcondor(environ: dict[str, str], message: str) -> None:
    """A launch failure: HTCondor requeues the job when this file exists after the wrapper."""
    path = environ.get(WRAPPER_ERROR_FILE)
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"condor-systemd: {message}\n")
            os.fchmod(f.fileno(), 0o644)
        _let_the_starter_see(os.path.dirname(path))
    except OSError:
        pass


def _let_the_starter_see(directory: str) -> None:
    """The starter looks for the error file as the condor user, through the job's scratch
    directory: the job owner's, mode 0700. Unseen, the job "completes" with exit code 125
    instead of going back to idle. Search permission only (no listing) on a sandbox whose job
    never ran and which HTCondor removes right after."""
    st = os.stat(directory)
    if st.st_uid == os.geteuid():
        os.chmod(directory, (st.st_mode & 0o7777) | 0o011)


def write_file_atomically(path: str, text: str) -> str | None:
    """Write text to path through a rename; the reason it failed, or None."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def die_by_signal(signum: int) -> int:
    """Make our parent see 'killed by signum', as it would for the job itself."""
    if signum in CORE_SIGNALS:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the job's core, not the wrapper's
    try:
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return 128 + signum  # a signal that does not kill (e.g. SIGCHLD): report it shell-style
