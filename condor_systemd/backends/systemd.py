"""SystemdBackend: each job is a transient unit started over D-Bus (service.py, scope.py).

One backend owns one connection to the manager and drives any number of jobs over it: the
manager's signals are read here (:meth:`SystemdBackend.pump`) and handed to the job whose unit
they are about; a lost connection (`systemctl daemon-reexec`) is reopened once and every job
catches up with its unit (:meth:`SystemdBackend.recover`). The in-process wrapper has one job;
the broker has many.
"""

from __future__ import annotations

import os

from ..errors import BackendUnavailable, CondorSystemdError, LaunchError, UnitExists
from ..log import Log
from ..spec import JobSpec, Limits
from . import cgroupfs, properties
from .bus import BusError, Connection
from .scope import ScopeJob
from .service import SERVICE_IFACE, ServiceJob
from .unitjob import UNIT_IFACE, SystemdJob, unit_object_path

__all__ = ["SystemdBackend", "ServiceJob", "ScopeJob", "map_bus_error", "unit_object_path"]

RECONNECT_TIMEOUT = 30.0  # a daemon-reexec takes about a second
WANTED_SIGNALS = frozenset(("JobRemoved", "UnitRemoved"))


def map_bus_error(exc: BusError, unit: str) -> CondorSystemdError:
    """systemd's D-Bus errors, in words an administrator can act on."""
    name = exc.name.rsplit(".", 1)[-1]
    if name == "UnitExists":
        return UnitExists(f"unit {unit} already exists (is job '{unit[11:].rsplit('.', 1)[0]}' "
                          "already running? choose another --name)")
    if name in ("AccessDenied", "InteractiveAuthorizationRequired"):
        return BackendUnavailable(f"not permitted to start system units: {exc.text or name} "
                                  "(run as root, or through the broker: systemctl enable "
                                  "--now condor-systemd.socket)")
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
        self.layout = cgroupfs.probe_layout()
        self.jobs: dict[str, SystemdJob] = {}  # unit name -> job
        self.by_path: dict[str, SystemdJob] = {}
        conn.keep_signals(set(WANTED_SIGNALS), set())

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
        spec = spec.with_inherited_cpus()
        job: ServiceJob | ScopeJob = (ScopeJob if spec.scope else ServiceJob)(self, spec, log)
        try:
            job.launch(stdio)
        except BaseException:
            self.forget(job)
            raise
        return job

    # -- slices that group jobs (the broker's one per caller cgroup) ------------------------------
    def ensure_slice(self, name: str, description: str, limits: Limits,
                     cpu_weight: int | None = None,
                     io: tuple[tuple[str, str, int], ...] = ()) -> None:
        """Start the transient slice `name` with these limits (and I/O caps: device node,
        Limits field, value), or, if it is there already, set them on it. Raises LaunchError
        when systemd refuses either."""
        enc = properties.encode
        props = [enc("Description", description)]
        props += [enc(n, True) for n in ("CPUAccounting", "MemoryAccounting", "TasksAccounting")]
        props += properties.limit_properties(limits)
        if cpu_weight is not None:
            props.append(enc("CPUWeight", cpu_weight))
        by_property: dict[str, list[tuple[str, int]]] = {}
        for node, key, value in io:
            by_property.setdefault(properties.IO_DEVICE_PROPERTY[key], []).append((node, value))
        props += [enc(prop, caps) for prop, caps in by_property.items()]
        try:
            self.conn.call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                   (name, "fail", props, []))
            return
        except BusError as exc:
            if not exc.name.endswith(".UnitExists"):
                raise map_bus_error(exc, name) from None
        try:  # ours from an earlier job of the same caller: its caps as they are now
            self.conn.call_manager("SetUnitProperties", "sba(sv)", (name, True, props))
        except BusError as exc:
            raise map_bus_error(exc, name) from None

    def stop_slice(self, name: str) -> None:
        """Its last job is gone: let the slice go (best effort; an empty slice costs little)."""
        try:
            self.conn.call_manager("StopUnit", "ss", (name, "fail"))
        except BusError:
            pass

    def units_in_slices(self, pattern: str, slice_prefix: str) -> list[str]:
        """Loaded units matching the glob whose slice's name starts with slice_prefix."""
        try:
            (units,) = self.conn.call_manager("ListUnitsByPatterns", "asas", ([], [pattern]))
        except BusError:
            return []
        found = []
        for unit in units:
            name, path = unit[0], unit[6]
            try:
                (variant,) = self.conn.call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                            ("org.freedesktop.systemd1.Service", "Slice"))
            except BusError:
                continue
            if str(variant[1]).startswith(slice_prefix):
                found.append(name)
        return found

    def kill_unit_by_name(self, name: str) -> None:
        """SIGKILL to every process of a unit no job object answers for (ExecStopPost's holder
        too: the unit then goes, CollectMode=inactive-or-failed)."""
        try:
            self.conn.call_manager("KillUnit", "ssi", (name, "all", 9))
        except BusError:
            pass

    def release_ended(self, name: str) -> None:
        """A unit whose job has ended and been collected, held only by its ExecStopPost
        holder: end the holder (its control process), and systemd lets the unit go. A unit
        in any other state is left alone."""
        try:
            props = self.conn.get_all(unit_object_path(name), UNIT_IFACE)
            if props.get("SubState") == "stop-post":
                self.conn.call_manager("KillUnit", "ssi", (name, "control", 9))
        except BusError:
            pass

    def fd_store_max(self, pid: int) -> int | None:
        """FileDescriptorStoreMax= of the service process pid runs in; None if unknown."""
        try:
            (path,) = self.conn.call_manager("GetUnitByPID", "u", (pid,))
            value = self.conn.get_all(path, SERVICE_IFACE).get("FileDescriptorStoreMax")
        except BusError:
            return None
        return int(value) if isinstance(value, int) else None

    def adopt(self, spec: JobSpec, log: Log, phase: str, cgroup: str | None,
              enforced: dict) -> ServiceJob | ScopeJob:
        """A job another process started (a broker before its restart), as it stands now.
        Its ``created`` is False when systemd no longer has the unit."""
        job: ServiceJob | ScopeJob = (ScopeJob if spec.scope else ServiceJob)(self, spec, log)
        job.created = True
        job.enforced.update(enforced)
        if phase == "running":
            job.phase, job.cgroup = "running", cgroup
        job.catch_up("taken back after a restart of the broker")
        if job.load_state == "not-found":
            job.created = False
            self.forget(job)
        return job

    # -- routing the manager's signals to jobs -------------------------------------------------
    def register(self, job: SystemdJob) -> None:
        assert job.unit is not None
        self.jobs[job.unit] = job
        self.by_path[job.path] = job
        self.conn.watch(job.path, UNIT_IFACE)

    def forget(self, job: SystemdJob) -> None:
        if job.unit is not None and self.jobs.get(job.unit) is job:
            del self.jobs[job.unit]
            del self.by_path[job.path]
            self.conn.unwatch(job.path, UNIT_IFACE)

    def pump(self) -> list[SystemdJob]:
        """Hand every signal received so far to its job; the jobs that got news. Handling one
        can make calls, during which more arrive: drain them all, or the caller would sleep on
        a socket whose news was already read."""
        touched: dict[int, SystemdJob] = {}
        while messages := self._read_signals():
            for msg in messages:
                job = self._job_for(msg)
                if job is not None:
                    job.handle(msg)
                    touched[id(job)] = job
        return list(touched.values())

    def _job_for(self, msg: object) -> SystemdJob | None:
        fields, body = msg.header.fields, msg.body  # type: ignore[attr-defined]
        member = fields.get(_MEMBER)
        if member == "JobRemoved":
            return self.jobs.get(body[2])
        if member == "UnitRemoved":
            return self.jobs.get(body[0])
        if member == "PropertiesChanged":
            return self.by_path.get(fields.get(_PATH))
        return None

    def _read_signals(self) -> list:
        try:
            return self.conn.read_signals()
        except BusError as exc:
            self.recover(exc, "")
            return self.conn.read_signals()

    def recover(self, exc: BusError, unit: str) -> None:
        """After a lost connection (daemon-reexec): reconnect, and every job catches up with
        its unit. Any other error is mapped and raised."""
        if exc.name:
            raise map_bus_error(exc, unit) from None
        for job in self.jobs.values():
            job.log.warning(f"lost the connection to systemd ({exc.text}); reconnecting")
        try:
            self.conn.reconnect(RECONNECT_TIMEOUT)
        except BusError as again:
            raise map_bus_error(again, unit) from None
        for job in list(self.jobs.values()):
            job.catch_up()


# jeepney header field keys, looked up once
from jeepney import HeaderFields as _HF  # noqa: E402

_MEMBER, _PATH = _HF.member, _HF.path
