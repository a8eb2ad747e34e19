"""condor-systemd command line: parse, build a JobSpec, call run(), pass the job's status on.

Exit status: the job's own (exit code N -> N; killed by signal S -> the wrapper kills itself with
S). Before the job runs: 2 bad usage, 125 could not launch, 126 command not executable,
127 command not found (see condor_systemd.errors). Errors are one line on stderr: the job never
ran, so its output file is where the user will look. A normal run prints nothing of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, NamedTuple, NoReturn

from . import jobad
from .errors import CondorSystemdError, LaunchError, UsageError
from .exits import (
    WRAPPER_ERROR_FILE,
    die_by_signal,
    stdio_fds,
    tell_htcondor,
    write_file_atomically,
)
from .log import Log
from .spec import (
    PROTECT_SYSTEM_VALUES,
    JobSpec,
    Limits,
    Sandbox,
    check_job_id,
    check_slice,
    parse_cpu_count,
    parse_cpu_list,
    parse_int,
    parse_interval,
    parse_percent,
    parse_seconds,
    parse_size,
    resolve_command,
)

if TYPE_CHECKING:
    from .usage import Usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _int_range(what: str, low: int, high: int) -> Callable[[str], object]:
    return _typed(lambda text: parse_int(text, what, low, high))


SOCKET_HELP = ("the broker's socket (default: $CONDOR_SYSTEMD_SOCKET, else "
               "/run/condor-systemd/io.condorsystemd.Job); given, the environment is not asked")


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS
    from .backends.properties import parse_assignment

    parser = _Parser(prog="condor-systemd",
                     description="Run HTCondor jobs as transient systemd units.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # no abbreviations: the thin client (launch.py) recognises --backend psutil exactly
    run = verbs.add_parser("run", help="run a job: condor-systemd run [OPTIONS] -- CMD [ARGS...]",
                           usage="condor-systemd run [OPTIONS] -- CMD [ARGS...]",
                           allow_abbrev=False)
    add = run.add_argument
    add("--name", metavar="ID", type=_typed(check_job_id),
        help="unit condor-job-ID.service (default: ClusterId.ProcId from $_CONDOR_JOB_AD)")
    add("--cpus", metavar="N", type=_typed(parse_cpu_count), help="CPUQuota = N x 100%%")
    add("--cpu-quota", metavar="PCT", type=_typed(parse_percent), help="CPUQuota, e.g. 150%%")
    add("--memory", metavar="SIZE", type=_typed(parse_size), help="MemoryMax, e.g. 2G")
    add("--memory-high", metavar="SIZE", type=_typed(parse_size), help="MemoryHigh")
    add("--swap", metavar="SIZE", type=_typed(lambda text: parse_size(text, allow_zero=True)),
        help="MemorySwapMax (0: no swap)")
    add("--allowed-cpus", metavar="LIST", type=_typed(parse_cpu_list), help="e.g. 0-3,8")
    add("--io-weight", metavar="N", type=_int_range("IO weight", 1, 10000), help="1-10000")
    add("--tasks-max", metavar="N", type=_int_range("tasks limit", 1, 2**62), help="TasksMax")
    for kind in ("read", "write"):
        add(f"--io-{kind}-bandwidth", metavar="SIZE", type=_typed(parse_size),
            help=f"IO{kind.title()}BandwidthMax (bytes/s, e.g. 10M) on the disk of the job's "
                 "directory")
        add(f"--io-{kind}-iops", metavar="N", type=_int_range(f"{kind} IOPS", 1, 2**62),
            help=f"IO{kind.title()}IOPSMax on the disk of the job's directory")
    add("--private-tmp", action=argparse.BooleanOptionalAction, default=True,
        help="per-job /tmp and /var/tmp (default: on)")
    add("--private-users", action="store_true", help="PrivateUsers=yes")
    add("--protect-system", nargs="?", const="strict", choices=PROTECT_SYSTEM_VALUES,
        help="ProtectSystem (default when given: strict, with the working directory writable)")
    add("--isolate", action="store_true",
        help="a PID namespace of its own, and only its own directory of the execute root")
    add("--gpus", metavar="LIST",
        help="the GPUs the job may open (N, CUDAN or GPU-<uuid>, comma-separated; 'none'); "
             "default: $_CONDOR_AssignedGPUs, else $CUDA_VISIBLE_DEVICES")
    add("-p", "--property", metavar="NAME=VALUE", action="append", default=[],
        type=_typed(parse_assignment), help="any supported unit property, as systemd-run -p")
    add("--scope", action="store_true", help="run in a scope instead of a service")
    add("--slice", default="condor.slice", type=_typed(check_slice), help="default condor.slice")
    add("--uid", metavar="USER", help="run as this user (root only)")
    add("--gid", metavar="GROUP", help="run with this group (root only)")
    add("--stop-timeout", metavar="SECONDS", type=_typed(parse_seconds), default=20.0,
        help="after SIGTERM/SIGINT, kill what is left after this long (default 20)")
    add("--usage-file", metavar="PATH", help="write the usage record here when the job ends")
    add("--usage-format", choices=("json", "classad"), default="json")
    add("--backend", choices=BACKENDS, default="auto",
        help="auto: systemd when usable here, else the psutil fallback")
    add("--sample-interval", metavar="SECONDS", type=_typed(parse_interval), default=1.0,
        help="psutil fallback: seconds between samples of the job's processes (default 1)")
    add("--log-file", metavar="PATH", help="also append diagnostics here")
    add("--socket", metavar="PATH", help=SOCKET_HELP)
    add("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    probe = verbs.add_parser("probe", help="say which backend run would use here, and why")
    probe.add_argument("--backend", choices=BACKENDS, default="auto")
    probe.add_argument("--classad", action="store_true",
                       help="for HTCondor's STARTD_CRON: can the broker take jobs now?")
    probe.add_argument("--socket", metavar="PATH", help=SOCKET_HELP)
    broker = verbs.add_parser("broker", help="the root service that runs every user's jobs")
    broker.add_argument("--socket", metavar="PATH",
                        help="listen here when not socket-activated (default "
                             "/run/condor-systemd/io.condorsystemd.Job)")
    broker.add_argument("--policy", metavar="FILE", default="/etc/condor-systemd/broker.toml",
                        help="the site policy (TOML; default %(default)s)")
    return parser


class Caller(NamedTuple):
    """What only the caller knows, seen from where it runs: its working directory, the command
    resolved in its PATH, the ids from its HTCondor ads. The in-process wrapper finds them
    itself (:func:`caller_here`); through the broker, the thin client sends them."""

    cwd: str
    executable: str
    job_id: str | None
    slot: str | None
    pid: int


def caller_here(command: list[str], environ: dict[str, str]) -> Caller:
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        raise LaunchError("the current working directory no longer exists") from None
    job_env = {k: v for k, v in environ.items() if k != WRAPPER_ERROR_FILE}
    return Caller(cwd, resolve_command(command[0], job_env, cwd), jobad.job_id_from_env(environ),
                  jobad.slot_from_env(environ), os.getpid())


def job_command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("missing command: condor-systemd run [OPTIONS] -- CMD [ARGS...]")
    return command


def spec_from_args(args: argparse.Namespace, environ: dict[str, str],
                   caller: Caller | None = None) -> JobSpec:
    from .backends.properties import LIMIT_PROPERTY, SANDBOX_PROPERTY, TABLE

    command = job_command(args)
    if args.cpus is not None and args.cpu_quota is not None:
        raise UsageError("give --cpus or --cpu-quota, not both")
    if (args.uid or args.gid) and os.geteuid() != 0:
        raise UsageError("--uid/--gid need root")
    _check_identity(args.uid, args.gid)

    limits = {"cpu_quota_percent": args.cpu_quota if args.cpus is None else args.cpus * 100,
              "memory_max": args.memory, "memory_high": args.memory_high, "swap_max": args.swap,
              "allowed_cpus": args.allowed_cpus, "io_weight": args.io_weight,
              "tasks_max": args.tasks_max, "io_read_bandwidth": args.io_read_bandwidth,
              "io_write_bandwidth": args.io_write_bandwidth, "io_read_iops": args.io_read_iops,
              "io_write_iops": args.io_write_iops}
    from . import devices

    gpus = devices.assigned_ids(args.gpus, environ)
    if gpus:
        devices.check(gpus, given=args.gpus is not None)
    sandbox = {"private_tmp": args.private_tmp, "private_users": args.private_users,
               "protect_system": args.protect_system, "gpus": gpus, "isolate": args.isolate}
    extra = []
    limit_of = {prop: field for field, prop in LIMIT_PROPERTY.items()}
    sandbox_of = {prop: field for field, prop in SANDBOX_PROPERTY.items()}
    for name, text in args.property:  # -p overrides the matching option, like a later option
        if name in limit_of:  # "infinity" is no limit: systemd's default, nothing to send
            limits[limit_of[name]] = None if text.strip() == "infinity" else \
                _limit_value(name, text)
        elif name in sandbox_of:
            value = TABLE[name].parse(text)  # type: ignore[misc]
            sandbox[sandbox_of[name]] = None if value == "no" else value
        else:
            extra.append((name, text))

    caller = caller or caller_here(command, environ)
    job_env = {k: v for k, v in environ.items() if k != WRAPPER_ERROR_FILE}
    job_id = args.name or caller.job_id or f"local-{caller.pid}-{os.urandom(3).hex()}"
    return JobSpec(argv=tuple(command), executable=caller.executable, job_id=job_id,
                   cwd=caller.cwd, environment=job_env, limits=Limits(**limits),
                   sandbox=Sandbox(**sandbox), slot=caller.slot, scope=args.scope,
                   slice=args.slice, user=args.uid, group=args.gid,
                   stop_timeout=args.stop_timeout, sample_interval=args.sample_interval,
                   properties=tuple(extra))


def _as_htcondor_would(spec: JobSpec, args: argparse.Namespace,
                       environ: dict[str, str]) -> JobSpec:
    """A unit leaves HTCondor's cgroup: it gets the slot's limits (htcondor.py). A job the
    fallback runs stays in that cgroup, under HTCondor's own limits: nothing to add."""
    facts = jobad.facts_from_env(environ)
    if facts is None:
        return spec
    from . import htcondor
    from .broker.policy import Policy

    try:
        mapping = Policy.load().htcondor
    except ValueError as exc:
        raise LaunchError(f"the site policy: {exc}") from None
    return htcondor.apply(spec, htcondor.Facts.from_parameters(facts), mapping,
                          named=args.name is not None)


