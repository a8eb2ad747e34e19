"""The job's environment, kept out of the unit's properties.

`Environment=` is a unit property, and any local user may read every unit's properties over
D-Bus (`systemctl show`): a job's environment (tokens, submit-file secrets) would be everybody's.
Instead the job's unit names a root-owned file of mode 0600 (EnvironmentFiles=, read by PID 1
when it spawns the job's processes); nobody but root can read it, and it is removed as soon as
the start has completed. The job itself, and its owner through /proc/PID/environ, see the
environment as they would have with a forked job.

The file is written in systemd's environment-file syntax: every value double-quoted, with the
four characters that syntax unescapes (\\ " ` $) escaped. Newlines are kept inside the quotes;
systemd neither expands variables nor specifiers in environment files.
"""

from __future__ import annotations

import os

DIRECTORY = "/run/condor-systemd-env"  # the broker's RuntimeDirectory= (units/), 0700 root
_ESCAPED = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}


def path_for(unit: str) -> str:
    return os.path.join(DIRECTORY, unit + ".env")


def encode(assignments: list[str]) -> bytes:
    """NAME=value lines (already checked: valid names, UTF-8 values) as one environment file."""
    lines = []
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        lines.append(f'{name}="{"".join(_ESCAPED.get(c, c) for c in value)}"\n')
    return "".join(lines).encode("utf-8")


def write(unit: str, assignments: list[str]) -> str:
    """The file for this unit, created anew (mode 0600); OSError if it cannot be."""
    os.makedirs(DIRECTORY, mode=0o700, exist_ok=True)
    path = path_for(unit)
    remove(unit)  # a stale one from a broker that died before it could remove it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        data = encode(assignments)
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        os.close(fd)
        remove(unit)
        raise
    os.close(fd)
    return path


def remove(unit: str) -> None:
    try:
        os.unlink(path_for(unit))
    except FileNotFoundError:
        pass
    except OSError:
        pass  # nothing better to do; the file is root's and mode 0600 in any case
