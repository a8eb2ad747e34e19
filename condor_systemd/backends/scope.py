"""A job in a transient scope (--scope): the wrapper forks it, so it stays the wrapper's child.

The job is forked, held until systemd has moved it into the new scope, then released to exec.
A sentinel process (all signals blocked) keeps the scope's cgroup alive until the accounting
has been read; leftovers are killed first, by pid. Scopes cannot be sandboxed (systemd sets a
service's sandbox up when it forks the service; a scope's processes already exist).
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import LaunchError
from ..spec import JobSpec
from ..usage import NOT_SENT, Usage, Verdict
from . import cgroupfs, child, pidfd, properties
from .record import CLD_EXITED, CLD_KILLED
from .unitjob import CLEANUP_TIMEOUT, SystemdJob

SCOPE_IFACE = "org.freedesktop.systemd1.Scope"


class ScopeJob(SystemdJob):
    iface = SCOPE_IFACE

    def launch(self, stdio: tuple[int, int, int]) -> None:
        self.main_pid = self.sentinel_pid = None
        self.pidfd = pidfd.NONE
        self.status: int | None = None
        self.prepare_devices()
        self.prepare_io()
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
            if self.spec.limits.allowed_cpus is not None:
                # the child sets it too; set here, it is in force before it is read back
                _try_affinity(self.main_pid, self.spec.limits.allowed_cpus)
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

    def job_pids(self) -> list[int]:
        return [pid for pid in super().job_pids() if pid != self.sentinel_pid]

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

    def collect(self, release: bool = True) -> Usage:  # a scope's cgroup goes with it anyway
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
        return usage

    def finish(self) -> Usage:
        usage = self.collect()
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




def _fork_job(spec: JobSpec, stdio: tuple[int, int, int], go_r: int, err_w: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    stage = "CPU affinity"
    try:  # child: wait until the scope exists, then become the job
        if spec.limits.allowed_cpus is not None:  # no cpuset on cgroup v1: the affinity holds
            os.sched_setaffinity(0, spec.limits.allowed_cpus)
        stage = "standard input/output"
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


def _try_affinity(pid: int, cpus: tuple[int, ...]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        pass  # the child's own call reports a failure; verify_limits says what held


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


