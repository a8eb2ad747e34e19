"""Which processes belong to a job, without cgroups: HTCondor's procd role, done with psutil.

A process is in the job's family when
  * it is the job's main process, or its parent is in the family (parentage), or
  * its parent is the wrapper and it started after the job: the wrapper is a child subreaper,
    so orphans (double forks, daemons) are reparented to it instead of to init, or
  * its environment carries the job's token (TOKEN_VARIABLE), which every descendant inherits
    unless it scrubs its environment: this finds processes started outside the tree, e.g. by
    a daemon the job asked to start them. Those are "escaped": they are not our descendants,
    so their CPU time never reaches our RUSAGE_CHILDREN and is sampled instead.

Identity is pid + start time, re-checked before every signal (psutil does this for us), so a
recycled pid is never signalled. The hot loop reads /proc/PID/stat itself: one read gives the
parent, state, start time, threads, RSS and CPU times, where psutil would read two or three
files per process per sample.

What sampling cannot see: a process that starts and ends within one sampling interval and is
found neither by parentage nor at exit (its CPU still counts through RUSAGE_CHILDREN when it
is a descendant); RSS between samples; an escaped process's CPU after its last sample; a
stranger's pid recycled by a process of the job within one interval (it passes for a stranger
until a kill, which looks at every process afresh).
"""

from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple

import psutil

TOKEN_VARIABLE = "CONDOR_SYSTEMD_JOB_TOKEN"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


class Stat(NamedTuple):
    ppid: int
    state: str
    cpu_ticks: tuple[int, int]  # utime, stime
    threads: int
    start_ticks: int
    rss_bytes: int


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return Stat(ppid=int(fields[1]), state=fields[0].decode(),
                cpu_ticks=(int(fields[11]), int(fields[12])), threads=int(fields[17]),
                start_ticks=int(fields[19]), rss_bytes=int(fields[21]) * PAGE)


class Member:
    __slots__ = ("proc", "start_ticks", "escaped", "stat", "stopped")

    def __init__(self, proc: psutil.Process, stat: Stat, escaped: bool) -> None:
        self.proc = proc
        self.start_ticks = stat.start_ticks
        self.escaped = escaped
        self.stat = stat
        self.stopped = False


class Family:
    """The job's processes, refreshed by scan(); signals and kills by identity."""

    def __init__(self, root: int, token: str) -> None:
        self.me = os.getpid()
        self.root = root
        self.token = token
        self.members: dict[int, Member] = {}
        self.strangers: set[int] = set()
        root_stat = read_stat(root)
        self.root_start = root_stat.start_ticks if root_stat else 0
        self.escaped_cpu_ticks = [0, 0]  # of escaped members that have gone
        self.rss_peak = 0
        self.tasks_peak = 0
        self.statuses: dict[int, int] = {}  # wait statuses of the members we reaped
        if root_stat:
            self._add(root, root_stat, escaped=False)

    # -- discovery ---------------------------------------------------------------------------
    def scan(self) -> None:
        """Refresh every member's stat, drop the gone, and find the new members."""
        pids = psutil.pids()
        live = set(pids)
        for pid, member in list(self.members.items()):
            stat = read_stat(pid) if pid in live else None
            if stat is None or stat.start_ticks != member.start_ticks:
                self._forget(pid)
            else:
                member.stat = stat
        self.strangers &= live
        unknown = {}
        for pid in pids:
            if pid not in self.members and pid not in self.strangers:
                stat = read_stat(pid)
                if stat is not None:
                    unknown[pid] = stat
        self._adopt_by_parentage(unknown)
        while unknown:  # the rest: ours only by the token (adopting one may adopt its children)
            pid, stat = unknown.popitem()
            if stat.start_ticks < self.root_start or not self._carries_token(pid):
                self.strangers.add(pid)
            else:
                self._add(pid, stat, escaped=True)
                self._adopt_by_parentage(unknown)

    def _adopt_by_parentage(self, unknown: dict[int, Stat]) -> None:
        found = True
        while found:  # a child may have a lower pid than its parent: repeat until stable
            found = False
            for pid, stat in list(unknown.items()):
                parent = self.members.get(stat.ppid)
                orphan = stat.ppid == self.me and stat.start_ticks >= self.root_start
                if parent is not None or orphan:
                    self._add(pid, stat, escaped=parent.escaped if parent else False)
                    del unknown[pid]
                    found = True

    def _carries_token(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours to read: then it is not ours to kill either
            return False
        return f"{TOKEN_VARIABLE}={self.token}".encode() in env.split(b"\0")

    def _add(self, pid: int, stat: Stat, escaped: bool) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        self.members[pid] = Member(proc, stat, escaped)

    def _forget(self, pid: int) -> None:
        member = self.members.pop(pid)
        if member.escaped:  # its last sampled CPU is all we will ever know
            self.escaped_cpu_ticks[0] += member.stat.cpu_ticks[0]
            self.escaped_cpu_ticks[1] += member.stat.cpu_ticks[1]

    # -- sampling ----------------------------------------------------------------------------
    def sample(self) -> int:
        """Scan, then record the family's summed RSS and task count; returns the RSS sum."""
        self.scan()
        rss = tasks = 0
        for member in self.members.values():
            if member.stat.state != "Z":
                rss += member.stat.rss_bytes
                tasks += member.stat.threads
        self.rss_peak = max(self.rss_peak, rss)
        self.tasks_peak = max(self.tasks_peak, tasks)
        return rss

    def escaped_cpu_seconds(self) -> tuple[float, float]:
        user, system = self.escaped_cpu_ticks
        for member in self.members.values():
            if member.escaped:
                user += member.stat.cpu_ticks[0]
                system += member.stat.cpu_ticks[1]
        return user / TICK, system / TICK

    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.stat.state not in ("Z", "X")]

    # -- signals -----------------------------------------------------------------------------
    def signal_all(self, signum: int) -> None:
        self.scan()
        for member in self.alive():
            _signal(member, signum)

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every member until none is left; returns the pids that survived timeout.

        Members are first stopped (SIGSTOP) until a scan finds no new one, so that a job
        forking as fast as we kill cannot outrun us; then all are killed at once."""
        deadline = time.monotonic() + timeout
        self.strangers.clear()  # judge every process afresh: a stranger's pid may be recycled
        while True:
            for _ in range(50):
                self.scan()
                fresh = [m for m in self.alive() if not m.stopped]
                if not fresh:
                    break
                for member in fresh:
                    member.stopped = _signal(member, signal.SIGSTOP)
            for member in self.alive():
                _signal(member, signal.SIGKILL)
            self.reap()
            time.sleep(0.005)  # let the kernel finish the kills before we look again
            self.scan()
            left = self.alive()
            if not left or time.monotonic() >= deadline:
                return [m.proc.pid for m in left]
            for member in left:
                member.stopped = False  # it survived: stop and kill it again

    def reap(self) -> None:
        """Reap members that are our children, keeping their wait statuses in statuses."""
        for pid, member in list(self.members.items()):
            if member.stat.ppid == self.me or pid == self.root:
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if got:
                    self.statuses[got] = status
                    self._forget(pid)


def _signal(member: Member, signum: int) -> bool:
    try:
        member.proc.send_signal(signum)  # re-checks pid + start time first
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
