"""A Run call, checked and made into the job it asks for, as this caller may have it.

Parameters are type-checked (interface.py), the options go through the same parser as
`condor-systemd run`, and what the job inherits and the caller's own limits are read from
/proc (never taken from the message); a non-root caller's job then goes through the policy.
"""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING, NamedTuple

from ..errors import LaunchError, UsageError
from ..spec import Inheritance, JobSpec
from . import interface, peer, slices
from .scratch import execute_root, job_tmp, own_directory, proc_path, real_path

if TYPE_CHECKING:
    import argparse

    from ..backends.cgroupfs import Layout
    from .policy import Policy


class Request(NamedTuple):
    spec: JobSpec
    stdio: tuple[int, int, int]
    caps: peer.Caps
    capped: list[tuple[str, str]]  # what the policy or the caller's cgroup capped, and why
    usage_file: str | None
    usage_format: str
    log_file: str | None
    held_fds: list[int]  # what the unit's BindPaths= name: open until the unit is gone


def prepare(parameters: dict, fds: list[int], caller: peer.Peer, policy: Policy,
            layout: Layout, broker_addresses: frozenset[str] = frozenset()) -> Request:
    """Raises interface.Invalid (a parameter), UsageError, or LaunchError (the caller left)."""
    from ..cli import Caller, spec_from_args

    arguments = interface.strings(parameters, "arguments", 1024)
    command = interface.strings(parameters, "command", 65536)
    executable = interface.string(parameters, "executable")
    cwd = interface.string(parameters, "cwd")
    environ = interface.environment(interface.strings(parameters, "environment"))
    stdin, stdout, stderr = (interface.integer(parameters, name, 0, 2)
                             for name in ("stdin", "stdout", "stderr"))
    stdio = interface.check_stdio(fds, stdin, stdout, stderr, broker_addresses)
    job_id = interface.string(parameters, "job_id", optional=True)
    slot = interface.string(parameters, "slot", optional=True)
    tmp_dirs = None
    if parameters.get("tmp") is not None or parameters.get("var_tmp") is not None:
        tmp_dirs = tuple(interface.check_directory(
            fds, interface.integer(parameters, name, 0, len(fds) - 1), name)
            for name in ("tmp", "var_tmp"))
    scratch_dir = None
    if parameters.get("scratch") is not None:
        scratch_dir = interface.check_directory(
            fds, interface.integer(parameters, "scratch", 0, len(fds) - 1), "scratch")
    facts = parameters.get("htcondor")
    if facts is not None:
        from ..htcondor import Facts

        facts = Facts.from_parameters(facts)  # UsageError names the key
    if not command:
        raise interface.Invalid("command")
    if not (executable or "").startswith("/") or not (cwd or "").startswith("/"):
        raise interface.Invalid("executable" if not (executable or "").startswith("/")
                                else "cwd")
    if any(a in ("-h", "--help") for a in arguments):
        raise UsageError("--help is not a job")
    try:
        args = _parser().parse_args(["run", *arguments, "--", *command])
    except SystemExit:  # argparse's own exits (none expected with help refused)
        raise UsageError("cannot parse the options") from None
    if args.backend == "psutil":
        raise UsageError("--backend psutil runs without the broker")
    spec = spec_from_args(args, environ, Caller(cwd, executable, job_id, slot,  # type: ignore[arg-type]
                                                caller.pid))
    if facts is not None:
        from ..htcondor import apply

        spec = apply(spec, facts, policy.htcondor, named=args.name is not None)
    # Fail closed: what cannot be read about the caller would be what caps it
    inherit = Inheritance.of_process(caller.pid)
    caps = peer.cgroup_caps(caller.pid, layout)  # LaunchError when unreadable
    if not caller.alive():
        raise LaunchError("the caller is gone")
    unread = inherit.unread()
    if unread and caller.uid != 0:
        raise LaunchError(f"cannot read the caller's {', '.join(unread)} from /proc: the job "
                          "is refused rather than run without its caller's limits")
    capped: list[tuple[str, str]] = []
    if caller.uid != 0:
        spec = spec._replace(job_id=f"u{caller.uid}-{spec.job_id}")
        spec, capped = policy.apply(spec, caller.uid, caller.gid, caps, inherit)
        if not caps.cgroup:
            raise LaunchError("cannot tell the caller's cgroup: the job is refused rather than "
                              "run outside its caller's budget")
        spec = spec._replace(slice=slices.name_for(caller.uid, caps.cgroup))
    held: list[int] = []
    if tmp_dirs is not None and spec.sandbox.private_tmp:
        held, why = job_tmp(tmp_dirs, caller.uid)  # type: ignore[arg-type]
        if why:
            capped.append(("private_tmp", f"PrivateTmp instead of the scratch directory: {why}"))
        else:
            spec = spec._replace(tmp_binds=tuple(proc_path(fd) for fd in held))
    if caller.uid != 0:
        spec = spec._replace(for_caller=True)
        # the job's own directory: bound by --isolate, and its disk gets the I/O caps; where
        # it is, and which execute root --isolate hides, the kernel says from the fd
        own = own_directory(scratch_dir, caller.uid) if scratch_dir is not None else None
        target = real_path(own) if own is not None else None
        root = execute_root(target, policy.execute_roots) if target is not None else None
        if scratch_dir is not None:
            # its disk is found from the fd even if it is not the caller's (nothing is bound)
            fd = own if own is not None else fcntl.fcntl(scratch_dir, fcntl.F_DUPFD_CLOEXEC, 3)
            held.append(fd)
            spec = spec._replace(scratch_bind=proc_path(fd), scratch_target=target,
                                 execute_root=root)
        if spec.sandbox.isolate and root is None:
            for fd in held:
                os.close(fd)
            if own is None:
                raise UsageError(f"--isolate: the job's directory {spec.scratch_dir} is not a "
                                 "directory of the caller's")
            raise UsageError(f"--isolate: the job's directory {target or spec.scratch_dir} is "
                             "not under an execute root ("
                             + (", ".join(policy.execute_roots) or "none") +
                             "; the broker's policy, [sandbox] execute_roots)")
    return Request(spec._replace(inherit=inherit), stdio, caps, capped, args.usage_file,
                   args.usage_format, args.log_file, held)


_PARSER: list[argparse.ArgumentParser] = []


def _parser() -> argparse.ArgumentParser:
    """`condor-systemd run`'s parser, built once (~1 ms each time)."""
    if not _PARSER:
        from ..cli import build_parser

        _PARSER.append(build_parser())
    return _PARSER[0]
