"""The thin client: `condor-systemd run` through the broker, as any user, root included.

It starts once per job and lives as long as the job, so it imports only what it needs: os, sys,
select, the C halves of signal and socket, and the varlink framing (array and the C JSON scanner)
-- no argparse, jeepney, psutil, asyncio, json, re, enum or typing (tests/unit/test_client.py).
The broker parses the options (it is the policy point); the client does what only the
caller can do:

* resolve the command in its own PATH and its own view of the filesystem (the broker never
  looks at paths on a user's behalf), and read the job id from its HTCondor job ad;
* pass its stdin/stdout/stderr as fds, its environment and working directory (what else the
  job inherits from it -- umask, rlimits, CPU affinity, oom_score_adj, nice -- the broker reads
  from /proc itself: a caller could lie about it);
* forward the signals it gets (a oneway Signal call on the same connection; the broker stops
  the job after --stop-timeout);
* write the usage file and the log file as the caller, and exit with the job's status.

Closing the connection, or dying, means "stop the job": the broker kills it at once.

Exit status as for `condor-systemd run` (cli.py): the job's own, or 2 for bad usage, 125 when
the job could not be launched (the broker unreachable or refusing: HTCondor's error file is
written so that the job is requeued, never run without the broker), 126/127 for the command.
"""

from __future__ import annotations

import os
import select
import sys

