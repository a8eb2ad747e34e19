"""Can this node run jobs through condor-systemd? The answer for HTCondor's startd.

A job that cannot be launched goes back to idle (the wrapper's error file), and the negotiator
would match it to the same node again at once: an execute node whose broker is down must take
itself out of matching. The startd runs `condor-systemd probe --classad` as a STARTD_CRON job
(packaging/htcondor/50-condor-systemd.conf); it prints two machine-ad attributes, and the
snippet's START expression requires CondorSystemdReady. The node comes back by itself at the
next probe that finds the broker answering.
"""

from __future__ import annotations

import os

from . import varlink
from .client import INTERFACE, socket_path

TIMEOUT = 10.0  # a socket-activated broker starts in well under a second; a hung one never


def broker_problem(timeout: float = TIMEOUT) -> str | None:
    """Why the broker cannot take a job now, or None when it answers a call."""
    import socket

    path = socket_path()
    if not os.path.exists(path):
        return f"no broker socket at {path} (systemctl enable --now condor-systemd.socket)"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            varlink.send(sock, {"method": "org.varlink.service.GetInfo"})
            reader = varlink.Reader()
            while (got := reader.next()) is None:
                if not varlink.recv_into(sock, reader):
                    return f"the broker at {path} closed the connection"
            message, fds = got
            for fd in fds:
                os.close(fd)
            interfaces = varlink.validate_reply(message)[0].get("interfaces") or []
        except (OSError, varlink.ProtocolError, varlink.VarlinkError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return f"the broker at {path} does not answer: {text or type(exc).__name__}"
    if INTERFACE not in interfaces:
        return f"the service at {path} is not condor-systemd's broker"
    return None


def classad(problem: str | None) -> str:
    """STARTD_CRON output: the attributes, then the end-of-ad line."""
    reason = (problem or "the broker answers").replace("\\", "\\\\").replace('"', '\\"')
    return (f"CondorSystemdReady = {'false' if problem else 'true'}\n"
            f'CondorSystemdReason = "{reason}"\n-\n')
