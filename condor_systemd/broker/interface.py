"""The broker's varlink interface: its description (served by GetInterfaceDescription, the text
other clients are written against), its error names, and checks of what callers send.

Calls on one connection: any number of GetInfo / GetInterfaceDescription / List, then at most
one Run with "more". While Run streams, the connection carries only oneway Signal calls (they
get no reply, so the replies of Run stay in order); closing the connection stops the job.
"""

from __future__ import annotations

import os
import stat

from .. import varlink

NAME = "io.condorsystemd.Job"
VENDOR, PRODUCT, URL = "condor-systemd", "condor-systemd broker", "https://htcondor.org/"

USAGE_ERROR = f"{NAME}.UsageError"
LAUNCH_FAILED = f"{NAME}.LaunchFailed"
TOO_MANY_JOBS = f"{NAME}.TooManyJobs"
NO_JOB = f"{NAME}.NoJob"

DESCRIPTION = f"""\
# condor-systemd's broker: runs HTCondor jobs as transient systemd units
# (condor-job-*.service in condor.slice) on behalf of local users, each as
# the user who asks, within the site's policy and the caller's own cgroup.
interface {NAME}

# A notice about the job, for the caller's log file and terminal.
type Notice (priority: int, message: string)

# What the caller's HTCondor ads say: the job's ids and owner, the slot's
# name and size (its Cpus, its Memory in MB). Any of it may be missing.
type HTCondor (
  cluster: ?int,
  proc: ?int,
  global_job_id: ?string,
  owner: ?string,
  slot: ?string,
  cpus: ?int,
  memory_mb: ?int
)

# An attribute for the caller's HTCondor job ad: a ClassAd expression.
type JobAttribute (name: string, value: string)

# A running job, as List shows it.
type JobInfo (unit: string, job_id: string, uid: int, pid: int, state: string)

# Runs a job like `condor-systemd run ARGUMENTS -- COMMAND`. Call it with
# "more": the first reply (continues) names the unit, the last says how the
# job ended. Send stdin, stdout and stderr as three fds with the call.
# Closing the connection stops the job at once.
method Run(
  # the options of `condor-systemd run`, before "--"
  arguments: []string,
  # the command and its arguments; executable: COMMAND[0] as the caller
  # resolved it in its own PATH (an absolute path)
  command: []string,
  executable: string,
  # the caller's working directory and environment (NAME=value)
  cwd: string,
  environment: []string,
  # indexes, into the fds sent with the call, of the job's stdio
  stdin: int,
  stdout: int,
  stderr: int,
  # ClusterId.ProcId and the slot from the caller's HTCondor ads
  job_id: ?string,
  slot: ?string,
  # the unit HTCondor would give the job: its slot's limits, its ids in the
  # journal (the broker's [htcondor] policy; options given win)
  htcondor: ?HTCondor,
  # indexes, into the fds, of the HTCondor scratch directory's tmp and
  # var/tmp (O_PATH fds): the job's /tmp and /var/tmp, instead of private ones
  tmp: ?int,
  var_tmp: ?int,
  # index of the job's own directory (O_PATH; HTCondor's scratch directory,
  # else the working one): what --isolate leaves it of its parent, and the
  # directory whose disk gets the I/O caps
  scratch: ?int
) -> (
  unit: ?string,
  usage_file: ?string,
  usage_format: ?string,
  log_file: ?string,
  notices: ?[]Notice,
  # the last reply: the job's exit code, or the signal that killed it, and
  # its usage record in the format asked for (--usage-format), and the
  # record's figures as Chirp* attributes for an HTCondor job ad
  exit_code: ?int,
  signal: ?int,
  record: ?string,
  job_attributes: ?[]JobAttribute
)

# Forwards a signal to every process of the job this connection runs (a
# oneway call, while Run streams). SIGTERM and SIGINT start a stop: what is
# left after --stop-timeout is killed.
method Signal(signal: int) -> ()

# The running jobs of the caller (root: of everybody).
method List() -> (jobs: []JobInfo)

# The options or values cannot be used; nothing was started.
error UsageError (message: string)

# The job could not be started; exit_code is the wrapper's (125, 126, 127).
error LaunchFailed (message: string, exit_code: int)

# The caller already runs as many jobs as the policy allows.
error TooManyJobs (limit: int)

# Signal on a connection that runs no job.
error NoJob ()
"""


