"""condor-systemd: run HTCondor jobs as transient systemd units.

The public API, and the only one: everything else is private and may change.

    from condor_systemd import JobSpec, Limits, run
    spec = JobSpec(argv=("./job",), executable="/abs/job", job_id="12.0", cwd=..., environment=...)
    usage = run(spec, stdio=(0, 1, 2))
"""

from .errors import (
                     BackendUnavailable,
                     CommandNotExecutable,
                     CommandNotFound,
                     CondorSystemdError,
                     LaunchError,
                     UnitExists,
                     UsageError,
)
from .runner import run
from .spec import JobSpec, Limits, Sandbox, resolve_command
from .usage import Usage

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "CommandNotExecutable", "CommandNotFound", "CondorSystemdError",
           "JobSpec", "LaunchError", "Limits", "Sandbox", "UnitExists", "Usage", "UsageError",
           "resolve_command", "run"]
