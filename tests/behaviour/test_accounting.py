"""Accounting against ground truths the job measures itself (tests/workloads.py).

Bounds are stated with their reasons; each is tight enough that a figure doubled or halved
fails. Where the backends differ by design (the fallback samples what a cgroup counts), the
difference is written in EXPECTED (tests/jobs.py) and asserted as documented in README.
"""

from __future__ import annotations

from tests import workloads
from tests.jobs import EMULATED, PY

MIB = workloads.MIB


def test_cpu_user_and_system_of_short_lived_children(jobs):
    proc, usage = jobs.run_with_usage("--", PY, "-c", workloads.SHORT_LIVED_CPU, "10")
    assert proc.returncode == 0, proc.stderr
    truth_user, truth_sys = map(float, proc.stdout.split())
    # large enough to judge: 5 x 0.3 s of user and 5 x 0.12 s of system time, plus 11
    # interpreters starting; unequal, so that the two swapped would not pass
    assert truth_user >= 1.4 and truth_sys >= 0.4, (truth_user, truth_sys)
    assert truth_user > 1.5 * truth_sys + 0.3, (truth_user, truth_sys)
    user, system = usage["cpu_user_seconds"], usage["cpu_system_seconds"]
    # Nothing may be missed (>= 95 %: each process reads its own clock a little before it
    # exits). Above: the teardown after that reading (~10 ms each for 11 processes), the
    # fallback's fork-to-exec, systemd's ExecStopPost holder: +10 % and 0.15 s at most.
    assert 0.95 * truth_user <= user <= 1.10 * truth_user + 0.15, (user, truth_user)
    assert 0.95 * truth_sys <= system <= 1.10 * truth_sys + 0.15, (system, truth_sys)


def test_peak_memory_of_a_known_allocation(jobs):
    proc, usage = jobs.run_with_usage("--memory", "1G", "--", PY, "-c", workloads.ALLOCATION,
                                      "200")
    assert proc.returncode == 0, proc.stderr
    # the interpreter's anonymous / whole RSS before it allocated, plus 200 MiB
    low, high = map(int, proc.stdout.split())
    peak = usage["memory_peak_bytes"]
    # a cgroup holds at least the anonymous pages; above the whole RSS, +10 % at most: the
    # page cache of files the job read, the kernel's per-cgroup slabs
    assert 0.99 * low <= peak <= 1.10 * high, (peak, low, high)


def test_peak_memory_of_a_burst_between_samples(jobs):
    """Two children hold 150 MiB each at once for 0.2 s, between the fallback's samples. A
    cgroup counts what was resident together; the fallback, blind between samples, reports the
    largest single process's exact peak (wait4's ru_maxrss): about half (README)."""
    proc, usage = jobs.run_with_usage("--memory", "1G", "--", PY, "-c", workloads.BURST)
    assert proc.returncode == 0, proc.stderr
    low, high = map(int, proc.stdout.split())  # the parent's RSS (see above) and 2 x 150 MiB
    peak = usage["memory_peak_bytes"]
    if jobs.expect.burst_peak == "sum":
        assert 0.99 * low <= peak <= 1.10 * high, (peak, low, high)
    else:  # "largest process": one child's 150 MiB and its share of the parent's pages
        assert 150 * MIB <= peak <= 0.6 * high, (peak, low, high)


def test_cpu_of_an_escaped_daemon(jobs):
    """A double-forked, setsid'd daemon is nobody's child: the job's wait4() never sees its CPU.
    It reports its own; the record must include it once (systemd: it stays in the unit's
    cgroup; psutil: it is reparented to the wrapper, a child subreaper, which reaps it)."""
    done = jobs.work / "daemon-done"
    proc, usage = jobs.run_with_usage("--", PY, "-c", workloads.DAEMON, str(done))
    assert proc.returncode == 0, proc.stderr
    truth = float(proc.stdout)  # the daemon's own 0.5 s and what the main process used
    assert truth >= 0.5
    measured = usage["cpu_user_seconds"] + usage["cpu_system_seconds"]
    # missed: < 5 %; counted twice would be +0.5 s, above the +10 % and 0.1 s allowed
    assert 0.95 * truth <= measured <= 1.10 * truth + 0.1, (measured, truth)


def test_classad_usage_format(jobs):
    path = jobs.usage_path()
    # lives 0.5 s with 64 MiB touched: long enough for the fallback's samples to see it
    code = ("import time\nb = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
            "time.sleep(0.5)\nraise SystemExit(4)")
    proc = jobs.run("--usage-file", str(path), "--usage-format", "classad", "--", PY, "-c", code)
    assert proc.returncode == 4, proc.stderr
    ad = dict(line.split(" = ", 1) for line in path.read_text().splitlines())
    assert ad["ExitCode"] == "4" and ad["ExitBySignal"] == "false"
    assert ad["ExitSignal"] == "undefined"
    # HTCondor's units: KiB and MiB for memory, seconds for time
    assert 64 * 1024 <= int(ad["ResidentSetSize"]) <= 2 * 64 * 1024, ad["ResidentSetSize"]
    assert 64 <= int(ad["MemoryUsage"]) <= 2 * 64, ad["MemoryUsage"]
    # the interpreter's start and 64 MiB touched, then 0.5 s: an emulated guest measured 1.8 s
    wall_bound = 1.0 + (1.5 if EMULATED else 0.5)
    assert 0.5 <= float(ad["RemoteWallClockTime"]) < wall_bound, ad["RemoteWallClockTime"]
    assert ad["CondorSystemdBackend"] == f'"{jobs.record_backend}"'


WRITER = """
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(16 << 20))
    f.flush()
    os.fsync(f.fileno())
"""


def test_io_written_by_a_grandchild_is_counted(jobs):
    """16 MiB written and fsynced by a grandchild of the job's main process (the fallback:
    the kernel credits a reaped child's I/O to its parent, up to the wrapper)."""
    target = jobs.work / "written"
    proc, usage = jobs.run_with_usage("--", "sh", "-c", f"{PY} -c '{WRITER}' {target}; true")
    assert proc.returncode == 0, proc.stderr
    if jobs.expect.has_unit and usage["cgroup_layout"] != "unified":
        assert usage["io_write_bytes"] is None  # systemd on v1/hybrid: unknown, said so
    else:
        assert 16 * MIB <= usage["io_write_bytes"] <= 1.1 * 16 * MIB, usage["io_write_bytes"]


def test_what_a_backend_cannot_know_is_null_and_said(jobs):
    _, usage = jobs.run_with_usage("--", "true")
    assert usage["backend"] == jobs.record_backend
    if jobs.expect.has_unit:
        assert usage["unit"].startswith("condor-job-") and usage["unit"].endswith(".service")
        assert {"memory", "pids"} <= set(usage["cgroup_controllers"])
        assert usage["accuracy"]["cpu"].startswith("exact: the unit's cgroup")
    else:  # no unit, no cgroup: said, not made up
        assert usage["unit"] is None and usage["cgroup_layout"] is None
        assert usage["systemd_version"] is None and usage["cgroup_controllers"] == []
        assert usage["accuracy"]["memory_peak"].startswith(
            "summed RSS sampled 0.02, 0.1, 0.3 s in, then every 1 s")
