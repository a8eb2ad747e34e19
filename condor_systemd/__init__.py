"""condor-systemd: run HTCondor jobs as transient systemd units.

The public API, and the only one: everything else is private and may change.

    from condor_systemd import JobSpec, Limits, run
    spec = JobSpec(argv=("./job",), executable="/abs/job", job_id="12.0", cwd=..., environment=...)
    usage = run(spec, stdio=(0, 1, 2))

Names are imported on first use (PEP 562): the thin client that starts with every job imports
submodules of this package and must not pay for the rest of the API.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "CommandNotExecutable", "CommandNotFound", "CondorSystemdError",
           "JobSpec", "LaunchError", "Limits", "Sandbox", "UnitExists", "Usage", "UsageError",
           "Verdict", "resolve_command", "run"]

_HOMES = {"run": "runner", "JobSpec": "spec", "Limits": "spec", "Sandbox": "spec",
          "resolve_command": "command", "Usage": "usage", "Verdict": "usage"}


def __getattr__(name: str) -> object:
    if name in __all__:
        from importlib import import_module

        value = getattr(import_module(f".{_HOMES.get(name, 'errors')}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
