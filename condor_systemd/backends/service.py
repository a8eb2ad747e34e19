"""A job as a transient service (the default): systemd forks it, so it can be sandboxed.

Lifecycle::

    StartTransientUnit(condor-job-<id>.service, Type=exec, ExecStopPost=-sleep infinity)
      JobRemoved(start, done)        -> running: read the limits back from the unit's cgroup
      SubState=stop-sigterm          -> the main process ended and left processes: SIGKILL them
      SubState=stop-post             -> everything the job ran is gone; the cgroup is still there,
                                        held by the ExecStopPost sleeper (OOMPolicy=continue:
                                        a late OOM event must not end the sleeper)
    collect: GetAll (exit status, Result) -> read accounting from the cgroup
             -> SIGKILL the sleeper -> UnitRemoved (CollectMode=inactive-or-failed)

The sleeper exists because systemd removes a unit's cgroup as soon as it is empty, and with it
the accounting systemd 252 does not export (user/system CPU, peak memory, OOM kills). If the
wrapper dies, TimeoutStopSec ends the sleeper and systemd collects the unit anyway.

A forked job would inherit the wrapper's umask, rlimits, CPU affinity, oom_score_adj and nice
(HTCondor sets some of them on the wrapper); a unit inherits nothing, so they are passed as
properties (spec.inherit: the wrapper's own, or, through the broker, its caller's).
"""

from __future__ import annotations

import os
import signal
import sys

from ..errors import LaunchError, UsageError
from ..spec import Inheritance
from ..usage import OFF, Usage, Verdict
from . import cgroupfs, child, envfile, properties
from .record import CLD_EXITED, SETUP_STATUSES
from .unitjob import CLEANUP_TIMEOUT, SystemdJob

