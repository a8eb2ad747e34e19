"""SystemdBackend: each job is a transient unit started over D-Bus.

Lifecycle of a service job (the default)::

    StartTransientUnit(condor-job-<id>.service, Type=exec, ExecStopPost=-sleep infinity)
      JobRemoved(start, done)        -> running: read the limits back from the unit's cgroup
      SubState=stop-sigterm          -> the main process ended and left processes: SIGKILL them
      SubState=stop-post             -> everything the job ran is gone; the cgroup is still there,
                                        held by the ExecStopPost sleeper
    finish: GetAll (exit status, Result) -> read accounting from the cgroup
            -> SIGKILL the sleeper -> UnitRemoved (CollectMode=inactive-or-failed)

The sleeper exists because systemd removes a unit's cgroup as soon as it is empty, and with it
the accounting systemd 252 does not export (user/system CPU, peak memory, OOM kills). If the
wrapper dies, TimeoutStopSec ends the sleeper and systemd collects the unit anyway.

A scope job is forked by the wrapper, held until systemd has moved it into the new scope, then
released to exec. A sentinel process (all signals blocked) keeps the scope's cgroup alive until
the accounting has been read; leftovers are killed first, by pid.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time
from typing import Any, Callable

from ..errors import (
    BackendUnavailable,
    CommandNotExecutable,
    CondorSystemdError,
    LaunchError,
    UnitExists,
    UsageError,
)
from ..log import Log
from ..spec import JobSpec
from ..usage import IN_FORCE, NOT_SENT, OFF, UNKNOWN, Usage, Verdict
from . import STOPPING, cgroupfs, child, pidfd, properties
from .bus import BusError, Connection

UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
SCOPE_IFACE = "org.freedesktop.systemd1.Scope"
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
CLEANUP_TIMEOUT = 10.0
RECONNECT_TIMEOUT = 30.0  # a daemon-reexec takes about a second
# Variables systemd sets for each service itself. Inherited from a wrapper that runs inside
# another unit (the HTCondor starter's), Environment= would override the job unit's own values.
PER_UNIT_VARIABLES = frozenset((
    "INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
    "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "MAINPID", "MANAGERPID",
    "SYSTEMD_EXEC_PID", "TRIGGER_UNIT", "TRIGGER_PATH", "TRIGGER_TIMER_REALTIME_USEC",
    "TRIGGER_TIMER_MONOTONIC_USEC", "CREDENTIALS_DIRECTORY", "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY",
    "MEMORY_PRESSURE_WATCH", "MEMORY_PRESSURE_WRITE"))
SLEEP = next((p for p in ("/usr/bin/sleep", "/bin/sleep") if os.path.exists(p)), "/bin/sleep")
# rlimits the job inherits from the wrapper, as it would under HTCondor without us.
RLIMITS = {"CPU": resource.RLIMIT_CPU, "FSIZE": resource.RLIMIT_FSIZE,
           "DATA": resource.RLIMIT_DATA, "STACK": resource.RLIMIT_STACK,
           "CORE": resource.RLIMIT_CORE, "NOFILE": resource.RLIMIT_NOFILE,
           "AS": resource.RLIMIT_AS, "NPROC": resource.RLIMIT_NPROC,
           "MEMLOCK": resource.RLIMIT_MEMLOCK}
# ExecMainStatus values systemd uses when it fails to set up the job (systemd.exec(5)).
SETUP_FAILURES = {200: "cannot change to the working directory", 203: "cannot execute the command",
                  216: "unknown group", 217: "unknown user", 218: "cannot set up output",
                  226: "cannot set up namespaces (sandboxing)", 228: "cannot set up /tmp"}
SETUP_STATUSES = range(200, 244)  # EXIT_CHDIR .. EXIT_CREDENTIALS: systemd's own failures


def unit_object_path(unit: str) -> str:
    """sd_bus_path_encode(): every byte but [A-Za-z0-9] becomes _xx; so does a leading digit."""
    out = []
    for i, ch in enumerate(unit.encode()):
        c = chr(ch)
        if c.isascii() and c.isalnum() and not (i == 0 and c.isdigit()):
            out.append(c)
        else:
            out.append(f"_{ch:02x}")
    return "/org/freedesktop/systemd1/unit/" + "".join(out)


def _map_bus_error(exc: BusError, unit: str) -> CondorSystemdError:
    """systemd's D-Bus errors, in words an administrator can act on."""
    name = exc.name.rsplit(".", 1)[-1]
    if name == "UnitExists":
        return UnitExists(f"unit {unit} already exists (is job '{unit[11:].rsplit('.', 1)[0]}' "
                          "already running? choose another --name)")
    if name in ("AccessDenied", "InteractiveAuthorizationRequired"):
        return BackendUnavailable(f"not permitted to start system units: {exc.text or name} "
                                  "(run as root)")
    if name in ("InvalidArgs", "PropertyReadOnly"):
        return LaunchError(f"systemd refused the unit {unit}: {exc.text or name}")
    if not exc.name:
        return LaunchError(f"lost the connection to systemd: {exc.text}")
    return LaunchError(f"systemd failed for {unit}: {exc.text or exc.name}")


