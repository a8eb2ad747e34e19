"""Limits are enforced by the kernel and verified by reading them back."""

from __future__ import annotations

import json
import os
import shlex
import signal

import pytest

from tests.jobs import PY

ALLOCATE = """
import sys, time
chunks = []
for _ in range(int(sys.argv[1])):
    chunks.append(bytearray(1 << 20))  # zero-filled, so every page is touched
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)  # a sampling watchdog's chance
print("survived")
"""


def test_memory_max_oom_kill_is_reported(jobs):
    proc, usage = jobs.run_with_usage("--memory", "64M", "--swap", "1M", "--",
                                      PY, "-c", ALLOCATE, "512", "3")
    assert proc.returncode == -signal.SIGKILL
    assert "survived" not in proc.stdout
    assert usage["oom_killed"] is True
    assert usage["signal"] == signal.SIGKILL and usage["exit_code"] is None
    if jobs.expect.memory_max is True:  # the kernel stopped it at the limit
        assert usage["enforced"]["memory_max"] is True
        assert 48 << 20 <= usage["memory_peak_bytes"] <= 64 << 20
    else:  # the watchdog killed it at its next sample, after an overshoot it reports
        assert usage["enforced"]["memory_max"].startswith("approximate: a watchdog")
        assert usage["memory_peak_bytes"] > 64 << 20


def test_within_memory_max_no_oom(jobs):
    proc, usage = jobs.run_with_usage("--memory", "256M", "--", PY, "-c", ALLOCATE, "64")
    assert proc.returncode == 0 and proc.stdout == "survived\n"
    assert usage["oom_killed"] is False


def test_cpu_quota_throttles(jobs):
    burn = "import time\nend = time.monotonic() + 2\nwhile time.monotonic() < end: pass\n"
    proc, usage = jobs.run_with_usage("--cpu-quota", "25%", "--", PY, "-c", burn)
    assert proc.returncode == 0
    cpu = usage["cpu_user_seconds"] + usage["cpu_system_seconds"]
    if jobs.expect.cpu_quota:
        # at most 25 % of one CPU over the job's whole life (interpreter start-up included: it
        # is slow under the VM tier's emulation); the 2 s loop alone is ~0.5 s of CPU
        wall = usage["wall_seconds"]
        assert 0.35 <= cpu <= 0.25 * wall * 1.15 + 0.05, f"{cpu:.3f} CPU s in {wall:.3f} s"
        assert usage["enforced"]["cpu_quota_percent"] is True
    else:  # not throttled, and the record says so rather than claiming it
        assert cpu >= 1.5, f"{cpu:.3f} CPU seconds"
        assert usage["enforced"]["cpu_quota_percent"].startswith("not enforced")


def test_cpus_option_sets_quota(jobs):
    _, usage = jobs.run_with_usage("--cpus", "1.5", "--", "true")
    assert usage["limits"]["cpu_quota_percent"] == 150.0
    assert (usage["enforced"]["cpu_quota_percent"] is True) == jobs.expect.cpu_quota


# perl, not Python: the job runs as nobody, who cannot reach a Python under /root
SPAWN = r"""
my ($started, $refused, @kids) = (0, 0);
for (1 .. 30) {
    my $pid = fork();
    if (!defined $pid) { $refused++ }            # EAGAIN: the limit said no
    elsif ($pid == 0) { sleep 5; exit 0 }
    else { $started++; push @kids, $pid }
}
print "$started $refused\n";
kill 9, @kids;
"""


def test_tasks_max_limits_forks(jobs):
    """As the job user (nobody), both backends stop the tenth task: systemd with the pids
    controller, the fallback with RLIMIT_NPROC (per user: nobody has no other processes)."""
    proc, usage = jobs.run_with_usage(*jobs.as_nobody(), "--tasks-max", "10",
                                      "--", "perl", "-e", SPAWN)
    started, refused = map(int, proc.stdout.split())
    assert started == 9 and refused == 21, proc.stdout  # 10 tasks: the driver and 9 children
    enforced = usage["enforced"]["tasks_max"]
    assert enforced is True if jobs.expect.tasks_max_as_root else \
        enforced.startswith("approximate: RLIMIT_NPROC=10 counts every process of uid 65534")


