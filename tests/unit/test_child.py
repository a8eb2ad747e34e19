"""The fork-pipe protocol both forking launchers (fallback, scopes) share: which stage of the
child's set-up failed decides the error, so a failed chdir is never "command not found"."""

from __future__ import annotations

import errno
import os

import pytest

from condor_systemd.backends import child
from condor_systemd.errors import CommandNotExecutable, CommandNotFound, LaunchError


def _through_a_pipe(stage: str, exc: BaseException) -> bytes:
    r, w = os.pipe()
    try:
        child.report_failure(w, stage, exc)
    finally:
        os.close(w)
    try:
        return child.read_all(r)
    finally:
        os.close(r)


@pytest.mark.parametrize(("stage", "exc", "error", "message"), [
    (child.EXEC, FileNotFoundError(errno.ENOENT, "No such file or directory"), CommandNotFound,
     "./job: command not found"),
    (child.EXEC, PermissionError(errno.EACCES, "Permission denied"), CommandNotExecutable,
     "./job: Permission denied"),
    (child.EXEC, OSError(errno.ENOEXEC, "Exec format error"), CommandNotExecutable,
     "./job: Exec format error"),
    ("working directory /scratch/gone", FileNotFoundError(errno.ENOENT, "No such file or "
     "directory"), LaunchError,
     "could not start the job: working directory /scratch/gone: No such file or directory"),
    ("user/group", KeyError("nobody2"), LaunchError,
     "could not start the job: user/group: 'nobody2'"),
])
def test_stage_and_errno_decide_the_error(stage, exc, error, message):
    failure = _through_a_pipe(stage, exc)
    got = child.launch_error("./job", failure)
    assert type(got) is error
    assert str(got) == message


def test_a_message_with_odd_bytes_still_makes_one_line():
    failure = _through_a_pipe("exec", OSError(0, "caf\udce9"))  # a lone surrogate from the fs
    got = child.launch_error("./job", failure)
    assert str(got).startswith("could not start the job: exec: caf") and "\n" not in str(got)
