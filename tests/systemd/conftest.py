"""Real-systemd tests: a throw-away systemd 252 (PID 1 of fresh namespaces) per test session.

As non-root these skip with the reason; CI runs as root and .ci/run fails if they skipped.
Files the job and the test both see live under /var/lib/csd-tests: the sandbox has its own
/tmp, and a working directory under /tmp or /var/tmp would switch PrivateTmp off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.sandbox import Sandbox, raise_on_sigterm, unavailable_reason

CSD = str(Path(sys.executable).parent / "condor-systemd")
# Python for the jobs themselves: the real interpreter, not the venv's symlink, which may sit
# under /tmp (a CI checkout) where the job's private /tmp would hide it.
PY = os.path.realpath(sys.executable)
WORK_ROOT = Path("/var/lib/csd-tests")


@pytest.fixture(scope="session")
def sandbox():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real-systemd tests need the sandbox: {reason}")
    raise_on_sigterm()
    with Sandbox() as sb:
        yield sb


class Jobs:
    """Runs condor-systemd inside the sandbox, from a scratch directory both sides can see."""

    def __init__(self, sandbox: Sandbox, work: Path) -> None:
        self.sandbox = sandbox
        self.work = work
        self.count = 0
        self.started: list[subprocess.Popen] = []

    def usage_path(self) -> Path:
        self.count += 1
        return self.work / f"usage-{self.count}.json"

    def run(self, *args: str, stdin: str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return self.sandbox.run([CSD, "run", *args], cwd=str(self.work), check=False,
                                capture_output=True, text=True, input=stdin,
                                env=env, timeout=timeout)

    def run_with_usage(self, *args: str, **kw) -> tuple[subprocess.CompletedProcess, dict]:
        path = self.usage_path()
        proc = self.run("--usage-file", str(path), *args, **kw)
        assert path.exists(), f"no usage file; stderr={proc.stderr!r}"
        return proc, json.loads(path.read_text())

    def start(self, *args: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = self.sandbox.popen([CSD, "run", *args], cwd=str(self.work), text=True, **kw)
        self.started.append(proc)
        return proc

    def inside(self, *argv: str) -> subprocess.CompletedProcess:
        return self.sandbox.run(list(argv), check=False, capture_output=True, text=True)

    def wait_active(self, unit: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.inside("systemctl", "is-active", unit).stdout.strip() != "active":
            assert time.monotonic() < deadline, f"{unit} never became active"
            time.sleep(0.05)

    def processes(self, pattern: str) -> list[str]:
        """Command lines of sandbox processes matching pattern (pgrep -f)."""
        out = self.inside("pgrep", "-a", "-f", pattern).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]


def wrapper_pid(nsenter: subprocess.Popen, timeout: float = 10) -> int:
    """nsenter forks the wrapper: signals meant for the wrapper go to that child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{nsenter.pid}/task/{nsenter.pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError("the wrapper did not start")


@pytest.fixture
def jobs(sandbox):
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="csd-test-", dir=WORK_ROOT))
    os.chmod(work, 0o755)
    j = Jobs(sandbox, work)
    yield j
    for proc in j.started:  # a test that failed half-way leaves its wrapper waiting
        if proc.poll() is None:
            os.kill(wrapper_pid(proc), signal.SIGKILL)
            proc.wait()
    left = j.inside("systemctl", "list-units", "--all", "--plain", "--no-legend",
                    "condor-job-*").stdout.strip()
    cgroups = j.inside("sh", "-c", "ls -d /sys/fs/cgroup/*/condor.slice/condor-job-* "
                                   "2>/dev/null").stdout.strip()
    journal = ""
    if left or cgroups:  # report it here, once, and clean up so that later tests are not hit
        unit = (left or cgroups).split()[0].rsplit("/", 1)[-1]
        journal = j.inside("journalctl", "--no-pager", "-o", "short-precise", "-u",
                           unit).stdout[-4000:]
        j.inside("systemctl", "kill", "--signal=SIGKILL", "condor-job-*")
        j.inside("systemctl", "stop", "condor-job-*")
        j.inside("systemctl", "reset-failed", "condor-job-*")
    shutil.rmtree(work, ignore_errors=True)
    assert not left, f"units left behind: {left}\n{journal}"
    assert not cgroups, f"cgroups left behind: {cgroups}\n{journal}"
