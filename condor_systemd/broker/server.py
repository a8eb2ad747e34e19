"""The broker's one loop: listening sockets, callers' connections, systemd's signals, timers.

A selector waits on every fd at once; nothing polls. Calls to systemd are made inline (it answers
within milliseconds); its signals, read during those calls or when its socket is readable, are
routed to the jobs by the backend and from there to the sessions.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import os
import selectors
import signal
import socket
import time
from typing import TYPE_CHECKING, Callable

from ..backends.bus import BusError
from ..backends.systemd import SystemdBackend
from ..log import Log
from . import peer, restart, suspend
from .policy import Policy
from .session import JournalBudget, Session
from .slices import CallerSlices

if TYPE_CHECKING:
    from ..backends.unitjob import SystemdJob

CLEANUP_TIMEOUT = 10.0  # after collect(), how long a unit may take to go before we let it be


class Server:
    def __init__(self, listeners: list[socket.socket], backend: SystemdBackend, policy: Policy,
                 log: Log) -> None:
        self.backend, self.policy, self.log = backend, policy, log
        self.selector = selectors.DefaultSelector()
        self.listeners = listeners
        # a job's stdio must not be a connection to us (interface.check_stdio)
        self.addresses = frozenset(_address(sock) for sock in listeners) - {""}
        for sock in listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, ("listen", sock))
        self.selector.register(backend.conn.fileno(), selectors.EVENT_READ, ("bus", None))
        self.bus_fd = backend.conn.fileno()
        self.sessions: dict[int, Session] = {}  # by socket fd, while connected
        self.connections: collections.Counter[int] = collections.Counter()  # by uid
        self.refusals: dict[int, tuple[float, int]] = {}  # uid -> (last logged, since then)
        self.by_unit: dict[str, Session] = {}  # sessions whose job is not yet released
        self.ended_waiters: set[Session] = set()  # hung up, job still ending
        self._timers: list[tuple[float, int, Session | None, Callable[[], None]]] = []
        self.inotify: suspend.Inotify | None = None
        self.slices = CallerSlices(backend)
        self.journal_budget = JournalBudget(log)
        self.freeze_watches: dict[int, Session] = {}  # inotify watch -> session
        self._seq = itertools.count()
        self.stopping = False
        self.restart_room: int | None = None  # jobs the fd store keeps (None: no limit known)

    # -- the loop ------------------------------------------------------------------------------
    def serve(self) -> None:
        self.log.info(f"listening; systemd {self.backend.version}, "
                      f"cgroup {self.backend.layout.kind}")
        while not self.stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, mask in self.selector.select(timeout):
                kind, obj = key.data
                if kind == "listen":
                    self.accept(obj)
                elif kind == "bus":
                    pass  # pumped below, together with what calls have queued
                elif kind == "session":
                    self.guarded(obj, functools.partial(self.serve_session, obj, mask))
                elif kind == "caller":  # the caller process ended: as a hang-up
                    self.guarded(obj, functools.partial(self.caller_ended, obj))
                elif kind == "signal":
                    self.signalled(obj)
                elif kind == "inotify":
                    self.freezes_changed()
            self.pump()
            self.run_timers()

    @staticmethod
    def serve_session(session: Session, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            session.readable()
        if mask & selectors.EVENT_WRITE and not session.closed:
            session.writable()

    def pump(self) -> None:
        if self.backend.conn.fileno() != self.bus_fd:  # reconnected after a daemon-reexec
            self.selector.unregister(self.bus_fd)
            self.bus_fd = self.backend.conn.fileno()
            self.selector.register(self.bus_fd, selectors.EVENT_READ, ("bus", None))
        for job in self.backend.pump():
            session = self.by_unit.get(job.unit or "")
            if session is not None:
                self.guarded(session, functools.partial(self.job_changed, session, job))

    def job_changed(self, session: Session, job: SystemdJob) -> None:
        if session in self.ended_waiters:
            if job.has_ended():
                self.ended_waiters.discard(session)
                session.collect_quietly()
            elif session.killed_while_starting and job.phase == "running":
                session.killed_while_starting = False  # its caller left while it started
                job.kill_unit(signal.SIGKILL)
        elif not session.final_sent:
            session.job_event()
        if job.released:
            self.released(session)

    def guarded(self, session: Session, work: Callable[[], None]) -> None:
        """Work for one caller: a bug of ours (or a path a caller found into one) costs that
        caller its connection and job, never the broker and everybody else's."""
        try:
            work()
        except Exception:  # noqa: BLE001
            self.log.error(f"internal error serving uid {session.peer.uid} pid "
                           f"{session.peer.pid}: {_traceback()}")
            try:
                session.hang_up()
            except Exception:  # noqa: BLE001
                self.log.error(f"cannot hang up on uid {session.peer.uid}: {_traceback()}")

    def run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, session, callback = heapq.heappop(self._timers)
            if session is None:
                callback()
            else:
                self.guarded(session, callback)
            self.pump()  # a callback's calls may have brought news

    def at(self, deadline: float, callback: Callable[[], None],
           session: Session | None = None) -> None:
        """callback at deadline; on behalf of a session, guarded (a failure costs it alone)."""
        heapq.heappush(self._timers, (deadline, next(self._seq), session, callback))

    # -- connections ---------------------------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: keep serving those we have
                self.log.warning(f"accept failed: {exc}")
                return
            accepted_at = time.monotonic()
            try:
                caller = peer.identify(sock, accepted_at)
            except OSError:
                sock.close()
                continue
            over = self.over_limit(caller.uid)
            if over:  # the caller sees the connection closed
                self.refusal(caller.uid, over)
                caller.close()
                sock.close()
                continue
            sock.setblocking(False)
            session = Session(self, sock, caller)
            self.add_session(session)
            self.at(time.monotonic() + self.policy.request_timeout,
                    _bound(self.idle_check, session), session)

    def over_limit(self, uid: int) -> str | None:
        """Connections are capped for all callers together and for each uid but root's, so
        that one user holding connections open costs the others nothing."""
        if len(self.sessions) >= self.policy.max_connections:
            return f"the broker's {self.policy.max_connections} connections are in use"
        if uid != 0 and self.connections[uid] >= self.policy.max_connections_per_user:
            return f"uid {uid} holds {self.policy.max_connections_per_user} connections"
        return None

    def refusal(self, uid: int, why: str) -> None:
        """One journal line per uid and minute for refusals, however many there are."""
        now = time.monotonic()
        since, count = self.refusals.get(uid, (0.0, 0))
        if now - since >= 60:
            suffix = f" ({count} more in the last minute)" if count else ""
            self.log.warning(f"connection refused: {why}{suffix}")
            self.refusals[uid] = (now, 0)
        else:
            self.refusals[uid] = (since, count + 1)

    def add_session(self, session: Session) -> None:
        self.sessions[session.sock.fileno()] = session
        self.connections[session.peer.uid] += 1
        self.selector.register(session.sock, selectors.EVENT_READ, ("session", session))
        if session.peer.pidfd != peer.NO_PIDFD:
            # the caller's own end, not only its connection's: a connection handed to
            # another process (a job of its own) must not keep the job alive after it
            self.selector.register(session.peer.pidfd, selectors.EVENT_READ,
                                   ("caller", session))

    @staticmethod
    def caller_ended(session: Session) -> None:
        """Its replies may still be unread in the socket: read what is there first, as on a
        hang-up (a wrapper that died after its job's end got its answer)."""
        if not session.closed:
            session.readable()
        if not session.closed:
            session.hang_up()

    def idle_check(self, session: Session) -> None:
        """A connection must make its call in time, and go once it has its answer. A call that
        arrived while the loop was busy (many callers at once) counts: read what is there
        first."""
        if session.closed or (session.job is not None and not session.final_sent):
            return
        if session.job is None:
            session.readable()
            self.pump()
        if not session.closed and (session.job is None or session.final_sent):
            session.hang_up()

    def want_write(self, session: Session, on: bool = True) -> None:
        if session.closed:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.selector.modify(session.sock, events, ("session", session))

    def forget_socket(self, session: Session) -> None:
        fd = session.sock.fileno()
        if self.sessions.get(fd) is session:
            del self.sessions[fd]
            self.connections[session.peer.uid] -= 1
            self.selector.unregister(session.sock)
            if session.peer.pidfd != peer.NO_PIDFD:
                self.selector.unregister(session.peer.pidfd)

    # -- jobs ----------------------------------------------------------------------------------
    def started(self, session: Session) -> None:
        assert session.job is not None and session.job.unit is not None
        self.by_unit[session.job.unit] = session

    # -- suspension (HTCondor's condor_suspend) ---------------------------------------------------
    def follow_suspension(self, session: Session) -> None:
        """Mirror the caller's suspension onto its job: inotify on its cgroup.events where it
        has one (cgroup v2: condor_suspend freezes the slot's cgroup), and a look at its
        process state every suspend.POLL_INTERVAL (SIGSTOP: HTCondor's procd on cgroup v1)."""
        events = session.caps.freeze_file if session.caps else None
        if events:
            try:
                if self.inotify is None:
                    self.inotify = suspend.Inotify()
                    self.selector.register(self.inotify.fd, selectors.EVENT_READ,
                                           ("inotify", None))
                session.freeze_watch = self.inotify.watch(events)
                self.freeze_watches[session.freeze_watch] = session
            except OSError as exc:
                self.log.warning(f"cannot watch {events}: {exc}")
        self.at(time.monotonic() + suspend.POLL_INTERVAL, _bound(self.look_at_caller, session),
                session)

    def suspension_now(self, session: Session) -> None:
        """Where the caller stands now (a job taken back after a restart of the broker)."""
        events = session.caps.freeze_file if session.caps else None
        session.caller_suspended(frozen=suspend.frozen(events) if events else None,
                                 stopped=suspend.stopped(session.peer.pid))

    def freezes_changed(self) -> None:
        assert self.inotify is not None
        for wd in self.inotify.changed():
            session = self.freeze_watches.get(wd)
            if session is not None and session.caps and session.caps.freeze_file:
                session.caller_suspended(frozen=suspend.frozen(session.caps.freeze_file))

    def look_at_caller(self, session: Session) -> None:
        if session.job is None or session.final_sent or session.hung_up:
            return
        session.caller_suspended(stopped=suspend.stopped(session.peer.pid))
        self.at(time.monotonic() + suspend.POLL_INTERVAL, _bound(self.look_at_caller, session),
                session)

    def stop_following(self, session: Session) -> None:
        wd = session.freeze_watch
        if wd is not None and self.freeze_watches.pop(wd, None) is session and self.inotify:
            self.inotify.unwatch(wd)

    def when_ended(self, session: Session) -> None:
        self.ended_waiters.add(session)
        if session.job is not None and session.job.has_ended():
            self.ended_waiters.discard(session)
            session.collect_quietly()

    def releasing(self, session: Session) -> None:
        """collect() let the unit go: forget it when systemd has, or after a while anyway."""
        job = session.job
        if job is None:
            return
        if job.released:
            self.released(session)
            return
        self.at(time.monotonic() + job.spec.stop_timeout + CLEANUP_TIMEOUT,
                _bound(self.give_up_on, session), session)

    def give_up_on(self, session: Session) -> None:
        job = session.job
        if job is not None and not job.released:
            job.log.warning(f"{job.unit} was not removed within the cleanup timeout")
            job.reset_failed()
            self.backend.forget(job)
            self.released(session)

    def released(self, session: Session) -> None:
        self.stop_following(session)
        session.release_held_fds()
        session.forget_kept()
        job = session.job
        if job is not None and self.by_unit.get(job.unit or "") is session:
            del self.by_unit[job.unit or ""]
            self.leave_slice(session)

    def leave_slice(self, session: Session) -> None:
        if session.in_slice is not None:
            self.slices.leave(session.in_slice)
            session.in_slice = None

    def jobs_of(self, uid: int) -> int:
        return sum(1 for s in self.by_unit.values() if s.peer.uid == uid)

    def list_jobs(self, uid: int) -> list[dict]:
        return [{"unit": s.job.unit, "job_id": s.job.spec.job_id, "uid": s.peer.uid,
                 "pid": s.peer.pid, "state": f"{s.job.active_state}/{s.job.sub_state}"}
                for s in self.by_unit.values()
                if s.job is not None and s.job.unit and (uid == 0 or s.peer.uid == uid)]

    # -- stopping ------------------------------------------------------------------------------
    def watch_signals(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda *_: None)
        self.selector.register(read_fd, selectors.EVENT_READ, ("signal", read_fd))

    def signalled(self, read_fd: int) -> None:
        try:
            got = os.read(read_fd, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM in got or signal.SIGINT in got:
            if self.restarting():
                self.hand_over()
            else:
                self.shut_down()

    def restarting(self) -> bool:
        """Is systemd restarting us (a restart job on our unit), with our fd store in use?"""
        if not any(s.kept is not None and s.kept.stored for s in self.sessions.values()):
            return False
        conn = self.backend.conn
        try:
            (path,) = conn.call_manager("GetUnitByPID", "u", (os.getpid(),))
            job_id, job_path = conn.get_all(path, "org.freedesktop.systemd1.Unit")["Job"]
            if not job_id:
                return False
            job_type = conn.get_all(job_path, "org.freedesktop.systemd1.Job")["JobType"]
        except (BusError, KeyError, ValueError) as exc:
            self.log.warning(f"cannot tell a restart from a stop ({exc}): stopping")
            return False
        return "restart" in job_type

    def measure_restart_room(self) -> None:
        """How many jobs systemd's fd store can keep across a restart (two fds each): a job
        beyond that would lose its exit status in a restart, so it is refused instead."""
        store_max = self.backend.fd_store_max(os.getpid())
        if store_max is None:
            self.log.warning("cannot read our FileDescriptorStoreMax: jobs are not counted "
                             "against the fd store")
            return
        self.restart_room = store_max // 2
        if self.restart_room < self.policy.max_connections:
            self.log.warning(f"FileDescriptorStoreMax={store_max} keeps {self.restart_room} "
                             "jobs across a restart of the broker, fewer than max_connections "
                             f"({self.policy.max_connections}): more jobs are refused")

    def store_full(self) -> bool:
        """No room left in the fd store for one more job."""
        if self.restart_room is None:
            return False
        kept = sum(1 for s in self.by_unit.values() if s.kept is not None)
        return kept >= self.restart_room

    def hand_over(self) -> None:
        """A restart: leave every job running. Its connection and state are in systemd's fd
        store; the next broker takes them back (take_back)."""
        self.stopping = True
        self.log.info(f"restarting; {len(self.by_unit)} jobs stay, for the next broker")

    def take_back(self, entries: list[restart.Entry]) -> None:
        """The jobs a previous broker left in the fd store: each gets its session again, its
        caller its replies; a caller gone meanwhile has its job killed, as on a hang-up."""
        for entry in entries:
            try:
                state = entry.state()
            except ValueError as exc:
                self.log.error(f"fd store entry {entry.name}: {exc}; dropped")
                entry.kept().drop()
                if entry.connection is not None:
                    os.close(entry.connection)
                continue
            if entry.connection is None:  # its caller hung up while no broker was here
                sock, other = socket.socketpair()
                other.close()  # the session reads the hang-up at once, and kills the job
                caller = peer.Peer(*_ids(state), peer.NO_PIDFD)
            else:
                sock = socket.socket(fileno=entry.connection)
                caller = None
            sock.setblocking(False)
            session = Session(self, sock, caller)
            session.kept = entry.kept()
            self.add_session(session)
            try:
                session.restore(state)
            except Exception:  # noqa: BLE001 - one bad entry must not cost the others
                self.log.error(f"cannot take back {entry.name}: {_traceback()}")
                session.hang_up()
            self.pump()
        if entries:
            self.log.info(f"took back {len(entries)} jobs from the previous broker")
        self.kill_orphans()

    def kill_orphans(self) -> None:
        """Callers' units that no session answers for (their state was lost or could not be
        taken back): nobody would ever reap them or tell anybody how they ended, so they are
        killed, and the journal says so. A job never runs on without its broker."""
        claimed = set(self.by_unit)
        for unit in self.backend.units_in_slices("condor-job-u*.service", "condor-u"):
            if unit not in claimed:
                self.log.warning(f"{unit} has no caller any more (its state was lost in a "
                                 "restart of the broker): killing it")
                self.backend.kill_unit_by_name(unit)

    def shut_down(self) -> None:
        """Stop: every job still running is killed (a job must not outlive the broker that
        answers for it) and its caller told it ended by SIGKILL."""
        self.stopping = True
        self.log.info(f"stopping; killing {len(self.by_unit)} jobs")
        for session in list(self.by_unit.values()):
            if session.job is not None and not session.final_sent:
                session.job.kill_unit(signal.SIGKILL)
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        while any(s.job is not None and not s.final_sent for s in self.by_unit.values()) \
                and time.monotonic() < deadline:
            self.selector.select(0.05)
            self.pump()


def _traceback() -> str:
    import traceback

    return traceback.format_exc().replace("\n", " | ")


def _address(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _ids(state: dict) -> tuple[int, int, int]:
    """The caller's uid, gid and pid as the state recorded them."""
    return tuple(int(state.get(key) or 0) for key in ("uid", "gid", "pid"))  # type: ignore[return-value]


def _bound(method: Callable[[Session], None], session: Session) -> Callable[[], None]:
    return lambda: method(session)
