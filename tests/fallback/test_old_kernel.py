"""Without pidfds (Linux < 5.3, or a seccomp filter denying pidfd_open) the fallback still
notices the job's end at once: the runner also wakes on SIGCHLD."""

from __future__ import annotations

import errno
import os
import time

from condor_systemd.cli import build_parser, spec_from_args
from condor_systemd.runner import run


def test_job_end_is_noticed_at_once_without_pidfds(monkeypatch, tmp_path):
    def no_pidfd_open(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd_open)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "--backend", "psutil", "--", "sh", "-c",
                                      "sleep 0.5; exit 3"])
    spec = spec_from_args(args, dict(os.environ))
    start = time.monotonic()
    usage = run(spec, backend="psutil")
    took = time.monotonic() - start
    assert usage.exit_code == 3
    # the next sample after 0.3 s is at 1.3 s: only SIGCHLD can end the wait before it
    assert took < 0.9, f"the end of a 0.5 s job was noticed after {took:.2f} s"
