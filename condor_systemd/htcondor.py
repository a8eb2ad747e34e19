"""The unit HTCondor itself would give a job, from the facts of its ads (jobad.facts_from_env).

HTCondor's own cgroup support (23.9-25.x, cgroup v2) gives the slot's cgroup memory.max = the
slot's Memory (CGROUP_MEMORY_LIMIT_POLICY=hard), memory.swap.max = 0 (DISABLE_SWAP_FOR_JOB) and
cpu.weight = 100 x the slot's Cpus. A job in its own unit has left that cgroup, so the unit
gets the same, unless an option asked otherwise (explicit options win; the broker's policy and
the caller's cgroup still cap them):

    MemoryMax    = Memory MB          [htcondor] memory_limit = "hard" (default)
    MemoryHigh   = Memory MB          memory_limit = "soft" (throttled and reclaimed, not killed)
                   (nothing)          memory_limit = "none"
    MemorySwapMax = 0                 unless [htcondor] allow_swap = true
    CPUWeight    = 100 x Cpus         (1-10000)
    CPUQuota     = Cpus x 100 %       only with [htcondor] cpu_quota = true: the hard cap that
                                      HTCondor does not have
    unit         condor-job-[u<uid>-]<ClusterId>.<ProcId>-<slot>.service: unique on the node (two
                 schedds may both run a job 12.0, never in one slot at once)
    Description  HTCondor job <ClusterId>.<ProcId> of <Owner> on <slot>: <command>
    journal      CONDOR_CLUSTER_ID, CONDOR_PROC_ID, CONDOR_GLOBAL_JOB_ID, CONDOR_OWNER,
                 CONDOR_SLOT on every line the job logs (LogExtraFields=)

A fact the ads lack, or give as no plain literal of its kind, maps to nothing.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .errors import UsageError
from .jobad import INTEGER_BOUNDS, MAX_TEXT
from .spec import JobSpec

MEMORY_LIMITS = ("hard", "soft", "none")
MAX_CPUS = 100  # CPUWeight's ceiling is 10000
_TEXT = re.compile(f"[^\\x00-\\x1f\\x7f]{{1,{MAX_TEXT}}}")
_SLOT_TOKEN = re.compile(r"[^A-Za-z0-9_.:-]")


class Facts(NamedTuple):
    """What the ads say; any of it may be missing."""

    cluster: int | None = None
    proc: int | None = None
    global_job_id: str | None = None
    owner: str | None = None
    slot: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None

    @classmethod
    def from_parameters(cls, data: object) -> Facts:
        """From the Run call's "htcondor" object: hostile input. UsageError names the key."""
        if not isinstance(data, dict):
            raise UsageError("htcondor: not an object")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls._fields:
                raise UsageError(f"htcondor: unknown key {key!r}")
            if value is None:
                continue
            if key in INTEGER_BOUNDS:
                bound = INTEGER_BOUNDS[key]
                if type(value) is not int or not 0 <= value < bound:
                    raise UsageError(f"htcondor: {key} must be an integer in 0-{bound - 1}")
            elif not isinstance(value, str) or not _TEXT.fullmatch(value):
                raise UsageError(f"htcondor: {key} must be printable text of 1-255 characters")
            out[key] = value
        return cls(**out)


class Mapping(NamedTuple):
    """The site's choices ([htcondor] in the policy file; README "Running under HTCondor")."""

    memory_limit: str = "hard"
    allow_swap: bool = False
    cpu_quota: bool = False

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Mapping:
        if settings["memory_limit"] not in MEMORY_LIMITS:
            raise UsageError(f"[htcondor] memory_limit must be one of {', '.join(MEMORY_LIMITS)}")
        return cls(settings["memory_limit"], bool(settings["allow_swap"]),
                   bool(settings["cpu_quota"]))


def job_id(facts: Facts) -> str | None:
    """<ClusterId>.<ProcId>-<slot>, or None without both ids."""
    if facts.cluster is None or facts.proc is None:
        return None
    base = f"{facts.cluster}.{facts.proc}"
    if not facts.slot:
        return base
    return f"{base}-{_SLOT_TOKEN.sub('_', facts.slot)}"[:200]


def apply(spec: JobSpec, facts: Facts, mapping: Mapping, named: bool) -> JobSpec:
    """The spec with what the ads give, where no option set it. named: --name was given."""
    limits = spec.limits._asdict()
    memory = facts.memory_mb * 2**20 if facts.memory_mb else None
    if memory:
        if mapping.memory_limit == "hard" and limits["memory_max"] is None:
            limits["memory_max"] = memory
        elif mapping.memory_limit == "soft" and limits["memory_high"] is None:
            limits["memory_high"] = memory
    if not mapping.allow_swap and limits["swap_max"] is None:
        limits["swap_max"] = 0
    given = {name for name, _text in spec.properties}
    properties = list(spec.properties)
    if facts.cpus and "CPUWeight" not in given:
        properties.append(("CPUWeight", str(min(facts.cpus, MAX_CPUS) * 100)))
    if facts.cpus and mapping.cpu_quota and limits["cpu_quota_percent"] is None:
        limits["cpu_quota_percent"] = float(facts.cpus * 100)
    fields = (("CONDOR_CLUSTER_ID", facts.cluster), ("CONDOR_PROC_ID", facts.proc),
              ("CONDOR_GLOBAL_JOB_ID", facts.global_job_id), ("CONDOR_OWNER", facts.owner),
              ("CONDOR_SLOT", facts.slot))
    log_fields = tuple(f"{name}={value}" for name, value in fields if value is not None)
    unique = None if named else job_id(facts)
    ids = None if facts.cluster is None or facts.proc is None else f"{facts.cluster}.{facts.proc}"
    return spec._replace(limits=type(spec.limits)(**limits), properties=tuple(properties),
                         htcondor_job=ids, owner=facts.owner, log_fields=log_fields,
                         slot=facts.slot or spec.slot, job_id=unique or spec.job_id)
