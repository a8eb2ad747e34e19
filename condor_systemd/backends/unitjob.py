"""What service and scope jobs share: the unit's properties, its events, accounting, clean-up.

A job is driven by events: the backend reads the manager's signals and hands each job its own
(:meth:`SystemdJob.handle`), so one process can drive many jobs over one connection (the broker)
or one job (the in-process wrapper, whose :meth:`poll` asks the backend to pump). A job's phase:

    starting -> running -> ended           the main process ended: collect() the record
             -> start-failed | ended-early  the start job failed, or the main process ended
                                            before it completed (collect() tells which)

After collect(), the unit is on its way out; :attr:`released` says when systemd has dropped it.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import CondorSystemdError, LaunchError, UsageError
from ..log import Log
from ..spec import JobSpec
from ..usage import (
    AFFINITY,
    APPROXIMATE,
    IN_FORCE,
    NOT_ENFORCED,
    NOT_IN_FORCE,
    NOT_SENT,
    UNKNOWN,
    Usage,
    Verdict,
)
from . import STOPPING, cgroupfs, pidfd, properties, record
from .bus import BusError

if TYPE_CHECKING:
    from ..blockdev import Disk
    from .systemd import SystemdBackend

UNIT_IFACE = "org.freedesktop.systemd1.Unit"
CLEANUP_TIMEOUT = 10.0
HOLD_GRACE = 60.0  # seconds the unit waits, past --stop-timeout, to be read and let go


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


class SystemdJob:
    iface = ""  # the unit type's D-Bus interface

    def __init__(self, backend: SystemdBackend, spec: JobSpec, log: Log) -> None:
        self.backend = backend
        self.conn = backend.conn
        self.version = backend.version
        self.backend_reason = backend.reason
        self.spec = spec
        self.log = log
        self.unit: str | None = spec.unit_name
        self.path = unit_object_path(spec.unit_name)
        self.layout = backend.layout
        self.enforced: dict[str, Verdict] = {}
        self.phase = "starting"
        self.start_result = ""
        self.active_state = self.sub_state = ""
        self.cgroup: str | None = None
        self.load_state = ""
        self.created = False
        self.removing = False
        self.removed = False
        self.was_reset = False
        self.stopping = False  # a forwarded SIGTERM/SIGINT: leftovers get the stop's grace
        self.launched_at = time.monotonic()
        self.ended_at: float | None = None
        log.unit, log.job_id = spec.unit_name, spec.job_id
        backend.register(self)

    # -- to be provided by each unit type ------------------------------------------------------
    def launch(self, stdio: tuple[int, int, int]) -> None:
        raise NotImplementedError

    def main_has_ended(self) -> bool:
        raise NotImplementedError

    def collect(self, release: bool = True) -> Usage:
        """Kill leftovers, read accounting and (release) let the unit go; the job's record.
        With release=False the unit, and its exit status, stay until release(): the broker
        keeps the reply first, so that a broker killed in between loses nothing."""
        raise NotImplementedError

    def release(self) -> None:
        """Let the unit go after collect(release=False)."""

    def kill(self) -> None:
        raise NotImplementedError

    # -- building the unit -------------------------------------------------------------------
    def common_properties(self) -> list[tuple[str, tuple[str, object]]]:
        spec, enc = self.spec, properties.encode
        props = [enc("Description", spec.description), enc("Slice", spec.slice),
                 enc("CollectMode", "inactive-or-failed"),
                 # systemd's own stop timeout is only the backstop: the wrapper or the broker
                 # kills what is left at --stop-timeout itself. It also bounds the ExecStopPost
                 # holder that keeps the cgroup (and the exit status) until it has been read,
                 # which a broker busy with many jobs ending at once may take a while to do.
                 enc("TimeoutStopSec", int((spec.stop_timeout + HOLD_GRACE) * 1e6))]
        props += [enc(n, True) for n in ("CPUAccounting", "MemoryAccounting", "IOAccounting",
                                         "TasksAccounting")]
        props += properties.limit_properties(spec.limits)
        for name, text in spec.properties:
            props.append(properties.encode_text(name, text))
        if spec.log_fields:
            # journal fields are bytes to systemd: "aay", one FIELD=value each
            props.append(enc("LogExtraFields", [f.encode() for f in spec.log_fields]))
        return props + self.device_props + self.io_props

    io_props: list = []
    io_disk: Disk | None = None

    def prepare_io(self) -> None:
        """The I/O caps go on the whole disk under the job's directory (blockdev.py); where
        there is none, the record says so. Through the broker the directory is the fd its
        caller opened (no path is looked up on a caller's behalf)."""
        from .. import blockdev

        asked = {key: getattr(self.spec.limits, key) for key in properties.IO_DEVICE_PROPERTY}
        asked = {key: value for key, value in asked.items() if value is not None}
        if not asked:
            return
        where = self.spec.scratch_bind or self.spec.scratch_dir
        if self.spec.for_caller and not self.spec.scratch_bind:
            # a caller's path is never looked up (a hung file system would stall the broker)
            disk, why = None, "the caller sent no directory of its own (an fd) to find its disk"
        else:
            try:
                disk, why = blockdev.whole_disk(os.stat(where).st_dev)
            except OSError as exc:
                disk, why = None, f"cannot stat the job's directory: {exc.strerror}"
        if disk is None:
            for key in asked:
                self.enforced[key] = Verdict(NOT_ENFORCED, why)
                self.log.notice(f"{key}: not enforced: {why}")
            return
        self.io_disk = disk
        self.io_props = [properties.encode(properties.IO_DEVICE_PROPERTY[key], [(disk.node, value)])
                         for key, value in asked.items()]
        self.log.info(f"I/O caps on {disk.node} ({disk.number}), the disk of {where}")

    device_props: list = []
    gpu_nodes: list[str] = []

    def prepare_devices(self) -> None:
        """GPUs as assigned (devices.py), decided before anything is created: an id that is
        no GPU here, or one the job's user could not open anyway, refuses the job."""
        from .. import devices

        sandbox = self.spec.sandbox
        present = devices.node_gpus()
        if not sandbox.gpus and not present:  # no GPU given, none here: nothing to hide
            self.spec = self.spec._replace(sandbox=sandbox._replace(gpus=None))
            return
        nodes = [devices.resolve(gpu) for gpu in sandbox.gpus or ()]
        uid, gids = devices.job_identity(self.spec.user, self.spec.group)
        for gpu, node in zip(sandbox.gpus or (), nodes):
            if not devices.may_open(node, uid, gids):
                raise LaunchError(f"GPU '{gpu}': the job's user may not open {node}")
        if sandbox.gpus is None:  # a GPU node, and no GPU given: none
            self.spec = self.spec._replace(sandbox=sandbox._replace(gpus=()))
        self.gpu_nodes = nodes
        enc = properties.encode
        self.device_props = [enc("DevicePolicy", "closed"),
                             enc("DeviceAllow", devices.allow_list(nodes))]
        hidden = [p for p in present if p not in nodes]
        self.log.info(f"GPUs: {', '.join(nodes) or 'none'} (hidden: {', '.join(hidden) or '-'})")

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
        self.enforced[properties.record_key(name)] = Verdict(NOT_SENT, why)
        self.log.notice(f"{name}: not sent: {why}")

    def start_unit(self, props: list) -> None:
        from .systemd import map_bus_error

        props = self.filter_properties(props)
        for _attempt in range(len(props) + 1):
            try:
                self.conn.call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                       (self.unit, "fail", props, []))
                self.created = True
                return
            except BusError as exc:
                unknown = properties.refused_by(exc.text)
                if unknown and any(p[0] == unknown for p in props):
                    props = [p for p in props if p[0] != unknown]
                    name = properties.name_for_dbus(unknown) or unknown
                    self.note_dropped(name, f"systemd {self.version} does not accept "
                                            f"{name} here")
                    continue
                raise map_bus_error(exc, self.spec.unit_name) from None
            except UnicodeEncodeError:
                raise UsageError("the command, its arguments or working directory are not valid "
                                 "UTF-8; systemd cannot pass them on") from None

    # -- events ------------------------------------------------------------------------------
    def timeout(self) -> float | None:
        return None  # everything arrives as a D-Bus signal: no polling

    def fds(self) -> list[int]:
        return [self.conn.fileno()]

    def poll(self) -> bool:
        self.backend.pump()
        return self.has_ended()

    def handle(self, msg: Any) -> None:
        """One of the manager's signals about this job's unit (the backend routes them)."""
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
            self.backend.forget(self)

    def catch_up(self, why: str = "reconnected") -> None:
        """After a reconnect (daemon-reexec), or a restart of the broker: the unit's signals
        were missed meanwhile."""
        props = self.get_all(UNIT_IFACE)
        self.active_state = props.get("ActiveState", "")
        self.sub_state = props.get("SubState", "")
        self.load_state = props.get("LoadState", "")
        # The old manager sent UnitRemoved for every unit as it went down: ours is still here
        # (unless LoadState says it is gone).
        self.removed = props.get("LoadState") == "not-found" and self.removing
        if self.phase == "starting" and self.active_state in ("active", "deactivating"):
            self.on_job_removed("done")  # its JobRemoved went out while we were away
        self.log.info(f"{why}; {self.unit} is {self.active_state}/{self.sub_state}")
        self.has_ended()

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
        self.verify_devices()
        self.verify_isolation()
        self.log.info(f"started {self.spec.description}")
        self.has_ended()

    def has_ended(self) -> bool:
        if self.phase == "starting" and self.sub_state == "stop-post":
            # The main process ended before the start job completed: the exec failed, or the
            # job was that quick. The start job would only complete once the unit is inactive,
            # i.e. after our ExecStopPost sleeper; collect() looks at the exit status instead.
            self.phase, self.start_result = "ended-early", "failed"
        if self.phase in ("start-failed", "ended-early"):
            return True
        if self.phase == "running" and self.main_has_ended():
            self.phase = "ended"
            self.ended_at = time.monotonic()
        return self.phase == "ended"

    @property
    def released(self) -> bool:
        """systemd has dropped the unit (or never made it): nothing of the job is left."""
        return self.removed or not self.created

    # -- calls that survive a daemon-reexec ------------------------------------------------------
    def manager(self, method: str, signature: str, body: tuple) -> tuple:
        try:
            return self.conn.call_manager(method, signature, body)
        except BusError as exc:
            self.backend.recover(exc, self.spec.unit_name)
            return self.conn.call_manager(method, signature, body)

    def get_all(self, iface: str) -> dict:
        from .systemd import map_bus_error

        try:
            return self.conn.get_all(self.path, iface)
        except BusError as exc:
            self.backend.recover(exc, self.spec.unit_name)
            try:
                return self.conn.get_all(self.path, iface)
            except BusError as again:
                raise map_bus_error(again, self.spec.unit_name) from None

    def verify_limits(self) -> None:
        asked = {k: v for k, v in self.spec.limits.asked().items() if k not in self.enforced}
        if not asked:
            return
        if not self.cgroup:
            for key in asked:
                self.enforced[key] = Verdict(UNKNOWN, "systemd reported no cgroup for the unit")
            return
        actual = cgroupfs.read_limits(self.layout, self.cgroup,
                                      self.io_disk.number if self.io_disk else None)
        for key, verdict in cgroupfs.verify(asked, actual, self.layout).items():
            if key == "allowed_cpus" and "allowed_cpus" not in actual:
                verdict = self.affinity_verdict(str(asked[key]))  # no cpuset: the affinity
            self.enforced[key] = verdict
            if not verdict.enforced:
                self.log.notice(f"{key}: {verdict.render()}")

    def verify_devices(self) -> None:
        """The GPUs' filter, read back where the kernel shows it (cgroup v1 devices.list)."""
        if not self.device_props or "gpus" in self.enforced:
            return
        rules = cgroupfs.device_rules(self.layout, self.cgroup) if self.cgroup else None
        if rules is None:
            self.enforced["gpus"] = Verdict(
                UNKNOWN, "DevicePolicy=closed: the kernel holds cgroup v2 device filters as "
                         "BPF programs, which it does not show back as rules")
            return
        from .. import devices

        wanted = {devices.rule_of(node) for node in self.gpu_nodes}
        if "a *:* rwm" in rules or not wanted <= set(rules) or any(
                devices.is_gpu_rule(rule, self.gpu_nodes) and rule not in wanted
                and not devices.is_control_rule(rule) for rule in rules):
            self.enforced["gpus"] = Verdict(NOT_IN_FORCE, "devices.list has " + "; ".join(
                r for r in rules if r.startswith("a ") or devices.is_gpu_rule(r, self.gpu_nodes)
            )[:300])
        else:
            self.enforced["gpus"] = IN_FORCE

    def verify_isolation(self) -> None:
        """--isolate: the job's processes are in a PID namespace below ours, as /proc says
        (the unit is started once pidns.py has made it: Type=notify)."""
        if not self.spec.sandbox.isolate or "isolate" in self.enforced:
            return
        ours = cgroupfs.pid_namespace_depth("self") or 0
        depths = [d for pid in self.job_pids()
                  if (d := cgroupfs.pid_namespace_depth(pid)) is not None]
        if any(d > ours for d in depths):
            self.enforced["isolate"] = IN_FORCE
        elif depths:
            self.enforced["isolate"] = Verdict(NOT_IN_FORCE, "no process of the job is in a "
                                                             "PID namespace of its own")
        else:
            self.enforced["isolate"] = Verdict(UNKNOWN, "the job's processes ended before "
                                                        "their PID namespace could be read")

    def job_pids(self) -> list[int]:
        """The processes of the job now (the unit's, but ours that only hold it)."""
        if not self.cgroup:
            return []
        return cgroupfs.procs(self.layout, self.cgroup) or []

    def affinity_verdict(self, asked: str) -> Verdict:
        """allowed_cpus where systemd sets no cpuset: CPUAffinity= (services) or
        sched_setaffinity (scopes) holds each process of the job, as /proc says."""
        from ..spec import format_cpu_list

        seen = {pid: cpus for pid in self.job_pids()
                if (cpus := cgroupfs.cpus_allowed(pid)) is not None}
        wrong = {pid: format_cpu_list(cpus) for pid, cpus in seen.items()
                 if format_cpu_list(cpus) != asked}
        if wrong:
            pid, got = next(iter(wrong.items()))
            return Verdict(NOT_IN_FORCE, f"asked {asked}, process {pid} of the job may run on "
                                         f"CPUs {got}")
        if not seen:
            return Verdict(UNKNOWN, "the job's processes ended before their CPU affinity could "
                                    "be read")
        return Verdict(APPROXIMATE, AFFINITY + " (systemd manages cpusets only on cgroup v2)")

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

    def freeze(self, on: bool, why: str = "") -> None:
        """Hold or resume every process of the job (its caller was suspended or resumed):
        SIGSTOP/SIGCONT to all of them, never systemd's freezer. A process the job's owner
        kills while the unit is frozen ends the job in a frozen cgroup, where the ExecStopPost
        holder systemd then starts freezes before its exec; systemd >= 255 waits for that exec,
        and PID 1 hangs for everybody. A stopped job dies of SIGKILL all the same, and the
        holder runs."""
        self.frozen = on
        self.log.info(f"{why or ('the caller was ' + ('suspended' if on else 'resumed'))}: "
                      f"SIG{'STOP' if on else 'CONT'} to every process of the job")
        self.kill_unit(signal.SIGSTOP if on else signal.SIGCONT)

    frozen = False

    def thaw_to_kill(self) -> None:
        """A held job is resumed before it is killed: a stopped process acts on no signal but
        SIGKILL, and the stop's SIGTERM must reach the job's handlers (its grace)."""
        if self.frozen:
            self.freeze(False, "thawed, to be killed")

    def kill_unit(self, signum: int, who: str = "all") -> None:
        if not self.created:
            return
        if signum not in (signal.SIGSTOP, signal.SIGCONT):
            self.thaw_to_kill()
        try:
            self.manager("KillUnit", "ssi", (self.unit, who, int(signum)))
        except (BusError, CondorSystemdError) as exc:
            self.log.warning(f"KillUnit({who}, {signum}) failed: {exc}")

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
            self.backend.forget(self)
            return
        self.wait_removed()

    def wait_removed(self) -> None:
        """In-process: wait until systemd has dropped the unit."""
        if not self.wait_for(self.gone, self.spec.stop_timeout + CLEANUP_TIMEOUT):
            self.log.warning(f"{self.unit} was not removed within the cleanup timeout")
            self.backend.forget(self)

    def gone(self) -> bool:
        """Released; a failed unit still there once its news is read is reset, so that it
        goes (CollectMode should see to it; make sure, once)."""
        if not self.released and self.active_state == "failed" and not self.was_reset:
            self.was_reset = True
            self.reset_failed()
        return self.released

    def wait_for(self, condition: Callable[[], bool], timeout: float | None) -> bool:
        """In-process: handle signals until condition() holds. Signals may already be queued
        (they arrive during method calls), so handle those before sleeping on the socket."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.backend.pump()
            self.has_ended()
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

    def finish(self) -> Usage:
        """In-process: the record, once the unit is gone."""
        usage = self.collect()
        self.wait_removed()
        return usage

    def abort(self) -> None:
        try:
            self.kill_unit(signal.SIGKILL)
            self.remove_unit()
        except CondorSystemdError:
            pass

    # -- results -----------------------------------------------------------------------------
    def start_failure(self, code: int, status: int) -> LaunchError:
        return record.start_failure(self, code, status)

    def make_usage(self, code: int, status: int, acct: cgroupfs.Accounting,
                   wall: float | None, result: str = "",
                   memory_peak_property: int | None = None) -> Usage:
        return record.make_usage(self, code, status, acct, wall, result, memory_peak_property)


# jeepney header field keys, looked up once
from jeepney import HeaderFields as _HF  # noqa: E402

_MEMBER, _PATH = _HF.member, _HF.path
