"""allowed_cpus where systemd sets no cpuset: the verdict is read from the processes' own
affinity in /proc (real processes here, with an affinity the test set)."""

from __future__ import annotations

import os
import subprocess

import pytest

from condor_systemd.backends.unitjob import SystemdJob


def verdict_for(pids: list[int], asked: str) -> str:
    job = object.__new__(SystemdJob)  # only job_pids() is needed: no manager, no unit
    job.job_pids = lambda: pids  # type: ignore[method-assign]
    return str(job.affinity_verdict(asked).render())


@pytest.fixture
def on_cpu0():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs to tell a restricted affinity from none")
    # set before exec, and Popen returns once the exec has happened
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    yield proc.pid
    proc.kill()
    proc.wait()


def test_every_process_on_the_cpus_asked_is_approximate_affinity(on_cpu0):
    assert verdict_for([on_cpu0], "0").startswith("approximate: affinity: every process")


def test_a_process_on_other_cpus_is_not_in_force(on_cpu0):
    everywhere = os.getpid()  # pytest itself may run anywhere
    got = verdict_for([on_cpu0, everywhere], "0")
    assert got.startswith(f"not in force: asked 0, process {everywhere} of the job may run on"), got
    assert verdict_for([on_cpu0], "1").startswith("not in force: asked 1")


def test_no_process_left_is_unknown():
    assert verdict_for([], "0").startswith("unknown: the job's processes ended")
    assert verdict_for([2**22 + 12345], "0").startswith("unknown:")  # no such pid
