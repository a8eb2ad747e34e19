"""The systemd backend's own contract: unit names, the job ad's id, D-Bus, daemon-reexec."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.harness import broker
from tests.jobs import wait_files


def test_unit_already_running_is_refused_and_left_alone(jobs):
    go = jobs.work / "go"  # the first job runs until the second has been refused
    first = jobs.start("--name", "dup", "--", "sh", "-c",
                       f"while [ ! -e {go} ]; do sleep 0.1; done; exit 5")
    jobs.wait_active("condor-job-dup.service")
    second = jobs.run("--name", "dup", "--", "true")
    go.write_text("")
    assert second.returncode == 125
    assert second.stderr.count("\n") == 1 and "already exists" in second.stderr
    assert first.wait(timeout=60) == 5  # the first job was not disturbed




def test_the_unit_is_named_and_sized_from_the_htcondor_ads(jobs):
    """Job 4711.3 of alice in slot1_2 (2 CPUs, 200 MB): the in-process path gives the unit what
    the broker gives it (htcondor.py), and a name unique on the node."""
    ad, machine = jobs.work / ".job.ad", jobs.work / ".machine.ad"
    ad.write_text('ClusterId = 4711\nProcId = 3\nOwner = "alice"\n')
    machine.write_text("Cpus = 2\nMemory = 200\n")
    proc = jobs.start("--", "sleep", "30", env={"PATH": "/usr/bin:/bin", "_CONDOR_JOB_AD": str(ad),
                                                "_CONDOR_MACHINE_AD": str(machine),
                                                "_CONDOR_SLOT": "slot1_2"})
    unit = "condor-job-4711.3-slot1_2.service"
    jobs.wait_active(unit)
    show = jobs.inside("systemctl", "show", "-p", "Description,MemoryMax,CPUWeight", unit)
    assert sorted(show.stdout.splitlines()) == [
        "CPUWeight=200", "Description=HTCondor job 4711.3 of alice on slot1_2: sleep 30",
        f"MemoryMax={200 << 20}"]
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_non_root_caller_is_refused_clearly(jobs):
    """As a plain user with --backend systemd, the wrapper talks to the system bus (Hello,
    AddMatch, Subscribe), and systemd refuses to start a system unit: one line, exit 125,
    nothing left behind. (With --backend auto it takes the fallback: test_backend_choice.)"""
    broker.copy_package()
    proc = jobs.sandbox.run([*broker.in_process_command(), "run", "--backend", "systemd", "--",
                             "true"],
                            cwd=str(jobs.work), check=False,
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


def _unit_of(jobs, wrapper: int) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = jobs.inside("systemctl", "list-units", "--plain", "--no-legend",
                          "condor-job-local-*").stdout.split()
        if out:
            return out[0]
        time.sleep(0.02)
    raise AssertionError("no unit appeared")




def test_non_root_caller_falls_back_with_auto(jobs):
    """systemd is PID 1 here, but a plain user may not start system units: --backend auto
    takes the psutil fallback (which marks every process of the job with its token)."""
    broker.copy_package()
    proc = jobs.sandbox.run([*broker.in_process_command(), "run", "--", "sh", "-c",
                             'echo "${CONDOR_SYSTEMD_JOB_TOKEN:+marked}"; exit 3'],
                            cwd=str(jobs.work), check=False, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "marked\n", "")
    probe = jobs.sandbox.run([*broker.in_process_command(), "probe"], check=False,
                             capture_output=True, text=True)
    assert probe.stdout.splitlines() == [
        "backend: psutil", "reason: auto: uid 65534 may not start system units (only root may)"]
    root = jobs.inside(*jobs.wrapper(), "probe").stdout.splitlines()
    assert root[0] == "backend: systemd" and root[1].startswith("reason: auto: systemd ")
    assert root[2].startswith("systemd: ") and root[3].startswith("cgroup: ")