from . import varlink
from .command import resolve_command
from .errors import CondorSystemdError, LaunchError, UsageError
from .exits import (
    WRAPPER_ERROR_FILE,
    die_by_signal,
    stdio_fds,
    tell_htcondor,
    write_file_atomically,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # signal.py wraps these in enums: enum alone costs ~2.5 ms of every start
    import _signal as signal

INTERFACE = "io.condorsystemd.Job"
SOCKET = f"/run/condor-systemd/{INTERFACE}"
SOCKET_VARIABLE = "CONDOR_SYSTEMD_SOCKET"  # another broker's socket (tests, several brokers)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
NOTICE = 5  # syslog priority: notices and worse reach a terminal


_chosen_socket: str | None = None  # --socket: the root-owned wrapper's, not the job's word


def use_socket(path: str | None) -> None:
    """The broker's socket as the command line names it; it wins over the environment, which
    under HTCondor is the job's (getenv = true) and must not choose the broker."""
    global _chosen_socket
    _chosen_socket = path


def socket_path() -> str:
    return _chosen_socket or os.environ.get(SOCKET_VARIABLE) or SOCKET


def broker_installed() -> bool:
    return os.path.exists(socket_path())


class _Failed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run(options: list[str], command: list[str]) -> int:
    """Run `condor-systemd run OPTIONS -- COMMAND` through the broker; the wrapper's status."""
    environ = dict(os.environ)
    client = _Client(environ)
    try:
        return client.run(options, command)
    except CondorSystemdError as exc:  # before the broker was asked: the command, the cwd
        return client.fail(str(exc), exc.exit_code, isinstance(exc, LaunchError))
    except _Failed as exc:
        return client.fail(str(exc), exc.exit_code, exc.exit_code != UsageError.exit_code)


class _Client:
    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.log_file: str | None = None
        self.to_tty = sys.stderr.isatty()

    def fail(self, message: str, exit_code: int, launch_failure: bool) -> int:
        print(f"condor-systemd: {message}", file=sys.stderr)
        self.note(3, message)
        if launch_failure:
            tell_htcondor(self.environ, message)
        return exit_code

    def note(self, priority: int, message: str) -> None:
        """The broker already put it in the journal; the caller's own log file and terminal."""
        if self.log_file:
            import time

            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            try:
                with open(self.log_file, "a", encoding="utf-8") as f:
                    f.write(f"{stamp} condor-systemd[{os.getpid()}]: {message}\n")
            except OSError:
                pass
        if self.to_tty and priority <= NOTICE and priority > 3:
            print(f"condor-systemd: {message}", file=sys.stderr)

    def run(self, options: list[str], command: list[str]) -> int:
        try:
            cwd = os.getcwd()
        except FileNotFoundError:
            raise LaunchError("the current working directory no longer exists") from None
        job_env = {k: v for k, v in self.environ.items() if k != WRAPPER_ERROR_FILE}
        executable = resolve_command(command[0], job_env, cwd)
        fds = list(stdio_fds())
        parameters = {"arguments": options, "command": command, "executable": executable,
                      "cwd": cwd, "environment": _environment(job_env),
                      "stdin": 0, "stdout": 1, "stderr": 2, **_job_ids(self.environ)}
        for name, fd in _scratch_tmp(self.environ):
            parameters[name] = len(fds)
            fds.append(fd)
        own = _own_directory(self.environ, cwd)  # whether asked or the site's default
        if own is not None:
            parameters["scratch"] = len(fds)
            fds.append(own)
        sock = self.connect()
        try:
            varlink.send(sock, {"method": f"{INTERFACE}.Run", "parameters": parameters,
                                "more": True}, fds)
        except OSError as exc:
            raise _Failed(f"the broker at {socket_path()} cannot be reached: "
                          f"{exc.strerror or exc}", LaunchError.exit_code) from None
        except ValueError as exc:  # not representable in JSON (cannot happen: filtered)
            raise _Failed(f"cannot send the job to the broker: {exc}", 125) from None
        finally:
            for fd in fds[3:]:  # the broker holds its own copies of the tmp directories
                os.close(fd)
        return self.wait(sock)

    def connect(self):  # noqa: ANN201 - a socket.socket; not imported for the annotation
        import _socket  # (socket.py: enums again)

        path = socket_path()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise _Failed(f"the broker at {path} cannot be reached: {exc.strerror or exc}",
                          LaunchError.exit_code) from None
        return sock

    def wait(self, sock) -> int:  # noqa: ANN001
        """Until the final reply: forward signals, relay notices; then end as the job did."""
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for s in FORWARDED:
            signal.signal(s, _wake_only)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(read_fd, select.POLLIN)
        reader = varlink.Reader()
        started: dict = {}
        while True:
            ready = {fd for fd, _event in poller.poll()}
            for signum in _drained(read_fd):
                if signum in FORWARDED:
                    self.forward(sock, signum)
            if sock.fileno() not in ready:
                continue  # a signal only: the socket is blocking, reading would wait
            try:
                alive = varlink.recv_into(sock, reader)
                while (got := reader.next()) is not None:
                    message, fds = got
                    for fd in fds:
                        os.close(fd)  # the broker sends none; never keep what we did not ask for
                    parameters, continues = varlink.validate_reply(message, True)
                    self.relay(parameters)
                    if not continues:
                        return self.finish(started or parameters, parameters)
                    started.update(parameters)
            except varlink.VarlinkError as exc:
                raise _Failed(*_error_of(exc)) from None
            except (varlink.ProtocolError, OSError) as exc:
                raise _Failed(f"lost the broker: {exc}", LaunchError.exit_code) from None
            if not alive:
                what = "while the job ran" if started else "before the job started"
                raise _Failed(f"the broker closed the connection {what}", LaunchError.exit_code)

    def forward(self, sock, signum: int) -> None:  # noqa: ANN001
        try:
            varlink.send(sock, {"method": f"{INTERFACE}.Signal",
                                "parameters": {"signal": signum}, "oneway": True})
        except OSError:
            pass  # the broker is gone: the next read says so

    def relay(self, parameters: dict) -> None:
        if "log_file" in parameters:
            self.log_file = parameters["log_file"] or None
        for notice in parameters.get("notices") or ():
            self.note(int(notice.get("priority", NOTICE)), str(notice.get("message", "")))

    def finish(self, started: dict, final: dict) -> int:
        path, record = started.get("usage_file"), final.get("record")
        if path and record is not None:
            failed = write_file_atomically(path, record)
            if failed:
                self.note(3, f"cannot write usage file {path}: {failed}")
        self.chirp(final.get("job_attributes"))
        if final.get("signal"):
            return die_by_signal(int(final["signal"]))
        if final.get("exit_code") is None:
            unit = started.get("unit") or "the job's unit"
            message = f"the job's exit status is unknown (see journalctl -u {unit})"
            print(f"condor-systemd: {message}", file=sys.stderr)
            self.note(3, message)
            return LaunchError.exit_code
        return int(final["exit_code"])

    def chirp(self, attributes: object) -> None:
        """Under HTCondor, the record's figures into the job ad; a failure is only logged."""
        from .chirp import publish_usage

        failed = publish_usage(self.environ, lambda: [
            (str(a.get("name")), str(a.get("value")))
            for a in (attributes if isinstance(attributes, list) else ()) if isinstance(a, dict)])
        if failed:
            from .log import Log

            Log(log_file=self.log_file, to_tty=False).error(failed)


def _wake_only(signum: int, frame: object) -> None:
    """The wakeup fd carries the signal; the handler itself has nothing to do."""


def _drained(fd: int) -> bytes:
    try:
        return os.read(fd, 512)
    except BlockingIOError:
        return b""


def _error_of(exc: varlink.VarlinkError) -> tuple[str, int]:
    """The broker's error reply -> (message, exit status)."""
    parameters = exc.parameters or {}
    message = str(parameters.get("message") or exc.name)
    short = exc.name.rsplit(".", 1)[-1]
    if short == "UsageError":
        return message, UsageError.exit_code
    if short == "LaunchFailed":
        code = parameters.get("exit_code")
        return message, code if code in (125, 126, 127) else LaunchError.exit_code
    if exc.name == varlink.PERMISSION_DENIED:
        return "the broker refused: permission denied", LaunchError.exit_code
    return f"the broker failed: {message}", LaunchError.exit_code


def _environment(environ: dict[str, str]) -> list[str]:
    """NAME=value for JSON: a value that is not valid UTF-8 cannot travel (nor would systemd
    take it), so it is left out here, as the in-process path leaves it out of the unit."""
    out = []
    for name, value in environ.items():
        entry = f"{name}={value}"
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            continue
        out.append(entry)
    return out


def _scratch_tmp(environ: dict[str, str]) -> list[tuple[str, int]]:
    """HTCondor's scratch directory's tmp and var/tmp, opened as the caller (the broker binds
    them over the job's /tmp and /var/tmp if they are the caller's own, and looks up no path
    itself); none unless both are there (MOUNT_UNDER_SCRATCH makes them)."""
    scratch = environ.get("_CONDOR_SCRATCH_DIR")
    if not scratch or not scratch.startswith("/"):
        return []
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    opened: list[tuple[str, int]] = []
    try:
        for name, path in (("tmp", "tmp"), ("var_tmp", "var/tmp")):
            opened.append((name, os.open(f"{scratch}/{path}", flags)))
    except OSError:
        for _name, fd in opened:
            os.close(fd)
        return []
    return opened


def _own_directory(environ: dict[str, str], cwd: str) -> int | None:
    """The job's own directory (HTCondor's scratch directory, else the working one), opened
    as the caller: the broker binds it (--isolate) and finds its disk (the I/O caps) from this
    fd, never from a path."""
    scratch = environ.get("_CONDOR_SCRATCH_DIR", "")
    try:
        return os.open(scratch if scratch.startswith("/") else cwd,
                       os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # the broker says so


def _job_ids(environ: dict[str, str]) -> dict:
    """The job id and slot from HTCondor's ads, read as the caller (the broker reads no
    files on anybody's behalf)."""
    from .jobad import facts_from_env, slot_from_env

    facts = facts_from_env(environ)  # each ad read once, on every job's start
    if facts is None:
        return {"job_id": None, "slot": slot_from_env(environ), "htcondor": None}
    job_id = f"{facts['cluster']}.{facts['proc']}" if "cluster" in facts and "proc" in facts \
        else None
    return {"job_id": job_id, "slot": facts.get("slot"), "htcondor": facts}
