"""Signals reach every process of the job, and nothing of the job survives the wrapper."""

from __future__ import annotations

import os
import signal
import time

from tests.jobs import PY, wait_files, wait_processes

# A job with escapees of every classic kind; each sleep carries a marker in its argv.
ESCAPEES = """
setsid sleep 4242.1 &
nohup sleep 4242.2 >/dev/null 2>&1 &
sh -c 'sleep 4242.3 &' &
(trap '' TERM HUP; exec sleep 4242.4) &
"""


def test_escaped_processes_die_at_once_when_the_main_process_exits(jobs):
    """README: "processes it left behind are SIGKILLed at once". One of them ignores SIGTERM,
    so only a SIGKILL ends it before the 20 s stop timeout; the wrapper must be gone well
    within 2 s of the main process's exit (measured from the exit time the job itself wrote)."""
    exited = jobs.work / "main-exited"
    stamp = f"{PY} -c 'import time; print(time.monotonic())' > {exited}"
    proc = jobs.start("--stop-timeout", "20", "--", "sh", "-c",
                      ESCAPEES + f"sleep 0.5; {stamp}; exit 0")
    assert proc.wait(timeout=60) == 0
    returned = time.monotonic()
    assert jobs.processes("^sleep 4242") == []
    after_exit = returned - float(exited.read_text())
    assert after_exit < 2.0, f"the wrapper returned {after_exit:.2f} s after the job's exit"


def test_sigterm_reaches_every_process_and_escapees_die(jobs):
    """The main process exits at once on SIGTERM; a child takes 1.5 s to clean up, and gets
    that time (the stop's grace); an escapee that ignores SIGTERM dies at --stop-timeout: not
    before it, and not much after (the stop itself then takes well under a second)."""
    marks = jobs.work
    script = (f"trap 'echo main > {marks}/main-got-term; exit 143' TERM\n"
              # (the trap ignores TERM while it runs: systemd sends a second one when the main
              # process exits, which would run a shell's trap again, from the start)
              f"sh -c \"trap 'trap \\\"\\\" TERM; sleep 1.5; echo child > {marks}/child-got-term; "
              "exit 0' TERM; "
              f"touch {marks}/child-ready; while :; do sleep 0.1; done\" &\n" + ESCAPEES +
              "while :; do sleep 0.1; done")
    proc = jobs.start("--stop-timeout", "3", "--", "sh", "-c", script)
    wait_processes(jobs, "sleep 4242", 4)
    wait_files(marks / "child-ready")
    start = time.monotonic()
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    took = time.monotonic() - start
    assert (marks / "main-got-term").read_text() == "main\n"
    assert (marks / "child-got-term").read_text() == "child\n"
    assert jobs.processes("^sleep 4242") == []
    assert 3.0 <= took < 4.5, f"stopped after {took:.2f} s with --stop-timeout 3"


# Records, on SIGUSR1, the monotonic time it arrived (one clock for the test and the job).
USR1_WORKER = """
import signal, sys, time
name, marks = sys.argv[1], sys.argv[2]
def got(*_):
    open(f"{marks}/usr1-{name}", "w").write(str(time.monotonic()))
    sys.exit(0)
signal.signal(signal.SIGUSR1, got)
open(f"{marks}/ready-{name}", "w").close()
while True:
    time.sleep(1)
"""


def test_usr1_is_forwarded_to_every_process_within_a_second(jobs):
    marks = jobs.work
    workers = [f"{PY} -c '{USR1_WORKER}' {name} {marks} &" for name in ("w1", "w2", "w3")]
    # The main shell traps it too (its wait ends early on a trapped signal: wait again). Its
    # trap uses only builtins: systemd's KillUnit re-reads the cgroup until it finds no new
    # process, so a process the trap forked could get the same signal.
    script = f"trap 'echo main > {marks}/usr1-main' USR1\n" + "\n".join(workers) + \
        "\nwait; wait; echo done"
    proc = jobs.start("--", "sh", "-c", script)
    wait_files(*(marks / f"ready-{name}" for name in ("w1", "w2", "w3")))
    sent = time.monotonic()
    os.kill(jobs.wrapper_pid(proc), signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip().endswith("done")
    assert (marks / "usr1-main").exists(), (sorted(os.listdir(marks)), out, _)
    # The claim is 1 s. The VM tier's guests run under TCG emulation, several times slower
    # (a run there once measured 1.003 s), so there the bound is 2 s.
    bound = 2.0 if os.environ.get("CONDOR_SYSTEMD_TEST_TIER", "").startswith("vm-") else 1.0
    for name in ("w1", "w2", "w3"):
        delay = float((marks / f"usr1-{name}").read_text()) - sent
        assert 0 <= delay < bound, f"{name} got SIGUSR1 {delay:.3f} s after it was sent"


def test_stop_timeout_kills_what_ignores_sigterm(jobs):
    script = "trap '' TERM; sh -c \"trap '' TERM; sleep 4243\" & sleep 4243"
    proc = jobs.start("--stop-timeout", "1", "--", "sh", "-c", script)
    wait_processes(jobs, "sleep 4243", 2)
    start = time.monotonic()
    os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
    status = proc.wait(timeout=60)
    took = time.monotonic() - start
    # SIGKILL hits the shell and its foreground sleep together: the shell may reap the sleep
    # (and exit 137) before its own SIGKILL lands. Either way the job was killed.
    assert status in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert 0.9 <= took < 5, f"stopped after {took:.2f} s with --stop-timeout 1"
    assert jobs.processes("^sleep 4243") == []


def test_sigint_and_sighup_are_forwarded(jobs):
    for sig in (signal.SIGINT, signal.SIGHUP):
        proc = jobs.start("--", "sleep", "4244")
        wait_processes(jobs, "sleep 4244", 1)
        os.kill(jobs.wrapper_pid(proc), sig)
        assert proc.wait(timeout=60) == -sig
        assert jobs.processes("^sleep 4244") == []


def test_escalation_never_loses_the_status(jobs):
    """The stop-timeout SIGKILL and the killing of leftovers must spare the ExecStopPost holder
    (systemd), and the main process's status must survive the kill of its family (psutil):
    on systemd, once in about eight runs it did not (exit 125)."""
    script = "trap '' TERM; sh -c \"trap '' TERM; sleep 4247\" & sleep 4247"
    for _ in range(8):
        path = jobs.usage_path()
        proc = jobs.start("--stop-timeout", "0.2", "--usage-file", str(path), "--",
                          "sh", "-c", script)
        wait_processes(jobs, "sleep 4247", 2)
        os.kill(jobs.wrapper_pid(proc), signal.SIGTERM)
        assert proc.wait(timeout=60) in (-signal.SIGKILL, 128 + signal.SIGKILL)
        assert path.exists()
    assert jobs.processes("^sleep 4247") == []