def _limit_value(name: str, text: str) -> object:
    if name == "CPUQuota":
        return parse_percent(text)
    if name == "AllowedCPUs":
        return parse_cpu_list(text)
    if name in ("IOWeight", "TasksMax"):
        return parse_int(text, name, 1, 2**62)
    return parse_size(text, allow_zero=name == "MemorySwapMax")


def _check_identity(user: str | None, group: str | None) -> None:
    import grp
    import pwd

    try:
        if user and not user.isdigit():
            pwd.getpwnam(user)
        if group and not group.isdigit():
            grp.getgrnam(group)
    except KeyError:
        raise UsageError(f"no such user or group: {user if group is None else group}") from None


def _write_usage(path: str, text: str, log: Log) -> None:
    failed = write_file_atomically(path, text)
    if failed:
        log.error(f"cannot write usage file {path}: {failed}")


def _chirp(usage: Usage, environ: dict[str, str], log: Log) -> None:
    """Under HTCondor, the record's figures into the job ad; a failure is only logged."""
    from .chirp import publish_usage
    from .usage import job_attributes

    failed = publish_usage(environ, lambda: job_attributes(usage))
    if failed:
        log.error(failed)


def _probe(choice: str) -> int:
    """Administrators' view of the backend choice: what run would use on this host, and why."""
    from .backends import select

    backend = select(choice)
    print(f"backend: {backend.name}\nreason: {backend.reason}")
    if backend.name == "systemd":
        from .backends import cgroupfs

        layout = cgroupfs.probe_layout()
        print(f"systemd: {backend.version}\n"  # type: ignore[attr-defined]
              f"cgroup: {layout.kind} ({' '.join(layout.controllers()) or 'no controllers'})")
    return 0


