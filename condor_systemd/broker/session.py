"""One caller's connection: its calls, and the job it runs (at most one).

Everything a caller sends is hostile until checked: frames are bounded and parsed by varlink.py;
parameters are type-checked, options go through the same parser as `condor-systemd run` and the
policy applies to non-root callers (request.py); fds are checked before systemd gets them and
closed by us on every path. A caller that breaks the protocol is cut off (and its job stopped); one
that disconnects or dies stops its job at once (HTCondor's hard kill, a crashed wrapper).
"""

from __future__ import annotations

import signal
import socket
import time
from typing import TYPE_CHECKING

from .. import varlink
from ..errors import CondorSystemdError, UsageError
from ..log import WARNING, Log
from ..usage import job_attributes
from . import interface, peer, request, restart

if TYPE_CHECKING:
    from ..backends.unitjob import SystemdJob
    from ..spec import JobSpec
    from ..usage import Usage
    from .server import Server

STOPPING = (signal.SIGTERM, signal.SIGINT)
FORWARDABLE = frozenset(range(1, 32)) - {signal.SIGKILL, signal.SIGSTOP}


# One caller's share of the journal and of our memory: what its job may make us say (every
# line is the caller's doing: a signal forwarded, a cap applied) is bounded, so that one caller
# cannot make journald's rate limit silence the broker's lines about everybody else.
MAX_JOURNAL_LINES = 200  # per job
MAX_PENDING_NOTICES = 64  # not yet sent to the caller
MAX_NOTICE_LENGTH = 1024  # characters: 64 of them stay far below varlink's message limit
# Forwarded signals: a burst, then so many a second; more are dropped (and counted, once).
SIGNAL_BURST, SIGNALS_PER_SECOND = 20, 10.0


class JournalBudget:
    """Journal lines about one uid's jobs: a burst, then so many a second; the rest go to the
    callers only, and the next line allowed says how many were held back."""

    BURST, PER_SECOND = 400, 20.0

    def __init__(self, log: Log) -> None:
        self.log = log
        self.uids: dict[int, tuple[float, float, int]] = {}  # uid -> (tokens, when, held back)

    def allows(self, uid: int) -> bool:
        now = time.monotonic()
        tokens, when, held = self.uids.get(uid, (float(self.BURST), now, 0))
        tokens = min(float(self.BURST), tokens + (now - when) * self.PER_SECOND)
        if tokens < 1:
            self.uids[uid] = (tokens, now, held + 1)
            return False
        if held:
            self.log.warning(f"{held} lines about the jobs of uid {uid} were not logged: more "
                             f"than {self.PER_SECOND:g} a second")
        self.uids[uid] = (tokens - 1, now, 0)
        return True


class SessionLog(Log):
    """The job's diagnostics: to the journal (with its unit), and to the caller as notices."""

    def __init__(self, session: Session) -> None:
        super().__init__(to_tty=False)
        self.session = session
        self.notices: list[dict] = []
        self.lines = 0
        self.dropped_notices = 0

    def emit(self, priority: int, message: str) -> None:
        self.lines += 1
        budget = self.session.server.journal_budget
        if self.lines <= MAX_JOURNAL_LINES and budget.allows(self.session.peer.uid):
            super().emit(priority, message)
        elif self.lines == MAX_JOURNAL_LINES + 1:
            super().emit(WARNING, f"more than {MAX_JOURNAL_LINES} lines about this job: the "
                                  "rest go to the caller only")
        if len(self.notices) < MAX_PENDING_NOTICES:
            if len(message) > MAX_NOTICE_LENGTH:
                message = message[:MAX_NOTICE_LENGTH - 3] + "..."
            self.notices.append({"priority": priority, "message": message})
        else:
            self.dropped_notices += 1

    def take(self) -> list[dict]:
        notices, self.notices = self.notices, []
        if self.dropped_notices:
            notices.append({"priority": WARNING, "message": f"{self.dropped_notices} more "
                                                          "notices were dropped"})
            self.dropped_notices = 0
        return notices


