"""What only a real cgroup v2 system shows, and what only systemd 257 has.

These run on the VM tier (tests/vm/run: Debian 12 with systemd 252 and Debian 13 with systemd
257, both on the pure v2 hierarchy). On the namespace sandbox, which has only the host's v1
controllers, they skip with the reason; CI fails if they skip on the VM tier.
"""

from __future__ import annotations

import signal

from tests.jobs import PY

HOG = """
import sys, time
chunks = []
for _ in range(int(sys.argv[1])):
    chunks.append(bytearray(1 << 20))  # zero-filled: every page is touched
print("survived")
"""

# Touches N MiB for a moment only, then lets go and idles: a sampler would miss it.
SPIKE = """
import sys, time
block = bytearray(int(sys.argv[1]) << 20)
del block
time.sleep(1)
"""

# Burns CPU in two processes for ~1 s of wall time; prints the CPUs it was allowed.
TWO_BURNERS = """
import os, time
allowed = sorted(os.sched_getaffinity(0))
pid = os.fork()
end = time.monotonic() + 1
while time.monotonic() < end:
    pass
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(",".join(map(str, allowed)))
"""


def test_allowed_cpus_confine_every_process(jobs, facts):
    facts.need_v2()
    proc, usage = jobs.run_with_usage("--allowed-cpus", "1", "--", PY, "-c", TWO_BURNERS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"  # the kernel's cpuset, as the job sees it
    assert usage["enforced"]["allowed_cpus"] is True
    assert usage["limits"]["allowed_cpus"] == "1"
    # two busy processes on one CPU for ~1 s: about 1 CPU-second, not 2
    cpu = usage["cpu_user_seconds"] + usage["cpu_system_seconds"]
    assert cpu <= usage["wall_seconds"] * 1.1 + 0.05, (cpu, usage["wall_seconds"])


def test_oom_kill_is_what_systemd_saw(jobs, facts):
    facts.need_v2()
    proc, usage = jobs.run_with_usage("--name", "oom.1", "--memory", "64M", "--swap", "1M",
                                      "--", PY, "-c", HOG, "256")
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
    assert usage["oom_killed"] is True and usage["signal"] == signal.SIGKILL
    assert usage["memory_peak_bytes"] <= 64 << 20
    journal = jobs.inside("journalctl", "--no-pager", "-u", "condor-job-oom.1.service").stdout
    assert "killed by the OOM killer" in journal, journal[-2000:]


# The child touches more than the limit and is OOM-killed; the main process goes on and exits 0.
CHILD_HOG = f"""
import subprocess, sys
child = subprocess.run([sys.executable, "-c", {HOG!r}, "256"])
print(child.returncode)
"""


def test_an_oom_killed_child_leaves_the_job_and_its_accounting_alone(jobs, facts):
    """OOMPolicy=continue: the kernel's kill is the only one. With systemd's default (stop) the
    unit would be stopped, and an OOM event seen once the main process has ended would kill the
    holder of the cgroup, and the accounting with it (CI lost a job's peak memory so)."""
    facts.need_v2()
    proc, usage = jobs.run_with_usage("--memory", "64M", "--swap", "1M",
                                      "--", PY, "-c", CHILD_HOG)
    assert proc.returncode == 0 and proc.stdout == f"{-signal.SIGKILL}\n", (proc, usage)
    assert usage["oom_killed"] is True and usage["exit_code"] == 0
    assert 48 << 20 <= usage["memory_peak_bytes"] <= 64 << 20, usage


def test_memory_peak_is_the_kernels_high_water_mark(jobs, facts):
    facts.need_v2()
    proc, usage = jobs.run_with_usage("--", PY, "-c", SPIKE, "150")
    assert proc.returncode == 0, proc.stderr
    assert 150 << 20 <= usage["memory_peak_bytes"] <= 200 << 20, usage["memory_peak_bytes"]
    source = "systemd's MemoryPeak property" if facts.version >= 256 else "memory.peak"
    assert usage["accuracy"]["memory_peak"] == f"exact: the unit's cgroup ({source})"


def test_io_stat_counts_read_and_written_bytes(jobs, facts):
    facts.need_v2()
    data = jobs.work / "data"
    write = (f"import os\nf = open('{data}', 'wb'); f.write(os.urandom(16 << 20)); f.flush()\n"
             "os.fsync(f.fileno())\n")
    _, wrote = jobs.run_with_usage("--", PY, "-c", write)
    assert 16 << 20 <= wrote["io_write_bytes"] <= (16 << 20) * 1.1, wrote["io_write_bytes"]
    jobs.inside("sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches")  # reads hit the disk
    proc, read = jobs.run_with_usage("--", "sh", "-c", f"cat {data} > /dev/null")
    assert proc.returncode == 0, proc.stderr
    assert 16 << 20 <= read["io_read_bytes"] <= 24 << 20, read["io_read_bytes"]
    assert read["accuracy"]["io"] == "exact: the unit's cgroup (io.stat)"


def test_memory_peak_property_of_systemd_257(jobs, facts):
    facts.need_v2()
    facts.need_systemd(257)
    proc, usage = jobs.run_with_usage("--", PY, "-c", SPIKE, "100")
    assert proc.returncode == 0, proc.stderr
    assert usage["accuracy"]["memory_peak"] == \
        "exact: the unit's cgroup (systemd's MemoryPeak property)"
    assert 100 << 20 <= usage["memory_peak_bytes"] <= 150 << 20, usage["memory_peak_bytes"]


def test_private_pids_of_systemd_257(jobs, facts):
    facts.need_systemd(257)
    shared = jobs.run("--", "sh", "-c", "echo $$")
    private = jobs.run("-p", "PrivatePIDs=yes", "--", "sh", "-c", "echo $$; ls /proc | "
                       "grep -c '^[0-9]'")
    assert private.returncode == 0, private.stderr
    pid, visible = private.stdout.split()
    assert pid == "1" and int(shared.stdout) > 1  # the job is PID 1 of its own namespace
    assert int(visible) <= 3, private.stdout  # and sees only itself (sh, ls, grep at most)
