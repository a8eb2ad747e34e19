"""runner.run() end to end on the systemd backend, over the scripted systemd of fake_systemd:
the wait loop sleeps on fds (no polling), forwards real signals sent to this process, escalates
after --stop-timeout, survives daemon-reexec, and cleans up after its own errors.

condor_systemd.runner.select_backend is replaced by a SystemdBackend on a FakeConnection; the
signals are real (os.kill of this process, from a timer thread, while run() waits).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from condor_systemd import cli, runner
from condor_systemd.backends.systemd import SystemdBackend
from condor_systemd.errors import LaunchError, UnitExists
from tests.unit.fake_systemd import (
    ACCOUNTING,
    CLD_KILLED,
    FINISH,
    PATH,
    SERVICE_IFACE,
    START,
    UNIT,
    UNIT_IFACE,
    FakeSystemd,
    Proc,
    RecordingLog,
    gone,
    make_spec,
)

WATCHDOG = 5.0  # no test may hang: after this long every process of the job is SIGKILLed


@pytest.fixture
def stdio():
    fds = tuple(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3))
    yield fds
    for fd in fds:
        os.close(fd)


class Scene:
    """One fake systemd wired into runner.run, with timers that act while run() waits."""

    def __init__(self, root, monkeypatch, **kw: object) -> None:
        self.fake = FakeSystemd(root, **kw)  # type: ignore[arg-type]
        self.fake.install(monkeypatch)
        self.timers: list[threading.Timer] = []
        self.polls = 0
        self.jobs: list = []
        self.at: dict[str, float] = {}
        self.missed: list[str] = []
        self.main: Proc | None = None
        monkeypatch.setattr(runner, "select_backend", self._backend)
        self.later(WATCHDOG, self.fake.panic)

    def _backend(self, choice: str) -> SystemdBackend:
        assert choice == "systemd"
        scene = self

        class Counting(SystemdBackend):
            def start(self, spec, stdio, log):  # type: ignore[no-untyped-def]
                job = super().start(spec, stdio, log)
                poll = job.poll

                def counted() -> bool:
                    scene.polls += 1
                    return poll()

                job.poll = counted  # type: ignore[method-assign]
                scene.jobs.append(job)
                return job

        return Counting(self.fake.connect(), self.fake.version)

    def later(self, delay: float, action) -> None:
        timer = threading.Timer(delay, action)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def when_running(self, delay: float, action) -> None:
        """action, delay seconds after the unit became active (run() is waiting by then)."""
        def hook() -> None:
            self.main = self.fake.unit(UNIT).main
            self.later(delay, action)

        self.fake.on_running.append(hook)

    def signal_self(self, signum: int) -> None:
        """A signal to this process, as HTCondor sends it to the wrapper, marked in time."""
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.SIG_IGN, None):
            self.missed.append(f"signal {signum}: run() was not catching it")
            return
        self.at[signal.Signals(signum).name] = time.monotonic()
        os.kill(os.getpid(), signum)

    def run(self, spec=None, stdio=(0, 1, 2)):
        self.at["run"] = time.monotonic()
        try:
            return runner.run(spec or make_spec(), stdio, backend="systemd", log=RecordingLog())
        finally:
            self.at["returned"] = time.monotonic()
            assert not self.missed, self.missed

    def close(self) -> None:
        for t in self.timers:
            t.cancel()
        self.fake.close()


@pytest.fixture
def scene(tmp_path, monkeypatch):
    scenes: list[Scene] = []

    def make(**kw: object) -> Scene:
        s = Scene(tmp_path / f"systemd{len(scenes)}", monkeypatch, **kw)
        scenes.append(s)
        return s

    yield make
    for s in scenes:
        s.close()


def test_run_sleeps_on_fds_until_the_job_ends(scene, stdio):
    s = scene()
    s.when_running(0.5, lambda: s.fake.main_exits(3, runtime=0.5))
    usage = s.run(stdio=stdio)
    assert usage.exit_code == 3 and usage.signal is None
    assert usage.cpu_user_seconds == ACCOUNTING["user_usec"] / 1e6
    assert 0.5 <= s.at["returned"] - s.at["run"] < 1.5
    # one poll() for the start, one when the end came in: a busy or timed loop would do hundreds
    assert s.polls <= 3, f"the wait loop ran {s.polls} times in 0.5 s: it polls"
    assert s.fake.simple_calls() == [START, *FINISH]
    gone(s.fake)


def test_run_forwards_sigterm_and_kills_after_the_stop_timeout(scene, stdio):
    """The main process ignores SIGTERM: the unit stays active (systemd arms no timer), so it is
    the wrapper that SIGKILLs it, --stop-timeout after forwarding SIGTERM."""
    s = scene(unit_in_test_cgroup=True)
    s.fake.real_main, s.fake.main_ignores = True, (signal.SIGTERM,)
    s.when_running(0.1, lambda: s.signal_self(signal.SIGTERM))
    usage = s.run(make_spec(stop_timeout=0.4), stdio)
    assert (usage.exit_code, usage.signal) == (None, signal.SIGKILL)
    main = s.main
    assert main is not None and main.exit == (CLD_KILLED, signal.SIGKILL)
    assert main.received == [signal.SIGTERM]  # KillUnit(all, 15); the SIGKILL was the wrapper's
    # the grace is honoured to its length: not shorter, and well under twice as long (the kill
    # takes milliseconds: a D-Bus round trip and a pidfd signal)
    grace = main.ended_at - s.at["SIGTERM"]
    assert 0.4 - 0.02 <= grace < 0.6, f"killed {grace:.3f} s after SIGTERM, not 0.4 s"
    assert s.fake.simple_calls() == [START, ("GetAll", PATH, SERVICE_IFACE),  # ControlGroup
                                     ("KillUnit", UNIT, "all", signal.SIGTERM),
                                     ("GetAll", PATH, SERVICE_IFACE),  # ControlPID
                                     *FINISH]
    gone(s.fake)


def test_run_leftovers_keep_the_grace_of_a_stop(scene, stdio):
    """SIGTERM ends the main process; what it left behind ignores SIGTERM and gets the rest of
    the --stop-timeout grace to clean up (README), then SIGKILL."""
    s = scene(unit_in_test_cgroup=True)
    leftovers: list[Proc] = []
    s.fake.on_running.append(lambda: leftovers.append(s.fake.fork_leftover()))
    s.when_running(0.1, lambda: s.signal_self(signal.SIGTERM))
    usage = s.run(make_spec(stop_timeout=0.4), stdio)
    assert (usage.exit_code, usage.signal) == (None, signal.SIGTERM)
    (leftover,) = leftovers
    assert leftover.exit == (CLD_KILLED, signal.SIGKILL)
    lived = leftover.ended_at - s.at["SIGTERM"]
    assert 0.4 - 0.02 <= lived < 0.6, f"killed {lived:.3f} s after SIGTERM, not 0.4 s"
    gone(s.fake)


def test_run_kills_leftovers_at_once_when_the_main_process_ends(scene, stdio):
    s = scene(unit_in_test_cgroup=True)
    leftovers: list[Proc] = []
    s.fake.on_running.append(lambda: leftovers.extend([s.fake.fork_leftover(),
                                                       s.fake.fork_leftover()]))

    def main_exits() -> None:
        s.at["main exit"] = time.monotonic()
        s.fake.main_exits(0)

    s.when_running(0.1, main_exits)
    # with a 3 s stop timeout, systemd itself would SIGKILL them only after 3 s
    usage = s.run(make_spec(stop_timeout=3.0), stdio)
    assert usage.exit_code == 0
    for p in leftovers:
        assert p.exit == (CLD_KILLED, signal.SIGKILL)
        assert p.ended_at - s.at["main exit"] < 1.0, "leftovers were not killed at once"
    assert s.at["returned"] - s.at["main exit"] < 1.0
    gone(s.fake)


def test_run_error_of_the_wrapper_aborts_the_job(scene, stdio):
    """An exception while run() waits (here raised by a signal handler): the job is killed and
    its unit removed before the exception goes on."""
    s = scene()

    def boom(signum, frame):  # noqa: ARG001
        raise RuntimeError("boom")

    old = signal.signal(signal.SIGALRM, boom)
    try:
        s.when_running(0.1, lambda: os.kill(os.getpid(), signal.SIGALRM))
        with pytest.raises(RuntimeError, match="boom"):
            s.run(make_spec(stop_timeout=0.2), stdio)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert s.fake.simple_calls()[1] == ("KillUnit", UNIT, "all", signal.SIGKILL)
    assert s.main is not None and s.main.exit == (CLD_KILLED, signal.SIGKILL)
    gone(s.fake)


def test_run_failure_in_finish_still_aborts(scene, stdio):
    """finish() fails (systemd went away for good as the unit was being removed): abort() still
    runs, and the error is condor-systemd's, not a traceback."""
    s = scene()

    def end_and_lose_systemd() -> None:
        s.fake.before_call["KillUnit"] = lambda: s.fake.reexec(back_after=None)
        s.fake.main_exits(0)

    s.when_running(0.1, end_and_lose_systemd)
    with pytest.raises(LaunchError, match="^lost the connection to systemd"):
        s.run(stdio=stdio)
    tried = s.fake.attempts
    assert tried.index(("KillUnit", UNIT, "control", 9)) < \
        tried.index(("KillUnit", UNIT, "all", 9)), "abort() did not run after finish() failed"


