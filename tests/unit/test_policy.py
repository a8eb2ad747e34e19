"""The broker's policy for non-root callers (broker/policy.py): every property it lets a caller
set has a ceiling rule, and apply() enforces them against the caller's own cgroup (Caps)."""

from __future__ import annotations

import pytest

from condor_systemd.broker import policy as policy_module
from condor_systemd.broker.peer import Caps
from condor_systemd.broker.policy import ALLOWED, CEILINGS, DEFAULTS, Policy
from condor_systemd.errors import UsageError
from condor_systemd.spec import Inheritance, JobSpec, Limits, Sandbox

KINDS = {"limit", "rlimit", "nice", "nodes", "relative", "narrows"}
CAPS = Caps(memory_max=200 << 20, cpu_quota_percent=150.0, cpus=(0, 1), tasks_max=50,
            cgroup="/slot1_1", swap_max=0, mems=(0,))
INHERIT = Inheritance(umask=0o022, rlimits=(("NOFILE", 1024, 4096),), cpus=(0, 1),
                      oom_score_adj=800, nice=5)


def policy(**sections: dict) -> Policy:
    settings = {section: dict(keys) for section, keys in DEFAULTS.items()}
    for section, keys in sections.items():
        settings[section].update(keys)
    return Policy(settings)


def spec(**kw: object) -> JobSpec:
    fields: dict = {"argv": ("true",), "executable": "/bin/true", "job_id": "u1000-1.0",
                    "cwd": "/srv", "environment": {}}
    fields.update(kw)
    return JobSpec(**fields)


def test_every_property_a_caller_may_set_has_a_ceiling_rule():
    assert sorted(ALLOWED) == sorted(CEILINGS)
    assert {kind for kind, _why in CEILINGS.values()} <= KINDS
    assert all(why for _kind, why in CEILINGS.values())


def test_limit_rules_are_the_limit_fields_the_policy_caps():
    from condor_systemd.backends.properties import LIMIT_PROPERTY

    limits = {name for name, (kind, _why) in CEILINGS.items() if kind == "limit"}
    assert limits <= set(LIMIT_PROPERTY.values())


def test_limits_are_capped_by_the_callers_cgroup_and_say_so():
    asked = spec(limits=Limits(memory_max=1 << 30, swap_max=1 << 30, tasks_max=1000,
                               allowed_cpus=(0, 1, 2, 3)))
    got, capped = policy().apply(asked, 1000, 1000, CAPS, INHERIT)
    assert got.limits.memory_max == 200 << 20
    assert got.limits.swap_max == 0
    assert got.limits.tasks_max == 50
    assert got.limits.cpu_quota_percent == 150.0  # none asked: the caller's
    assert got.limits.allowed_cpus == (0, 1)
    assert (got.user, got.group) == ("1000", "1000")
    keys = [key for key, _why in capped]
    assert {"memory_max", "swap_max", "tasks_max", "cpu_quota_percent",
            "allowed_cpus"} <= set(keys)
    assert dict(capped)["swap_max"] == "asked 1073741824, capped to 0 by the caller's cgroup " \
                                       "/slot1_1"


def test_memory_nodes_are_narrowed_to_the_callers_and_none_of_them_is_refused():
    got, capped = policy().apply(spec(properties=(("AllowedMemoryNodes", "0-1"),)), 1000, 1000,
                                 CAPS, INHERIT)
    assert got.properties == (("AllowedMemoryNodes", "0"),)
    assert ("AllowedMemoryNodes", "asked 0-1, capped to 0 by the caller's cgroup /slot1_1") \
        in capped
    with pytest.raises(UsageError, match="none of memory nodes 1 is available"):
        policy().apply(spec(properties=(("AllowedMemoryNodes", "1"),)), 1000, 1000, CAPS,
                       INHERIT)


def test_rlimits_and_nice_stay_the_callers():
    got, _capped = policy().apply(spec(properties=(("LimitNOFILE", "100000"), ("Nice", "-5"))),
                                  1000, 1000, CAPS, INHERIT)
    assert got.properties == (("LimitNOFILE", "4096"), ("Nice", "5"))


@pytest.mark.parametrize("name", sorted(policy_module.UNDO_ISOLATION))
def test_isolation_cannot_be_undone_by_a_property(name):
    value = "default" if name == "ProtectProc" else "/var/lib/condor/execute"
    with pytest.raises(UsageError, match=f"-p {name} is not allowed with --isolate"):
        policy().apply(spec(sandbox=Sandbox(isolate=True), properties=((name, value),)),
                       1000, 1000, CAPS, INHERIT)


@pytest.mark.parametrize("asked", [{"slice": "condor-other.slice"}, {"slice": "system.slice"},
                                   {"user": "0"}, {"scope": True},
                                   {"properties": (("SupplementaryGroups", "root"),)}])
def test_what_only_root_may_ask_is_refused(asked):
    with pytest.raises(UsageError):
        policy().apply(spec(**asked), 1000, 1000, CAPS, INHERIT)


def test_execute_roots_must_be_absolute_and_below_the_root():
    for bad in (["relative"], ["/"], ["/a/../b"]):
        with pytest.raises(UsageError, match="execute_roots"):
            policy(sandbox={"execute_roots": bad})
    assert policy(sandbox={"execute_roots": ["/srv/exec"]}).execute_roots == ("/srv/exec",)
