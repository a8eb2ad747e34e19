"""SECURITY.md's invariants, each proven by an attack that a real unprivileged user (csd-attacker)
runs against the installed broker, with another (csd-victim) whose job and data are the target.
Every guard here has a breakage in tests/breakages.py that lets its attack through."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.harness import broker as harness
from tests.security.conftest import HOSTILE

USAGE_ERROR = "io.condorsystemd.Job.UsageError"


def broker_state(systemd) -> tuple[int, int]:  # noqa: ANN001
    """(NRestarts, MainPID) of the broker's service: a crash changes both."""
    out = systemd.run(["systemctl", "show", "-p", "NRestarts", "-p", "MainPID",
                       "condor-systemd.service"], capture_output=True, text=True).stdout
    values = dict(line.split("=", 1) for line in out.split())
    return int(values.get("NRestarts", "0")), int(values["MainPID"])


def wake_broker(user) -> None:  # noqa: ANN001
    """A job of the user's, so that the broker is running (socket activation) and answers."""
    proc = user.run(*user.client("run", "--", "true"))
    assert proc.returncode == 0, proc.stderr


def unit_list(systemd) -> str:  # noqa: ANN001
    return systemd.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                        "condor-job-*"], capture_output=True, text=True).stdout.strip()


# -- 1. no setuid program ever trusts a path the caller shaped ------------------------------------
def test_isolate_rewrites_no_path_the_caller_names(users, execute):
    """The caller's environment says its directory is /etc/x; its fd is its own directory.
    The broker binds the directory at the real path the kernel gives for the fd, under the
    execute root that root's policy names: /etc is the node's own, in the job too."""
    _root, dirs = execute
    got = users["attacker"].attack("isolate-named-path", str(dirs["attacker"]))
    assert got["reply"] is not None and got["reply"]["parameters"]["exit_code"] == 0, got
    assert "etc-intact" in got["out"], got
    assert "etc-x-exists" not in got["out"], got


def test_isolate_refuses_a_directory_outside_every_execute_root(users, broker):
    """A directory of the caller's own, but not under an execute root (here /dev/shm, a tmpfs
    every user may write): --isolate refuses it, nothing starts."""
    attacker = users["attacker"]
    shm = attacker.run("mktemp", "-d", "/dev/shm/csd-sec-XXXXXX").stdout.strip()
    try:
        got = attacker.attack("isolate", shm, "true", shm)
        assert got["reply"]["error"] == USAGE_ERROR, got
        assert "is not under an execute root (/var/lib/csd-tests" in \
            got["reply"]["parameters"]["message"], got
    finally:
        broker.run(["rm", "-rf", shm])
    assert unit_list(broker) == ""


