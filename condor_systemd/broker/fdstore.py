"""systemd's file descriptor store: what the broker keeps there outlives the broker process.

A service with FileDescriptorStoreMax= may hand fds to systemd (sd_notify(3): FDSTORE=1 and a
name); systemd keeps a copy and passes them back, with the listening sockets, to the service's
next start (sd_listen_fds(3): LISTEN_FDS, LISTEN_FDNAMES), as long as the service is restarted
rather than stopped. The broker keeps each job's connection and a memfd with what it knows of
the job there, so that `systemctl restart condor-systemd.service`, or a crash and Restart=,
costs no job (session.py, restart.py). systemd drops a stored socket by itself once its other
end hangs up.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Sequence

SD_LISTEN_FDS_START = 3
_notify: socket.socket | None = None


def available() -> bool:
    """Are we a service systemd listens to (Type=notify, or a store configured)?"""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(text: str, fds: Sequence[int] = ()) -> bool:
    """One sd_notify(3) message; False where there is nobody to tell or it could not be sent."""
    global _notify
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # the abstract namespace
        address = "\0" + address[1:]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    try:
        if _notify is None:
            _notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _notify.sendmsg([text.encode()], ancillary if fds else [], 0, address)
    except OSError:
        return False
    return True


def store(name: str, fds: Sequence[int]) -> bool:
    return notify(f"FDSTORE=1\nFDNAME={name}", fds)


def remove(name: str) -> bool:
    """Every fd stored under this name goes."""
    return notify(f"FDSTOREREMOVE=1\nFDNAME={name}")


def received() -> list[tuple[str, int]]:
    """The fds systemd passed at start: (name, fd), listening sockets and stored fds alike;
    none when systemd did not start us. The variables go, so that nothing we start sees them."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    out = []
    for i, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)):
        os.set_inheritable(fd, False)
        out.append((names[i] if i < len(names) else "unknown", fd))
    return out


def is_listener(fd: int) -> bool:
    """A listening socket (the socket unit's), not a stored connection."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        sock.close()
