"""The systemd backend's job state machine, driven by a scripted systemd (tests/unit/fake_systemd):
what it sends, how it follows the unit through start, the main process ending (with processes
left behind), forwarded signals, daemon-reexec, refusals and errors, and the record it builds.

No root, no systemd: the fake manager models systemd 252 (see its docstring for the sources).
Expected values come from systemd's documentation and the fake's cgroup files, never from
condor_systemd's own tables.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

import pytest

from condor_systemd.backends import envfile
from condor_systemd.backends.systemd import SystemdBackend
from condor_systemd.errors import (
    BackendUnavailable,
    CommandNotExecutable,
    LaunchError,
    UnitExists,
)
from condor_systemd.spec import JobSpec
from tests.unit.fake_systemd import (
    ACCESS_DENIED,
    ACCOUNTING,
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    FINISH,
    PATH,
    SERVICE_IFACE,
    START,
    UNIT,
    UNIT_IFACE,
    FakeSystemd,
    GiB,
    RecordingLog,
    gone,
    make_spec,
)

# the documented record for ACCOUNTING: cpu.stat's usec, io.stat's bytes summed over devices
CPU_USER, CPU_SYSTEM = 11.2, 0.31
IO_READ, IO_WRITE = 1_048_576 + 2_048, 4_096 + 8_192


@pytest.fixture
def stdio():
    fds = tuple(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3))
    yield fds
    for fd in fds:
        os.close(fd)


@pytest.fixture
def make_fake(tmp_path, monkeypatch):
    fakes: list[FakeSystemd] = []

    def make(**kw: object) -> FakeSystemd:
        fake = FakeSystemd(tmp_path / f"systemd{len(fakes)}", **kw)  # type: ignore[arg-type]
        fake.install(monkeypatch)
        monkeypatch.setattr(envfile, "DIRECTORY", str(tmp_path / "env"))
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()


@pytest.fixture
def fake(make_fake):
    return make_fake()


def start(fake: FakeSystemd, stdio, spec: JobSpec | None = None, log: RecordingLog | None = None):
    backend = SystemdBackend(fake.connect(), fake.version)
    return backend.start(spec or make_spec(), stdio, log or RecordingLog())


def wait_ended(job, timeout: float = 2.0) -> float:
    """Drive the job as the runner does (poll, sleep on its fds) until it ended; return when."""
    deadline = time.monotonic() + timeout
    while not job.poll():
        left = deadline - time.monotonic()
        woke = left > 0 and select.select(job.fds(), [], [], left)[0]
        assert woke, f"the job did not end within {timeout} s"
    return time.monotonic()


def running(job) -> None:
    """The start job's JobRemoved came in: poll() handles it and the job is not over."""
    assert job.poll() is False


def record(usage) -> dict:
    """The record as documented (JSON), whatever the in-memory types."""
    return json.loads(usage.to_json())


# -- what is sent ----------------------------------------------------------------------------

