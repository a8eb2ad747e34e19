"""A scripted systemd manager for unit tests, behind the API of bus.Connection.

``SystemdBackend(conn, version)`` takes any object with Connection's API; :class:`FakeConnection`
is one, wired to a :class:`FakeSystemd` that behaves like systemd 252's manager running ONE
transient service unit (the transport seam, as httpx's MockTransport is for httpx clients).
Tests script what the job does (its main process exits, leaves processes behind, ignores SIGTERM)
and what happens to systemd (daemon-reexec, a lost connection, refusals), then assert the calls
the job made (``fake.calls``) and the usage record or error it produced.

The behaviour is systemd's, read from its source (src/core/*.c; the v252 forms unless said),
not copied from condor_systemd:

* A method's reply goes out before any signal it causes: the manager queues unit and job changes
  and sends them from its D-Bus queue at the end of an event-loop iteration
  (manager.c manager_dispatch_dbus_queue); queued jobs run in a later iteration (run queue).
* Property changes coalesce per iteration, and each goes out as PropertiesChanged for the
  type's interface (org.freedesktop.systemd1.Service) first, then for ...Unit
  (dbus-unit.c send_changed_signal). A unit's pending change is flushed before its JobRemoved
  (dbus-job.c bus_job_send_removed_signal) and before its UnitRemoved
  (dbus-unit.c bus_unit_send_removed_signal, from unit.c unit_free).
* A start job ends "done" when the unit becomes active; if the unit ends up inactive/failed
  instead, "done"/"failed"; activating -> deactivating leaves it pending (unit.c unit_process_job).
  Type=exec: the unit becomes active only once execve() succeeded (service.c
  service_dispatch_exec_io); a failed exec (203) or chdir (200) is just the main process exiting.
* The main process ending: service_sigchld_event -> service_enter_running ->
  service_enter_signal(STOP_SIGTERM): SIGTERM to every process left in the cgroup
  (KillMode=control-group); if any was signalled the unit waits in stop-sigterm with the
  TimeoutStopSec timer, else it goes on to stop-sigkill and stop-post at once. ExecStopPost runs
  as the control process (stop-post). The cgroup becoming empty in stop-sigterm/stop-sigkill
  enters stop-post (service_notify_cgroup_empty_event); the main process dying in
  stop-sigterm/stop-sigkill enters stop-post even if others remain (service_sigchld_event). The
  control process ending in stop-post -> final-sigterm -> dead/failed (service_enter_dead).
  Timeouts: stop-sigterm -> stop-sigkill -> stop-post, stop-post -> final-sigterm ... with
  Result=timeout (service_dispatch_timer).
* Result: the main process's exit is clean for status 0 and for SIGHUP/SIGINT/SIGTERM/SIGPIPE
  (exit-status.c is_clean_exit, EXIT_CLEAN_DAEMON); else exit-code / signal / core-dump. The
  ExecStopPost '-' prefix makes its own failure count as success. The unit ends "failed" when
  Result is not success, else "inactive".
* StopUnit on a unit already stopping (stop-sigterm ... final-sigkill, including stop-post):
  "already on it", the stop job waits (service.c service_stop).
* KillUnit(who, signal): "control" without a control process -> NoSuchProcess "No control
  process to kill"; "all" signals the control and main processes and every other process of the
  cgroup (unit.c unit_kill_common). A unit that is not loaded -> NoSuchUnit "Unit X not loaded."
  (dbus-manager.c method_kill_unit, bus_get_unit_by_name).
* StartTransientUnit: a name already loaded -> UnitExists "Unit X was already loaded or has a
  fragment file." (dbus-manager.c transient_unit_from_message); a property the manager does not
  know -> PropertyReadOnly "Cannot set property X, or unknown property." (dbus-unit.c
  bus_unit_set_properties); a bad value -> InvalidArgs.
* A Properties call on a unit path loads that unit (a stub, LoadState=not-found) and the GC
  drops it again: UnitNew + UnitRemoved (manager.c manager_load_unit_from_dbus_path).
* Garbage collection: a unit with no job, inactive (or failed with
  CollectMode=inactive-or-failed) is freed: UnitRemoved (unit.c unit_may_gc). Its cgroup goes
  when it stops (unit_prune_cgroup): the accounting files vanish with it.
* daemon-reexec: the old manager frees every unit as it goes down (unit_free -> UnitRemoved for
  each), then closes the connection; the new one deserializes the units with their state.
* cgroup files: cpu.max = CPUQuotaPerSecUSec x 100 ms period / 1 s; memory.max = MemoryMax;
  pids.max = TasksMax; cpuset.cpus = AllowedCPUs as a list; io.weight "default N"
  (cgroup.c cgroup_context_apply; the v1 equivalents on hybrid layouts).

Processes are simulated (a pid above the kernel's PID_MAX_LIMIT, which can never exist, so a
pidfd kill of it fails harmlessly; its reactions to signals are scripted) or real children of the
test (``sleep``), for the paths where the job kills pids itself through pidfds. Such a kill
checks /proc/PID/cgroup, which a test cannot fake without root, so for those tests the fake
unit's ControlGroup is the test's own cgroup (``unit_in_test_cgroup=True``): the job then asks
systemd for ControlGroup instead of finding /condor.slice/<unit> in the fake tree. The job only
ever kills the pids listed in the fake cgroup.procs: the test's own children.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, NamedTuple

from jeepney import DBusAddress, Message, new_signal
from jeepney.wrappers import new_method_call, new_method_return

from condor_systemd.backends.bus import BusError
from condor_systemd.log import Log
from condor_systemd.spec import JobSpec, Limits

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
PRIVATE_SOCKET = "/run/systemd/private"

UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
NO_SUCH_PROCESS = "org.freedesktop.systemd1.NoSuchProcess"
PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
PID_MAX_LIMIT = 2**22  # the kernel's ceiling for pid_max: no process ever has a larger pid
UINT64_MAX = 2**64 - 1
USEC = 1_000_000
# Properties systemd 252 does not know (their first version); the fake refuses them on older
# managers as systemd does. (condor-systemd has its own table; this one is the manager's side.)
NEWER_PROPERTIES = {"MemoryZSwapMax": 253, "MemoryZSwapWriteback": 256, "PrivatePIDs": 257,
                    "MemoryPeak": 256}
# signals whose default action is to do nothing: a simulated process survives them
HARMLESS = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH}

# service.c state_translation_table (the states a transient Type=exec service goes through)
ACTIVE_STATE = {
    "dead": "inactive", "start": "activating", "running": "active",
    "stop-sigterm": "deactivating", "stop-sigkill": "deactivating", "stop-post": "deactivating",
    "final-sigterm": "deactivating", "final-sigkill": "deactivating", "failed": "failed",
}
STOPPING_STATES = ("stop-sigterm", "stop-sigkill", "stop-post", "final-sigterm", "final-sigkill")

# Accounting the fake cgroup reports (unless a test gives its own): the record must show these.
ACCOUNTING = {
    "user_usec": 11_200_000, "system_usec": 310_000, "memory_peak": 2_093_056_000,
    "oom_kill": 0, "io": [("8:0", 1_048_576, 4_096), ("259:0", 2_048, 8_192)], "pids_peak": 9,
}


def bus_path(unit: str) -> str:
    """sd_bus_path_encode("/org/freedesktop/systemd1/unit", unit): bus-label.c bus_label_escape
    keeps [A-Za-z0-9] (a digit not in first place) and writes every other byte as _xx."""
    out = []
    for i, byte in enumerate(unit.encode()):
        ch = chr(byte)
        if ("a" <= ch <= "z" or "A" <= ch <= "Z") or ("0" <= ch <= "9" and i > 0):
            out.append(ch)
        else:
            out.append("_" + format(byte, "02x"))
    return "/org/freedesktop/systemd1/unit/" + ("".join(out) or "_")


def unit_from_path(path: str) -> str | None:
    """bus_label_unescape: the unit name an object path names."""
    prefix = "/org/freedesktop/systemd1/unit/"
    if not path.startswith(prefix):
        return None
    label, out, i = path[len(prefix):], bytearray(), 0
    while i < len(label):
        if label[i] == "_" and i + 3 <= len(label):
            out.append(int(label[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(label[i]))
            i += 1
    return out.decode()


def slice_cgroup(slice_name: str) -> str:
    """unit_default_cgroup_path for a unit in slice_name: 'a-b.slice' nests in 'a.slice'."""
    parts = slice_name[: -len(".slice")].split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def own_cgroup() -> str:
    """The test process's cgroup, as /proc/PID/cgroup shows it (v2 line, else name=systemd)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for prefix in ("0::", "1:name=systemd:"):
        for line in lines:
            if line.startswith(prefix):
                return line[len(prefix):]
    for line in lines:
        if ":name=systemd:" in line:
            return line.split(":", 2)[2]
    return lines[0].split(":", 2)[2]