# The job reads, from the inside, what the kernel holds it to: its cgroup's limit files (v2, or
# the v1 hierarchies), the CPUs it may run on, its I/O priority. The truth the record's
# `enforced` is checked against, read by nothing the record came from.
OWN_LIMITS = r"""
import json, os, subprocess
paths = {}
for line in open("/proc/self/cgroup"):
    _, controllers, path = line.rstrip("\n").split(":", 2)
    for c in (controllers.split(",") if controllers else [""]):
        paths[c] = path
def read(*candidates):
    for path in candidates:
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return None
v2 = "/sys/fs/cgroup" + paths.get("", "") if os.path.exists("/sys/fs/cgroup/cgroup.controllers") \
    else "/sys/fs/cgroup/unified" + paths.get("", "")
mem = "/sys/fs/cgroup/memory" + paths.get("memory", "/-")
cpu = next((d + paths.get("cpu", "/-") for d in ("/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpu,cpuacct") if os.path.isdir(d + paths.get("cpu", "/-"))), "/-")
pids = "/sys/fs/cgroup/pids" + paths.get("pids", "/-")
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({
    "memory_max": read(v2 + "/memory.max", mem + "/memory.limit_in_bytes"),
    "memory_high": read(v2 + "/memory.high"),
    "cpu": read(v2 + "/cpu.max") or " ".join(filter(None, [read(cpu + "/cpu.cfs_quota_us"),
                                                           read(cpu + "/cpu.cfs_period_us")])),
    "tasks_max": read(v2 + "/pids.max", pids + "/pids.max"),
    "cpus": status["Cpus_allowed_list"].strip(),
    "child_cpus": subprocess.run(["grep", "Cpus_allowed_list", "/proc/self/status"],
                                 capture_output=True, text=True).stdout.split()[-1],
    "ionice": subprocess.run(["ionice", "-p", str(os.getpid())], capture_output=True,
                             text=True).stdout.strip(),
}))
"""


def kind(verdict: object) -> object:
    """The documented kind of a verdict: true, or the words before the colon (README)."""
    return verdict if verdict is True else str(verdict).split(":", 1)[0]


def test_limits_are_enforced_as_the_record_says(jobs):
    proc, usage = jobs.run_with_usage(
        "--memory", "300M", "--memory-high", "200M", "--cpus", "1", "--tasks-max", "64",
        "--allowed-cpus", "0", "--io-weight", "200", "--", PY, "-c", OWN_LIMITS)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    enforced = {key: kind(value) for key, value in usage["enforced"].items()}
    assert set(enforced) >= {"memory_max", "memory_high", "cpu_quota_percent", "tasks_max",
                             "allowed_cpus", "io_weight", "private_tmp"}
    # every process of the job keeps to CPU 0 on every tier: a cpuset where systemd manages
    # one (v2), else its affinity, which the job could widen (README's table)
    assert seen["cpus"] == seen["child_cpus"] == "0", seen
    if not jobs.expect.has_unit:  # the fallback (README's table): affinity and ionice hold
        assert usage["enforced"]["allowed_cpus"].startswith("approximate: affinity:")
        assert seen["ionice"] == "best-effort: prio 3" and enforced["io_weight"] == "approximate"
        assert enforced["memory_max"] == "approximate"  # the watchdog: test_memory_max_oom...
        for key in ("memory_high", "cpu_quota_percent", "tasks_max"):  # tasks_max: as root
            assert enforced[key] == "not enforced", (key, usage["enforced"][key])
        assert seen["tasks_max"] != "64" and seen["cpu"] != "100000 100000"  # said, and true
        return
    # a unit: the kernel holds the job to what the record says is in force
    assert seen["memory_max"] == str(300 << 20) and enforced["memory_max"] is True
    assert seen["tasks_max"] == "64" and enforced["tasks_max"] is True
    assert seen["cpu"] == "100000 100000" and enforced["cpu_quota_percent"] is True
    if usage["cgroup_layout"] == "unified":
        assert enforced["allowed_cpus"] is True  # the cgroup's cpuset.cpus
        assert seen["memory_high"] == str(200 << 20) and enforced["memory_high"] is True
    else:  # what the v1/hybrid tier cannot enforce is said, not claimed, and really not held
        assert seen["memory_high"] is None and enforced["memory_high"] == "not enforced"
        assert usage["enforced"]["allowed_cpus"].startswith("approximate: affinity:")