class SystemdBackend:
    name = "systemd"

    def __init__(self, conn: Connection, version: int) -> None:
        self.conn = conn
        self.version = version
        self.reason = f"systemd {version} answers on D-Bus"

    @classmethod
    def connect(cls) -> SystemdBackend:
        if not os.path.isdir("/run/systemd/system"):
            raise BackendUnavailable("systemd is not the init system here "
                                     "(no /run/systemd/system)")
        try:
            conn = Connection.open()
            (variant,) = conn.call("/org/freedesktop/systemd1", "org.freedesktop.DBus.Properties",
                                   "Get", "ss", ("org.freedesktop.systemd1.Manager", "Version"))
        except BusError as exc:
            raise BackendUnavailable(f"cannot reach systemd over D-Bus: {exc}") from None
        text = variant[1]
        digits = "".join(c for c in text.split(".")[0] if c.isdigit())
        return cls(conn, int(digits) if digits else 0)

    def start(self, spec: JobSpec, stdio: tuple[int, int, int], log: Log) -> ServiceJob | ScopeJob:
        job: ServiceJob | ScopeJob = (ScopeJob if spec.scope else ServiceJob)(self, spec, log)
        job.launch(stdio)
        return job


class SystemdJob:
    """What services and scopes share: properties, events, accounting, cleanup."""

    iface = SERVICE_IFACE

    def __init__(self, backend: SystemdBackend, spec: JobSpec, log: Log) -> None:
        self.conn = backend.conn
        self.version = backend.version
        self.backend_reason = backend.reason
        self.spec = spec
        self.log = log
        self.unit: str | None = spec.unit_name
        self.path = unit_object_path(spec.unit_name)
        self.conn.keep_signals({"JobRemoved", "UnitRemoved"}, {(self.path, UNIT_IFACE)})
        self.layout = cgroupfs.probe_layout()
        self.enforced: dict[str, Verdict] = {}
        self.phase = "starting"  # starting -> running -> ended | start-failed
        self.start_result = ""
        self.active_state = self.sub_state = ""
        self.cgroup: str | None = None
        self.created = False
        self.removing = False
        self.removed = False
        self.leftovers_killed = False
        self.stopping = False  # a forwarded SIGTERM/SIGINT: leftovers get the stop's grace
        self.was_reset = False
        self.launched_at = time.monotonic()
        self.ended_at: float | None = None
        log.unit, log.job_id = spec.unit_name, spec.job_id

    def launch(self, stdio: tuple[int, int, int]) -> None:
        raise NotImplementedError

    def finish(self) -> Usage:
        raise NotImplementedError

    # -- building the unit -------------------------------------------------------------------
    def common_properties(self) -> list[tuple[str, tuple[str, object]]]:
        spec, enc = self.spec, properties.encode
        props = [enc("Description", spec.description), enc("Slice", spec.slice),
                 enc("CollectMode", "inactive-or-failed"),
                 enc("TimeoutStopSec", int(spec.stop_timeout * 1e6))]
        props += [enc(n, True) for n in ("CPUAccounting", "MemoryAccounting", "IOAccounting",
                                         "TasksAccounting")]
        for field, name in properties.LIMIT_PROPERTY.items():
            value = getattr(spec.limits, field)
            if value is None:
                continue
            if field == "cpu_quota_percent":
                value = properties.cpu_quota_usec(value)
            elif field == "allowed_cpus":
                value = properties.cpu_mask(value)
            props.append(enc(name, value))
        for name, text in spec.properties:
            props.append(properties.encode_text(name, text))
        return props

    def filter_properties(self, props: list) -> list:
        """Drop what this manager (version) or unit type cannot take, and say so."""
        kept = []
        for dbus_name, variant in props:
            name = properties.name_for_dbus(dbus_name) or dbus_name
            prop = properties.TABLE.get(name)
            if prop and prop.since > self.version:
                self.note_dropped(name, f"systemd {self.version} lacks {name} "
                                        f"(added in {prop.since})")
            elif prop and prop.services_only and self.spec.scope:
                self.note_dropped(name, f"a scope has no {name} (it is a service setting)")
            else:
                kept.append((dbus_name, variant))
        return kept

    def note_dropped(self, name: str, why: str) -> None:
        self.enforced[_record_key(name)] = Verdict(NOT_SENT, why)
        self.log.notice(f"{name}: not sent: {why}")

    def start_unit(self, props: list) -> None:
        props = self.filter_properties(props)
        for _attempt in range(len(props) + 1):
            try:
                self.conn.call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                       (self.unit, "fail", props, []))
                self.created = True
                return
            except BusError as exc:
                unknown = _unknown_property(exc)
                if unknown and any(p[0] == unknown for p in props):
                    props = [p for p in props if p[0] != unknown]
                    name = properties.name_for_dbus(unknown) or unknown
                    self.note_dropped(name, f"systemd {self.version} does not accept "
                                            f"{name} here")
                    continue
                raise _map_bus_error(exc, self.spec.unit_name) from None
            except UnicodeEncodeError:
                raise UsageError("the command, its arguments or working directory are not valid "
                                 "UTF-8; systemd cannot pass them on") from None

    # -- events ------------------------------------------------------------------------------
    def timeout(self) -> float | None:
        return None  # everything arrives as a D-Bus signal: no polling

    def fds(self) -> list[int]:
        return [self.conn.fileno()]

    def poll(self) -> bool:
        # Handling one signal can make calls, during which more signals queue up: drain them all
        # here, or the wait loop would sleep on a socket whose news was already read.
        while messages := self._read_signals():
            for msg in messages:
                self.handle(msg)
        return self.has_ended()

    def _read_signals(self) -> list:
        try:
            return self.conn.read_signals()
        except BusError as exc:
            self.recover(exc)
            return self.conn.read_signals()

    def recover(self, exc: BusError) -> None:
        """After a lost connection (daemon-reexec): reconnect and catch up with the unit, whose
        signals were missed meanwhile. Any other error is mapped and raised."""
        if exc.name:
            raise _map_bus_error(exc, self.spec.unit_name) from None
        self.log.warning(f"lost the connection to systemd ({exc.text}); reconnecting")
        try:
            self.conn.reconnect(RECONNECT_TIMEOUT)
            props = self.conn.get_all(self.path, UNIT_IFACE)
        except BusError as again:
            raise _map_bus_error(again, self.spec.unit_name) from None
        self.active_state = props.get("ActiveState", "")
        self.sub_state = props.get("SubState", "")
        # The old manager sent UnitRemoved for every unit as it went down: ours is still here.
        self.removed = False
        if self.phase == "starting" and self.active_state in ("active", "deactivating"):
            self.on_job_removed("done")  # its JobRemoved went out while we were away
        self.log.info(f"reconnected; {self.unit} is {self.active_state}/{self.sub_state}")
        self.has_ended()

    def manager(self, method: str, signature: str, body: tuple) -> tuple:
        """A Manager call that survives one lost connection."""
        try:
            return self.conn.call_manager(method, signature, body)
        except BusError as exc:
            self.recover(exc)
            return self.conn.call_manager(method, signature, body)

    def handle(self, msg: Any) -> None:
        fields = msg.header.fields
        member = fields.get(_MEMBER)
        if member == "JobRemoved" and msg.body[2] == self.unit:
            self.on_job_removed(msg.body[3])
        elif member == "PropertiesChanged" and fields.get(_PATH) == self.path:
            iface, changed, _invalidated = msg.body
            if iface == UNIT_IFACE:
                self.active_state = changed.get("ActiveState", ("s", self.active_state))[1]
                self.sub_state = changed.get("SubState", ("s", self.sub_state))[1]
                self.has_ended()  # decide now: the verdict must not be undone by a stale signal
        elif member == "UnitRemoved" and msg.body[0] == self.unit and self.removing:
            # Only once we asked for it: `systemctl status <name>` before the unit existed
            # loads a stub of that name, whose garbage collection also says UnitRemoved.
            self.removed = True

    def on_job_removed(self, result: str) -> None:
        if self.phase != "starting":
            return
        if result != "done":
            self.phase, self.start_result = "start-failed", result
            return
        self.phase = "running"
        # No GetAll for the state: every PropertiesChanged since we connected was handled, in
        # order, so active_state/sub_state are current. The cgroup path follows from the names.
        self.cgroup = cgroupfs.unit_cgroup(self.layout, self.spec.slice, self.spec.unit_name) \
            or self.get_all(self.iface).get("ControlGroup") or None
        self.verify_limits()
        self.log.info(f"started {self.spec.description}")
        self.has_ended()

    def has_ended(self) -> bool:
        if self.phase == "starting" and self.sub_state == "stop-post":
            # The main process ended before the start job completed: the exec failed, or the
            # job was that quick. The start job would only complete once the unit is inactive,
            # i.e. after our ExecStopPost sleeper; finish() looks at the exit status instead.
            self.phase, self.start_result = "ended-early", "failed"
        if self.phase in ("start-failed", "ended-early"):
            return True
        if self.phase == "running" and self.main_has_ended():
            self.phase = "ended"
            self.ended_at = time.monotonic()
        return self.phase == "ended"

    def main_has_ended(self) -> bool:
        raise NotImplementedError

    def get_all(self, iface: str) -> dict:
        try:
            return self.conn.get_all(self.path, iface)
        except BusError as exc:
            self.recover(exc)
            try:
                return self.conn.get_all(self.path, iface)
            except BusError as again:
                raise _map_bus_error(again, self.spec.unit_name) from None

    def verify_limits(self) -> None:
        asked = {k: v for k, v in self.spec.limits.asked().items() if k not in self.enforced}
        if not asked:
            return
        if not self.cgroup:
            for key in asked:
                self.enforced[key] = Verdict(UNKNOWN, "systemd reported no cgroup for the unit")
            return
        actual = cgroupfs.read_limits(self.layout, self.cgroup)
        for key, verdict in cgroupfs.verify(asked, actual, self.layout).items():
            self.enforced[key] = verdict
            if not verdict.enforced:
                self.log.notice(f"{key}: {verdict.render()}")

    # -- control -----------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        if self.phase == "ended":
            return  # nothing of the job runs any more; only our cgroup holder would get it
        self.log.info(f"forwarding {signal.Signals(signum).name} to every process of the job")
        self.stopping = self.stopping or signum in STOPPING
        self.kill_unit(signum)

    def kill_pids(self, pids: list[int], spare: set[int]) -> int:
        """SIGKILL these pids but `spare`, each through a pidfd after checking that it is still
        in the unit's cgroup (a pid can be reused); returns how many were signalled."""
        killed = 0
        for pid in pids:
            if pid in spare:
                continue
            try:
                fd = pidfd.open_pidfd(pid)
            except OSError:
                continue  # gone already
            try:
                # (without a pidfd, the check and the kill are two steps: a pid recycled in
                # between is the price of an old kernel)
                with open(f"/proc/{pid}/cgroup") as f:
                    if f":{self.cgroup}\n" not in f.read() + "\n":
                        continue
                pidfd.send(pid, fd, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
            finally:
                if fd != pidfd.NONE:
                    os.close(fd)
        return killed

    def kill_unit(self, signum: int) -> None:
        if not self.created:
            return
        try:
            self.manager("KillUnit", "ssi", (self.unit, "all", int(signum)))
        except (BusError, CondorSystemdError) as exc:
            self.log.warning(f"KillUnit({signum}) failed: {exc}")

    def remove_unit(self) -> None:
        """Stop the unit and wait until systemd has dropped it."""
        if not self.created or self.removed:
            return
        self.removing = True
        try:
            self.conn.call_manager("StopUnit", "ss", (self.unit, "replace"))
        except BusError as exc:
            if not exc.name.endswith("NoSuchUnit"):
                self.log.warning(f"StopUnit failed: {exc}")
                self.reset_failed()
            return
        self.wait_removed()

    def wait_removed(self) -> None:
        """Wait for UnitRemoved; a failed unit that lingers is reset so that it goes too."""
        def gone() -> bool:
            if not self.removed and self.active_state == "failed" and not self.was_reset:
                self.was_reset = True  # CollectMode should do it; make sure, once
                self.reset_failed()
            return self.removed

        if self.created and not self.wait_for(gone, self.spec.stop_timeout + CLEANUP_TIMEOUT):
            self.log.warning(f"{self.unit} was not removed within the cleanup timeout")

    def wait_for(self, condition: Callable[[], bool], timeout: float | None) -> bool:
        """Handle signals until condition() holds. Signals may already be queued (they arrive
        during method calls), so handle those before sleeping on the socket."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            if condition():
                return True
            if self.conn.signals:
                continue  # condition() made calls, and signals came in meanwhile
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            select.select([self.conn.fileno()], [], [], left)

    def reset_failed(self) -> None:
        try:
            self.conn.call_manager("ResetFailedUnit", "s", (self.unit,))
        except BusError:
            pass

    def abort(self) -> None:
        try:
            self.kill_unit(signal.SIGKILL)
            self.remove_unit()
        except CondorSystemdError:
            pass

    # -- results -----------------------------------------------------------------------------
    def start_failure(self, code: int, status: int) -> LaunchError:
        what = None
        if code == CLD_EXITED and status in SETUP_STATUSES:
            what = SETUP_FAILURES.get(status, "could not set up the job's environment")
        detail = f" ({what}, status {status})" if what else ""
        if status == 203 and code == CLD_EXITED:
            return CommandNotExecutable(f"{self.spec.argv[0]}: systemd {what}")
        return LaunchError(f"systemd could not start {self.unit}: {self.start_result}{detail}; "
                           f"see journalctl -u {self.unit}")

    def make_usage(self, code: int, status: int, acct: cgroupfs.Accounting,
                   wall: float | None, result: str = "",
                   memory_peak_property: int | None = None) -> Usage:
        peak_source = cgroupfs.PEAK_FILES[self.layout.kind]
        if memory_peak_property not in (None, properties.UINT64_MAX):
            # systemd >= 256 exports the unit's memory.peak itself: the same kernel counter,
            # read by the manager that owns the cgroup
            acct = acct._replace(memory_peak_bytes=memory_peak_property)
            peak_source = "systemd's MemoryPeak property"
        exit_code = status if code == CLD_EXITED else None
        signum = status if code in (CLD_KILLED, CLD_DUMPED) else None
        oom = None if acct.oom_kills is None else acct.oom_kills > 0
        if result == "oom-kill":  # cgroup v2: systemd saw memory.events' oom_kill itself
            oom = True
        enforced = dict(self.enforced)
        for key, value in self.spec.sandbox.asked().items():
            if value and key not in enforced:
                enforced[key] = IN_FORCE  # systemd sets these up at exec or fails the start
        usage = Usage(
            unit=self.unit, backend="systemd", job_id=self.spec.job_id, exit_code=exit_code,
            signal=signum, oom_killed=oom, wall_seconds=None if wall is None else round(wall, 6),
            cpu_user_seconds=acct.cpu_user_seconds, cpu_system_seconds=acct.cpu_system_seconds,
            memory_peak_bytes=acct.memory_peak_bytes, io_read_bytes=acct.io_read_bytes,
            io_write_bytes=acct.io_write_bytes, tasks_peak=acct.tasks_peak,
            limits={**self.spec.limits.asked(), **self.spec.sandbox.asked()},
            enforced=enforced, cgroup_layout=self.layout.kind,
            cgroup_controllers=self.layout.controllers(), systemd_version=self.version,
            backend_reason=self.backend_reason,
            accuracy=_accuracy(acct, self.layout.kind, peak_source))
        outcome = f"exit code {exit_code}" if signum is None else f"signal {signum}"
        self.log.info(f"finished: {outcome}, cpu user {_fmt(acct.cpu_user_seconds)} s, "
                      f"system {_fmt(acct.cpu_system_seconds)} s, peak memory "
                      f"{acct.memory_peak_bytes} bytes{', OOM kill' if oom else ''}")
        return usage


class ServiceJob(SystemdJob):
    iface = SERVICE_IFACE

    def launch(self, stdio: tuple[int, int, int]) -> None:
        spec, enc = self.spec, properties.encode
        props = [enc("Type", "exec"),
                 enc("ExecStart", [(spec.executable, exec_argv(spec.argv), False)]),
                 enc("WorkingDirectory", spec.cwd),
                 enc("Environment", self.environment()),
                 enc("StandardInputFileDescriptor", stdio[0]),
                 enc("StandardOutputFileDescriptor", stdio[1]),
                 enc("StandardErrorFileDescriptor", stdio[2]),
                 # holds the cgroup (and its accounting) until finish() has read it
                 enc("ExecStopPost", [(SLEEP, ["sleep", "infinity"], True)]),
                 enc("IgnoreSIGPIPE", False),  # jobs expect SIGPIPE's default action
                 enc("UMask", _current_umask())]
        props += _rlimit_properties()
        if spec.user:
            props.append(enc("User", spec.user))
        if spec.group:
            props.append(enc("Group", spec.group))
        props += self.sandbox_properties()
        self.start_unit(props + self.common_properties())

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
            conflict = child.private_tmp_conflict(self.spec.cwd, self.spec.executable)
            if conflict:
                self.enforced["private_tmp"] = Verdict(OFF, conflict)
            else:
                props.append(enc("PrivateTmp", True))
        if sandbox.private_users:
            props.append(enc("PrivateUsers", True))
        if sandbox.protect_system:
            props.append(enc("ProtectSystem", sandbox.protect_system))
            if sandbox.protect_system == "strict":  # the job must still write its own sandbox
                rw = [self.spec.cwd]
                scratch = self.spec.environment.get("_CONDOR_SCRATCH_DIR")
                if scratch and scratch != self.spec.cwd and os.path.isdir(scratch):
                    rw.append(scratch)
                props.append(enc("ReadWritePaths", rw))
        return props

    def main_has_ended(self) -> bool:
        if self.sub_state in ("stop-sigterm", "stop-sigkill") and not self.leftovers_killed \
                and not self.stopping:
            # The main process is gone, so the job is over: as under HTCondor, what it left
            # behind dies at once. During a stop, it has the rest of the grace instead: systemd
            # sends it SIGTERM, and the runner's stop-timeout kill() ends what is still there.
            self.leftovers_killed = True
            self.log.info("main process ended: killing the processes it left behind")
            self.kill_all_but_holder()
        return self.sub_state == "stop-post" or self.active_state in ("inactive", "failed")

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
        pids = cgroupfs.procs(self.layout, self.cgroup) or []
        holder = self.get_all(SERVICE_IFACE).get("ControlPID", 0)
        self.kill_pids(pids, {holder})

    def finish(self) -> Usage:
        props = self.get_all(SERVICE_IFACE)
        code, status = props.get("ExecMainCode", 0), props.get("ExecMainStatus", 0)
        setup_failed = code == 0 or (code == CLD_EXITED and status in SETUP_STATUSES)
        if self.phase == "start-failed" or (self.phase == "ended-early" and setup_failed):
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
        self.release_cgroup()
        return usage

    def release_cgroup(self) -> None:
        """End the ExecStopPost sleeper; the unit then goes inactive and is collected."""
        if self.created:
            self.removing = True
            try:
                self.manager("KillUnit", "ssi", (self.unit, "control", signal.SIGKILL))
            except (BusError, CondorSystemdError):
                pass
        self.wait_removed()


class ScopeJob(SystemdJob):
    iface = SCOPE_IFACE

    def launch(self, stdio: tuple[int, int, int]) -> None:
        self.main_pid = self.sentinel_pid = None
        self.pidfd = pidfd.NONE
        self.status: int | None = None
        self.enforced["private_tmp"] = Verdict(NOT_SENT, "scopes cannot be sandboxed")
        hold_r, self.hold_w = os.pipe2(os.O_CLOEXEC)
        self.sentinel_pid = _fork_sentinel(hold_r)
        os.close(hold_r)
        hold_r = -1
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.main_pid = _fork_job(self.spec, stdio, go_r, err_w)
            os.close(err_w)
            err_w = -1
            self.pidfd = pidfd.open_pidfd(self.main_pid)
            props = [properties.encode("PIDs", [self.main_pid, self.sentinel_pid])]
            self.start_unit(props + self.common_properties())
            # the job may exec only once it is in the scope
            self.wait_for(lambda: self.phase != "starting", None)
            if self.phase == "start-failed":
                raise LaunchError(f"systemd could not start {self.unit}: {self.start_result}")
            os.write(go_w, b"x")
            os.close(go_w)
            go_w = -1
            failure = child.read_all(err_r)
            if failure:
                raise child.launch_error(self.spec.argv[0], failure)
        except BaseException:
            self.abort()
            raise
        finally:
            for fd in (go_r, go_w, err_r, err_w, hold_r):
                if fd >= 0:
                    os.close(fd)

    def fds(self) -> list[int]:
        # without a pidfd, the runner wakes on SIGCHLD instead
        return [self.conn.fileno()] + ([self.pidfd] if self.pidfd != pidfd.NONE else [])

    def main_has_ended(self) -> bool:
        if self.status is None and self.main_pid:
            pid, status = os.waitpid(self.main_pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def kill(self) -> None:
        """Stop-timeout escalation. KillUnit would take the sentinel too, and with it the
        scope's cgroup and accounting: kill everything else by pid instead."""
        if self.phase != "running" or not self.cgroup:
            return
        self.log.notice("stop timeout reached: killing every process of the job")
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL every process of the scope but the sentinel, by pidfd, until none is left."""
        assert self.cgroup is not None
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        while time.monotonic() < deadline:
            pids = [p for p in cgroupfs.procs(self.layout, self.cgroup) or []
                    if p != self.sentinel_pid]
            if not pids:
                return
            self.kill_pids(pids, set())
            time.sleep(0.001)  # let the kernel finish the kills before rereading cgroup.procs
        self.log.warning("processes survived SIGKILL; accounting may be incomplete")

    def finish(self) -> Usage:
        self.has_ended()
        acct = cgroupfs.Accounting()
        if self.cgroup:
            self.kill_leftovers()
            acct = cgroupfs.read_accounting(self.layout, self.cgroup)
        status = self.status or 0
        if os.WIFSIGNALED(status):
            code, value = CLD_KILLED, os.WTERMSIG(status)
        else:
            code, value = CLD_EXITED, os.WEXITSTATUS(status)
        wall = (self.ended_at or time.monotonic()) - self.launched_at
        usage = self.make_usage(code, value, acct, wall)
        self.release_sentinel()
        self.close_pidfd()
        self.remove_unit()
        return usage

    def close_pidfd(self) -> None:
        if self.pidfd != pidfd.NONE:
            os.close(self.pidfd)
            self.pidfd = pidfd.NONE

    def release_sentinel(self) -> None:
        if self.hold_w >= 0:
            os.close(self.hold_w)
            self.hold_w = -1
        if self.sentinel_pid:
            os.waitpid(self.sentinel_pid, 0)
            self.sentinel_pid = None

    def abort(self) -> None:
        for pid in (self.main_pid, self.sentinel_pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ChildProcessError, ProcessLookupError):
                    pass
        self.sentinel_pid = None
        self.close_pidfd()
        super().abort()


def exec_argv(argv: tuple[str, ...]) -> list[str]:
    """systemd expands $VAR and $$ in ExecStart arguments at exec time: pass them literally."""
    return [arg.replace("$", "$$") for arg in argv]


def _fork_job(spec: JobSpec, stdio: tuple[int, int, int], go_r: int, err_w: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    stage = "standard input/output"
    try:  # child: wait until the scope exists, then become the job
        child.dup_stdio(stdio)
        stage = "user/group"
        child.set_identity(spec.user, spec.group)
        stage = f"working directory {spec.cwd}"
        os.chdir(spec.cwd)
        child.reset_signals()
        if not os.read(go_r, 1):
            os._exit(125)
        stage = child.EXEC
        os.execve(spec.executable, list(spec.argv), dict(spec.environment))
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        child.report_failure(err_w, stage, exc)
    finally:
        os._exit(127)


def _fork_sentinel(hold_r: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # child: live, deaf to forwarded signals, until the wrapper closes the pipe
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        os.closerange(0, hold_r)  # hold nothing of the job's: no stdio, no pipes
        os.closerange(hold_r + 1, os.sysconf("SC_OPEN_MAX"))
        os.read(hold_r, 1)
    finally:
        os._exit(0)


def _unknown_property(exc: BusError) -> str | None:
    # systemd: "Cannot set property X, or unknown property." (org.freedesktop.DBus.Error.*)
    marker = "Cannot set property "
    if marker in exc.text:
        return exc.text.split(marker, 1)[1].split(",", 1)[0].strip()
    return None


def _record_key(name: str) -> str:
    """The usage record's key for a property: a Limits/Sandbox field when it is one."""
    for table in (properties.LIMIT_PROPERTY, properties.SANDBOX_PROPERTY):
        for key, prop_name in table.items():
            if prop_name == name:
                return key
    return name


def _valid_env_name(name: str) -> bool:
    return bool(name) and not name[0].isdigit() and all(
        c == "_" or (c.isascii() and c.isalnum()) for c in name)


def _valid_env_value(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return all(c >= " " or c in "\t\n" for c in value) and "\x7f" not in value


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rlimit_properties() -> list:
    props = []
    for name, which in RLIMITS.items():
        soft, hard = resource.getrlimit(which)
        unlimited = properties.UINT64_MAX
        props.append(properties.encode(f"Limit{name}", hard if hard >= 0 else unlimited))
        props.append(properties.encode(f"Limit{name}Soft", soft if soft >= 0 else unlimited))
    return props


def _accuracy(acct: cgroupfs.Accounting, layout: str, peak_source: str) -> dict[str, str]:
    """Everything measured comes from the unit's cgroup: exact, whatever the job did."""
    sources = {"cpu": "cpu.stat" if layout == "unified" else "cpu.stat or cpuacct.stat",
               "memory_peak": peak_source, "io": "io.stat", "tasks_peak": "pids.peak"}
    measured = {"cpu": acct.cpu_user_seconds, "memory_peak": acct.memory_peak_bytes,
                "io": acct.io_read_bytes, "tasks_peak": acct.tasks_peak}
    return {key: f"exact: the unit's cgroup ({sources[key]})" if value is not None
            else "unknown on this layout" for key, value in measured.items()}


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"


# jeepney header field keys, looked up once
from jeepney import HeaderFields as _HF  # noqa: E402

_MEMBER, _PATH = _HF.member, _HF.path