class Call(NamedTuple):
    method: str
    args: tuple


class Proc:
    """One process of the unit: simulated (its fate scripted) or a real child of the test."""

    _next_simulated = PID_MAX_LIMIT + 1000

    def __init__(self, role: str, ignores: tuple[int, ...] = (), real: bool = False,
                 argv: list[str] | None = None, executable: str | None = None) -> None:
        self.role = role  # "main" | "control" | "leftover"
        self.ignores = frozenset(ignores)
        self.received: list[int] = []  # signals delivered to it, in order
        self.exit: tuple[int, int] | None = None  # (code, status) once it ended
        self.ended_at: float | None = None  # time.monotonic() when the manager reaped it
        self.popen: subprocess.Popen | None = None
        self.pidfd = -1
        if real:
            if argv is None:
                trap = f'trap "" {" ".join(str(int(s)) for s in self.ignores)}; ' \
                    if self.ignores else ""
                argv, executable = ["sh", "-c", trap + "exec sleep 60"], None
            self.popen = subprocess.Popen(argv, executable=executable, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.pid = self.popen.pid
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError) as exc:
                self.popen.kill()
                self.popen.wait()
                if isinstance(exc, OSError) and exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                import pytest

                pytest.skip("the fake watches real processes through pidfds (Linux >= 5.3, "
                            f"Python >= 3.9): {exc}")
            _wait_until_sleeping(self.pid)
        else:
            self.pid = Proc._next_simulated
            Proc._next_simulated += 1

    @property
    def real(self) -> bool:
        return self.popen is not None

    @property
    def alive(self) -> bool:
        return self.exit is None

    def __repr__(self) -> str:
        kind = "real" if self.real else "simulated"
        return f"<{kind} {self.role} {self.pid} exit={self.exit}>"


