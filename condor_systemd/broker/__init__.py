"""The broker: a socket-activated root service that runs every local user's jobs as units.

`condor-systemd run` as a non-root user (HTCondor runs its job wrapper as the job's owner)
cannot start system units. The broker can, and is the only policy point between the two: it
answers on a varlink socket (/run/condor-systemd/io.condorsystemd.Job, units/condor-systemd.socket),
runs each caller's job as that caller in condor-job-u<uid>-<id>.service, within the site's
policy and the caller's own cgroup, streams the job's end and usage record back, and stops the
job when the caller goes away. One process, one D-Bus connection, one loop for all jobs.

    condor-systemd broker [--socket PATH] [--policy FILE]

Modules: interface (the varlink interface and parameter checks), peer (who calls, and the
caller's own limits), policy (what a non-root caller may get), session (one connection and its
job), server (the loop).
"""

from __future__ import annotations

import os
import socket
import stat

from ..log import Log
from .policy import POLICY_FILE, Policy, check_owner

SOCKET = "/run/condor-systemd/io.condorsystemd.Job"
SD_LISTEN_FDS_START = 3


def main(socket_path: str | None = None, policy_file: str = POLICY_FILE) -> int:
    log = Log(to_tty=False)
    try:
        check_owner(policy_file)
        policy = Policy.load(policy_file)
    except ValueError as exc:
        log.error(f"policy: {exc}; not starting")
        print(f"condor-systemd broker: policy: {exc}", flush=True)
        return 2
    from ..backends.systemd import SystemdBackend
    from ..errors import BackendUnavailable
    from .server import Server

    try:
        backend = SystemdBackend.connect()
    except BackendUnavailable as exc:
        log.error(str(exc))
        print(f"condor-systemd broker: {exc}", flush=True)
        return 125
    listeners = _activated() or [_listen(socket_path or SOCKET)]
    server = Server(listeners, backend, policy, log)
    server.watch_signals()
    server.serve()
    return 0


def _activated() -> list[socket.socket]:
    """The sockets systemd passed (sd_listen_fds(3)); none when not socket-activated."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out


def _listen(path: str) -> socket.socket:
    """Without socket activation (tests, a manual start): bind the path ourselves."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, 0o666)  # everybody may ask; SO_PEERCRED says who asks
    sock.listen(512)
    return sock
