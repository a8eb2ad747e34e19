"""The psutil fallback: backend choice, tracking beyond the process tree, enforcement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.jobs import CSD, PY, TOKEN_VARIABLE, wait_files, wait_processes


def test_auto_takes_the_fallback_here_and_says_why(jobs):
    path = jobs.usage_path()
    proc = subprocess.run([CSD, "run", "--usage-file", str(path), "--", "true"], cwd=jobs.work,
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    import json

    usage = json.loads(path.read_text())
    assert usage["backend"] == "psutil"
    assert usage["backend_reason"].startswith("auto: systemd is not the init system here")
    probe = subprocess.run([CSD, "probe"], capture_output=True, text=True)
    assert probe.returncode == 0
    assert probe.stdout.splitlines() == ["backend: psutil", f"reason: {usage['backend_reason']}"]


def test_a_job_the_fallback_runs_under_htcondor_keeps_htcondors_own_limits(jobs):
    """The job stays in the wrapper's cgroup, which HTCondor limits itself: the slot's size is
    not added to the job (the mapping is for units, which leave that cgroup)."""
    machine = jobs.work / ".machine.ad"
    machine.write_text("Cpus = 1\nMemory = 128\n")
    proc, usage = jobs.run_with_usage("--", "true", env={
        "PATH": os.environ["PATH"], "_CONDOR_MACHINE_AD": str(machine)})
    assert proc.returncode == 0, proc.stderr
    assert usage["backend"] == "psutil"
    assert "memory_max" not in usage["limits"] and "swap_max" not in usage["limits"], usage


def test_backend_systemd_never_falls_back(jobs):
    proc = subprocess.run([CSD, "run", "--backend", "systemd", "--", "true"], cwd=jobs.work,
                          capture_output=True, text=True)
    assert proc.returncode == 125 and proc.stdout == ""
    assert proc.stderr == ("condor-systemd: systemd is not the init system here "
                           "(no /run/systemd/system)\n")


def test_a_process_outside_the_tree_is_found_by_its_token_and_killed(jobs):
    """A daemon outside the job's tree (as `at` or a batch queue would start it) that inherited
    the job's environment is the job's: it is killed with it, and its CPU is counted."""
    env_file, ready = jobs.work / "env", jobs.work / "outside-ready"
    script = f"tr '\\0' '\\n' < /proc/$$/environ > {env_file}; while [ ! -e {ready} ]; " \
             "do sleep 0.05; done; sleep 2.5"
    path = jobs.usage_path()
    proc = jobs.start("--usage-file", str(path), "--", "sh", "-c", script)
    wait_files(env_file)
    time.sleep(0.2)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert TOKEN_VARIABLE in env
    burned = jobs.work / "outside-burned"
    burn = ("import subprocess, time\nsubprocess.Popen(['sleep', '4251'])\n"
            "end = time.process_time() + 1.0\n"
            "while time.process_time() < end: pass\n"
            f"open('{burned}', 'w').write(str(time.process_time()))\ntime.sleep(4251)")
    # it has a child: both carry the token, and the child is also found by parentage
    outside = subprocess.Popen([PY, "-c", burn], env=env, start_new_session=True)
    try:
        ready.touch()
        assert proc.wait(timeout=30) == 0
        assert outside.wait(timeout=10) == -signal.SIGKILL  # killed with the job
        assert jobs.processes("^sleep 4251") == []  # and its child
    finally:
        if outside.poll() is None:
            outside.kill()
            outside.wait()
    import json

    usage = json.loads(path.read_text())
    # Its CPU is sampled once a second, and it stopped burning well before the job ended, so
    # its last sample has all of it. It must be counted once: the job's own sh and sleeps
    # add a few ms, and a sample is 10 ms ticks: +0.2 s at most.
    truth = float(burned.read_text())
    measured = usage["cpu_user_seconds"] + usage["cpu_system_seconds"]
    assert 0.95 * truth <= measured <= truth + 0.2, (measured, truth)


def test_a_fast_forking_job_is_killed_completely(jobs):
    """Left-behind processes that keep forking are stopped (SIGSTOP) before they are killed,
    so that none is born after the last look."""
    script = "(while :; do sleep 4250 & done) & sleep 0.5; exit 0"
    start = time.monotonic()
    proc = jobs.run("--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 15
    assert jobs.processes("^sleep 4250") == []


def test_allowed_cpus_are_the_jobs_affinity_which_it_could_widen(jobs):
    """The job starts on the CPUs asked; the record calls it approximate because a job may
    widen its own affinity (no cpuset stops it here), and it can."""
    widen = "" if (os.cpu_count() or 1) < 2 else "; taskset -p -c 0,1 $$ >/dev/null"
    proc, usage = jobs.run_with_usage("--allowed-cpus", "0", "--", "sh", "-c",
                                      f"grep Cpus_allowed_list /proc/self/status{widen}; "
                                      "grep Cpus_allowed_list /proc/self/status")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["Cpus_allowed_list:", "0"], lines
    if widen:
        assert lines[1].split() == ["Cpus_allowed_list:", "0-1"], lines
    assert usage["enforced"]["allowed_cpus"].startswith("approximate: affinity:")


def test_sigterm_to_a_job_in_its_own_session(jobs):
    """The job is in its own session (like a unit): a terminal's ^C reaches only the wrapper,
    which forwards it."""
    marks = jobs.work
    proc = jobs.start("--", "sh", "-c", f"ps -o sid= -p $$ > {marks}/sid; exec sleep 4252")
    wait_files(marks / "sid")
    wait_processes(jobs, "sleep 4252", 1)
    sid = int((marks / "sid").read_text())
    assert sid != os.getsid(proc.pid)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == -signal.SIGINT


def test_sample_interval_is_validated(jobs):
    proc = jobs.run("--sample-interval", "0", "--", "true")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "sampling interval '0' must be between 0.05 and 3600 seconds" in proc.stderr


def test_missing_psutil_is_a_clear_error():
    code = ("import sys; sys.modules['psutil'] = None\n"
            "from condor_systemd.backends import select\n"
            "from condor_systemd.errors import BackendUnavailable\n"
            "try:\n    select('psutil')\nexcept BackendUnavailable as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == ("the psutil fallback backend needs psutil, which is not "
                                  "installed (pip install 'condor-systemd[fallback]')")
