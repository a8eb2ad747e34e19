"""--scope: the job is the wrapper's child, moved into a transient scope before it execs."""

from __future__ import annotations

import json
import os
import signal

from tests.behaviour.test_kill import ESCAPEES
from tests.jobs import PY, wait_files


def test_scope_exit_status_and_stdio(jobs):
    proc = jobs.run("--scope", "--", "sh", "-c", "cat; exit 9", stdin="in\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (9, "in\n", "")
    assert jobs.run("--scope", "--", "sh", "-c", "kill -USR2 $$").returncode == -signal.SIGUSR2


def test_scope_accounting_and_no_escapees(jobs):
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    proc, usage = jobs.run_with_usage("--scope", "--memory", "200M", "--",
                                      "sh", "-c", ESCAPEES + f"{PY} -c '{burn}'")
    assert proc.returncode == 0, proc.stderr
    assert usage["unit"].endswith(".scope")
    assert usage["cpu_user_seconds"] + usage["cpu_system_seconds"] >= 0.3
    assert usage["enforced"]["memory_max"] is True
    assert usage["enforced"]["private_tmp"].startswith("not sent")
    assert jobs.processes("^sleep 4242") == []


def test_scope_forwards_sigterm(jobs):
    ready = jobs.work / "ready"
    proc = jobs.start("--scope", "--", "sh", "-c",
                      f"trap 'exit 42' TERM; sleep 4245 & touch {ready}; wait")
    wait_files(ready)
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == 42
    assert jobs.processes("^sleep 4245") == []


def test_scope_refuses_sandboxing(jobs):
    proc = jobs.run("--scope", "--private-users", "--", "true")
    assert proc.returncode == 2 and "scopes cannot be sandboxed" in proc.stderr


def test_scope_stop_timeout_keeps_accounting(jobs):
    """The escalation must spare the sentinel: the scope's cgroup, and so its accounting, stays
    until it has been read."""
    ready = jobs.work / "ready"
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    path = jobs.usage_path()
    proc = jobs.start("--scope", "--stop-timeout", "1", "--usage-file", str(path), "--",
                      "sh", "-c", f"trap '' TERM; {PY} -c '{burn}'; touch {ready}; sleep 4246")
    wait_files(ready)
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    usage = json.loads(path.read_text())
    assert usage["signal"] == signal.SIGKILL
    assert usage["cpu_user_seconds"] + usage["cpu_system_seconds"] >= 0.3
    assert jobs.processes("^sleep 4246") == []