# -- 2. another job's directory, even one of the same account --------------------------------------
@pytest.mark.parametrize("prop", ["ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                                  "ProtectProc"])
def test_properties_cannot_undo_isolation(users, execute, prop):
    """-p values that would reach past the job's own directory are refused with --isolate
    (ReadWritePaths=<execute root> read the other job's file before)."""
    root, dirs = execute
    other = two_jobs_of_one_account(root, users["attacker"])
    value = "default" if prop == "ProtectProc" else str(root)
    got = users["attacker"].attack("isolate", str(dirs["attacker"]), f"cat {other}/secret",
                                   str(dirs["attacker"]), "-p", f"{prop}={value}")
    assert "the other job's" not in got["out"], got
    assert got["reply"]["error"] == USAGE_ERROR, got
    assert got["reply"]["parameters"]["message"] == (
        f"-p {prop} is not allowed with --isolate through the broker: it would reach past "
        "the job's own directory")


def test_a_working_directory_at_the_execute_root_shows_no_other_job(users, execute):
    """Two jobs of ONE account (a site running every job as one user): the attacker works in
    the execute root itself (--protect-system=strict used to make the working directory
    writable, and with it the execute root came back whole) and reads for the other's file."""
    root, dirs = execute
    attacker = users["attacker"]
    other = two_jobs_of_one_account(root, attacker)
    script = f"cat {other}/secret 2>/dev/null; echo listing:; ls {root}"
    got = attacker.attack("isolate", str(dirs["attacker"]), script, str(root),
                          "--protect-system=strict")
    assert got["reply"]["parameters"]["exit_code"] == 0, got
    assert "the other job's" not in got["out"], got
    # of the execute root, its own directory only
    assert got["out"].split("listing:")[1].split() == ["dir_attacker"], got


def two_jobs_of_one_account(root, user):  # noqa: ANN001, ANN201
    """Another job's directory of the same account, with a file in it (the target)."""
    other = root / "dir_other"
    other.mkdir()
    (other / "secret").write_text("the other job's")
    for path in (other, other / "secret"):
        os.chown(path, user.uid, user.gid)
    return other


# -- 2b. no more than its own cgroup has, summed over all its jobs ---------------------------------
def test_a_callers_jobs_together_stay_within_its_cgroup(users, execute, broker):
    """The attacker's cgroup has MemoryMax=200M (a slot); it starts three jobs at once, each
    holding 120 MiB until all three hold theirs. Capped per job only, all three held 360 MiB
    at once. Now they share one slice with the cgroup's 200M: the kernel kills one (its own
    memory.events say so), and the three never hold their memory together."""
    _root, dirs = execute
    attacker = users["attacker"]
    proc = broker.run(
        ["systemd-run", "--quiet", "--scope", "--unit", "csd-sec-slot", "-p", "MemoryMax=200M",
         "--", *attacker.as_user(harness.CLIENT_PYTHON, str(HOSTILE), "three-jobs",
                                 str(dirs["attacker"]), "120")],
        str(dirs["attacker"]), capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert "all three held at once" not in " ".join(got["outs"]), got
    signals = [(f or {}).get("parameters", {}).get("signal") for f in got["finals"]]
    assert signal.SIGKILL in signals, got  # the kernel's OOM kill, in the slice


def test_a_callers_jobs_together_stay_within_its_io_caps(users, execute, broker, facts):
    """The attacker's cgroup may write 10 MiB/s to the guests' second disk (a slot's I/O cap);
    it starts two jobs at once, each writing 20 MiB past the page cache. Together in its
    slice, 40 MiB at 10 MiB/s take about 4 s, each job's own clock says (capped per job, each
    took 2 s; uncapped, 0.03 s; half the cap would take 8 s)."""
    facts.need_v2()
    from tests.systemd.test_io_disk import MOUNT

    if not os.path.exists("/dev/vdb"):
        pytest.fail("the VM tier's guests have a second disk, /dev/vdb (tests/vm/harness.py)")
    _root, dirs = execute
    attacker = users["attacker"]
    os.makedirs(MOUNT, exist_ok=True)
    if not os.path.ismount(MOUNT):
        subprocess.run(["mount", "/dev/vdb", MOUNT], check=True)
    disk_dir = os.path.join(MOUNT, "csd-sec-io")
    os.makedirs(disk_dir, exist_ok=True)
    os.chown(disk_dir, attacker.uid, attacker.gid)
    try:
        proc = broker.run(
            ["systemd-run", "--quiet", "--scope", "--unit", "csd-sec-io-slot",
             "-p", "IOWriteBandwidthMax=/dev/vdb 10M", "--",
             *attacker.as_user(harness.CLIENT_PYTHON, str(HOSTILE), "two-writers",
                               str(dirs["attacker"]), disk_dir, "20")],
            str(dirs["attacker"]), capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.splitlines()[-1])
        assert [f["parameters"]["exit_code"] for f in got["finals"]] == [0, 0], got
        took = [float(out) for out in got["outs"]]
        assert max(took) >= 3.2 and min(took) >= 2.4, took
        assert max(took) <= 6, took
    finally:
        shutil.rmtree(disk_dir, ignore_errors=True)


# -- 3. another user's job, its environment and its record ----------------------------------------
def test_another_users_environment_is_not_in_the_units_properties(users, execute, broker):
    """The victim's job has a token in its environment; the attacker reads every property of
    the victim's unit (systemctl show) and the broker's environment files: nothing. The job
    itself has the token (its own /proc/self/environ is the ground truth)."""
    _root, dirs = execute
    victim, attacker = users["victim"], users["attacker"]
    secret = "csd-token-" + os.urandom(8).hex()
    seen = dirs["victim"] / "seen"
    ready = dirs["victim"] / "ready"
    env = dict(os.environ, CSD_SECRET=secret, PATH="/usr/bin:/bin")
    job = victim.popen(*victim.client(
        "run", "--name", "sec-env", "--", "sh", "-c",
        f'printf %s "$CSD_SECRET" > {seen}; touch {ready}; sleep 30'), env=env,
        cwd=str(dirs["victim"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert seen.read_text() == secret  # the job has it
        unit = f"condor-job-u{victim.uid}-sec-env.service"
        shown = attacker.run("systemctl", "show", unit)
        assert shown.returncode == 0 and f"Id={unit}" in shown.stdout, shown
        assert "EnvironmentFiles=/run/condor-systemd-env/" in shown.stdout, shown.stdout
        assert secret not in shown.stdout
        files = attacker.run("sh", "-c", "cat /run/condor-systemd-env/* 2>&1; "
                                         "ls /run/condor-systemd-env 2>&1")
        assert secret not in files.stdout and "Permission denied" in files.stdout, files
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=60)


def test_the_environment_file_is_gone_once_the_job_has_started(users, execute, broker):
    _root, dirs = execute
    victim = users["victim"]
    proc = victim.run(*victim.client("run", "--name", "sec-env2", "--", "true"),
                      env=dict(os.environ, CSD_SECRET="x"))
    assert proc.returncode == 0, proc.stderr
    left = broker.run(["ls", "-A", "/run/condor-systemd-env"], capture_output=True,
                      text=True).stdout
    assert left == "", left


# -- 4. the caller's death ends its job ------------------------------------------------------------
def test_a_broker_connection_is_refused_as_the_jobs_stdio(users, execute, broker):
    """A job holding a connection to the broker would keep itself alive after its caller's
    death (HTCondor's hard kill kills the caller; the broker sees no hang-up)."""
    _root, dirs = execute
    got = users["attacker"].attack("broker-as-stdin", str(dirs["attacker"]))
    assert got["reply"] == {"error": "org.varlink.service.InvalidParameter",
                            "parameters": {"parameter": "stdin"}}, got
    assert unit_list(broker) == ""


def test_a_connection_that_outlives_its_caller_does_not_keep_the_job(users, execute, broker):
    """The caller hands its connection to a child and dies: the broker watches the caller
    process itself (a pidfd), and kills the job at once although the connection stays open."""
    _root, dirs = execute
    attacker = users["attacker"]
    got = attacker.attack("connection-outlives-caller", str(dirs["attacker"]))
    unit = got["first"]["parameters"]["unit"]
    try:
        deadline = time.monotonic() + 10
        while unit in unit_list(broker):
            assert time.monotonic() < deadline, f"{unit} outlived its caller:\n{unit_list(broker)}"
            time.sleep(0.1)
        journal = broker.run(["journalctl", "--no-pager", "-u", unit], capture_output=True,
                             text=True).stdout
        assert "the caller is gone: killing every process of the job" in journal, journal
    finally:
        broker.run(["pkill", "-KILL", "-u", str(attacker.uid), "-f", "csd_hostile"],
                   check=False)


# -- 5. the broker's service for everybody --------------------------------------------------------
def test_idle_connections_of_one_user_cost_another_nothing(users, execute, broker):
    """The attacker holds 2,100 connections open (more than the broker's 2,048 for everybody),
    reconnecting whatever is closed; the victim's job starts at once all the same."""
    attacker, victim = users["attacker"], users["victim"]
    wake_broker(victim)
    holder = attacker.popen(harness.CLIENT_PYTHON, str(harness.PKG / "csd_hostile.py"),
                            "hold-connections", "2100", "60", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        opened = json.loads(holder.stdout.readline() or "{}")
        assert opened.get("opened", 0) >= 2000, (opened, holder.stderr.read() if
                                                 holder.poll() is not None else "")
        time.sleep(2)  # the broker has accepted what it will
        start = time.monotonic()
        proc = victim.run(*victim.client("run", "--", "true"), timeout=60)
        took = time.monotonic() - start
        assert proc.returncode == 0, proc.stderr
        assert took < 15, took
    finally:
        holder.kill()
        holder.communicate()


def test_a_signal_flood_does_not_bring_the_broker_down(users, execute, broker):
    """4,000 forwarded signals, then the attacker kills its own job's main process: before,
    the broker crashed. Its restarts count and main pid stay; the job ended by SIGKILL, and
    the victim's next job runs."""
    _root, dirs = execute
    wake_broker(users["victim"])
    before = broker_state(broker)
    got = users["attacker"].attack("signal-flood", str(dirs["attacker"]), "4000")
    assert got.get("sent") == 4000, got
    assert got["final"] is not None and got["final"]["parameters"]["signal"] == signal.SIGKILL, got
    assert broker_state(broker) == before
    proc = users["victim"].run(*users["victim"].client("run", "--", "true"))
    assert proc.returncode == 0, proc.stderr


def test_a_job_killed_by_its_owner_while_held_does_not_hang_pid_1(users, execute, broker):
    """The attacker stops its own caller (the broker holds the job, as for HTCondor's suspend),
    and a second process of its own kills the job's main process. Held in systemd's freezer,
    the job's unit would start its ExecStopPost process in the frozen cgroup, and systemd 257
    waits for that process's exec: PID 1 hung, for every user. Held by SIGSTOP, the job dies;
    systemd answers, the attacker gets its job's SIGKILL, and nothing is left."""
    _root, dirs = execute
    got = users["attacker"].attack("kill-held-job", str(dirs["attacker"]), timeout=60)
    answer = broker.run(["timeout", "10", "systemctl", "show", "-P", "Version"],
                        capture_output=True, text=True)
    assert answer.returncode == 0 and answer.stdout.strip(), "PID 1 stopped answering"
    assert got["held"] == "stopped", got
    assert got["final"]["parameters"]["signal"] == signal.SIGKILL, got
    deadline = time.monotonic() + 10
    while unit_list(broker):
        assert time.monotonic() < deadline, unit_list(broker)
        time.sleep(0.1)


# -- fail closed (the unreadable caller: tests/unit/test_peer.py) -------------------------------
def test_a_callers_unit_that_no_broker_answers_for_is_killed(users, broker):
    """A unit in a caller's slice whose state the broker lost (here: one it never started) is
    killed when a broker starts, and the journal says so: no job runs on without a broker."""
    unit = f"condor-job-u{users['attacker'].uid}-orphan.service"
    broker.run(["systemd-run", "--quiet", "--unit", unit,
                "--slice", f"condor-u{users['attacker'].uid}_c0123456789abcdef.slice",
                "sleep", "300"])
    broker.run(["systemctl", "restart", "condor-systemd.service"])

    def state() -> str:
        return broker.run(["systemctl", "show", "-P", "ActiveState", unit], capture_output=True,
                          text=True).stdout.strip()

    deadline = time.monotonic() + 15
    while state() == "active":
        assert time.monotonic() < deadline, unit_list(broker)
        time.sleep(0.1)
    result = broker.run(["systemctl", "show", "-P", "Result", unit], capture_output=True,
                        text=True).stdout.strip()
    broker.run(["systemctl", "reset-failed", unit], check=False)  # systemd-run's unit stays
    assert result == "signal", result
    journal = broker.run(["journalctl", "--no-pager", "-u", "condor-systemd.service", "-n", "50"],
                         capture_output=True, text=True).stdout
    assert f"{unit} has no caller any more" in journal, journal