class Session:
    def __init__(self, server: Server, sock: socket.socket,
                 caller: peer.Peer | None = None) -> None:
        self.server = server
        self.sock = sock
        self.peer = caller or peer.identify(sock)
        self.reader = varlink.Reader()
        self.outbox = varlink.Outbox()
        self.job: SystemdJob | None = None
        self.log: SessionLog | None = None
        self.usage_format = "json"
        self.final_sent = False
        # what BindPaths= names (request.py): open until systemd has let the unit go, since
        # every process of the unit is set up with them, the ExecStopPost holder too, and a
        # number closed early could name another caller's directory by then
        self.held_fds: list[int] = []
        self.hung_up = False
        self.closed = False
        self.stop_deadline: float | None = None
        self.killed = False
        self.capped: list[tuple[str, str]] = []
        self.caps: peer.Caps | None = None
        self.frozen = False  # the job is held because its caller is suspended
        self.caller_frozen = self.caller_stopped = False
        self.killed_while_starting = False
        self.freeze_watch: int | None = None  # the inotify watch on the caller's cgroup.events
        self.usage_file: str | None = None
        self.log_file: str | None = None
        self.spec: JobSpec | None = None
        self.kept: restart.Kept | None = None  # the job's entry in systemd's fd store
        self.final_reply: dict | None = None
        self.saved_phase = ""
        self.signal_tokens, self.signal_refill = float(SIGNAL_BURST), time.monotonic()
        self.in_slice: str | None = None  # the caller slice its job counts in (slices.py)
        self.dropped_signals = 0

    # -- input ---------------------------------------------------------------------------------
    def readable(self) -> None:
        try:
            alive = varlink.recv_into(self.sock, self.reader)
            while (got := self.reader.next()) is not None:
                message, fds = got
                try:
                    self.dispatch(message, fds)
                finally:
                    for fd in fds:
                        _close(fd)
        except varlink.ProtocolError as exc:
            self.server.log.notice(f"uid {self.peer.uid} pid {self.peer.pid}: {exc}; "
                                   "closing the connection")
            alive = False
        except OSError:
            alive = False
        if not alive:
            self.hang_up()

    def dispatch(self, message: dict, fds: list[int]) -> None:
        method, parameters, more, oneway = varlink.validate_call(message)
        if self.job is not None:
            if method == f"{interface.NAME}.Signal" and oneway:
                self.forward(parameters)
                return
            raise varlink.ProtocolError("only oneway Signal calls while a job runs")
        answer = self.answer(method, parameters, more, fds)
        if answer is not None and not oneway:
            self.send(answer)

    def answer(self, method: str, parameters: dict, more: bool, fds: list[int]) -> dict | None:
        iface, _, name = method.rpartition(".")
        if iface == "org.varlink.service":
            if name == "GetInfo":
                return varlink.reply(interface.info())
            if name == "GetInterfaceDescription":
                wanted = parameters.get("interface")
                if wanted == interface.NAME:
                    return varlink.reply({"description": interface.DESCRIPTION})
                if wanted == "org.varlink.service":
                    return varlink.reply({"description": interface.SERVICE_INTERFACE})
                return varlink.error(varlink.INTERFACE_NOT_FOUND, {"interface": str(wanted)})
        elif iface == interface.NAME:
            if name == "List":
                return varlink.reply({"jobs": self.server.list_jobs(self.peer.uid)})
            if name == "Run":
                if not more:
                    return varlink.error(varlink.EXPECTED_MORE)
                return self.run(parameters, fds)
            if name == "Signal":
                return interface.reply_error(interface.NO_JOB)
        else:
            return varlink.error(varlink.INTERFACE_NOT_FOUND, {"interface": iface})
        return varlink.error(varlink.METHOD_NOT_FOUND, {"method": method})

    # -- Run -----------------------------------------------------------------------------------
    def run(self, parameters: dict, fds: list[int]) -> dict | None:
        try:
            asked = request.prepare(parameters, fds, self.peer, self.server.policy,
                                    self.server.backend.layout, self.server.addresses)
            spec, stdio = asked.spec, asked.stdio
            self.held_fds = asked.held_fds
            self.caps, self.capped = asked.caps, asked.capped
            self.usage_file, self.usage_format = asked.usage_file, asked.usage_format
            self.log_file = asked.log_file
        except interface.Invalid as exc:
            return varlink.error(varlink.INVALID_PARAMETER, {"parameter": exc.parameter})
        except UsageError as exc:
            return interface.reply_error(interface.USAGE_ERROR, message=str(exc))
        except CondorSystemdError as exc:
            return interface.reply_error(interface.LAUNCH_FAILED, message=str(exc),
                                         exit_code=exc.exit_code)
        limit = self.server.policy.max_jobs_per_user
        if self.peer.uid != 0 and self.server.jobs_of(self.peer.uid) >= limit:
            self.release_held_fds()
            return interface.reply_error(interface.TOO_MANY_JOBS, limit=limit)
        if self.server.store_full():
            self.release_held_fds()
            return interface.reply_error(
                interface.LAUNCH_FAILED, exit_code=125,
                message=f"the broker keeps {self.server.restart_room} jobs across a restart "
                        "(FileDescriptorStoreMax=) and all are in use: refused rather than run "
                        "without its exit status surviving a restart")
        self.log = SessionLog(self)
        for key, why in self.capped:
            self.log.notice(f"{key}: {why}")
        self.spec = spec
        try:
            if self.peer.uid != 0:  # its jobs together within the caller's cgroup (slices.py)
                assert self.caps is not None
                self.server.slices.enter(spec.slice, self.peer.uid, self.caps,
                                         self.server.policy.cap_by_caller_cgroup)
                self.in_slice = spec.slice
        except CondorSystemdError as exc:
            self.release_held_fds()
            self.log.error(str(exc))
            return interface.reply_error(interface.LAUNCH_FAILED, message=str(exc),
                                         exit_code=exc.exit_code)
        self.keep()  # before the unit exists: a broker killed from here on leaves it findable
        try:
            self.job = self.server.backend.start(spec, stdio, self.log)
        except CondorSystemdError as exc:
            self.forget_kept()
            self.release_held_fds()
            self.server.leave_slice(self)
            self.log.error(str(exc))
            if isinstance(exc, UsageError):
                return interface.reply_error(interface.USAGE_ERROR, message=str(exc))
            return interface.reply_error(interface.LAUNCH_FAILED, message=str(exc),
                                         exit_code=exc.exit_code)
        self.remember()
        self.server.started(self)
        self.server.follow_suspension(self)
        self.announce()
        self.job_event()  # it may have ended already
        return None

    def announce(self) -> None:
        """The first reply: the job runs (sent again by a restarted broker: harmless)."""
        assert self.job is not None
        self.send(varlink.reply({"unit": self.job.unit, "usage_file": self.usage_file,
                                 "usage_format": self.usage_format, "log_file": self.log_file,
                                 "notices": self.take_notices()}, continues=True))

    # -- the job's life -------------------------------------------------------------------------
    def forward(self, parameters: dict) -> None:
        signum = parameters.get("signal")
        if type(signum) is not int or signum not in FORWARDABLE or self.job is None:
            return  # oneway: nothing to answer; a bad one is ignored
        starts_stop = signum in STOPPING and self.stop_deadline is None
        if not self.signal_allowed() and not starts_stop:  # the stop itself is never dropped
            self.dropped_signals += 1
            return
        if self.dropped_signals:
            self.job.log.warning(f"{self.dropped_signals} signals dropped: more than "
                                 f"{SIGNALS_PER_SECOND:g} a second")
            self.dropped_signals = 0
        self.job.send_signal(signum)
        if signum in STOPPING and self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.job.spec.stop_timeout
            self.server.at(self.stop_deadline, self.stop_timeout_reached, self)
            self.remember()

    def signal_allowed(self) -> bool:
        """A token bucket: SIGNAL_BURST at once, then SIGNALS_PER_SECOND."""
        now = time.monotonic()
        self.signal_tokens = min(float(SIGNAL_BURST), self.signal_tokens +
                                 (now - self.signal_refill) * SIGNALS_PER_SECOND)
        self.signal_refill = now
        if self.signal_tokens < 1:
            return False
        self.signal_tokens -= 1
        return True

    def stop_timeout_reached(self) -> None:
        if self.job is not None and not self.final_sent and not self.killed:
            self.killed = True
            self.remember()
            self.job.kill()
            self.job_event()

    def caller_suspended(self, frozen: bool | None = None, stopped: bool | None = None) -> None:
        """The caller's cgroup was frozen or thawed, or the caller stopped or continued: the
        job is held while either holds the caller."""
        if frozen is not None:
            self.caller_frozen = frozen
        if stopped is not None:
            self.caller_stopped = stopped
        suspended = self.caller_frozen or self.caller_stopped
        if self.job is None or self.final_sent or suspended == self.frozen:
            return
        self.frozen = suspended
        self.job.freeze(suspended)
        self.remember()
        self.flush_notices()

    def job_event(self) -> None:
        """The job's unit changed: if its main process has ended, collect and reply."""
        job = self.job
        if job is None or self.final_sent or not job.has_ended():
            if job is not None and job.phase != self.saved_phase:
                self.remember()  # running: its cgroup and verdicts are known now
            self.flush_notices()
            return
        self.final_sent = True
        try:
            usage = job.collect(release=False)
        except CondorSystemdError as exc:
            self.final_reply = interface.reply_error(interface.LAUNCH_FAILED, message=str(exc),
                                                     exit_code=exc.exit_code)
        else:
            self.final_reply = varlink.reply({**self.final(usage),
                                              "notices": self.take_notices()})
        # the reply is kept before the unit (and the exit status with it) may go: a broker
        # killed in between hands the reply to the next, which lets the unit go then
        self.remember()
        job.release()
        self.send(self.final_reply)
        self.server.releasing(self)

    def final(self, usage: Usage) -> dict:
        for key, why in self.capped:
            usage.capped[key] = why
        record = usage.to_classad() if self.usage_format == "classad" else usage.to_json()
        attributes = [{"name": name, "value": value} for name, value in job_attributes(usage)]
        return {"exit_code": usage.exit_code, "signal": usage.signal, "record": record,
                "job_attributes": attributes}

    def hang_up(self) -> None:
        """The caller closed the connection or died: its job is over (HTCondor's hard kill)."""
        if self.hung_up:
            return
        self.hung_up = True
        self.server.forget_socket(self)
        if self.kept is not None and self.job is not None and not self.final_sent:
            self.kept.store(None)  # no connection to give back; a new broker kills the job
        if self.job is not None and not self.final_sent:
            self.job.log.notice("the caller is gone: killing every process of the job")
            if self.frozen:  # HTCondor's hard kill freezes first: let the kill reach them
                self.frozen = False
                self.job.freeze(False)
            self.final_sent = True  # nobody to tell; collect() lets the unit go
            # still starting: nothing to kill yet; killed again once running (server.pump)
            self.killed_while_starting = self.job.phase == "starting"
            self.job.kill_unit(signal.SIGKILL)
            self.server.when_ended(self)
        self.close()

    def collect_quietly(self) -> None:
        """After a hang-up: the job has ended; read nothing back to anybody, release it."""
        if self.job is None:
            return
        try:
            self.job.collect()
        except CondorSystemdError:
            pass
        self.server.releasing(self)

    # -- output --------------------------------------------------------------------------------
    def take_notices(self) -> list[dict]:
        return [] if self.log is None else self.log.take()

    def flush_notices(self) -> None:
        if self.log is not None and self.log.notices and not self.final_sent:
            self.send(varlink.reply({"notices": self.take_notices()}, continues=True))

    def send(self, message: dict) -> None:
        if self.closed:
            return
        try:
            self.outbox.queue(message)
            if not self.outbox.flush(self.sock):
                self.server.want_write(self)
        except varlink.ProtocolError as exc:  # it does not read its replies
            self.server.log.notice(f"uid {self.peer.uid} pid {self.peer.pid}: {exc}")
            self.hang_up()
        except OSError:
            self.hang_up()

    def writable(self) -> None:
        try:
            if self.outbox.flush(self.sock):
                self.server.want_write(self, False)
        except OSError:
            self.hang_up()

    # -- surviving a restart of the broker (restart.py) --------------------------------------------
    def keep(self) -> None:
        try:
            self.kept = restart.Kept.new()
            self.remember()
            self.kept.store(self.sock.fileno())
        except OSError as exc:  # no memfd: this job will not survive a restart, but it runs
            self.server.log.warning(f"cannot keep the job's state for a restart: {exc}")
            self.kept = None

    def remember(self) -> None:
        if self.kept is None or self.spec is None:
            return
        job = self.job
        self.saved_phase = job.phase if job else "starting"
        try:
            self.kept.save({
                # the job's spec: the backend completes the caller's (its CPU set)
                "spec": restart.spec_to_state(job.spec if job else self.spec),
                "phase": self.saved_phase,
                "uid": self.peer.uid, "gid": self.peer.gid, "pid": self.peer.pid,
                "start_time": self.peer.start_time,
                "cgroup": job.cgroup if job else None,
                "enforced": restart.verdicts_to_state(job.enforced if job else {}),
                "capped": self.capped, "usage_file": self.usage_file,
                "usage_format": self.usage_format, "log_file": self.log_file,
                "stop_deadline": self.stop_deadline, "killed": self.killed,
                "frozen": self.frozen, "final": self.final_reply})
        except OSError as exc:
            self.server.log.warning(f"cannot keep the job's state for a restart: {exc}")

    def restore(self, state: dict) -> None:
        """Take the job back after a restart of the broker (server.take_back)."""
        self.spec = restart.spec_from_state(state["spec"])
        self.capped = [(str(k), str(why)) for k, why in state.get("capped") or ()]
        self.usage_file, self.log_file = state.get("usage_file"), state.get("log_file")
        self.usage_format = state.get("usage_format") or "json"
        self.stop_deadline, self.killed = state.get("stop_deadline"), bool(state.get("killed"))
        self.frozen, self.final_reply = bool(state.get("frozen")), state.get("final")
        if self.final_reply is not None:  # the job was over; the reply may not have gone out
            self.final_sent = True
            self.send(self.final_reply)
            # and its unit may not have been let go (collect(release=False), then killed)
            self.server.backend.release_ended(self.spec.unit_name)
            return
        # the connection may be another process's by now (the caller died, a job of its own
        # holds it): its caller is gone, as on a hang-up
        uid = int(state.get("uid", -1))
        replaced = self.peer.uid != uid or (state.get("start_time") is not None and
                                            state["start_time"] != self.peer.start_time)
        if uid != 0 and (not self.spec.job_id.startswith(f"u{uid}-") or
                         self.spec.user != str(uid)):  # not a caller's job as we make them
            raise ValueError(f"{self.spec.unit_name} is not a job of uid {uid}")
        self.log = SessionLog(self)
        self.job = self.server.backend.adopt(
            self.spec, self.log, state.get("phase") or "starting", state.get("cgroup"),
            restart.verdicts_from_state(state.get("enforced") or {}))
        self.saved_phase = self.job.phase
        self.server.started(self)
        if not self.job.created:  # never started, or gone long ago: the exit status is lost
            self.final_sent = True
            self.final_reply = interface.reply_error(
                interface.LAUNCH_FAILED, exit_code=125,
                message=f"the broker restarted and {self.spec.unit_name} was gone")
            self.send(self.final_reply)
            self.server.releasing(self)
            return
        if self.peer.uid != 0 and self.spec.slice.startswith("condor-u"):
            self.server.slices.adopt(self.spec.slice)
            self.in_slice = self.spec.slice
        if replaced or not self.peer.alive():
            self.hang_up()
            return
        if self.job.phase == "starting" and binds_by_fd(self.spec):
            self.refuse_half_started()
            return
        self.caps = peer.cgroup_caps(self.peer.pid, self.server.backend.layout)
        self.server.follow_suspension(self)
        self.announce()
        if self.stop_deadline is not None and not self.killed:
            self.job.stopping = True
            self.server.at(self.stop_deadline, self.stop_timeout_reached, self)
        self.server.suspension_now(self)
        self.job_event()

    def refuse_half_started(self) -> None:
        """Its unit is still starting, and the broker before us is gone: its directories are
        bound from that broker's fds (BindPaths= /proc/<pid>/fd/<n>), which are gone too, so
        the job may be set up without them (a missing source is skipped, for the holder's
        sake). None of the job's own code has run yet (systemd says the start is not done):
        it is killed, and its caller told so (125: HTCondor requeues it)."""
        assert self.job is not None and self.log is not None and self.spec is not None
        message = (f"the broker restarted while {self.spec.unit_name} was starting: its "
                   "directories can no longer be bound, so it was stopped before it ran")
        self.log.error(message)
        self.final_sent = True
        self.final_reply = interface.reply_error(interface.LAUNCH_FAILED, exit_code=125,
                                                 message=message)
        self.killed_while_starting = self.job.phase == "starting"
        self.job.kill_unit(signal.SIGKILL)
        self.server.when_ended(self)
        self.remember()
        self.send(self.final_reply)

    def forget_kept(self) -> None:
        if self.kept is not None:
            self.kept.drop()
            self.kept = None

    def release_held_fds(self) -> None:
        while self.held_fds:
            _close(self.held_fds.pop())

    def close(self) -> None:
        if self.job is None:
            self.release_held_fds()
            self.forget_kept()  # (with a job: once the server has released it)
        if not self.closed:
            self.closed = True
            self.reader.close()
            self.outbox.close()
            self.sock.close()
            self.peer.close()


def binds_by_fd(spec: JobSpec) -> bool:
    """Whether the unit's BindPaths= name directories by the broker's fds."""
    return (spec.sandbox.isolate and spec.scratch_bind is not None) or bool(spec.tmp_binds)


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
