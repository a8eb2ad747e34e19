"""What a restarted broker needs to take its jobs back, kept in systemd's fd store (fdstore.py).

Each job's entry, under one name (``job-<random>``), holds two fds: the caller's connection and
a memfd with the session's state as JSON (the unit, the spec it was started with, the verdicts
read back at its start, what was capped, how the caller wants its record, a stop in progress,
a freeze in force, and the final reply once there is one). The state is written before the unit
is started and whenever it changes, so a broker killed at any point leaves either no unit or a
unit its successor can find. An entry without its connection (the caller hung up while no broker
was there; systemd drops a socket whose peer is gone) means: kill the job, as a hang-up does.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from typing import Any

from ..spec import JobSpec, Limits, Sandbox
from ..usage import Verdict
from . import fdstore

PREFIX = "job-"
MAX_STATE = 16 << 20  # a state is a few KB; anything larger is not ours


class Kept:
    """One session's entry in the fd store."""

    def __init__(self, name: str, memfd: int) -> None:
        self.name, self.memfd = name, memfd
        self.stored = False

    @classmethod
    def new(cls) -> Kept:
        name = f"{PREFIX}{secrets.token_hex(8)}"
        return cls(name, os.memfd_create(name, os.MFD_CLOEXEC))

    def save(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, separators=(",", ":")).encode()
        os.ftruncate(self.memfd, 0)
        os.pwrite(self.memfd, data, 0)

    def store(self, connection: int | None) -> None:
        """Hand the state (and the connection, while there is one) to systemd, replacing what
        was stored under this name."""
        if self.stored:
            fdstore.remove(self.name)
        fds = [self.memfd] if connection is None else [connection, self.memfd]
        self.stored = fdstore.store(self.name, fds)

    def drop(self) -> None:
        """The job is over and answered for: nothing to take back."""
        if self.stored:
            fdstore.remove(self.name)
            self.stored = False
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


class Entry:
    """An entry passed back by systemd: the connection (None when its caller is gone)."""

    def __init__(self, name: str, connection: int | None, memfd: int) -> None:
        self.name, self.connection, self.memfd = name, connection, memfd

    def state(self) -> dict[str, Any]:
        """The state; ValueError when it cannot be read back."""
        size = os.fstat(self.memfd).st_size
        if size > MAX_STATE:
            raise ValueError(f"a state of {size} bytes")
        try:
            state = json.loads(os.pread(self.memfd, size, 0) or b"null")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable state: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("spec"), dict):
            raise ValueError("a state without a job")
        return state

    def kept(self) -> Kept:
        kept = Kept(self.name, self.memfd)
        kept.stored = True
        return kept


def entries(received: list[tuple[str, int]]) -> tuple[list[Entry], list[int]]:
    """Sort what systemd passed back: our entries by name, and every fd that is not part of a
    complete one (to be closed; a name we do not know is removed from the store)."""
    by_name: dict[str, list[int]] = {}
    for name, fd in received:
        by_name.setdefault(name, []).append(fd)
    out, stray = [], []
    for name, fds in by_name.items():
        sockets = [fd for fd in fds if _is_socket(fd)]
        others = [fd for fd in fds if fd not in sockets]
        if not name.startswith(PREFIX) or len(others) != 1 or len(sockets) > 1:
            stray += fds
            fdstore.remove(name)
            continue
        out.append(Entry(name, sockets[0] if sockets else None, others[0]))
    return out, stray


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


# -- the spec, as far as a started job still needs it ------------------------------------------
def spec_to_state(spec: JobSpec) -> dict[str, Any]:
    """Everything but what only the start used (environment, inheritance: the unit has them)."""
    out = spec._replace(environment={}, inherit=None)._asdict()
    out["limits"], out["sandbox"] = spec.limits._asdict(), spec.sandbox._asdict()
    return out


def spec_from_state(data: dict[str, Any]) -> JobSpec:
    """ValueError (or TypeError) when the state does not make a spec."""
    fields = dict(data)
    limits = dict(fields.pop("limits", {}))
    if limits.get("allowed_cpus") is not None:
        limits["allowed_cpus"] = tuple(limits["allowed_cpus"])
    fields["argv"] = tuple(fields.get("argv", ()))
    fields["properties"] = tuple(tuple(p) for p in fields.get("properties", ()))
    fields["log_fields"] = tuple(fields.get("log_fields", ()))
    fields["tmp_binds"] = tuple(fields.get("tmp_binds", ()))
    fields["environment"], fields["inherit"] = {}, None
    sandbox = dict(fields.pop("sandbox", {}))
    if sandbox.get("gpus") is not None:
        sandbox["gpus"] = tuple(sandbox["gpus"])
    return JobSpec(limits=Limits(**limits), sandbox=Sandbox(**sandbox), **fields)


def verdicts_to_state(enforced: dict[str, Verdict]) -> dict[str, list[str]]:
    return {key: [v.kind, v.reason] for key, v in enforced.items()}


def verdicts_from_state(data: dict[str, list[str]]) -> dict[str, Verdict]:
    return {key: Verdict(kind, reason) for key, (kind, reason) in data.items()}