def test_start_sends_the_unit_systemd_documents(fake, stdio, monkeypatch):
    written: list[tuple[bytes, int]] = []
    real_write = envfile.write

    def write(unit: str, assignments: list[str]) -> str:
        path = real_write(unit, assignments)
        with open(path, "rb") as f:
            written.append((f.read(), os.stat(path).st_mode & 0o777))
        return path

    monkeypatch.setattr(envfile, "write", write)
    job = start(fake, stdio)
    env_file = envfile.path_for(job.spec.unit_name)
    [(env_written, env_mode)] = written
    assert fake.simple_calls() == [START]
    assert fake.calls[0].args[3] == []  # no auxiliary units
    props = fake.started_properties()
    assert props["Type"] == ("s", "exec")
    # systemd.service(5): "$$" passes a literal "$" (systemd expands $VAR in ExecStart)
    assert props["ExecStart"] == ("a(sasb)", [("/srv/job/job", ["./job", "--in", "$$HOME"],
                                               False)])
    assert props["WorkingDirectory"] == ("s", "/srv/job")
    # systemd sets INVOCATION_ID itself, and refuses a name like BASH_FUNC_f%% (the whole unit);
    # the environment is in a file only root reads, not in the unit's (world-readable) properties
    assert "Environment" not in props
    assert props["EnvironmentFiles"] == ("a(sb)", [(env_file, True)])
    assert env_written == b'PATH="/usr/bin:/bin"\nHOME="/home/u"\nNL="a\nb"\n'
    assert env_mode == 0o600
    assert os.path.exists(env_file)  # PID 1 reads it when it spawns the job
    running(job)
    assert not os.path.exists(env_file)  # gone once the start has completed
    assert props["StandardInputFileDescriptor"] == ("h", stdio[0])
    assert props["StandardOutputFileDescriptor"] == ("h", stdio[1])
    assert props["StandardErrorFileDescriptor"] == ("h", stdio[2])
    sig, [(path, argv, ignore_failure)] = props["ExecStopPost"]
    assert sig == "a(sasb)" and argv == ["sleep", "infinity"] and ignore_failure is True
    assert os.path.basename(path) == "sleep" and os.access(path, os.X_OK)
    assert props["CollectMode"] == ("s", "inactive-or-failed")
    # --stop-timeout's default (20 s) and the minute the holder waits to be read, in usec
    assert props["TimeoutStopUSec"] == ("t", 80_000_000)
    assert props["Slice"] == ("s", "condor.slice")
    assert props["Description"][1].startswith("HTCondor job 12.0: ./job --in $HOME")
    # systemd.resource-control(5) in D-Bus units: CPUQuota=200% is 2 s of CPU per second,
    # AllowedCPUs a little-endian CPU bitmask
    assert props["MemoryMax"] == ("t", 2 * GiB)
    assert props["CPUQuotaPerSecUSec"] == ("t", 2_000_000)
    assert props["AllowedCPUs"] == ("ay", b"\x03")
    assert props["IOWeight"] == ("t", 500)
    assert props["TasksMax"] == ("t", 100)
    for name in ("CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting",
                 "PrivateTmp"):
        assert props[name] == ("b", True), name
    assert props["IgnoreSIGPIPE"] == ("b", False)
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    job.finish()
    gone(fake)


# -- the main process ends -------------------------------------------------------------------

@pytest.mark.parametrize(("code", "status", "exit_code", "signum"), [
    (CLD_EXITED, 0, 0, None),
    (CLD_EXITED, 3, 3, None),
    (CLD_KILLED, signal.SIGSEGV, None, signal.SIGSEGV),
    (CLD_DUMPED, signal.SIGSEGV, None, signal.SIGSEGV),
    (CLD_KILLED, signal.SIGTERM, None, signal.SIGTERM),  # systemd: a clean exit, unit inactive
])
def test_main_process_ends(fake, stdio, code, status, exit_code, signum):
    job = start(fake, stdio)
    running(job)
    assert fake.simple_calls() == [START]  # the cgroup path follows from the names: no GetAll
    if code == CLD_EXITED:
        fake.main_exits(status, runtime=12.03)
    else:
        fake.main_killed(status, dumped=code == CLD_DUMPED, runtime=12.03)
    wait_ended(job)
    usage = job.finish()
    assert (usage.exit_code, usage.signal) == (exit_code, signum)
    assert usage.wall_seconds == 12.03  # ExecMainExit - ExecMainStart, systemd's own clock
    assert fake.simple_calls() == [START, *FINISH]
    gone(fake)


@pytest.mark.parametrize("oom_kill", [0, 1])
def test_record_from_the_unit_cgroup_v2(make_fake, stdio, oom_kill):
    fake = make_fake(accounting={**ACCOUNTING, "oom_kill": oom_kill})
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0, runtime=3.5)
    wait_ended(job)
    rec = record(job.finish())
    assert rec["unit"] == UNIT and rec["backend"] == "systemd" and rec["job_id"] == "12.0"
    assert rec["wall_seconds"] == 3.5
    assert rec["cpu_user_seconds"] == CPU_USER and rec["cpu_system_seconds"] == CPU_SYSTEM
    assert rec["memory_peak_bytes"] == ACCOUNTING["memory_peak"]
    assert (rec["io_read_bytes"], rec["io_write_bytes"]) == (IO_READ, IO_WRITE)
    assert rec["tasks_peak"] == ACCOUNTING["pids_peak"]
    assert rec["oom_killed"] is bool(oom_kill)
    assert rec["limits"] == {"memory_max": 2 * GiB, "cpu_quota_percent": 200.0,
                             "allowed_cpus": "0-1", "io_weight": 500, "tasks_max": 100,
                             "private_tmp": True}
    assert rec["enforced"] == {key: True for key in rec["limits"]}
    assert rec["cgroup_layout"] == "unified"
    assert rec["cgroup_controllers"] == ["cpuset", "cpu", "io", "memory", "pids"]
    assert rec["systemd_version"] == 252
    assert rec["accuracy"]["memory_peak"] == "exact: the unit's cgroup (memory.peak)"


