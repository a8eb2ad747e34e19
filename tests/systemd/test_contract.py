"""The HTCondor contract: exit status, stdio, environment, cwd, silence, launch failures."""

from __future__ import annotations

import json
import os
import signal
import time

from .conftest import CSD, PY, wrapper_pid
from .test_kill import wait_files


def test_exit_code_is_passed_through(jobs):
    assert jobs.run("--", "sh", "-c", "exit 7").returncode == 7
    assert jobs.run("--", "true").returncode == 0


def test_death_by_signal_is_reraised_on_the_wrapper(jobs):
    assert jobs.run("--", "sh", "-c", "kill -USR1 $$").returncode == -signal.SIGUSR1
    # a core-dumping signal too, without leaving a core of the wrapper behind
    assert jobs.run("--", "sh", "-c", "kill -SEGV $$").returncode == -signal.SIGSEGV
    assert not list(jobs.work.glob("core*"))


def test_arguments_arrive_literally(jobs):
    proc = jobs.run("--", "printf", "%s|", "$HOME", "$$", "${X}", "100%", "a b", "")
    assert proc.stdout == "$HOME|$$|${X}|100%|a b||"


def test_stdio_is_the_callers(jobs):
    proc = jobs.run("--", "sh", "-c", "cat; echo to-stderr >&2", stdin="from-stdin\n")
    assert proc.stdout == "from-stdin\n"
    assert proc.stderr == "to-stderr\n"


def test_a_successful_run_prints_nothing_of_its_own(jobs):
    proc = jobs.run("--memory", "1G", "--cpus", "1", "--", "true")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_environment_and_working_directory_pass_through(jobs):
    (jobs.work / "sub").mkdir()
    env = {"PATH": "/usr/bin:/bin", "JOB_VAR": "x y $z", "_CONDOR_WRAPPER_ERROR_FILE":
           str(jobs.work / "wrapper-error"), "BASH_FUNC_f%%": "() { :; }"}
    proc = jobs.sandbox.run(
        ["sh", "-c", f"cd sub && exec {CSD} run -- sh -c "
         "'pwd; echo \"$JOB_VAR\"; echo \"${_CONDOR_WRAPPER_ERROR_FILE-unset}\"'"],
        cwd=str(jobs.work), check=False, capture_output=True, text=True, env=env)
    assert proc.stdout.splitlines() == [str(jobs.work / "sub"), "x y $z", "unset"], proc.stderr
    assert proc.returncode == 0
    assert not (jobs.work / "wrapper-error").exists()  # the job ran: nothing to tell HTCondor


def test_missing_command_is_127_and_tells_htcondor(jobs):
    err_file = jobs.work / "wrapper-error"
    proc = jobs.run("--", "./no-such-job", env={"PATH": "/usr/bin:/bin",
                                                "_CONDOR_WRAPPER_ERROR_FILE": str(err_file)})
    assert proc.returncode == 127
    assert proc.stderr == "condor-systemd: ./no-such-job: command not found\n"
    assert "command not found" in err_file.read_text()


def test_unexecutable_command_is_126(jobs):
    script = jobs.work / "job.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    proc = jobs.run("--", "./job.sh")
    assert proc.returncode == 126
    assert proc.stderr.count("\n") == 1 and "not executable" in proc.stderr


def test_unit_already_running_is_refused_and_left_alone(jobs):
    first = jobs.start("--name", "dup", "--", "sh", "-c", "sleep 2; exit 5")
    jobs.wait_active("condor-job-dup.service")
    second = jobs.run("--name", "dup", "--", "true")
    assert second.returncode == 125
    assert second.stderr.count("\n") == 1 and "already exists" in second.stderr
    assert first.wait(timeout=30) == 5  # the first job was not disturbed