def _probe_for_startd() -> int:
    from . import readiness

    sys.stdout.write(readiness.classad(readiness.broker_problem()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    environ = dict(os.environ)
    log = Log()
    try:
        args = build_parser().parse_args(argv)
        if args.verb in ("run", "probe") and args.socket is not None:
            from .client import use_socket

            use_socket(args.socket)
        if args.verb == "probe":
            return _probe_for_startd() if args.classad else _probe(args.backend)
        if args.verb == "broker":
            from .broker import main as broker_main

            return broker_main(args.socket, args.policy)
        log = Log(log_file=args.log_file)
        spec = spec_from_args(args, environ)
        from .runner import run, select_backend

        backend = select_backend(args.backend)
        if backend.name == "systemd":
            spec = _as_htcondor_would(spec, args, environ)
        usage = run(spec, stdio=stdio_fds(), backend=backend, log=log)
    except CondorSystemdError as exc:
        message = str(exc)
        print(f"condor-systemd: {message}", file=sys.stderr)
        log.error(message)
        if isinstance(exc, LaunchError):
            tell_htcondor(environ, message)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: one line for the user, the details to the journal
        import traceback

        # (the three-argument form: Python 3.9 has no other)
        details = traceback.format_exception(type(exc), exc, exc.__traceback__)
        log.error("internal error: " + "".join(details))
        print(f"condor-systemd: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 125
    if args.usage_file:
        text = usage.to_classad() if args.usage_format == "classad" else usage.to_json()
        _write_usage(args.usage_file, text, log)
    _chirp(usage, environ, log)
    if usage.signal:
        return die_by_signal(usage.signal)
    if usage.exit_code is None:
        log.error("the job's exit status is unknown")
        return 125
    return usage.exit_code
