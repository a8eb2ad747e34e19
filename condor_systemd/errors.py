"""The exception tree of condor-systemd, and the exit code each error maps to.

    CondorSystemdError            125  something went wrong in condor-systemd itself
    ├── UsageError                  2  bad options or values; nothing was started
    └── LaunchError               125  the job could not be started; nothing is left behind
        ├── BackendUnavailable    125  no usable backend (systemd unreachable, not permitted, ...)
        ├── UnitExists            125  a unit of that name is already loaded (another job?)
        ├── CommandNotExecutable  126  the command exists but cannot be executed
        └── CommandNotFound       127  the command does not exist

126 and 127 follow the shell/env convention. Once the job has started, the wrapper exits with the
job's own status instead. Backends translate their own failures (D-Bus errors, OSError) into this
tree at their edge: nothing else reaches the CLI.
"""

from __future__ import annotations


class CondorSystemdError(Exception):
    exit_code = 125


class UsageError(CondorSystemdError):
    exit_code = 2


class LaunchError(CondorSystemdError):
    """The job did not start. HTCondor is told through $_CONDOR_WRAPPER_ERROR_FILE."""


class BackendUnavailable(LaunchError):
    pass


class UnitExists(LaunchError):
    pass


class CommandNotExecutable(LaunchError):
    exit_code = 126


class CommandNotFound(LaunchError):
    exit_code = 127