# GetInterfaceDescription's answer for org.varlink.service, verbatim from https://varlink.org/Service
SERVICE_INTERFACE = """\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
"""


def info() -> dict:
    from .. import __version__

    return {"vendor": VENDOR, "product": PRODUCT, "version": __version__, "url": URL,
            "interfaces": ["org.varlink.service", NAME]}


class Invalid(Exception):
    """A parameter that is missing or of the wrong type: InvalidParameter(name)."""

    def __init__(self, parameter: str) -> None:
        super().__init__(parameter)
        self.parameter = parameter


def strings(parameters: dict, name: str, limit: int = 65536) -> list[str]:
    value = parameters.get(name)
    if not isinstance(value, list) or len(value) > limit or \
            not all(isinstance(v, str) and "\0" not in v for v in value):
        raise Invalid(name)
    return value


def string(parameters: dict, name: str, optional: bool = False) -> str | None:
    value = parameters.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value or not value:
        raise Invalid(name)
    return value


def integer(parameters: dict, name: str, low: int, high: int) -> int:
    value = parameters.get(name)
    if type(value) is not int or not low <= value <= high:
        raise Invalid(name)
    return value


def environment(entries: list[str]) -> dict[str, str]:
    out = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise Invalid("environment")
        out[name] = value
    return out


def check_stdio(fds: list[int], stdin: int, stdout: int, stderr: int,
                broker_addresses: frozenset[str] = frozenset()) -> tuple[int, int, int]:
    """The job's stdio from the fds that came with the call: regular files, character devices,
    pipes or sockets (no directories, no O_PATH), open for reading (stdin) or writing; never
    a connection to the broker itself (a job holding its caller's connection would keep
    itself alive after the caller's death). Raises Invalid naming the one that is not; the
    caller closes all fds on any error."""
    chosen = []
    for name, index, need in (("stdin", stdin, os.O_RDONLY), ("stdout", stdout, os.O_WRONLY),
                              ("stderr", stderr, os.O_WRONLY)):
        if not 0 <= index < len(fds):
            raise Invalid(name)
        fd = fds[index]
        try:
            mode = os.fstat(fd).st_mode
            flags = _fcntl_flags(fd)
        except OSError:
            raise Invalid(name) from None
        kinds = (stat.S_ISREG(mode), stat.S_ISCHR(mode), stat.S_ISFIFO(mode), stat.S_ISSOCK(mode))
        if not any(kinds) or flags & O_PATH:
            raise Invalid(name)
        if stat.S_ISSOCK(mode) and _peer_address(fd) in broker_addresses:
            raise Invalid(name)
        access = flags & os.O_ACCMODE
        if access != os.O_RDWR and access != need:
            raise Invalid(name)
        chosen.append(fd)
    return chosen[0], chosen[1], chosen[2]


def check_directory(fds: list[int], index: int, name: str) -> int:
    """A directory fd that came with the call (O_PATH or not); Invalid(name) otherwise."""
    if not 0 <= index < len(fds):
        raise Invalid(name)
    try:
        if not stat.S_ISDIR(os.fstat(fds[index]).st_mode):
            raise Invalid(name)
    except OSError:
        raise Invalid(name) from None
    return fds[index]


O_PATH = getattr(os, "O_PATH", 0o10000000)


def _peer_address(fd: int) -> str | None:
    """The address a connected AF_UNIX socket's peer is bound to (a listener's path)."""
    import socket

    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if sock.family != socket.AF_UNIX:
            return None
        name = sock.getpeername()
    except OSError:
        return None
    finally:
        sock.close()  # our dup
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


def _fcntl_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def reply_error(name: str, **parameters: object) -> dict:
    return varlink.error(name, parameters)