def test_record_from_the_unit_cgroup_hybrid(make_fake, stdio):
    fake = make_fake(layout="hybrid")
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0, runtime=1.25)
    wait_ended(job)
    rec = record(job.finish())
    assert rec["wall_seconds"] == 1.25
    # cpu.stat of the v2 tree (exact) is preferred over cpuacct.stat's ticks (the fake's
    # cpuacct.stat says 1120/31 ticks: the same at 100 Hz, but only cpu.stat has usec)
    assert rec["cpu_user_seconds"] == CPU_USER and rec["cpu_system_seconds"] == CPU_SYSTEM
    assert rec["memory_peak_bytes"] == ACCOUNTING["memory_peak"]  # memory.max_usage_in_bytes
    assert rec["io_read_bytes"] is None and rec["io_write_bytes"] is None  # v1 blkio misses
    assert rec["tasks_peak"] == ACCOUNTING["pids_peak"]
    assert rec["oom_killed"] is False
    enforced = rec["enforced"]
    assert enforced["memory_max"] is True and enforced["cpu_quota_percent"] is True
    assert enforced["tasks_max"] is True
    # no cpuset on v1: the affinity of the job's processes is read instead, and the fake's
    # cgroup has no real process to read it from (tests/systemd reads real ones)
    assert enforced["allowed_cpus"].startswith("unknown: the job's processes ended")
    assert enforced["io_weight"].startswith("not enforced:")
    assert rec["cgroup_layout"] == "hybrid"
    assert rec["cgroup_controllers"] == ["blkio", "cpu", "cpuacct", "memory", "pids"]


def test_limit_the_kernel_does_not_show_is_not_in_force(fake, stdio):
    fake.kernel_overrides["memory.max"] = f"{GiB}\n"  # not what was asked
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    enforced = record(job.finish())["enforced"]
    assert enforced["memory_max"] == f"not in force: asked {2 * GiB}, the cgroup has {GiB}"
    assert enforced["tasks_max"] is True


def test_systemd_256_memory_peak_property(make_fake, stdio):
    fake = make_fake(version=256)  # the fake's MemoryPeak is memory.peak + 4096: tell them apart
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    rec = record(job.finish())
    assert rec["memory_peak_bytes"] == ACCOUNTING["memory_peak"] + 4096
    assert rec["accuracy"]["memory_peak"] == "exact: the unit's cgroup (systemd's MemoryPeak " \
                                             "property)"
    assert rec["systemd_version"] == 256


# -- the start fails -------------------------------------------------------------------------

@pytest.mark.parametrize("with_stop_post", [False, True])
def test_start_job_fails(make_fake, stdio, with_stop_post):
    """systemd could not even fork the job (Result=resources): JobRemoved "failed", or, when it
    could still run ExecStopPost, stop-post before the start job ends."""
    fake = make_fake()
    fake.start = ("spawn-fails", with_stop_post)
    job = start(fake, stdio)
    t0 = time.monotonic()
    assert job.poll() is True
    with pytest.raises(LaunchError) as info:
        job.finish()
    assert type(info.value) is LaunchError and info.value.exit_code == 125
    assert str(info.value).startswith(f"systemd could not start {UNIT}: failed")
    assert f"journalctl -u {UNIT}" in str(info.value)
    assert fake.simple_calls() == [START, *FINISH]
    gone(fake)
    assert time.monotonic() - t0 < 1.0  # no waiting for a UnitRemoved that already came


@pytest.mark.parametrize(("status", "error", "words"), [
    (203, CommandNotExecutable, "./job: systemd cannot execute the command"),
    (200, LaunchError, "(cannot change to the working directory /srv/job, status 200)"),
])
def test_exec_setup_failure(fake, stdio, status, error, words):
    """systemd.exec(5): the job's process exits 203 (EXIT_EXEC) or 200 (EXIT_CHDIR) before it
    ever runs the command; the unit goes to stop-post while its start job still waits."""
    fake.start = ("exec-fails", status)
    job = start(fake, stdio)
    wait_ended(job)
    with pytest.raises(error) as info:
        job.finish()
    assert words in str(info.value)
    assert info.value.exit_code == (126 if status == 203 else 125)
    assert fake.simple_calls() == [START, *FINISH]
    gone(fake)


