"""The fallback backend, for hosts without a usable systemd (containers, old hosts).

The job is the wrapper's child, in its own session; family.py finds every process of it. The
wrapper makes itself a child subreaper, so that orphans come back to it: it reaps them, and
their CPU time and I/O reach its RUSAGE_CHILDREN and /proc/self/io, exactly as the kernel
counted them. What cannot be measured exactly (RSS, which the kernel only knows per process,
and escaped processes) is sampled every spec.sample_interval seconds; the usage record's
``accuracy`` says which is which, and ``enforced`` says what each limit became without cgroups:
in force (exact), approximate (how), or not enforced (why).
"""

from __future__ import annotations

import math
import os
import resource
import signal
import time

import psutil

from ..log import Log
from ..spec import JobSpec, format_cpu_list
from ..usage import AFFINITY, APPROXIMATE, IN_FORCE, NOT_ENFORCED, NOT_IN_FORCE, OFF, Usage, Verdict
from . import STOPPING, child, linux, pidfd
from .family import TOKEN_VARIABLE, Family

EARLY_SAMPLES = (0.02, 0.1, 0.3)  # seconds after the start, before the regular interval
GRACE_CHECK = 0.1  # during a stop, how often we look whether the leftovers have ended


class FallbackBackend:
    name = "psutil"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self, spec: JobSpec, stdio: tuple[int, int, int], log: Log) -> FamilyJob:
        from ..devices import node_gpus

        spec = spec.with_inherited_cpus()
        if not spec.sandbox.gpus and not node_gpus():  # no GPU given, none here: moot
            spec = spec._replace(sandbox=spec.sandbox._replace(gpus=None))
        job = FamilyJob(spec, log, self.reason)
        job.launch(stdio)
        return job


class ChildSetup:
    """What the child applies to itself before exec; built (and judged) in the parent."""

    __slots__ = ("private_tmp", "cpus", "io_level", "nproc", "nice")

    def __init__(self) -> None:
        self.private_tmp = False
        self.cpus: tuple[int, ...] | None = None
        self.io_level: int | None = None
        self.nproc: int | None = None
        self.nice: int | None = None


