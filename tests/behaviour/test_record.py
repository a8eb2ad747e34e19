"""Every field of the usage record against a ground truth the code under test did not produce.

Each job measures its own truth from the inside (its own clock readings, each process's own
getrusage(RUSAGE_SELF), a known number of processes or bytes) and writes it out; the test
compares the record with it. Bounds are stated next to each assertion, with the reason, and are
tight enough that a figure doubled or halved fails. Where a backend or cgroup layout cannot
measure a field, the record must say null, and the test checks that instead.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.jobs import EMULATED, PY

# The main process reads the monotonic clock (one clock for the whole machine: the wrapper's,
# the test's and the job's) first and last thing, sleeping in between.
CLOCKED_SLEEP = """
import sys, time
start = time.monotonic()
time.sleep(float(sys.argv[1]))
print(start, time.monotonic())
"""


def test_wall_seconds_between_the_jobs_own_clock_and_the_tests(jobs):
    """Lower bound: the main process's own lifetime as it measured it. Upper bound: the
    wrapper's whole run as the test saw it. A doubled or halved figure falls outside. (The job
    sleeps 3 s; 6 s on the emulated tier, where the wrapper's start and end took 3.4 s.)"""
    before = time.monotonic()
    proc, usage = jobs.run_with_usage("--", PY, "-c", CLOCKED_SLEEP, "6" if EMULATED else "3")
    outer = time.monotonic() - before
    assert proc.returncode == 0, proc.stderr
    start, end = map(float, proc.stdout.split())
    inner = end - start
    assert outer < 2 * inner, f"too slow a machine for this bound: {outer:.2f} s around a " \
                              f"{inner:.2f} s job"
    assert inner <= usage["wall_seconds"] <= outer, (usage["wall_seconds"], inner, outer)


# Holds a known number of processes at once (itself and N sleepers) for 1.5 s: longer than the
# fallback's sampling interval, so both backends must see exactly that many.
HOLDER = """
import subprocess, sys, time
sleepers = [subprocess.Popen(["sleep", "4270"]) for _ in range(int(sys.argv[1]))]
time.sleep(1.5)
for p in sleepers:
    p.kill()
    p.wait()
"""


def test_tasks_peak_is_the_number_of_processes_held_at_once(jobs):
    proc, usage = jobs.run_with_usage("--", PY, "-c", HOLDER, "5")
    assert proc.returncode == 0, proc.stderr
    # the single-threaded main process and its 5 sleepers; the sleepers were started one by
    # one and were all alive together for 1.5 s
    assert usage["tasks_peak"] == 6, usage["tasks_peak"]


# Reads a file the test wrote, after asking the kernel to drop it from the page cache, so that
# every byte comes from the disk; writes as many bytes with fsync.
IO_JOB = """
import os, sys
source, target, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(source, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
got = 0
while chunk := os.read(fd, 1 << 20):
    got += len(chunk)
assert got == size, got
with open(target, "wb") as f:
    f.write(os.urandom(size))
    f.flush()
    os.fsync(f.fileno())
"""


def test_io_bytes_read_from_disk_and_written(jobs):
    size = 24 << 20
    source = jobs.work / "input"
    with open(source, "wb") as f:
        f.write(b"\1" * size)
        f.flush()
        os.fsync(f.fileno())  # clean pages can be dropped from the cache; dirty ones cannot
    proc, usage = jobs.run_with_usage("--", PY, "-c", IO_JOB, str(source),
                                      str(jobs.work / "output"), str(size))
    assert proc.returncode == 0, proc.stderr
    if jobs.expect.has_unit and usage["cgroup_layout"] != "unified":
        # cgroup v1 blkio misses buffered writes: unknown, and said so, not a made-up 0
        assert usage["io_read_bytes"] is None and usage["io_write_bytes"] is None
        assert usage["accuracy"]["io"] == "unknown on this layout"
        return
    # every byte of the file came from the disk and went to it; metadata and the interpreter's
    # own reads add little: +10 % at most
    assert size <= usage["io_read_bytes"] <= 1.10 * size, usage["io_read_bytes"]
    assert size <= usage["io_write_bytes"] <= 1.10 * size, usage["io_write_bytes"]


@pytest.mark.parametrize(("script", "exit_code", "signum"), [
    ("exit 0", 0, None),
    ("exit 7", 7, None),
    ("kill -USR1 $$", None, signal.SIGUSR1),
    ("kill -SEGV $$", None, signal.SIGSEGV),
])
def test_exit_code_and_signal_fields(jobs, script, exit_code, signum):
    """The record says what the shell did: an exit code, or the signal that killed it; never
    both, and oom_killed false (nothing was near a memory limit)."""
    proc, usage = jobs.run_with_usage("--", "sh", "-c", script)
    assert proc.returncode == (exit_code if signum is None else -signum)
    assert (usage["exit_code"], usage["signal"]) == (exit_code, signum)
    if signum is None:
        assert usage["oom_killed"] is False


def test_record_is_json_with_the_documented_keys_in_order(jobs):
    """README's record: these keys, in this order, whatever the backend."""
    path = jobs.usage_path()
    assert jobs.run("--usage-file", str(path), "--", "true").returncode == 0
    assert list(json.loads(path.read_text())) == [
        "unit", "backend", "job_id", "exit_code", "signal", "oom_killed", "wall_seconds",
        "cpu_user_seconds", "cpu_system_seconds", "memory_peak_bytes", "io_read_bytes",
        "io_write_bytes", "tasks_peak", "limits", "enforced", "capped", "cgroup_layout",
        "cgroup_controllers", "systemd_version", "backend_reason", "accuracy"]