def test_the_wrappers_cpu_affinity_is_the_jobs_cpu_set(jobs):
    """HTCondor's ASSIGN_CPU_AFFINITY: without --allowed-cpus, every process of the job keeps
    to the CPUs its wrapper may use (taskset here), a cpuset where systemd manages one."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs to confine a job to one of them")
    usage_file = jobs.usage_path()
    line = shlex.join(["taskset", "-c", "1", *jobs.wrapper(), "run", *jobs.run_args(),
                       "--usage-file", str(usage_file), "--", PY, "-c", OWN_LIMITS])
    proc = jobs.shell(line)
    assert proc.returncode == 0, proc.stderr
    seen, usage = json.loads(proc.stdout), json.loads(usage_file.read_text())
    assert seen["cpus"] == seen["child_cpus"] == "1", seen
    assert usage["limits"]["allowed_cpus"] == "1"
    if jobs.expect.has_unit and usage["cgroup_layout"] == "unified":
        assert usage["enforced"]["allowed_cpus"] is True
    else:
        assert usage["enforced"]["allowed_cpus"].startswith("approximate: affinity:")


def test_property_unknown_to_this_systemd_is_not_sent_and_recorded(jobs):
    proc, usage = jobs.run_with_usage("-p", "PrivatePIDs=yes", "--", "true")
    assert proc.returncode == 0 and proc.stderr == ""
    if not jobs.expect.has_unit:
        assert usage["enforced"]["PrivatePIDs"].startswith("not enforced: a unit property")
        # and really not: the job sees processes that are not its own (this host's PID 1)
        assert jobs.run("--", "test", "-d", "/proc/1").returncode == 0
    elif usage["systemd_version"] < 257:
        assert usage["enforced"]["PrivatePIDs"].startswith("not sent: systemd")
    else:  # sent, and accepted (systemd would have refused the unit otherwise)
        assert "PrivatePIDs" not in usage["enforced"]


def test_property_option_sets_the_limit(jobs):
    _, usage = jobs.run_with_usage("-p", "MemoryMax=100M", "-p", "Nice=5", "--",
                                   "sh", "-c", "test $(nice) = 5")
    assert usage["exit_code"] == 0  # Nice=5 was applied
    assert usage["limits"]["memory_max"] == 100 << 20
    assert (usage["enforced"]["memory_max"] is True) == (jobs.expect.memory_max is True)


def test_private_tmp(jobs):
    proc = jobs.run("--", "sh", "-c", "touch /tmp/csd-private-marker && ls /tmp")
    assert proc.returncode == 0 and "csd-private-marker" in proc.stdout
    assert jobs.inside("ls", "/tmp").stdout.count("csd-private-marker") == 0
    shared = jobs.run("--no-private-tmp", "--", "sh", "-c", "touch /tmp/csd-shared-marker")
    assert shared.returncode == 0
    assert "csd-shared-marker" in jobs.inside("ls", "/tmp").stdout
    jobs.inside("rm", "-f", "/tmp/csd-shared-marker")


def test_protect_system_strict_keeps_the_working_directory_writable(jobs):
    if not jobs.expect.protect_system:  # said, not claimed, and really not: /usr stays
        # writable for the job (checked, not written: it is the host's)
        proc, usage = jobs.run_with_usage("--protect-system", "--", "test", "-w", "/usr")
        assert proc.returncode == 0
        assert usage["enforced"]["protect_system"] == "not enforced: needs systemd"
        return
    proc = jobs.run("--protect-system", "--", "sh", "-c",
                    "touch ok-here && ! touch /usr/csd-nope 2>/dev/null && echo fine")
    assert proc.stdout == "fine\n", proc.stderr
    assert (jobs.work / "ok-here").exists()


def test_uid_and_gid(jobs):
    proc = jobs.run(*jobs.as_nobody(), "--", "sh", "-c", "id -u; id -g")
    assert proc.stdout.split() == ["65534", "65534"], proc.stderr


def test_rlimits_are_inherited(jobs):
    proc = jobs.shell(f"ulimit -n 777; exec {jobs.wrapper_command()} run "
                      f"{' '.join(jobs.run_args())} -- sh -c 'ulimit -n'")
    assert proc.stdout.strip() == "777"


def test_private_tmp_is_off_for_a_command_under_tmp(jobs):
    jobs.inside("cp", "/bin/true", "/tmp/csd-true")
    try:
        proc, usage = jobs.run_with_usage("--", "/tmp/csd-true")
    finally:
        jobs.inside("rm", "-f", "/tmp/csd-true")
    assert proc.returncode == 0, proc.stderr
    assert usage["enforced"]["private_tmp"].startswith("off: the command")


def test_private_users(jobs):
    """PrivateUsers=yes: the job's user namespace maps only its own uid (not the full range)."""
    if not jobs.expect.private_users:  # said, and really not: the full uid range is mapped
        proc, usage = jobs.run_with_usage("--private-users", "--", "cat", "/proc/self/uid_map")
        assert proc.stdout.split() == ["0", "0", "4294967295"]
        assert usage["enforced"]["private_users"] == "not enforced: needs systemd"
        return
    shared = jobs.run("--", "cat", "/proc/self/uid_map").stdout.split()
    private = jobs.run("--private-users", "--", "cat", "/proc/self/uid_map").stdout.split()
    assert shared == ["0", "0", "4294967295"]
    assert private[:3] == ["0", "0", "1"], private  # root maps to itself, nobody else does