def test_unknown_property_is_dropped_retried_and_recorded(fake, stdio):
    fake.refuse = {"IOWeight", "TasksMax"}  # a manager that knows neither
    job = start(fake, stdio)
    assert fake.simple_calls() == [START, START, START]
    assert "IOWeight" in fake.started_properties(0)
    assert "IOWeight" not in fake.started_properties(1)
    assert "TasksMax" not in fake.started_properties(2)
    assert fake.started_properties(2)["MemoryMax"] == ("t", 2 * GiB)  # the rest is kept
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    enforced = record(job.finish())["enforced"]
    assert enforced["io_weight"] == "not sent: systemd 252 does not accept IOWeight here"
    assert enforced["tasks_max"] == "not sent: systemd 252 does not accept TasksMax here"
    assert enforced["memory_max"] is True
    gone(fake)


def test_property_newer_than_the_manager_is_not_sent(fake, stdio):
    job = start(fake, stdio, make_spec(properties=(("PrivatePIDs", "yes"),)))
    assert fake.simple_calls() == [START]  # not sent, so not refused and retried
    assert "PrivatePIDs" not in fake.started_properties()
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    enforced = record(job.finish())["enforced"]
    assert enforced["PrivatePIDs"] == "not sent: systemd 252 lacks PrivatePIDs (added in 257)"


def test_refused_value_is_a_launch_error(fake, stdio):
    fake.invalid = {"CPUQuotaPerSecUSec": "CPUQuotaPerSecUSec= value out of range"}
    with pytest.raises(LaunchError) as info:
        start(fake, stdio)
    assert str(info.value) == f"systemd refused the unit {UNIT}: CPUQuotaPerSecUSec= value " \
                              "out of range"
    assert fake.simple_calls() == [START]
    assert fake.unit(UNIT) is None


def test_unit_exists_touches_nothing(fake, stdio):
    other = fake.add_unit(UNIT)  # another job of that name runs
    with pytest.raises(UnitExists) as info:
        start(fake, stdio)
    assert info.value.exit_code == 125
    assert "already exists" in str(info.value) and "--name" in str(info.value)
    assert fake.simple_calls() == [START]  # no KillUnit, StopUnit, ResetFailedUnit for it
    assert fake.unit(UNIT) is other and other.sub == "running" and other.main.received == []


def test_access_denied_is_backend_unavailable(fake, stdio):
    fake.deny = {"StartTransientUnit": (ACCESS_DENIED, "Access denied")}
    with pytest.raises(BackendUnavailable, match="not permitted to start system units"):
        start(fake, stdio)
    assert fake.simple_calls() == [START]


# -- processes left behind -------------------------------------------------------------------

def test_leftovers_are_killed_at_once_when_the_main_process_ends(make_fake, stdio):
    """README: processes the job left behind are SIGKILLed at once (not after TimeoutStopSec,
    20 s here, when systemd would do it)."""
    fake = make_fake(unit_in_test_cgroup=True)
    job = start(fake, stdio)
    running(job)
    assert fake.simple_calls() == [START, ("GetAll", PATH, SERVICE_IFACE)]  # ControlGroup
    leftovers = [fake.fork_leftover(), fake.fork_leftover()]  # they ignore SIGTERM
    t0 = time.monotonic()
    fake.main_exits(0)
    wait_ended(job)
    for p in leftovers:
        assert p.exit == (CLD_KILLED, signal.SIGKILL), fake.events
        assert p.ended_at - t0 < 1.0
        # systemd sent SIGTERM (KillSignal) on entering stop-sigterm; the SIGKILL was the job's
        assert p.received == [signal.SIGTERM]
    assert "stop-sigterm timed out" not in " ".join(fake.events)
    usage = job.finish()
    assert usage.exit_code == 0
    assert usage.cpu_user_seconds == CPU_USER
    assert fake.simple_calls() == [START, ("GetAll", PATH, SERVICE_IFACE),
                                   ("GetAll", PATH, SERVICE_IFACE),  # ControlPID: the holder
                                   *FINISH]
    gone(fake)


