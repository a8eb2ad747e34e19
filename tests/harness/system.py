"""The systemd that is already PID 1 of this machine: the VM tier's guests (tests/vm/).

tests/vm/run sets CONDOR_SYSTEMD_TEST_SYSTEMD=pid1 in the guest; the tests then run their jobs
on the guest's own systemd, exactly as on an execute node, instead of booting a namespace
sandbox. It offers the same calls as :class:`tests.harness.sandbox.Sandbox`.
"""

from __future__ import annotations

import os
import subprocess

SELECTOR = "CONDOR_SYSTEMD_TEST_SYSTEMD"


def wanted() -> bool:
    return os.environ.get(SELECTOR) == "pid1"


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        with open("/proc/1/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    if comm != "systemd" or not os.path.isdir("/run/systemd/system"):
        return f"{SELECTOR}=pid1, but PID 1 is {comm!r}, not a booted systemd"
    return None


class RunningSystemd:
    """Commands run directly on this machine (env -C sets their directory and then execs)."""

    def command(self, argv: list[str], cwd: str | None = None) -> list[str]:
        return ["env", "-C", cwd or os.getcwd(), "--", *argv]

    def run(self, argv: list[str], cwd: str | None = None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        return subprocess.run(self.command(argv, cwd), **kw)

    def popen(self, argv: list[str], cwd: str | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, cwd), **kw)

    def wrapper_pid(self, proc: subprocess.Popen, timeout: float = 10) -> int:
        return proc.pid  # env execs the command: no process in between