def _wait_until_sleeping(pid: int) -> None:
    """A real process is useful once it runs sleep (its trap set, SIG_IGN kept across exec)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                return
        except OSError:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not exec sleep")


class Unit:
    def __init__(self, name: str, props: dict[str, tuple[str, Any]] | None = None,
                 load_state: str = "loaded") -> None:
        self.name = name
        self.path = bus_path(name)
        self.props = props or {}
        self.load_state = load_state
        self.sub = "dead"
        self.result = "success"
        self.job: tuple[int, str] | None = None  # (id, "start"|"stop")
        self.main: Proc | None = None
        self.control: Proc | None = None
        self.others: list[Proc] = []
        self.exec_main = {"pid": 0, "code": 0, "status": 0, "start": 0, "exit": 0}
        self.cgroup = ""
        self.dirty = False
        self.new_sent = False
        self.timer: threading.Timer | None = None
        self.timeout_stop = self.prop("TimeoutStopUSec", 90 * USEC) / USEC
        self.collect = self.prop("CollectMode", "inactive")

    def prop(self, name: str, default: Any = None) -> Any:
        return self.props[name][1] if name in self.props else default

    @property
    def active(self) -> str:
        return ACTIVE_STATE[self.sub]

    def procs(self) -> list[Proc]:
        return [p for p in [self.main, self.control, *self.others] if p is not None and p.alive]


class FakeSystemd:
    """systemd's manager for the tests: see the module docstring for what it models.

    Script before the job starts: ``start`` ("runs", ("exec-fails", status),
    ("spawn-fails", with_stop_post), "held"), ``real_main`` / ``main_ignores``, ``real_holder``,
    ``refuse`` / ``invalid`` / ``deny``. While it runs: :meth:`main_exits`, :meth:`main_killed`,
    :meth:`fork_leftover`, :meth:`exec_succeeds`, :meth:`reexec`.
    """

    def __init__(self, root: Path, *, version: int = 252, layout: str = "unified",
                 unit_in_test_cgroup: bool = False, accounting: dict | None = None,
                 noise: bool = True) -> None:
        self.root = Path(root)
        self.version = version
        self.layout = layout
        self.unit_in_test_cgroup = unit_in_test_cgroup
        self.accounting = dict(ACCOUNTING if accounting is None else accounting)
        self.noise = noise
        self.lock = threading.RLock()
        self.units: dict[str, Unit] = {}
        self.calls: list[Call] = []
        self.events: list[str] = []  # what the manager did, in words (for failure messages)
        self.removed: list[str] = []  # units freed (UnitRemoved sent), in order
        self.conns: list[FakeConnection] = []
        self.up = True
        self.refusals_left: int | None = 0  # reconnect attempts refused; None: never back
        self._jobs = 100
        self._serial = 0
        self._later: deque[Callable[[], None]] = deque()
        self._timers: list[threading.Timer] = []
        self._reals: list[Proc] = []
        # script
        self.start: Any = "runs"
        self.real_main = False
        self.main_ignores: tuple[int, ...] = ()
        self.real_holder = False
        self.refuse: set[str] = set()  # property names this manager does not know
        self.invalid: dict[str, str] = {}  # property name -> InvalidArgs text
        self.deny: dict[str, tuple[str, str]] = {}  # method -> (error name, text)
        self.before_call: dict[str, Callable[[], None]] = {}  # method -> action, once
        self.kernel_overrides: dict[str, str] = {}  # cgroup file -> content the kernel shows
        self.on_running: list[Callable[[], None]] = []  # called when the unit becomes active
        self.attempts: list[tuple] = []  # every call the job tried, even on a dead connection
        self._make_tree()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._watcher = threading.Thread(target=self._watch, name="fake-systemd", daemon=True)
        self._watcher.start()

    # -- the test's side ---------------------------------------------------------------------
    def connect(self) -> FakeConnection:
        conn = FakeConnection(self)
        with self.lock:
            self.conns.append(conn)
        return conn

    def install(self, monkeypatch: Any) -> None:
        """Point cgroupfs.probe_layout() at the fake tree: the default of its mountinfo
        argument, the narrowest change (the function itself runs as it is)."""
        import inspect

        from condor_systemd.backends import cgroupfs

        fn = cgroupfs.probe_layout
        params = inspect.signature(fn).parameters
        assert "mountinfo" in params, "probe_layout(mountinfo=...) is the seam the fake uses"
        if fn.__kwdefaults__ and "mountinfo" in fn.__kwdefaults__:
            monkeypatch.setitem(fn.__kwdefaults__, "mountinfo", str(self.mountinfo))
        else:
            positional = [p for p in params.values()
                          if p.default is not p.empty and p.kind != p.KEYWORD_ONLY]
            monkeypatch.setattr(fn, "__defaults__", tuple(
                str(self.mountinfo) if p.name == "mountinfo" else p.default for p in positional))

    def unit(self, name: str) -> Unit | None:
        return self.units.get(name)

    def simple_calls(self) -> list[tuple]:
        """The calls, without StartTransientUnit's properties: easy to compare."""
        out = []
        for c in self.calls:
            if c.method == "StartTransientUnit":
                out.append(("StartTransientUnit", c.args[0], c.args[1]))
            else:
                out.append((c.method, *c.args))
        return out

    def started_properties(self, attempt: int = -1) -> dict[str, tuple[str, Any]]:
        starts = [c for c in self.calls if c.method == "StartTransientUnit"]
        return dict(starts[attempt].args[2])

    def add_unit(self, name: str) -> Unit:
        """Another job's unit, running (a name clash for StartTransientUnit)."""
        with self.lock:
            u = Unit(name, {"CollectMode": ("s", "inactive-or-failed")})
            u.main = Proc("main")
            u.sub = "running"
            u.new_sent = True
            self.units[name] = u
            return u

    def main_exits(self, status: int, runtime: float | None = None) -> None:
        self._main_ends(CLD_EXITED, status, runtime)

    def main_killed(self, signum: int, dumped: bool = False, runtime: float | None = None) -> None:
        self._main_ends(CLD_DUMPED if dumped else CLD_KILLED, signum, runtime)

    def _main_ends(self, code: int, status: int, runtime: float | None) -> None:
        with self.lock:
            u = self._the_unit()
            assert u.main is not None and not u.main.real, "scripted exits are for simulated mains"
            main = u.main
            self._iteration(lambda: self._reaped(u, main, code, status, runtime))

    def process_exits(self, proc: Proc, code: int = CLD_EXITED, status: int = 0) -> None:
        """A simulated process of the unit ends (SIGCHLD, or the cgroup's news)."""
        with self.lock:
            u = self._the_unit()
            self._iteration(lambda: self._reaped(u, proc, code, status))

    def fork_leftover(self, ignores: tuple[int, ...] = (signal.SIGTERM,),
                      real: bool = True) -> Proc:
        """The job starts a process that will outlive its main process."""
        proc = Proc("leftover", ignores, real=real)
        with self.lock:
            u = self._the_unit()
            u.others.append(proc)
            self._track(proc)
            self._write_procs(u)
        return proc

    def exec_succeeds(self) -> None:
        """With start="held": the exec fd reports execve() done; the unit becomes active."""
        with self.lock:
            u = self._the_unit()
            self._iteration(lambda: self._exec_done(u))

    def reexec(self, back_after: int | None = 0) -> None:
        """systemctl daemon-reexec: every unit is freed (UnitRemoved), connections close; the
        new manager refuses back_after connection attempts (None: it never comes back)."""
        with self.lock:
            self.events.append("daemon-reexec")
            for u in list(self.units.values()):
                self._flush(u)
                self._emit(MANAGER_PATH, MANAGER_IFACE, "UnitRemoved", "so", (u.name, u.path))
            for conn in self.conns:
                conn._peer_closed()
            self.conns = []
            self.up = False
            self.refusals_left = back_after

    def panic(self) -> None:
        """SIGKILL every process of every unit (a test's watchdog: nothing may hang)."""
        with self.lock:
            self.events.append("panic")

            def kill_all() -> None:
                for u in self.units.values():
                    for p in u.procs():
                        self._deliver(u, p, signal.SIGKILL)

            self._iteration(kill_all)

    def close(self) -> None:
        with self.lock:
            self._stopping = True
            for t in self._timers:
                t.cancel()
            reals = list(self._reals)
        os.write(self._wake_w, b"x")
        self._watcher.join(5)
        for p in reals:
            if p.popen and p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
            if p.pidfd >= 0:
                os.close(p.pidfd)
                p.pidfd = -1
        for conn in self.conns:
            conn._close_fds()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> FakeSystemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the cgroup tree ---------------------------------------------------------------------
    def _make_tree(self) -> None:
        fs = self.root / "fs"
        self.mountinfo = self.root / "mountinfo"
        lines = ["22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
                 f"25 22 0:23 / {fs} rw,relatime - tmpfs tmpfs rw,mode=755"]
        if self.layout == "unified":
            self.v2 = fs / "unified"
            self.v1: dict[str, Path] = {}
            lines.append(f"26 25 0:24 / {self.v2} rw,nosuid,nodev,noexec,relatime - cgroup2 "
                         "cgroup2 rw,nsdelegate,memory_recursiveprot")
        else:
            assert self.layout == "hybrid"
            self.v2 = fs / "unified"
            lines.append(f"26 25 0:24 / {self.v2} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate")
            self.v1 = {"name=systemd": fs / "systemd", "cpu": fs / "cpu,cpuacct",
                       "cpuacct": fs / "cpu,cpuacct", "memory": fs / "memory",
                       "pids": fs / "pids", "blkio": fs / "blkio"}
            opts = {"name=systemd": "rw,xattr,name=systemd", "cpu": "rw,cpu,cpuacct",
                    "memory": "rw,memory", "pids": "rw,pids", "blkio": "rw,blkio"}
            for n, (ctl, o) in enumerate(opts.items()):
                lines.append(f"{27 + n} 25 0:{25 + n} / {self.v1[ctl]} rw,nosuid - cgroup "
                             f"cgroup {o}")
        for d in [self.v2, *self.v1.values()]:
            d.mkdir(parents=True, exist_ok=True)
        (self.v2 / "cgroup.controllers").write_text(
            "cpuset cpu io memory pids\n" if self.layout == "unified" else "\n")
        self.mountinfo.write_text("\n".join(lines) + "\n")

    def _dirs(self, cgroup: str) -> dict[str, Path]:
        rel = cgroup.lstrip("/")
        out = {"v2": self.v2 / rel}
        for ctl, mnt in self.v1.items():
            out[ctl] = mnt / rel
        return out

    def _realize(self, u: Unit) -> None:
        """Create the unit's cgroup with its limits (cgroup_context_apply) and accounting."""
        u.cgroup = own_cgroup() if self.unit_in_test_cgroup \
            else f"{slice_cgroup(u.prop('Slice', 'system.slice'))}/{u.name}"
        dirs = self._dirs(u.cgroup)
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        acct, files = self.accounting, {}
        quota = u.prop("CPUQuotaPerSecUSec", UINT64_MAX)
        cpus = u.prop("AllowedCPUs")
        v2 = dirs["v2"]
        files[v2 / "cpu.stat"] = (
            f"usage_usec {acct['user_usec'] + acct['system_usec']}\nuser_usec "
            f"{acct['user_usec']}\nsystem_usec {acct['system_usec']}\n"
            "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")
        if self.layout == "unified":
            files[v2 / "memory.peak"] = f"{acct['memory_peak']}\n"
            files[v2 / "memory.current"] = "4096\n"
            files[v2 / "memory.events"] = (
                f"low 0\nhigh 0\nmax 0\noom {acct['oom_kill']}\noom_kill {acct['oom_kill']}\n"
                "oom_group_kill 0\n")
            files[v2 / "io.stat"] = "".join(
                f"{dev} rbytes={r} wbytes={w} rios=3 wios=2 dbytes=0 dios=0\n"
                for dev, r, w in acct["io"])
            files[v2 / "pids.peak"] = f"{acct['pids_peak']}\n"
            files[v2 / "memory.max"] = _limit(u.prop("MemoryMax"))
            files[v2 / "memory.high"] = _limit(u.prop("MemoryHigh"))
            files[v2 / "memory.swap.max"] = _limit(u.prop("MemorySwapMax"))
            files[v2 / "pids.max"] = _limit(u.prop("TasksMax", 4915))
            files[v2 / "cpu.max"] = "max 100000\n" if quota == UINT64_MAX \
                else f"{max(quota * 100_000 // USEC, 1000)} 100000\n"
            files[v2 / "cpuset.cpus"] = (_cpu_list(cpus) if cpus else "") + "\n"
            files[v2 / "io.weight"] = f"default {u.prop('IOWeight', 100)}\n"
        else:
            mem, pids, cpu = dirs["memory"], dirs["pids"], dirs["cpu"]
            files[mem / "memory.max_usage_in_bytes"] = f"{acct['memory_peak']}\n"
            files[mem / "memory.oom_control"] = (
                f"oom_kill_disable 0\nunder_oom 0\noom_kill {acct['oom_kill']}\n")
            files[mem / "memory.limit_in_bytes"] = _limit(u.prop("MemoryMax"), v1=True)
            files[pids / "pids.max"] = _limit(u.prop("TasksMax", 4915))
            files[pids / "pids.peak"] = f"{acct['pids_peak']}\n"
            files[cpu / "cpu.cfs_period_us"] = "100000\n"
            files[cpu / "cpu.cfs_quota_us"] = "-1\n" if quota == UINT64_MAX \
                else f"{max(quota * 100_000 // USEC, 1000)}\n"
            files[cpu / "cpuacct.stat"] = "user 1120\nsystem 31\n"
        for path, text in files.items():
            path.write_text(self.kernel_overrides.get(path.name, text))
        self._write_procs(u)

    def _write_procs(self, u: Unit) -> None:
        if not u.cgroup:
            return
        text = "".join(f"{p.pid}\n" for p in u.procs())
        for key, d in self._dirs(u.cgroup).items():
            if key in ("v2", "name=systemd") and d.is_dir():
                (d / "cgroup.procs").write_text(text)

    def _prune(self, u: Unit) -> None:
        """unit_prune_cgroup: the cgroup goes when the unit stops; ControlGroup becomes ''."""
        if not u.cgroup:
            return
        for d in self._dirs(u.cgroup).values():
            if d == self.v2 or d in self.v1.values():  # the unit sits at a mount's root
                for child in d.iterdir():
                    if child.name != "cgroup.controllers":
                        if child.is_dir():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            else:
                shutil.rmtree(d, ignore_errors=True)
        u.cgroup = ""

    # -- D-Bus: signals ----------------------------------------------------------------------
    def _serial_next(self) -> int:
        self._serial += 1
        return self._serial

    def _emit(self, path: str, iface: str, member: str, sig: str, body: tuple) -> None:
        msg = new_signal(DBusAddress(path, interface=iface), member, sig, body)
        parsed = Message.from_buffer(msg.serialise(serial=self._serial_next()))
        for conn in self.conns:
            conn._deliver(parsed)

    def _flush(self, u: Unit) -> None:
        """Send the unit's pending change: UnitNew the first time, then PropertiesChanged for
        Service, then for Unit (dbus-unit.c send_new_signal / send_changed_signal)."""
        if not u.new_sent:
            u.new_sent = True
            u.dirty = False
            self._emit(MANAGER_PATH, MANAGER_IFACE, "UnitNew", "so", (u.name, u.path))
            return
        if not u.dirty:
            return
        u.dirty = False
        self._emit(u.path, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                   (SERVICE_IFACE, self._service_changes(u), []))
        self._emit(u.path, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                   (UNIT_IFACE, {"ActiveState": ("s", u.active), "SubState": ("s", u.sub),
                                 "StateChangeTimestampMonotonic": ("t", _now_us())},
                    ["Conditions", "Asserts"]))

    def _service_changes(self, u: Unit) -> dict:
        em = u.exec_main
        return {"MainPID": ("u", u.main.pid if u.main and u.main.alive else 0),
                "ControlPID": ("u", u.control.pid if u.control and u.control.alive else 0),
                "Result": ("s", u.result), "ExecMainCode": ("i", em["code"]),
                "ExecMainStatus": ("i", em["status"])}

    def _finish_job(self, u: Unit, result: str) -> None:
        assert u.job is not None
        job_id, _kind = u.job
        u.job = None
        self._flush(u)
        self._emit(MANAGER_PATH, MANAGER_IFACE, "JobRemoved", "uoss",
                   (job_id, f"/org/freedesktop/systemd1/job/{job_id}", u.name, result))

    def _emit_noise(self) -> None:
        """Other units' news: a private connection gets every unit's signals."""
        other = "unrelated-job.service"
        self._emit(bus_path(other), PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                   (UNIT_IFACE, {"ActiveState": ("s", "failed"), "SubState": ("s", "failed")},
                    []))
        self._emit(MANAGER_PATH, MANAGER_IFACE, "JobRemoved", "uoss",
                   (7, "/org/freedesktop/systemd1/job/7", other, "failed"))
        self._emit(MANAGER_PATH, MANAGER_IFACE, "UnitRemoved", "so", (other, bus_path(other)))

    # -- the event loop ----------------------------------------------------------------------
    def _iteration(self, action: Callable[[], None]) -> None:
        """One event-loop iteration, then those it queued (jobs, SIGCHLDs)."""
        with self.lock:
            action()
            self._end_iteration()
            while self._later:
                self._later.popleft()()
                self._end_iteration()

    def _end_iteration(self) -> None:
        """GC queue, then the D-Bus queue (manager.c manager_loop's dispatch order)."""
        for u in list(self.units.values()):
            if self._may_gc(u):
                self._flush(u)
                self._emit(MANAGER_PATH, MANAGER_IFACE, "UnitRemoved", "so", (u.name, u.path))
                del self.units[u.name]
                self.removed.append(u.name)
                self.events.append(f"{u.name} freed")
        for u in self.units.values():
            self._flush(u)

    def _may_gc(self, u: Unit) -> bool:
        if u.job is not None:
            return False
        if u.active == "inactive":
            return True
        return u.active == "failed" and u.collect == "inactive-or-failed"

    def _set_state(self, u: Unit, sub: str) -> None:
        old = u.active
        u.sub = sub
        u.dirty = True
        if u.timer and sub not in STOPPING_STATES:
            u.timer.cancel()
            u.timer = None
        new = u.active
        self.events.append(f"{u.name}: {new}/{sub}")
        if u.job is not None:  # unit.c unit_process_job
            kind = u.job[1]
            if kind == "start" and new == "active":
                self._finish_job(u, "done")
            elif kind == "start" and new in ("inactive", "failed") and old != new:
                self._finish_job(u, "failed" if new == "failed" else "done")
            elif kind == "stop" and new in ("inactive", "failed"):
                self._finish_job(u, "done")
        if new in ("inactive", "failed"):
            self._prune(u)

    def _arm(self, u: Unit, state: str) -> None:
        if u.timer:
            u.timer.cancel()
        timer = threading.Timer(u.timeout_stop, self._timeout, (u, state))
        timer.daemon = True
        u.timer = timer
        self._timers.append(timer)
        timer.start()

    def _timeout(self, u: Unit, state: str) -> None:
        """service.c service_dispatch_timer, for the states a stopping unit passes."""
        with self.lock:
            if self._stopping or u.sub != state or self.units.get(u.name) is not u:
                return
            u.timer = None
            self.events.append(f"{u.name}: {state} timed out")
            nxt = {"stop-sigterm": lambda: self._enter_signal(u, "stop-sigkill", "timeout"),
                   "stop-sigkill": lambda: self._enter_stop_post(u, "timeout"),
                   "stop-post": lambda: self._enter_signal(u, "final-sigterm", "timeout"),
                   "final-sigterm": lambda: self._enter_signal(u, "final-sigkill", "timeout"),
                   "final-sigkill": lambda: self._enter_dead(u, "timeout")}[state]
            self._iteration(nxt)

    # -- the service state machine (service.c) -----------------------------------------------
    def _job_run_start(self, u: Unit) -> None:
        """job_run -> service_start -> service_enter_start: fork the main process."""
        if self.noise:
            self._emit_noise()
        if isinstance(self.start, tuple) and self.start[0] == "spawn-fails":
            # service_spawn failed: service_enter_signal(STOP_SIGTERM, RESOURCES), nothing to
            # kill, so on to stop-post: ExecStopPost runs, or could not be spawned either
            u.result = "resources"
            if self.start[1]:
                self._enter_stop_post(u)
            else:  # ExecStopPost could not be spawned either
                self._enter_dead(u)
            return
        self._realize(u)
        u.main = Proc("main", self.main_ignores, real=self.real_main)
        self._track(u.main)
        u.exec_main.update(pid=u.main.pid, start=_now_us(), code=0, status=0, exit=0)
        self._write_procs(u)
        self._set_state(u, "start")
        if self.start == "runs":
            self._later.append(lambda: self._exec_done(u))
        elif isinstance(self.start, tuple) and self.start[0] == "exec-fails":
            main, status = u.main, self.start[1]
            self._later.append(lambda: self._reaped(u, main, CLD_EXITED, status, 0.001))

    def _exec_done(self, u: Unit) -> None:
        """service_dispatch_exec_io: execve() succeeded -> start-post -> running."""
        if u.sub == "start":
            self._set_state(u, "running")
            for hook in self.on_running:
                hook()

    def _result_of(self, code: int, status: int) -> str:
        if code == CLD_EXITED:
            return "success" if status == 0 else "exit-code"
        if code == CLD_KILLED:
            clean = status in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
            return "success" if clean else "signal"
        return "core-dump"

    def _reaped(self, u: Unit, proc: Proc, code: int, status: int,
                runtime: float | None = None) -> None:
        """SIGCHLD (or, for a process that is not main or control, the cgroup's news)."""
        if not proc.alive:
            return
        proc.exit = (code, status)
        proc.ended_at = time.monotonic()
        self.events.append(f"{proc!r} ended")
        if self.units.get(u.name) is not u:
            return
        self._write_procs(u)
        if proc is u.main:
            em = u.exec_main
            em.update(code=code, status=status,
                      exit=em["start"] + int(runtime * USEC) if runtime is not None
                      else _now_us())
            u.dirty = True
            f = self._result_of(code, status)
            if u.sub in ("start", "running"):  # Type=exec falls through to enter_running
                if u.result == "success":
                    u.result = f
                self._enter_signal(u, "stop-sigterm", f)  # enter_running -> enter_stop
            elif u.sub in ("stop-sigterm", "stop-sigkill"):
                if u.result == "success":
                    u.result = f
                if not (u.control and u.control.alive):
                    self._enter_stop_post(u, f)
            elif u.sub in ("stop-post", "final-sigterm", "final-sigkill") and not (
                    u.control and u.control.alive):
                self._enter_dead(u, f)
        elif proc is u.control:
            u.dirty = True
            f = "success"  # ExecStopPost=-...: its failure is ignored
            if u.sub == "stop-post":
                self._enter_signal(u, "final-sigterm", f)
            elif u.sub in ("final-sigterm", "final-sigkill") and not u.procs():
                self._enter_dead(u, f)
        elif not u.procs():
            self._cgroup_empty(u)

    def _cgroup_empty(self, u: Unit) -> None:
        """service_notify_cgroup_empty_event."""
        if u.sub in ("stop-sigterm", "stop-sigkill"):
            self._enter_stop_post(u, "success")
        elif u.sub in ("final-sigterm", "final-sigkill"):
            self._enter_dead(u, "success")

    def _enter_signal(self, u: Unit, state: str, f: str) -> None:
        """service_enter_signal: signal what is left; wait in `state` if anything was."""
        if u.result == "success":
            u.result = f
        sig = signal.SIGKILL if state.endswith("sigkill") else signal.SIGTERM
        targets = u.procs()
        for p in targets:
            self._deliver(u, p, sig)
        if targets:
            self._arm(u, state)
            self._set_state(u, state)
        elif state == "stop-sigterm":
            self._enter_signal(u, "stop-sigkill", "success")
        elif state == "stop-sigkill":
            self._enter_stop_post(u, "success")
        elif state == "final-sigterm":
            self._enter_signal(u, "final-sigkill", "success")
        else:
            self._enter_dead(u, "success")

    def _enter_stop_post(self, u: Unit, f: str = "success") -> None:
        if u.result == "success":
            u.result = f
        stop_post = u.prop("ExecStopPost")
        if not stop_post:
            self._enter_signal(u, "final-sigterm", "success")
            return
        path, argv, _ignore = stop_post[0]
        if self.real_holder:
            u.control = Proc("control", real=True, argv=list(argv), executable=path)
        else:
            u.control = Proc("control")
        self._track(u.control)
        self._write_procs(u)
        self._arm(u, "stop-post")
        self._set_state(u, "stop-post")

    def _enter_dead(self, u: Unit, f: str = "success") -> None:
        if u.result == "success":
            u.result = f
        self._set_state(u, "dead" if u.result == "success" else "failed")

    def _deliver(self, u: Unit, proc: Proc, sig: int) -> None:
        if not proc.alive:
            return
        proc.received.append(sig)
        if proc.real:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(proc.pidfd, sig)
        elif sig in (signal.SIGKILL, signal.SIGSTOP) or (
                sig not in proc.ignores and sig not in HARMLESS):
            # the kernel's SIGCHLD reaches the manager in a later iteration
            self._later.append(lambda: self._reaped(u, proc, CLD_KILLED, sig))

    # -- real processes ----------------------------------------------------------------------
    def _track(self, proc: Proc) -> None:
        if proc.real:
            self._reals.append(proc)
            os.write(self._wake_w, b"x")

    def _watch(self) -> None:
        """The manager's SIGCHLD: reap the real processes as they end."""
        while True:
            with self.lock:
                if self._stopping:
                    return
                fds = {p.pidfd: p for p in self._reals if p.alive and p.pidfd >= 0}
            ready, _, _ = select.select([self._wake_r, *fds], [], [])
            for fd in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                    continue
                proc = fds[fd]
                assert proc.popen is not None
                try:
                    info = os.waitid(os.P_PIDFD, fd, os.WEXITED)
                    assert info is not None
                    code, status = info.si_code, info.si_status
                except ChildProcessError:  # reaped behind our back: Popen knows how it ended
                    rc = proc.popen.returncode if proc.popen.returncode is not None else -9
                    code, status = (CLD_EXITED, rc) if rc >= 0 else (CLD_KILLED, -rc)
                proc.popen.returncode = status if code == CLD_EXITED else -status
                with self.lock:
                    if self._stopping:
                        return
                    u = next((u for u in self.units.values()
                              if proc in (u.main, u.control) or proc in u.others), None)
                    if u is None:
                        proc.exit = (code, status)
                        proc.ended_at = time.monotonic()
                        continue
                    self._iteration(lambda u=u, p=proc, c=code, s=status:
                                    self._reaped(u, p, c, s))

    # -- D-Bus: methods ----------------------------------------------------------------------
    def _the_unit(self) -> Unit:
        started = [c.args[0] for c in self.calls if c.method == "StartTransientUnit"]
        assert started and started[-1] in self.units, "no unit of the job is loaded"
        return self.units[started[-1]]

    def _call(self, caller: FakeConnection, path: str, iface: str, method: str,
              signature: str | None, body: tuple) -> tuple:
        fds: list[int] = []
        # what the real transport would do with it: serialise (types must fit the signature)
        new_method_call(DBusAddress(path, SYSTEMD, iface), method, signature, body) \
            .serialise(serial=1, fds=fds)
        for fd in fds:
            try:
                os.fstat(fd)
            except OSError as exc:
                raise BusError("", f"D-Bus connection failed: {exc.strerror}") from None
        if iface == PROPERTIES_IFACE:
            self.calls.append(Call(method, (path, *body)))
        else:
            self.calls.append(Call(method, tuple(body)))
        hook = self.before_call.pop(method, None)
        if hook:
            hook()
        caller._take_wire()  # what the manager sent before this reply is read while waiting
        if not self.up:
            raise BusError("", "D-Bus connection failed: systemd closed the connection")
        if method in self.deny:
            name, text = self.deny[method]
            raise BusError(name, text)
        reply: list[tuple] = []

        def handle() -> None:
            reply.append(self._dispatch(path, iface, method, body))

        self._iteration(handle)
        return reply[0]

    def _dispatch(self, path: str, iface: str, method: str, body: tuple) -> tuple:
        if iface == PROPERTIES_IFACE and method == "GetAll":
            return (self._get_all(path, body[0]),)
        if iface == PROPERTIES_IFACE and method == "Get" and body == (MANAGER_IFACE, "Version"):
            return (("s", f"{self.version}.5-1"),)
        if iface != MANAGER_IFACE:
            raise BusError("org.freedesktop.DBus.Error.UnknownMethod", f"Unknown method {method}")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            raise BusError("org.freedesktop.DBus.Error.UnknownMethod",
                           f"Unknown method {method} or interface {iface}.")
        return handler(*body)

    def _m_StartTransientUnit(self, name: str, mode: str, props: list, aux: list) -> tuple:
        existing = self.units.get(name)
        if existing is not None and (existing.load_state == "loaded" or existing.job
                                     or existing.active != "inactive"):
            raise BusError(UNIT_EXISTS, f"Unit {name} was already loaded or has a fragment file.")
        accepted = {}
        for prop_name, variant in props:
            since = NEWER_PROPERTIES.get(prop_name, 0)
            if prop_name in self.refuse or since > self.version:
                raise BusError(PROPERTY_READ_ONLY,
                               f"Cannot set property {prop_name}, or unknown property.")
            if prop_name in self.invalid:
                raise BusError(INVALID_ARGS, self.invalid[prop_name])
            accepted[prop_name] = variant
        u = Unit(name, accepted)
        self.units[name] = u
        self._jobs += 1
        u.job = (self._jobs, "start")
        job_path = f"/org/freedesktop/systemd1/job/{self._jobs}"
        self._flush(u)  # the D-Bus queue sends units' news before jobs': UnitNew, then JobNew
        self._emit(MANAGER_PATH, MANAGER_IFACE, "JobNew", "uos", (self._jobs, job_path, name))
        self._later.append(lambda: self._job_run_start(u))
        return (job_path,)

    def _loaded(self, name: str) -> Unit:
        u = self.units.get(name)
        if u is None:
            raise BusError(NO_SUCH_UNIT, f"Unit {name} not loaded.")
        return u

    def _m_KillUnit(self, name: str, who: str, signum: int) -> tuple:
        u = self._loaded(name)
        if who not in ("main", "control", "all"):
            raise BusError(INVALID_ARGS, f"Invalid who argument {who}")
        control = u.control if u.control and u.control.alive else None
        main = u.main if u.main and u.main.alive else None
        if who == "control" and control is None:
            raise BusError(NO_SUCH_PROCESS, "No control process to kill")
        if who == "main" and main is None:
            raise BusError(NO_SUCH_PROCESS, "No main process to kill")
        targets = {"control": [control], "main": [main], "all": [control, main, *u.others]}[who]
        for p in targets:
            if p is not None:
                self._deliver(u, p, signum)
        return ()

    def _m_StopUnit(self, name: str, mode: str) -> tuple:
        u = self.units.get(name)
        if u is None or (u.load_state != "loaded" and u.active == "inactive"):
            if u is None:  # manager_load_unit loads a stub, which the GC drops again
                self.units[name] = Unit(name, load_state="not-found")
            raise BusError(NO_SUCH_UNIT, f"Unit {name} not loaded.")
        self._jobs += 1
        u.job = (self._jobs, "stop")
        job_path = f"/org/freedesktop/systemd1/job/{self._jobs}"
        self._emit(MANAGER_PATH, MANAGER_IFACE, "JobNew", "uos", (self._jobs, job_path, name))
        self._later.append(lambda: self._job_run_stop(u))
        return (job_path,)

    def _job_run_stop(self, u: Unit) -> None:
        """service_stop."""
        if u.sub in STOPPING_STATES:
            self.events.append(f"{u.name}: stop job waits (already stopping)")
            return  # "already on it": the job ends with the unit
        if u.sub in ("start", "running"):
            self._enter_signal(u, "stop-sigterm", "success")
        elif u.job is not None:
            self._finish_job(u, "done")

    def _m_ResetFailedUnit(self, name: str) -> tuple:
        u = self._loaded(name)
        if u.sub == "failed":
            u.result = "success"
            self._set_state(u, "dead")
        return ()

    def _get_all(self, path: str, iface: str) -> dict:
        u = next((x for x in self.units.values() if x.path == path), None)
        if u is None:  # manager_load_unit_from_dbus_path: a stub, dropped by the next GC
            name = unit_from_path(path)
            if name is None:
                raise BusError("org.freedesktop.DBus.Error.UnknownObject",
                               f"Unknown object '{path}'.")
            u = Unit(name, load_state="not-found")
            self.units[name] = u
        em = u.exec_main
        if iface == UNIT_IFACE:
            props = {"Id": ("s", u.name), "LoadState": ("s", u.load_state),
                     "ActiveState": ("s", u.active), "SubState": ("s", u.sub),
                     "Job": ("(uo)", (u.job[0], f"/org/freedesktop/systemd1/job/{u.job[0]}")
                             if u.job else (0, "/")),
                     "CollectMode": ("s", u.collect), "Transient": ("b", u.load_state == "loaded")}
        elif iface == SERVICE_IFACE:
            props = {"Type": ("s", u.prop("Type", "simple")), "Result": ("s", u.result),
                     "ControlGroup": ("s", u.cgroup), **self._service_changes(u),
                     "ExecMainPID": ("u", em["pid"]),
                     "ExecMainStartTimestamp": ("t", _wall_us(em["start"])),
                     "ExecMainStartTimestampMonotonic": ("t", em["start"]),
                     "ExecMainExitTimestamp": ("t", _wall_us(em["exit"])),
                     "ExecMainExitTimestampMonotonic": ("t", em["exit"]),
                     "TimeoutStopUSec": ("t", int(u.timeout_stop * USEC)),
                     "MemoryCurrent": ("t", 4096 if u.cgroup else UINT64_MAX),
                     "TasksCurrent": ("t", len(u.procs()) if u.cgroup else UINT64_MAX)}
            if self.version >= 256:
                props["MemoryPeak"] = ("t", self.accounting["memory_peak"] + 4096
                                       if u.cgroup else UINT64_MAX)
        else:
            raise BusError(INVALID_ARGS, f"Unknown interface {iface}")
        # the reply as the wire carries it (and as jeepney parses it)
        parent = new_method_call(DBusAddress(path, SYSTEMD, PROPERTIES_IFACE), "GetAll", "s",
                                 (iface,))
        parent.header.serial = self._serial_next()
        reply = new_method_return(parent, "a{sv}", (props,))
        return Message.from_buffer(reply.serialise(serial=self._serial_next())).body[0]