class FamilyJob:
    unit: str | None = None

    def __init__(self, spec: JobSpec, log: Log, reason: str) -> None:
        self.spec = spec
        self.log = log
        self.reason = reason
        self.token = f"{spec.job_id}:{os.urandom(12).hex()}"
        self.enforced: dict[str, Verdict] = {}
        self.oom = False
        self.status: int | None = None
        self.pid = 0
        self.pidfd = pidfd.NONE
        self.family: Family | None = None
        self.survivors: list[int] = []
        self.stop_deadline: float | None = None
        self.was_subreaper = False
        self.started = self.ended = 0.0
        self.next_sample = 0.0
        self.early_samples: list[float] = []
        log.unit, log.job_id = None, spec.job_id

    # -- launching ---------------------------------------------------------------------------
    def launch(self, stdio: tuple[int, int, int]) -> None:
        setup = self.plan()
        env = dict(self.spec.environment)
        env[TOKEN_VARIABLE] = self.token
        self.was_subreaper = linux.get_child_subreaper()
        linux.set_child_subreaper(True)
        self.rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the kernel folds a child's pre-exec size (a copy of ours) into its ru_maxrss
        self.own_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.io_before = _own_io()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        self.started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _become_job(self.spec, stdio, setup, env, err_w)
        os.close(err_w)
        failure = child.read_all(err_r)
        os.close(err_r)
        if failure:
            os.waitpid(pid, 0)
            linux.set_child_subreaper(self.was_subreaper)
            raise child.launch_error(self.spec.argv[0], failure)
        self.pid = pid
        try:  # the job runs: whatever fails from here on must not leave it behind
            self.pidfd = pidfd.open_pidfd(pid)  # NONE on old kernels: the runner wakes on SIGCHLD
            self.family = Family(pid, self.token)
            if setup.cpus is not None:
                self.check_affinity(setup.cpus)
        except BaseException:
            self.abort()
            raise
        # exec has barely begun when we get here (RSS ~0): look again soon, so that short jobs
        # are seen too, then every sample_interval
        self.early_samples = [t for t in EARLY_SAMPLES if t < self.spec.sample_interval]
        self.next_sample = self.started + self.early_samples.pop(0) if self.early_samples \
            else time.monotonic()
        self.log.info(f"started {self.spec.description} as pid {pid}, without systemd "
                      f"({self.reason})")

    def plan(self) -> ChildSetup:
        """Decide how each limit is enforced without cgroups, and record it in enforced."""
        spec, limits, sandbox, setup = self.spec, self.spec.limits, self.spec.sandbox, ChildSetup()
        every = f"every {spec.sample_interval:g} s"
        nothing = "without cgroups nothing "

        def put(key: str, kind: str, reason: str = "") -> None:
            self.enforced[key] = Verdict(kind, reason)

        if limits.cpu_quota_percent is not None:
            put("cpu_quota_percent", NOT_ENFORCED, nothing + "throttles CPU time")
        if limits.memory_max is not None:
            put("memory_max", APPROXIMATE, f"a watchdog sums the job's RSS {every} and kills "
                              "the job above the limit; an allocation between samples overshoots")
        if limits.memory_high is not None:
            put("memory_high", NOT_ENFORCED, nothing + "reclaims memory above a soft limit")
        if limits.swap_max is not None:
            put("swap_max", NOT_ENFORCED, nothing + "limits swap per job")
        if limits.allowed_cpus is not None:
            setup.cpus = limits.allowed_cpus
            put("allowed_cpus", APPROXIMATE, AFFINITY)  # read back after start: check_affinity()
        if limits.io_weight is not None:
            setup.io_level = io_level(limits.io_weight)
            put("io_weight", APPROXIMATE, f"best-effort I/O priority {setup.io_level} "
                             f"(ionice -c2 -n{setup.io_level}); only the BFQ scheduler honours it")
        if limits.tasks_max is not None:
            self.plan_tasks_max(limits.tasks_max, setup)
        for key in ("io_read_bandwidth", "io_write_bandwidth", "io_read_iops", "io_write_iops"):
            if getattr(limits, key) is not None:
                put(key, NOT_ENFORCED, nothing + "throttles a job's I/O")
        if sandbox.private_tmp:
            conflict = child.private_tmp_conflict(spec.cwd, spec.executable)
            if conflict:
                put("private_tmp", OFF, conflict)
            elif os.geteuid() != 0:
                put("private_tmp", NOT_ENFORCED, "a private /tmp needs root (a mount namespace)")
            else:
                setup.private_tmp = True
                self.enforced["private_tmp"] = IN_FORCE
        if sandbox.gpus is not None:
            put("gpus", NOT_ENFORCED, "a device filter needs a cgroup: every GPU the user may "
                                      "open stays open")
        if sandbox.isolate:
            put("isolate", NOT_ENFORCED, "needs systemd: the job sees every process of its user "
                                         "and the whole execute root")
        if sandbox.private_users:
            put("private_users", NOT_ENFORCED, "needs systemd")
        if sandbox.protect_system:
            put("protect_system", NOT_ENFORCED, "needs systemd")
        for name, value in spec.properties:
            if name == "Nice":
                setup.nice = int(value)
                self.enforced[name] = IN_FORCE
            else:
                put(name, NOT_ENFORCED, "a unit property, and there is no systemd here")
        return setup

    def plan_tasks_max(self, tasks_max: int, setup: ChildSetup) -> None:
        uid = child.uid_of(self.spec.user) if self.spec.user else os.getuid()
        if uid == 0:
            self.enforced["tasks_max"] = Verdict(NOT_ENFORCED, "RLIMIT_NPROC does not bind root")
            return
        others = sum(1 for p in psutil.process_iter(["uids"])
                     if p.info["uids"] is not None and p.info["uids"].real == uid)
        setup.nproc = others + tasks_max
        self.enforced["tasks_max"] = Verdict(
            APPROXIMATE, f"RLIMIT_NPROC={setup.nproc} counts every process of uid {uid} "
                         f"({others} not the job's at launch), and processes, not threads")

    def check_affinity(self, asked: tuple[int, ...]) -> None:
        try:
            got = tuple(sorted(os.sched_getaffinity(self.pid)))
        except OSError:
            return  # it has ended already; the child set it before exec or failed the launch
        if got != tuple(sorted(asked)):
            self.enforced["allowed_cpus"] = Verdict(
                NOT_IN_FORCE, f"asked {format_cpu_list(asked)}, the job got CPUs "
                              f"{format_cpu_list(got)} (this host restricts it)")

    # -- the runner's interface --------------------------------------------------------------
    def fds(self) -> list[int]:
        return [self.pidfd] if self.pidfd != pidfd.NONE else []  # else: SIGCHLD wakes the runner

    def timeout(self) -> float | None:
        wait = max(0.0, self.next_sample - time.monotonic())
        return min(wait, GRACE_CHECK) if self.status is not None else wait

    def poll(self) -> bool:
        assert self.family is not None
        self.reap_main()
        now = time.monotonic()
        in_grace = self.status is not None and self.stop_deadline is not None
        if (self.status is None or in_grace) and now >= self.next_sample:
            self.sample()
            if in_grace:
                self.next_sample = now + GRACE_CHECK
            elif self.early_samples:
                self.next_sample = self.started + self.early_samples.pop(0)
            else:
                self.next_sample = now + self.spec.sample_interval
        if self.status is None:  # (sample() may just have reaped it: in_grace is stale here)
            return False
        # During a stop, what the main process left has the rest of the grace: the runner
        # kills it at the deadline (kill()); otherwise finish() kills it at once.
        return not (self.stop_deadline is not None and self.family.alive())

    def reap_main(self) -> None:
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self.ended = time.monotonic()
                self.status = status

    def sample(self) -> None:
        assert self.family is not None
        rss = self.family.sample()
        self.collect_reaped()
        limit = self.spec.limits.memory_max
        if limit is not None and rss > limit and not self.oom:
            self.oom = True
            self.log.notice(f"memory watchdog: the job's RSS ({rss} bytes) is above its limit "
                            f"({limit} bytes): killing every process of the job")
            self.survivors = self.family.kill_all()
            self.collect_reaped()

    def collect_reaped(self) -> None:
        assert self.family is not None
        self.family.reap()
        if self.pid in self.family.statuses and self.status is None:
            self.ended = time.monotonic()
            self.status = self.family.statuses[self.pid]

    def send_signal(self, signum: int) -> None:
        assert self.family is not None
        if signum in STOPPING and self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.spec.stop_timeout
        self.family.signal_all(signum)

    def kill(self) -> None:
        assert self.family is not None
        self.log.notice("stop timeout reached: killing every process of the job")
        self.survivors = self.family.kill_all()
        self.collect_reaped()

    def finish(self) -> Usage:
        assert self.family is not None
        try:
            self.family.sample()  # last look: escaped processes' CPU, leftovers' RSS
            if self.family.alive():
                self.log.info("main process ended: killing the processes it left behind")
                self.survivors = self.family.kill_all()
            self.collect_reaped()
            if self.status is None:  # only if the runner gave up on it (abort paths)
                self.status = os.waitpid(self.pid, 0)[1]
                self.ended = time.monotonic()
            if self.survivors:
                self.log.warning(f"{len(self.survivors)} processes of the job survived SIGKILL "
                                 f"(pids {' '.join(map(str, self.survivors))})")
            return self.make_usage()
        finally:
            self.release()

    def abort(self) -> None:
        try:
            if self.family is not None:
                self.family.kill_all(timeout=2.0)
                self.collect_reaped()
            if self.status is None and self.pid:
                self.status = os.waitpid(self.pid, 0)[1]
        except (OSError, psutil.Error):
            pass
        self.release()

    def release(self) -> None:
        if self.pidfd != pidfd.NONE:
            os.close(self.pidfd)
            self.pidfd = pidfd.NONE
        try:
            linux.set_child_subreaper(self.was_subreaper)
        except OSError:
            pass

    # -- the record --------------------------------------------------------------------------
    def make_usage(self) -> Usage:
        assert self.family is not None and self.status is not None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = self.rusage_before
        escaped_user, escaped_system = self.family.escaped_cpu_seconds()
        user = after.ru_utime - before.ru_utime + escaped_user
        system = after.ru_stime - before.ru_stime + escaped_system
        # ru_maxrss: the largest single descendant's peak, exact, but the kernel counts a
        # child's pre-exec copy of the wrapper in it, and a maximum cannot be told apart from
        # an earlier child's: it counts only when it beats both
        largest = 0
        if after.ru_maxrss > max(before.ru_maxrss, self.own_maxrss):
            largest = after.ru_maxrss * 1024
        peak = max(self.family.rss_peak, largest) or None
        io_after = _own_io()
        io = {key: (io_after[key] - self.io_before[key]
                    if key in io_after and key in self.io_before else None)
              for key in ("read_bytes", "write_bytes")}
        status = self.status
        exit_code = os.waitstatus_to_exitcode(status)
        signum = -exit_code if exit_code < 0 else None
        oom: bool | None = True if self.oom else (None if signum == signal.SIGKILL else False)
        every = f"every {self.spec.sample_interval:g} s"
        sampled = "sampled " + ", ".join(f"{t:g}" for t in EARLY_SAMPLES
                                         if t < self.spec.sample_interval) + f" s in, then {every}"
        accuracy = {
            "cpu": "exact for descendants (reaped by the wrapper, a child subreaper); "
                   f"processes outside the tree sampled {every}",
            "memory_peak": f"summed RSS {sampled} (shared pages count once per process), "
                           "or the largest single process's exact peak if higher",
            "io": "exact for descendants (the kernel adds a reaped child's I/O to its parent)",
            "tasks_peak": sampled,
        }
        usage = Usage(
            unit=None, backend="psutil", job_id=self.spec.job_id,
            exit_code=None if signum else exit_code, signal=signum, oom_killed=oom,
            wall_seconds=round(self.ended - self.started, 6),
            cpu_user_seconds=round(user, 6), cpu_system_seconds=round(system, 6),
            memory_peak_bytes=peak, io_read_bytes=io["read_bytes"],
            io_write_bytes=io["write_bytes"], tasks_peak=max(self.family.tasks_peak, 1),
            limits={**self.spec.limits.asked(), **self.spec.sandbox.asked()},
            enforced=dict(self.enforced), backend_reason=self.reason, accuracy=accuracy)
        outcome = f"exit code {exit_code}" if signum is None else f"signal {signum}"
        self.log.info(f"finished: {outcome}, cpu user {user:.3f} s, system {system:.3f} s, "
                      f"peak memory {peak} bytes{', killed by the memory watchdog' if oom else ''}")
        return usage


