"""Running condor-systemd from tests, on either backend, and what each backend is expected to do.

* systemd: the wrapper runs inside the sandboxed systemd (tests/harness/sandbox.py), or, on the
  VM tier, on the guest's own systemd (tests/harness/system.py);
* psutil: the wrapper runs on this host, where systemd is not PID 1, with --backend psutil.

Files the job and the test both see live under /var/lib/csd-tests: the sandbox has its own /tmp,
and a working directory under /tmp or /var/tmp would switch PrivateTmp off.

EXPECTED below is the one place where the two backends' expected differences are written down;
the behaviour tests in tests/behaviour/ read it instead of testing the backend's name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

# The venv's console script; in a VM tier guest (no venv) the launcher the image installs.
CSD = str(Path(sys.executable).parent / "condor-systemd")
if not os.path.exists(CSD):
    CSD = shutil.which("condor-systemd") or CSD
# Python for the jobs themselves: Debian's, which every user can run (jobs run as nobody through
# the broker; the venv's interpreter is under /root here, and its symlink may sit under /tmp
# where the job's private /tmp would hide it).
# The VM tier's guests run under TCG emulation: start-up costs (an interpreter, a shell, a
# fork) are several times the native ones there, and vary from run to run with the host.
EMULATED = os.environ.get("CONDOR_SYSTEMD_TEST_TIER", "").startswith("vm-")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
# In-process runs must not find a broker installed for the broker variant of the tests.
NO_BROKER = "CONDOR_SYSTEMD_SOCKET=/run/condor-systemd/none"
WORK_ROOT = Path("/var/lib/csd-tests")
TOKEN_VARIABLE = "CONDOR_SYSTEMD_JOB_TOKEN"


class Expect(NamedTuple):
    """What a backend does, where the two differ."""

    has_unit: bool
    # MemoryMax: True = the kernel stops the job at the limit (peak <= limit);
    # "approximate" = a sampling watchdog kills it at the next sample (it may overshoot)
    memory_max: object
    cpu_quota: bool  # CPU time is throttled
    tasks_max_as_root: bool  # TasksMax binds a job running as root
    private_tmp: bool
    protect_system: bool
    private_users: bool
    nice_property: bool  # -p Nice=N
    caller_is_root: bool  # the wrapper runs as root (may use --uid/--gid)
    idle_cpu_ticks: int  # the wrapper's CPU over 2 s of waiting on a sleeping job, at most
    # peak memory of processes resident together between samples: "sum" (a cgroup counts it)
    # or "largest process" (the fallback's exact per-process peak from wait4)
    burst_peak: str


EXPECTED = {
    "systemd": Expect(has_unit=True, memory_max=True, cpu_quota=True, tasks_max_as_root=True,
                      private_tmp=True, protect_system=True, private_users=True,
                      nice_property=True, caller_is_root=True, idle_cpu_ticks=0,
                      burst_peak="sum"),
    # through the broker, as nobody: the systemd backend's behaviour, driven by the broker
    "broker": Expect(has_unit=True, memory_max=True, cpu_quota=True, tasks_max_as_root=True,
                     private_tmp=True, protect_system=True, private_users=True,
                     nice_property=True, caller_is_root=False, idle_cpu_ticks=0,
                     burst_peak="sum"),
    "psutil": Expect(has_unit=False, memory_max="approximate", cpu_quota=False,
                     tasks_max_as_root=False, private_tmp=True, protect_system=False,
                     private_users=False, nice_property=True, caller_is_root=True,
                     # one sample a second of a one-process family: well under a tick each
                     idle_cpu_ticks=2, burst_peak="largest process"),
}


class Jobs:
    """Runs condor-systemd from a scratch directory both sides can see."""

    backend = ""  # the variant: systemd (in-process, root), broker (as nobody), psutil
    record_backend = ""  # what the usage record says

    def __init__(self, work: Path) -> None:
        self.work = work
        self.count = 0
        self.started: list[subprocess.Popen] = []
        self.expect = EXPECTED[self.backend]

    # -- to be provided by each side ---------------------------------------------------------
    def command(self, argv: list[str], cwd: str) -> list[str]:
        raise NotImplementedError

    def wrapper_pid(self, proc: subprocess.Popen, timeout: float = 10) -> int:
        raise NotImplementedError

    def leftovers(self) -> str:
        """What a finished test left behind (units, cgroups, processes), cleaned up."""
        raise NotImplementedError

    def run_args(self) -> list[str]:
        return []

    def wrapper(self) -> list[str]:
        """`condor-systemd` as this variant's caller runs it."""
        return [CSD]

    def wrapper_command(self) -> str:
        """For shell lines: `{jobs.wrapper_command()} run ...`."""
        return " ".join(self.wrapper())

    def as_nobody(self) -> list[str]:
        """Options that make the job run as nobody (through the broker it does already)."""
        return ["--uid", "nobody", "--gid", "nogroup"] if self.expect.caller_is_root else []

    # -- shared ------------------------------------------------------------------------------
    def usage_path(self) -> Path:
        self.count += 1
        return self.work / f"usage-{self.count}.json"

    def run(self, *args: str, stdin: str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command([*self.wrapper(), "run", *self.run_args(), *args],
                                           str(self.work)),
                              cwd=self.work, check=False, capture_output=True, text=True,
                              input=stdin, env=env, timeout=timeout)

    def run_with_usage(self, *args: str, **kw) -> tuple[subprocess.CompletedProcess, dict]:
        path = self.usage_path()
        proc = self.run("--usage-file", str(path), *args, **kw)
        assert path.exists(), f"no usage file; stderr={proc.stderr!r}"
        return proc, json.loads(path.read_text())

    def start(self, *args: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.command([*self.wrapper(), "run", *self.run_args(), *args],
                                             str(self.work)), cwd=self.work, text=True, **kw)
        self.started.append(proc)
        return proc

    def shell(self, script: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """sh -c script where the wrapper runs (for tests that set up the caller's side)."""
        return subprocess.run(self.command(["sh", "-c", script], str(self.work)), cwd=self.work,
                              check=False, capture_output=True, text=True, env=env)

    def inside(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(list(argv), str(self.work)), cwd=self.work,
                              check=False, capture_output=True, text=True)

    def processes(self, pattern: str) -> list[str]:
        """Command lines of processes matching pattern (pgrep -f) where the wrapper runs."""
        out = self.inside("pgrep", "-a", "-f", pattern).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    def stop_started(self) -> None:
        for proc in self.started:  # a test that failed half-way leaves its wrapper waiting
            if proc.poll() is None:
                os.kill(self.wrapper_pid(proc), signal.SIGKILL)
                proc.wait()


class SystemdJobs(Jobs):
    """Jobs on a real systemd: the namespace sandbox, or a VM tier guest's PID 1."""

    backend = record_backend = "systemd"

    def __init__(self, sandbox, work: Path) -> None:  # noqa: ANN001 - Sandbox/RunningSystemd
        super().__init__(work)
        self.sandbox = sandbox

    def command(self, argv: list[str], cwd: str) -> list[str]:
        return self.sandbox.command(argv, cwd)

    def wrapper(self) -> list[str]:
        return ["env", NO_BROKER, CSD]  # in-process, as root

    def wrapper_pid(self, proc: subprocess.Popen, timeout: float = 10) -> int:
        return self.sandbox.wrapper_pid(proc, timeout)

    def wait_active(self, unit: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.inside("systemctl", "is-active", unit).stdout.strip() != "active":
            assert time.monotonic() < deadline, f"{unit} never became active"
            time.sleep(0.05)

    def leftovers(self) -> str:
        left = self.inside("systemctl", "list-units", "--all", "--plain", "--no-legend",
                           "condor-job-*").stdout.strip()
        cgroups = self.inside("sh", "-c", "ls -d /sys/fs/cgroup/condor.slice/condor-job-* "
                                          "/sys/fs/cgroup/condor.slice/*/condor-job-* "
                                          "/sys/fs/cgroup/*/condor.slice/condor-job-* "
                                          "/sys/fs/cgroup/*/condor.slice/*/condor-job-* "
                                          "2>/dev/null").stdout.strip()
        if not (left or cgroups):
            return ""
        # report it here, once, and clean up so that later tests are not hit
        unit = (left or cgroups).split()[0].rsplit("/", 1)[-1]
        journal = self.inside("journalctl", "--no-pager", "-o", "short-precise", "-u",
                              unit).stdout[-4000:]
        self.inside("systemctl", "kill", "--signal=SIGKILL", "condor-job-*")
        self.inside("systemctl", "stop", "condor-job-*")
        self.inside("systemctl", "reset-failed", "condor-job-*")
        return f"units: {left!r} cgroups: {cgroups!r}\n{journal}"


class BrokerJobs(SystemdJobs):
    """Jobs through the broker, by a caller that is not root (tests/harness/broker.py)."""

    backend = "broker"

    def __init__(self, sandbox, work: Path) -> None:  # noqa: ANN001
        super().__init__(sandbox, work)
        os.chown(work, 65534, 65534)  # the caller writes its usage files here

    def wrapper(self) -> list[str]:
        from tests.harness import broker

        return broker.client_command()


class HostJobs(Jobs):
    backend = record_backend = "psutil"

    def command(self, argv: list[str], cwd: str) -> list[str]:
        return argv  # subprocess runs it in cwd (self.work) itself

    def run_args(self) -> list[str]:
        return ["--backend", "psutil"]

    def wrapper_pid(self, proc: subprocess.Popen, timeout: float = 10) -> int:
        return proc.pid

    def leftovers(self) -> str:
        """Every process of every job carries the job's token: none may be left."""
        found = []
        for pid in marked_processes():
            found.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return f"processes of jobs left running: {found}" if found else ""


def marked_processes() -> list[int]:
    """Pids of processes carrying a condor-systemd job token (the fallback's marker)."""
    marker = TOKEN_VARIABLE.encode() + b"="
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if any(var.startswith(marker) for var in env.split(b"\0")):
                pids.append(int(entry))
    return pids


def wait_files(*paths: Path, timeout: float = 10) -> None:
    """Jobs write these once their traps are set: signals sent earlier would be a test race."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"not all of {paths} appeared"
        time.sleep(0.02)


def wait_processes(jobs: Jobs, pattern: str, count: int, timeout: float = 10) -> None:
    """Wait for count processes whose command line starts with pattern."""
    deadline = time.monotonic() + timeout
    while len(jobs.processes("^" + pattern)) < count:
        assert time.monotonic() < deadline, f"expected {count} of {pattern}"
        time.sleep(0.02)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