def test_job_id_comes_from_the_job_ad(jobs):
    ad = jobs.work / ".job.ad"
    ad.write_text('ClusterId = 4711\nProcId = 3\nOwner = "alice"\n')
    proc = jobs.start("--", "sleep", "30", env={"PATH": "/usr/bin:/bin", "_CONDOR_JOB_AD": str(ad),
                                                "_CONDOR_SLOT": "slot1_2"})
    jobs.wait_active("condor-job-4711.3.service")
    desc = jobs.inside("systemctl", "show", "-P", "Description", "condor-job-4711.3.service")
    assert desc.stdout.strip() == "HTCondor job 4711.3 on slot1_2: sleep 30"
    os.kill(wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_wrapper_waits_without_polling(jobs):
    """While the job sleeps, the wrapper uses no CPU: it waits on D-Bus signals."""
    proc = jobs.start("--", "sleep", "3")
    pid = wrapper_pid(proc)
    jobs.wait_active(_unit_of(jobs, pid))
    before = _cpu_ticks(pid)
    time.sleep(2)
    after = _cpu_ticks(pid)
    assert proc.wait(timeout=30) == 0
    assert after - before == 0, f"wrapper used {after - before} ticks while waiting"


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _unit_of(jobs, wrapper: int) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = jobs.inside("systemctl", "list-units", "--plain", "--no-legend",
                          "condor-job-local-*").stdout.split()
        if out:
            return out[0]
        time.sleep(0.02)
    raise AssertionError("no unit appeared")


def test_python_job_with_large_output(jobs):
    proc = jobs.run("--", PY, "-c", "import sys; sys.stdout.write('x' * 1_000_000)")
    assert proc.returncode == 0 and len(proc.stdout) == 1_000_000


def test_quick_jobs_never_stall(jobs):
    """Signals that arrive during our own D-Bus calls must not be slept over (a 30 s stall
    in about one run of ten, before it was fixed)."""
    for _ in range(25):
        start = time.monotonic()
        assert jobs.run("--", "sh", "-c", "exit 3").returncode == 3
        assert time.monotonic() - start < 3


def test_non_root_caller_is_refused_clearly(jobs):
    """As a plain user the wrapper talks to the system bus (Hello, AddMatch, Subscribe), and
    systemd refuses to start a system unit: one line, exit 125, nothing left behind."""
    proc = jobs.sandbox.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             CSD, "run", "--", "true"], cwd=str(jobs.work), check=False,
                            capture_output=True, text=True)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith("condor-systemd: not permitted to start system units")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_per_unit_variables_are_the_job_units_own(jobs):
    """A wrapper running inside another unit must not hand that unit's INVOCATION_ID or
    NOTIFY_SOCKET to the job: systemd sets the job unit's own."""
    env = {"PATH": "/usr/bin:/bin", "INVOCATION_ID": "0" * 32, "NOTIFY_SOCKET": "/run/x",
           "KEPT": "yes"}
    proc = jobs.run("--name", "inv", "--", "sh", "-c",
                    'echo "$INVOCATION_ID ${NOTIFY_SOCKET-unset} $KEPT"', env=env)
    invocation, notify, kept = proc.stdout.split()
    assert len(invocation) == 32 and invocation != "0" * 32
    assert (notify, kept) == ("unset", "yes")


def test_daemon_reexec_does_not_lose_the_job(jobs):
    """systemctl daemon-reexec closes every D-Bus connection: the wrapper reconnects, catches
    up with its unit, and still reports the exit status and accounting, and cleans up."""
    ready = jobs.work / "ready"
    path = jobs.usage_path()
    proc = jobs.start("--name", "reexec", "--usage-file", str(path), "--",
                      "sh", "-c", f"touch {ready}; sleep 1; exit 5")
    wait_files(ready)
    assert jobs.inside("systemctl", "daemon-reexec").returncode == 0
    assert proc.wait(timeout=60) == 5
    usage = json.loads(path.read_text())
    assert usage["exit_code"] == 5 and usage["cpu_user_seconds"] is not None
    assert jobs.processes("^sleep infinity") == []
