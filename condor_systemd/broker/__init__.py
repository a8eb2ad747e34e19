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
job), server (the loop), suspend (following the caller's suspension), fdstore and restart (what
outlives a restart of the broker: each job's connection and state, in systemd's fd store).
"""

from __future__ import annotations

import os
import socket
import stat

from ..log import Log
from . import fdstore, restart
from .policy import POLICY_FILE, Policy, check_owner

SOCKET = "/run/condor-systemd/io.condorsystemd.Job"


def main(socket_path: str | None = None, policy_file: str = POLICY_FILE) -> int:
    log = Log(to_tty=False)
    try:
        check_owner(policy_file)
        policy = Policy.load(policy_file).with_htcondor_execute()
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
    passed = fdstore.received()
    listeners = [socket.socket(fileno=fd) for _name, fd in passed if fdstore.is_listener(fd)]
    entries, stray = restart.entries([(n, fd) for n, fd in passed if not fdstore.is_listener(fd)])
    for fd in stray:
        os.close(fd)
    server = Server(listeners or [_listen(socket_path or SOCKET)], backend, policy, log)
    server.watch_signals()
    if os.environ.get("NOTIFY_SOCKET"):  # a service of systemd's: its fd store keeps our jobs
        server.measure_restart_room()
    server.take_back(entries)
    fdstore.notify("READY=1")
    server.serve()
    return 0


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