def test_killing_leftovers_spares_the_cgroup_holder(make_fake, stdio):
    """The leftovers died of systemd's SIGTERM and the ExecStopPost sleeper already runs when
    the job handles stop-sigterm: it kills what cgroup.procs lists but the sleeper (ControlPID),
    which must hold the cgroup until the accounting is read."""
    fake = make_fake(unit_in_test_cgroup=True)
    fake.real_holder = True
    job = start(fake, stdio)
    running(job)
    fake.fork_leftover(ignores=(), real=False)  # dies of systemd's SIGTERM
    fake.main_exits(0)
    holder = fake.unit(UNIT).control
    assert holder is not None and holder.real and holder.alive
    wait_ended(job)
    time.sleep(0.1)  # time enough for a wrongly killed holder to die and be reaped
    assert holder.alive and os.waitid(os.P_PIDFD, holder.pidfd,
                                      os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    usage = job.finish()
    assert holder.received == [signal.SIGKILL]  # finish's KillUnit(control): nothing else
    assert usage.cpu_user_seconds == CPU_USER and usage.tasks_peak == ACCOUNTING["pids_peak"]
    gone(fake)


def test_news_that_came_during_a_call_is_not_missed(make_fake, stdio):
    """Handling stop-sigterm makes calls (GetAll for ControlPID); the leftover dies meanwhile and
    stop-post comes in before the reply: read while waiting for it, so the socket shows nothing.
    poll() must handle it anyway, or the wait loop sleeps on a socket whose news was read."""
    fake = make_fake(unit_in_test_cgroup=True)
    job = start(fake, stdio)
    running(job)
    leftover = fake.fork_leftover(real=False)  # ignores SIGTERM
    fake.before_call["GetAll"] = lambda: fake.process_exits(leftover, CLD_KILLED, 9)
    fake.main_exits(0)
    wait_ended(job, timeout=1.0)
    assert job.finish().exit_code == 0
    gone(fake)


@pytest.mark.parametrize(("signum", "stop"), [(signal.SIGTERM, True), (signal.SIGUSR1, False)])
def test_forwarded_signal(make_fake, stdio, signum, stop):
    """A forwarded signal goes to every process (KillUnit all). After SIGTERM, leftovers keep
    the stop's grace (the runner's kill() ends them); after SIGUSR1 they die at once."""
    fake = make_fake(unit_in_test_cgroup=True)
    if not stop:
        fake.main_ignores = (signal.SIGUSR1,)
    job = start(fake, stdio)
    running(job)
    leftovers = [fake.fork_leftover(ignores=(signal.SIGTERM, signal.SIGUSR1))]
    main = fake.unit(UNIT).main
    before = fake.simple_calls()
    job.send_signal(signum)
    assert fake.simple_calls() == [*before, ("KillUnit", UNIT, "all", signum)]
    assert main.received == [signum]
    if stop:  # the main process died of SIGTERM: stop-sigterm, leftovers still there
        assert job.poll() is False
        time.sleep(0.2)
        assert leftovers[0].alive
        # KillUnit's SIGTERM, then systemd's own on entering stop-sigterm
        assert leftovers[0].received == [signal.SIGTERM, signal.SIGTERM]
        assert fake.simple_calls() == [*before, ("KillUnit", UNIT, "all", signum)]
        job.kill()  # the runner's stop-timeout escalation
    else:
        assert leftovers[0].received == [signal.SIGUSR1]
        fake.main_exits(0)
    wait_ended(job)
    assert leftovers[0].exit == (CLD_KILLED, signal.SIGKILL)
    usage = job.finish()
    assert (usage.exit_code, usage.signal) == ((None, signal.SIGTERM) if stop else (0, None))
    gone(fake)


def test_signal_after_the_end_is_not_forwarded(fake, stdio):
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    job.send_signal(signal.SIGTERM)  # only the ExecStopPost holder would get it
    job.kill()
    assert fake.simple_calls() == [START]
    job.finish()


# -- daemon-reexec and lost connections ------------------------------------------------------

def test_reexec_while_running_catches_up(fake, stdio):
    job = start(fake, stdio)
    running(job)
    fds = job.fds()
    fake.reexec(back_after=2)
    fake.main_exits(3, runtime=5.0)  # while it was away: the signals are lost
    wait_ended(job)
    conn = job.conn
    assert conn.reconnects == [30.0]
    assert job.fds() != fds  # a new socket
    assert fake.simple_calls() == [START, ("GetAll", PATH, UNIT_IFACE)]
    usage = job.finish()
    assert usage.exit_code == 3 and usage.wall_seconds == 5.0
    assert usage.cpu_user_seconds == CPU_USER
    # the old manager's UnitRemoved for every unit did not make the job think its unit gone
    assert fake.simple_calls() == [START, ("GetAll", PATH, UNIT_IFACE), *FINISH]
    gone(fake)


def test_reexec_before_the_start_job_ended(make_fake, stdio):
    """The start job's JobRemoved went out while the job was disconnected: after reconnecting,
    the unit is active, so the job must count as running (limits verified, and the stop-timeout
    escalation must work: kill() acts only on a running job)."""
    fake = make_fake(unit_in_test_cgroup=True)
    fake.start = "held"  # the exec has not been reported yet
    fake.real_main = True
    job = start(fake, stdio)
    assert job.poll() is False
    fake.reexec()
    fake.exec_succeeds()  # JobRemoved(done) goes out while the job is disconnected
    assert job.poll() is False
    job.kill()
    wait_ended(job)
    rec = record(job.finish())
    assert (rec["exit_code"], rec["signal"]) == (None, signal.SIGKILL)
    assert rec["enforced"]["memory_max"] is True  # limits were verified once it was running
    assert fake.simple_calls() == [START, ("GetAll", PATH, UNIT_IFACE),
                                   ("GetAll", PATH, SERVICE_IFACE),  # ControlGroup
                                   ("GetAll", PATH, SERVICE_IFACE),  # ControlPID
                                   *FINISH]
    gone(fake)


def test_reexec_while_leftovers_remain(make_fake, stdio):
    fake = make_fake(unit_in_test_cgroup=True)
    job = start(fake, stdio)
    running(job)
    leftover = fake.fork_leftover()
    fake.reexec()
    t0 = time.monotonic()
    fake.main_exits(0)  # stop-sigterm, unseen
    wait_ended(job)
    assert leftover.exit == (CLD_KILLED, signal.SIGKILL) and leftover.ended_at - t0 < 1.0
    assert job.finish().exit_code == 0
    gone(fake)


def test_reexec_while_the_unit_is_removed(fake, stdio):
    job = start(fake, stdio)
    running(job)
    fake.main_exits(0)
    wait_ended(job)
    fake.before_call["KillUnit"] = fake.reexec  # the holder's KillUnit meets a reexec
    usage = job.finish()
    assert usage.exit_code == 0 and usage.cpu_user_seconds == CPU_USER
    assert fake.simple_calls() == [START, ("GetAll", PATH, SERVICE_IFACE),
                                   ("KillUnit", UNIT, "control", 9),  # lost with the connection
                                   ("GetAll", PATH, UNIT_IFACE),
                                   ("KillUnit", UNIT, "control", 9)]
    gone(fake)


def test_connection_lost_for_good(fake, stdio):
    job = start(fake, stdio)
    running(job)
    fake.reexec(back_after=None)  # systemd never answers again
    with pytest.raises(LaunchError, match="^lost the connection to systemd: "):
        job.poll()
    job.abort()  # best effort, and no exception of its own
    assert job.conn.reconnects and all(t == 30.0 for t in job.conn.reconnects)


# -- the wrapper's own failure ----------------------------------------------------------------

def test_abort_kills_everything_and_removes_the_unit(make_fake, stdio):
    fake = make_fake(unit_in_test_cgroup=True)
    job = start(fake, stdio, make_spec(stop_timeout=0.2))
    running(job)
    leftover = fake.fork_leftover()
    before = fake.simple_calls()
    job.abort()
    # first of all, SIGKILL to every process; then whatever removes the unit (StopUnit today)
    assert fake.simple_calls()[len(before)] == ("KillUnit", UNIT, "all", 9)
    gone(fake)
    assert leftover.exit == (CLD_KILLED, signal.SIGKILL)


def test_abort_is_prompt(fake, stdio):
    """abort() must not wait for TimeoutStopSec: StopUnit on a unit in stop-post waits for the
    ExecStopPost sleeper (service.c service_stop: already stopping); the job's processes are
    killed, then the sleeper, and the unit goes at once."""
    job = start(fake, stdio, make_spec(stop_timeout=0.6))
    running(job)
    t0 = time.monotonic()
    job.abort()
    gone(fake)
    assert time.monotonic() - t0 < 0.3