SERVICE_IFACE = "org.freedesktop.systemd1.Service"
TMP_DIRS = ("/tmp", "/var/tmp")
# Variables systemd sets for each service itself. Inherited from a wrapper that runs inside
# another unit (the HTCondor starter's), Environment= would override the job unit's own values.
PER_UNIT_VARIABLES = frozenset((
    "INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
    "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "MAINPID", "MANAGERPID",
    "SYSTEMD_EXEC_PID", "TRIGGER_UNIT", "TRIGGER_PATH", "TRIGGER_TIMER_REALTIME_USEC",
    "TRIGGER_TIMER_MONOTONIC_USEC", "CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "MEMORY_PRESSURE_WATCH", "MEMORY_PRESSURE_WRITE"))
# BindPaths= from the broker's fds (/proc/<broker>/fd/<n>) may miss their source ("-"): the
# broker holds the fds until the unit is let go, but the ExecStopPost holder of a job whose
# broker restarted is set up after they are gone, and it must still start (it holds the
# accounting and the exit status). The broker holds the fds through the job's start, and a
# restarted broker kills a job it finds still starting (session.py refuse_half_started);
# SECURITY.md says what is left.
BY_BROKER_FD = True
SLEEP = next((p for p in ("/usr/bin/sleep", "/bin/sleep") if os.path.exists(p)), "/bin/sleep")
PIDNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pidns.py")
# the distribution's interpreter: the job's user must be able to run it (a venv under /root
# is not theirs to run); pidns.py needs nothing but the standard library
ISOLATION_PYTHON = next((p for p in ("/usr/bin/python3", sys.executable) if os.access(p, os.X_OK)),
                        sys.executable)


class ServiceJob(SystemdJob):
    iface = SERVICE_IFACE

    def launch(self, stdio: tuple[int, int, int]) -> None:
        self.prepare_devices()
        self.prepare_io()
        spec, enc = self.spec, properties.encode
        start = (spec.executable, exec_argv(spec.argv))
        if spec.sandbox.isolate:  # pidns.py: PID 1 of the job's own PID namespace
            python = ISOLATION_PYTHON
            # its source, not its path: a checkout under /tmp is hidden by PrivateTmp
            start = (python, [python, "-I", "-S", "-c", exec_argv((pidns_source(),))[0], "--",
                              *exec_argv((spec.executable, *spec.argv))])
        props = [enc("Type", "notify" if spec.sandbox.isolate else "exec"),
                 enc("ExecStart", [(*start, False)]),
                 enc("WorkingDirectory", self.working_directory()),
                 self.environment_property(),
                 enc("StandardInputFileDescriptor", stdio[0]),
                 enc("StandardOutputFileDescriptor", stdio[1]),
                 enc("StandardErrorFileDescriptor", stdio[2]),
                 # holds the cgroup (and its accounting) until collect() has read it
                 enc("ExecStopPost", [(SLEEP, ["sleep", "infinity"], True)]),
                 # An OOM kill seen while the unit is in stop-post makes systemd SIGKILL the
                 # ExecStopPost holder (OOMPolicy=stop or kill), and the accounting goes with
                 # the cgroup: the kernel's kill is left to speak for itself (memory.events
                 # says oom_kill; the record's oom_killed).
                 enc("OOMPolicy", "continue"),
                 enc("IgnoreSIGPIPE", False)]  # jobs expect SIGPIPE's default action
        props += self.inherited_properties(spec.inherit or Inheritance.of_process())
        if spec.user:
            props.append(enc("User", spec.user))
        if spec.group:
            props.append(enc("Group", spec.group))
        props += self.sandbox_properties()
        try:
            self.start_unit(props + self.common_properties())
        except BaseException:
            self.forget_environment()
            raise

    def inherited_properties(self, inherit: Inheritance) -> list:
        enc, asked = properties.encode, {name for name, _ in self.spec.properties}
        props = []
        if inherit.umask is not None:
            props.append(enc("UMask", inherit.umask))
        unlimited = properties.UINT64_MAX
        for name, soft, hard in inherit.rlimits:
            props.append(enc(f"Limit{name}", hard if hard >= 0 else unlimited))
            props.append(enc(f"Limit{name}Soft", soft if soft >= 0 else unlimited))
        if inherit.oom_score_adj is not None and "OOMScoreAdjust" not in asked:
            props.append(enc("OOMScoreAdjust", inherit.oom_score_adj))
        if inherit.nice is not None and "Nice" not in asked:
            props.append(enc("Nice", inherit.nice))
        if self.spec.limits.allowed_cpus is not None and "CPUAffinity" not in asked:
            # AllowedCPUs is a cpuset only where systemd manages cpusets (cgroup v2); the
            # affinity holds every process of the job to the same CPUs on every layout
            props.append(enc("CPUAffinity", properties.cpu_mask(self.spec.limits.allowed_cpus)))
        return props

    def working_directory(self) -> str:
        """The job's working directory; "-" (missing is not fatal) where it lies in the
        directory --isolate binds from the broker's fd: the ExecStopPost holder of a job whose
        broker restarted is set up without that bind (BY_BROKER_FD), and must still start.
        The job itself starts while the broker holds the fd: its directory is there."""
        spec = self.spec
        target = spec.scratch_target
        if spec.for_caller and spec.sandbox.isolate and target and BY_BROKER_FD and (
                spec.cwd == target or spec.cwd.startswith(target.rstrip("/") + "/")):
            return "-" + spec.cwd
        return spec.cwd

    def environment_property(self) -> tuple:
        """The environment in a file only root can read (envfile.py), not in the unit's
        properties, which every local user can read. Through the broker that is the rule: no
        file, no job. A root caller's own job without the directory gets Environment=."""
        assignments = self.environment()
        try:
            path = envfile.write(self.spec.unit_name, assignments)
        except OSError as exc:
            if self.spec.for_caller:
                raise LaunchError(f"cannot write the job's environment file: "
                                  f"{exc.strerror}") from None
            self.log.notice(f"the job's environment is in its unit's properties, readable by "
                            f"every local user: cannot write {envfile.DIRECTORY}: {exc.strerror}")
            return properties.encode("Environment", assignments)
        self.environment_file = path
        return properties.encode("EnvironmentFiles", [(path, True)])

    environment_file: str | None = None

    def forget_environment(self) -> None:
        """The start has completed (or failed): PID 1 has read the file, or never will."""
        if self.environment_file is not None or self.spec.for_caller:
            envfile.remove(self.spec.unit_name)
            self.environment_file = None

    def on_job_removed(self, result: str) -> None:
        super().on_job_removed(result)
        self.forget_environment()

    def environment(self) -> list[str]:
        """The job's environment, minus what systemd would refuse (it would refuse the unit)."""
        out = []
        for name, value in self.spec.environment.items():
            if name in PER_UNIT_VARIABLES:
                continue  # systemd sets the job unit's own
            if _valid_env_name(name) and _valid_env_value(value):
                out.append(f"{name}={value}")
            else:
                self.log.notice(f"environment variable {name!r} not passed: systemd does not "
                                "accept its name or value")
        return out

    def sandbox_properties(self) -> list:
        sandbox, enc = self.spec.sandbox, properties.encode
        props = []
        if sandbox.private_tmp:
            conflict = child.private_tmp_conflict(self.spec.cwd, self.spec.executable,
                                                  resolve=not self.spec.for_caller)
            if conflict:
                self.enforced["private_tmp"] = Verdict(OFF, conflict)
            elif self.spec.tmp_binds:  # HTCondor's scratch directory's tmp and var/tmp
                props.append(enc("BindPaths", [(source, target, BY_BROKER_FD, 0) for source, target
                                               in zip(self.spec.tmp_binds, TMP_DIRS)]))
            else:
                props.append(enc("PrivateTmp", True))
        if sandbox.private_users:
            props.append(enc("PrivateUsers", True))
        if sandbox.isolate:
            props += self.isolation_properties()
        if sandbox.protect_system:
            props.append(enc("ProtectSystem", sandbox.protect_system))
            if sandbox.protect_system == "strict":  # the job must still write its own sandbox
                props.append(enc("ReadWritePaths", self.writable_paths()))
        return props

    def writable_paths(self) -> list[str]:
        """What ProtectSystem=strict leaves writable: the job's working and own directories.
        Isolated through the broker, only the directory bound back: a writable execute root
        (a working directory there) would undo the isolation. For a caller, its own
        directory is the real path from its fd: no caller path is looked up."""
        spec = self.spec
        if spec.for_caller and spec.sandbox.isolate:
            return [spec.scratch_target] if spec.scratch_target else []
        rw = [spec.cwd]
        scratch = spec.scratch_target if spec.for_caller else \
            spec.environment.get("_CONDOR_SCRATCH_DIR")
        if scratch and scratch != spec.cwd and (spec.for_caller or os.path.isdir(scratch)):
            rw.append(scratch)
        return rw

    def isolation_properties(self) -> list:
        """--isolate's file system half: of the execute root (the parent of the job's own
        directory), only the job's own directory is there; other processes are hidden from
        /proc where systemd can (ProtectProc=invisible); the PID namespace is pidns.py's."""
        enc = properties.encode
        if self.spec.for_caller:  # the broker derived both from the caller's fd and root's policy
            assert self.spec.execute_root and self.spec.scratch_target and self.spec.scratch_bind
            return [enc("TemporaryFileSystem", [(self.spec.execute_root, "ro,mode=0755")]),
                    enc("BindPaths", [(self.spec.scratch_bind, self.spec.scratch_target,
                                       BY_BROKER_FD, 0)]),
                    enc("ProtectProc", "invisible")]
        scratch = os.path.normpath(self.spec.scratch_dir)
        root = os.path.dirname(scratch)
        if root == "/":
            raise UsageError(f"--isolate: the job's directory {scratch} is at the top of the "
                             "file system: there is no execute root to hide")
        return [enc("TemporaryFileSystem", [(root, "ro,mode=0755")]),
                enc("BindPaths", [(self.spec.scratch_bind or scratch, scratch, False, 0)]),
                enc("ProtectProc", "invisible")]

    def main_has_ended(self) -> bool:
        if self.sub_state in ("stop-sigterm", "stop-sigkill") and not self.leftovers_killed \
                and not self.stopping:
            # The main process is gone, so the job is over: as under HTCondor, what it left
            # behind dies at once. During a stop, it has the rest of the grace instead: systemd
            # sends it SIGTERM, and the stop-timeout kill() ends what is still there.
            self.leftovers_killed = True
            self.log.info("main process ended: killing the processes it left behind")
            self.kill_all_but_holder()
        return self.sub_state == "stop-post" or self.active_state in ("inactive", "failed")

    leftovers_killed = False

    def kill(self) -> None:
        if self.phase != "running":
            return
        self.log.notice("stop timeout reached: killing every process of the job")
        self.kill_all_but_holder()

    def kill_all_but_holder(self) -> None:
        """SIGKILL every process of the job, sparing the ExecStopPost holder: KillUnit cannot,
        and systemd may enter stop-post (starting the holder) at any moment. The cgroup's pids
        are read before ControlPID: a holder started before the read is known and spared, one
        started after it is not in the list. Whatever forks in between, systemd's own stop
        (KillSignal, then SIGKILL after TimeoutStopSec) catches."""
        if not self.cgroup:
            self.kill_unit(signal.SIGKILL)
            return
        self.thaw_to_kill()
        pids = cgroupfs.procs(self.layout, self.cgroup) or []
        holder = self.get_all(SERVICE_IFACE).get("ControlPID", 0)
        self.kill_pids(pids, {holder})

    def collect(self, release: bool = True) -> Usage:
        self.forget_environment()
        props = self.get_all(SERVICE_IFACE)
        code, status = props.get("ExecMainCode", 0), props.get("ExecMainStatus", 0)
        setup_failed = code == 0 or (code == CLD_EXITED and status in SETUP_STATUSES)
        if self.phase == "start-failed" or (self.phase == "ended-early" and setup_failed):
            if release:
                self.release_cgroup()
            raise self.start_failure(code, status)
        self.cgroup = props.get("ControlGroup") or self.cgroup
        if self.phase == "ended-early":  # it ran, briefly: systemd logs "Failed to start"
            self.log.info(f"started {self.spec.description} (and it ended at once)")
            if self.cgroup:
                self.verify_limits()
        acct = cgroupfs.Accounting()
        if self.cgroup and self.sub_state == "stop-post":
            acct = cgroupfs.read_accounting(self.layout, self.cgroup)
        else:
            self.log.warning(f"the unit's cgroup was gone before it could be read "
                             f"(state {self.active_state}/{self.sub_state})")
        started = props.get("ExecMainStartTimestampMonotonic", 0)
        exited = props.get("ExecMainExitTimestampMonotonic", 0)
        wall = (exited - started) / 1e6 if started and exited >= started else None
        peak = props.get("MemoryPeak") if acct.memory_peak_bytes is not None else None
        usage = self.make_usage(code, status, acct, wall, props.get("Result", ""), peak)
        if release:
            self.release_cgroup()
        return usage

    def release(self) -> None:
        self.release_cgroup()

    def finish(self) -> Usage:
        try:
            return super().finish()
        except BaseException:
            self.wait_removed()  # a start failure too: the unit goes before we report it
            raise

    def release_cgroup(self) -> None:
        """End the ExecStopPost sleeper; the unit then goes inactive and systemd collects it."""
        if self.created:
            self.removing = True
            self.kill_unit(signal.SIGKILL, who="control")

    def abort(self) -> None:
        """Kill everything at once. StopUnit would wait for the ExecStopPost sleeper (a unit in
        stop-post is 'already stopping'), i.e. for TimeoutStopSec: instead, let the job's
        processes die, then end the sleeper too."""
        try:
            self.kill_unit(signal.SIGKILL)
            self.wait_for(lambda: self.released or self.sub_state == "stop-post"
                          or self.active_state in ("inactive", "failed"), CLEANUP_TIMEOUT)
            self.release_cgroup()
            self.wait_for(lambda: self.released, CLEANUP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - best effort: the wrapper is failing already
            self.log.warning(f"cleaning up after an error: {exc}")


def pidns_source() -> str:
    """pidns.py, to run with -c (read once)."""
    if not _PIDNS_SOURCE:
        with open(PIDNS, encoding="utf-8") as f:
            _PIDNS_SOURCE.append(f.read())
    return _PIDNS_SOURCE[0]


_PIDNS_SOURCE: list[str] = []


def exec_argv(argv: tuple[str, ...]) -> list[str]:
    """systemd expands $VAR and $$ in ExecStart arguments at exec time: pass them literally."""
    return [arg.replace("$", "$$") for arg in argv]


def _valid_env_name(name: str) -> bool:
    return bool(name) and not name[0].isdigit() and all(
        c == "_" or (c.isascii() and c.isalnum()) for c in name)


def _valid_env_value(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return all(c >= " " or c in "\t\n" for c in value) and "\x7f" not in value

