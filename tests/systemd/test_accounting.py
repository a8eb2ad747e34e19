"""Accounting against ground truths the job measures itself."""

from __future__ import annotations

from .conftest import PY

# Spawns many short-lived CPU burners, waits for all of them, and reports what wait4() saw:
# its own CPU plus every reaped descendant's. That is the ground truth for the job's CPU time.
SHORT_LIVED = """
import resource, subprocess, sys
burn = "i=0; while [ $i -lt 4000 ]; do i=$((i+1)); done"
for _ in range(int(sys.argv[1])):
    subprocess.run(["sh", "-c", burn], check=True)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime)
"""

# Allocates and touches N MiB, and reports the kernel's own high-water mark for the process.
ALLOCATION = """
import sys
block = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]) * 1024)
"""


def test_cpu_of_many_short_lived_children_is_counted(jobs):
    proc, usage = jobs.run_with_usage("--", PY, "-c", SHORT_LIVED, "150")
    assert proc.returncode == 0, proc.stderr
    truth_user, truth_sys = map(float, proc.stdout.split())
    truth = truth_user + truth_sys
    measured = usage["cpu_user_seconds"] + usage["cpu_system_seconds"]
    assert truth > 0.5, f"workload too small to judge: {truth:.3f} s"
    # the unit also runs our ExecStopPost holder (a few ms); nothing may be missed
    assert truth * 0.98 <= measured <= truth * 1.05 + 0.05, (measured, truth)


def test_peak_memory_matches_a_known_allocation(jobs):
    proc, usage = jobs.run_with_usage("--memory", "1G", "--", PY, "-c", ALLOCATION, "200")
    assert proc.returncode == 0, proc.stderr
    hwm = int(proc.stdout)
    peak = usage["memory_peak_bytes"]
    # The 200 MiB the job touched are charged to its cgroup, all of them. VmHWM also counts
    # shared library pages, which are charged to whoever cached them first: it can be higher.
    assert 200 << 20 <= peak <= hwm + (48 << 20), (peak, hwm)
    assert abs(peak - hwm) <= 0.1 * hwm, (peak, hwm)


def test_escaped_daemon_cpu_is_counted(jobs):
    """A double-forked, setsid'd daemon is nobody's child: wait4() never sees its CPU. It
    reports its own; the unit's figure must include it."""
    done = jobs.work / "daemon-cpu"
    burn = ("import time\nend = time.process_time() + 0.5\n"
            "while time.process_time() < end: pass\n"
            f"open('{done}.tmp', 'w').write(str(time.process_time()))\n"
            f"import os; os.rename('{done}.tmp', '{done}')\n")
    script = (f"sh -c \"setsid {PY} -c \\\"{burn}\\\" &\"; "  # the daemon's parent exits at once
              f"while [ ! -e {done} ]; do sleep 0.05; done")
    proc, usage = jobs.run_with_usage("--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    daemon_cpu = float(done.read_text())
    assert daemon_cpu >= 0.5
    assert usage["cpu_user_seconds"] + usage["cpu_system_seconds"] >= daemon_cpu


def test_usage_record_keys_and_unknowns(jobs):
    _, usage = jobs.run_with_usage("--", "true")
    for key in ("unit", "backend", "exit_code", "signal", "oom_killed", "wall_seconds",
                "cpu_user_seconds", "cpu_system_seconds", "memory_peak_bytes", "io_read_bytes",
                "io_write_bytes", "tasks_peak", "limits", "enforced"):
        assert key in usage
    assert usage["backend"] == "systemd" and usage["unit"].startswith("condor-job-")
    assert "memory" in usage["cgroup_controllers"] and "pids" in usage["cgroup_controllers"]
    assert usage["wall_seconds"] is not None and usage["wall_seconds"] >= 0
    if usage["cgroup_layout"] != "unified":
        assert usage["io_read_bytes"] is None  # unknown on v1, not a made-up 0


def test_classad_usage_format(jobs):
    path = jobs.usage_path()
    proc = jobs.run("--usage-file", str(path), "--usage-format", "classad", "--",
                    "sh", "-c", "exit 4")
    assert proc.returncode == 4
    ad = dict(line.split(" = ", 1) for line in path.read_text().splitlines())
    assert ad["ExitCode"] == "4" and ad["ExitBySignal"] == "false"
    assert float(ad["RemoteUserCpu"]) >= 0 and int(ad["ResidentSetSize"]) > 0
    assert ad["CondorSystemdBackend"] == '"systemd"'