def _limit(value: int | None, v1: bool = False) -> str:
    if value is None or value == UINT64_MAX:
        return ("9223372036854771712" if v1 else "max") + "\n"
    return f"{value}\n"


def _cpu_list(mask: bytes) -> str:
    cpus = [i * 8 + b for i, byte in enumerate(mask) for b in range(8) if byte >> b & 1]
    return ",".join(str(c) for c in cpus)


def _now_us() -> int:
    return int(time.monotonic() * USEC)


def _wall_us(mono_us: int) -> int:
    if not mono_us:
        return 0
    return int((time.time() - time.monotonic()) * USEC) + mono_us


class FakeConnection:
    """bus.Connection's API over the fake manager. fileno() is a pipe that is readable while
    the manager has sent signals not yet read (or closed the connection), like the socket."""

    via_bus_daemon = False

    def __init__(self, manager: FakeSystemd) -> None:
        self.manager = manager
        self.signals: deque[Message] = deque()
        self._wire: deque[Message] = deque()
        self._members: set[str] | None = None
        self._properties: set[tuple[str, str]] = set()
        self._closed = False  # the manager closed it (daemon-reexec)
        self.reconnects: list[float] = []  # the timeout of each reconnect() asked for
        self.filenos: list[int] = []
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.filenos.append(self._r)

    # -- the manager's side ------------------------------------------------------------------
    def _deliver(self, msg: Message) -> None:
        if not self._closed:
            self._wire.append(msg)
            os.write(self._w, b"s")

    def _peer_closed(self) -> None:
        self._closed = True
        os.write(self._w, b"e")  # EOF: the socket becomes readable

    def _wanted(self, msg: Message) -> bool:
        """What Connection.keep_signals keeps: members, and PropertiesChanged of (path, iface)."""
        from jeepney import HeaderFields

        if self._members is None:
            return True
        member = msg.header.fields.get(HeaderFields.member)
        if member in self._members:
            return True
        if member != "PropertiesChanged":
            return False
        return (msg.header.fields.get(HeaderFields.path), msg.body[0]) in self._properties

    def _take_wire(self) -> None:
        while self._wire:
            msg = self._wire.popleft()
            if self._wanted(msg):
                self.signals.append(msg)
        if not self._closed:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._r, 4096):
                    pass

    def _lost(self) -> BusError:
        return BusError("", "D-Bus connection failed: systemd closed the connection")

    def _close_fds(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- Connection's API --------------------------------------------------------------------
    def fileno(self) -> int:
        return self._r

    def keep_signals(self, members: set[str], properties: set[tuple[str, str]]) -> None:
        self._members, self._properties = set(members), set(properties)

    def watch(self, path: str, interface: str) -> None:
        self._properties.add((path, interface))

    def unwatch(self, path: str, interface: str) -> None:
        self._properties.discard((path, interface))

    def read_signals(self) -> list[Message]:
        with self.manager.lock:
            self._take_wire()
            if self._closed:
                raise self._lost()
            out = list(self.signals)
            self.signals.clear()
            return out

    def call_manager(self, method: str, signature: str | None = None, body: tuple = ()) -> tuple:
        return self.call(MANAGER_PATH, MANAGER_IFACE, method, signature, body)

    def call(self, path: str, interface: str, method: str, signature: str | None = None,
             body: tuple = ()) -> tuple:
        with self.manager.lock:
            self.manager.attempts.append((method, *body))
            self._take_wire()  # what came in before the reply
            if self._closed:
                raise self._lost()
            try:
                return self.manager._call(self, path, interface, method, signature, body)
            except BusError as exc:
                if not exc.name:  # the connection went while we waited for the reply
                    self._take_wire()
                raise

    def get_all(self, path: str, interface: str) -> dict:
        (props,) = self.call(path, PROPERTIES_IFACE, "GetAll", "s", (interface,))
        return {name: value for name, (_sig, value) in props.items()}

    def reconnect(self, timeout: float) -> None:
        """Connection.reconnect: retry until the manager accepts or timeout passes (the fake
        does not sleep: a refused attempt costs no time)."""
        m = self.manager
        with m.lock:
            self.reconnects.append(timeout)
            if not m.up:
                if m.refusals_left is None:
                    raise BusError("", f"cannot connect to {PRIVATE_SOCKET}: Connection refused")
                m.events.append(f"reconnect refused {m.refusals_left} times, then accepted")
                m.refusals_left, m.up = 0, True
            # a fresh socket: a new fd number (the old one is closed after the new is open)
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._close_fds()
            self._r, self._w = r, w
            self.filenos.append(r)
            self._wire.clear()
            self._closed = False
            if self not in m.conns:
                m.conns.append(self)


class RecordingLog(Log):
    """A Log that keeps its lines instead of writing to the journal."""

    def __init__(self) -> None:
        super().__init__(log_file=None, to_tty=False)
        self.lines: list[tuple[int, str]] = []

    def emit(self, priority: int, message: str) -> None:
        self.lines.append((priority, message))

    def text(self) -> str:
        return "\n".join(m for _p, m in self.lines)


# -- the job the tests run -------------------------------------------------------------------
GiB = 1024**3
UNIT = "condor-job-12.0.service"
# sd_bus_path_encode of UNIT, written out: '-' is _2d, '.' is _2e
PATH = "/org/freedesktop/systemd1/unit/condor_2djob_2d12_2e0_2eservice"
START = ("StartTransientUnit", UNIT, "fail")
# what finish() asks once the job ended: the exit status, then the end of the cgroup's holder
FINISH = [("GetAll", PATH, SERVICE_IFACE), ("KillUnit", UNIT, "control", 9)]
LIMITS = Limits(memory_max=2 * GiB, cpu_quota_percent=200.0, allowed_cpus=(0, 1), io_weight=500,
                tasks_max=100)


def make_spec(**kw: object) -> JobSpec:
    fields: dict = dict(
        argv=("./job", "--in", "$HOME"), executable="/srv/job/job", job_id="12.0",
        cwd="/srv/job",
        environment={"PATH": "/usr/bin:/bin", "HOME": "/home/u", "INVOCATION_ID": "0123",
                     "BASH_FUNC_f%%": "() { :; }", "NL": "a\nb"},
        limits=LIMITS)
    fields.update(kw)
    return JobSpec(**fields)


def gone(fake: FakeSystemd) -> None:
    """The job's unit was removed (UnitRemoved sent) and is not loaded any more."""
    assert fake.unit(UNIT) is None, f"{UNIT} is still loaded: {fake.events}"
    assert UNIT in fake.removed
