"""--isolate: the job in a PID namespace of its own, on every systemd.

systemd runs this file (``python3 -I -S -c <this source> -- EXECUTABLE ARGV0 ARGS...``) as
the unit's main process, as the job's user. It makes a user namespace (mapping only the user's
own ids), a PID namespace and a mount namespace; forks PID 1 of the new PID namespace, which
mounts a /proc that shows only the job's processes and forks the job. The job cannot see, and
so cannot signal, any process of another job, even one of the same user.

Not the job as PID 1 (as systemd's PrivatePIDs= does): PID 1 drops every signal it has no
handler for, so a shell script would ignore HTCondor's soft kill. Here the job is PID 2 and
keeps the ordinary signal semantics; systemd signals every process of the unit directly.

PID 1 reports the job's wait status through a pipe once the job's main process has ended, and
exits: the kernel then kills whatever the job left in its namespace. This process, outside the
namespace, ends the same way the job did (its exit code, or its signal), so systemd, and the
wrapper, see the job's own status. READY=1 (Type=notify) says the namespaces are in place: a
failure before it is systemd's failure to start the unit, i.e. a launch failure.

Standard library only, and run isolated (-I -S): it starts once per job, in the job's memory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
# what systemd sends every process of the unit: the outer process waits them out
OUTER_IGNORES = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                 signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE)
SETUP_FAILED = 125


def fail(what: str, err: int) -> None:
    sys.stderr.write(f"condor-systemd: --isolate: {what}: {os.strerror(err)}\n")
    os._exit(SETUP_FAILED)


def write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        fail(f"cannot write {path}", exc.errno or 1)


def notify(path: str, message: bytes) -> None:
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, "\0" + path[1:] if path.startswith("@") else path)


def init(libc: ctypes.CDLL, argv: list[str], report: int, ready: int) -> None:
    """PID 1 of the job's namespace."""
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        fail("cannot make the mounts private", ctypes.get_errno())
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        fail("cannot mount the namespace's /proc", ctypes.get_errno())
    job = os.fork()
    if job == 0:
        os.close(report)
        os.close(ready)
        try:
            os.execv(argv[0], argv[1:])
        except OSError as exc:
            sys.stderr.write(f"condor-systemd: cannot run {argv[0]}: {exc.strerror}\n")
            os._exit(126 if exc.errno in (13, 8) else 127)
    os.write(ready, b"1")
    os.close(ready)
    while True:
        pid, status = os.wait()
        if pid == job:
            os.write(report, str(status).encode())
            os._exit(0)


def main(argv: list[str]) -> None:
    if argv[:1] != ["--"] or len(argv) < 3:
        sys.stderr.write("usage: pidns.py -- EXECUTABLE ARGV0 [ARGS...]\n")
        os._exit(2)
    notify_socket = os.environ.pop("NOTIFY_SOCKET", "")  # ours: the job gets none
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) != 0:
        fail("cannot make a user and PID namespace", ctypes.get_errno())
    write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    write("/proc/self/setgroups", "deny\n")
    write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    report_r, report_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid1 = os.fork()
    if pid1 == 0:
        os.close(report_r)
        os.close(ready_r)
        init(libc, argv[1:], report_w, ready_w)
    os.close(report_w)
    os.close(ready_w)
    for signum in OUTER_IGNORES:  # a handler, not SIG_IGN: the job must not inherit it
        signal.signal(signum, lambda *_: None)
    if os.read(ready_r, 1) != b"1":
        os.waitpid(pid1, 0)
        os._exit(SETUP_FAILED)  # PID 1 said why on stderr
    notify(notify_socket, b"READY=1")
    data = b""
    while chunk := os.read(report_r, 32):
        data += chunk
    os.waitpid(pid1, 0)
    status = int(data) if data.isdigit() else (SETUP_FAILED << 8)
    if os.WIFSIGNALED(status):
        death = os.WTERMSIG(status)
        signal.signal(death, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [death])
        os.kill(os.getpid(), death)
        os._exit(128 + death)  # a signal whose default is not to end a process
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main(sys.argv[1:])