def io_level(weight: int) -> int:
    """systemd IOWeight (1-10000, default 100) -> best-effort ionice level (0 high - 7 low,
    default 4): each tenfold of weight is two levels."""
    return max(0, min(7, 4 - round(2 * math.log10(weight / 100))))


def _own_io() -> dict[str, int]:
    try:
        with open("/proc/self/io") as f:
            return {key: int(value) for key, value in (line.split(":") for line in f)}
    except OSError:  # not readable in some containers: then I/O is unknown, not zero
        return {}


def _become_job(spec: JobSpec, stdio: tuple[int, int, int], setup: ChildSetup,
                env: dict[str, str], err_w: int) -> None:
    stage = "start"
    try:
        os.setsid()
        child.dup_stdio(stdio)
        if setup.private_tmp:
            stage = "private /tmp"
            linux.private_tmp()
        if setup.cpus is not None:
            stage = f"allowed CPUs {format_cpu_list(setup.cpus)}"
            os.sched_setaffinity(0, setup.cpus)
        if setup.io_level is not None:
            stage = "I/O priority"
            linux.set_best_effort_io_priority(setup.io_level)
        if setup.nice is not None:
            stage = "nice"
            os.setpriority(os.PRIO_PROCESS, 0, setup.nice)
        if setup.nproc is not None:
            stage = "RLIMIT_NPROC"
            resource.setrlimit(resource.RLIMIT_NPROC, (setup.nproc, setup.nproc))
        stage = "user/group"
        child.set_identity(spec.user, spec.group)
        stage = f"working directory {spec.cwd}"
        os.chdir(spec.cwd)
        child.reset_signals()
        stage = child.EXEC
        os.execve(spec.executable, list(spec.argv), env)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        child.report_failure(err_w, stage, exc)
    finally:
        os._exit(127)