def test_run_unit_exists_touches_the_other_job_not(scene, stdio):
    s = scene()
    other = s.fake.add_unit(UNIT)
    with pytest.raises(UnitExists):
        s.run(stdio=stdio)
    assert s.fake.simple_calls() == [START]
    assert other.sub == "running" and other.main.received == []


def test_run_survives_daemon_reexec(scene, stdio):
    """daemon-reexec closes the connection: run() reconnects, sleeps on the NEW socket (a loop
    still polling the closed fd would spin) and sees the job end there."""
    s = scene()
    s.when_running(0.1, lambda: s.fake.reexec(back_after=2))
    s.when_running(0.5, lambda: s.fake.main_exits(3))
    usage = s.run(stdio=stdio)
    assert usage.exit_code == 3
    (job,) = s.jobs
    assert job.conn.reconnects == [30.0] and len(job.conn.filenos) == 2
    assert s.polls <= 5, f"the wait loop ran {s.polls} times: it spins on the old socket"
    assert s.fake.simple_calls() == [START, ("GetAll", PATH, UNIT_IFACE), *FINISH]
    gone(s.fake)


def test_cli_lost_connection_is_one_line_and_125(scene, monkeypatch, capsys, tmp_path):
    """systemd goes away for good while the job runs: one line on stderr, exit status 125."""
    monkeypatch.setattr("condor_systemd.log.JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    monkeypatch.delenv("_CONDOR_WRAPPER_ERROR_FILE", raising=False)
    s = scene()
    s.when_running(0.1, lambda: s.fake.reexec(back_after=None))
    rc = cli.main(["run", "--backend", "systemd", "--name", "12.0", "--", "/bin/true"])
    err = capsys.readouterr().err
    assert rc == 125
    assert err.startswith("condor-systemd: lost the connection to systemd: ")
    assert err.count("\n") == 1 and "Traceback" not in err
