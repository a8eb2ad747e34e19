"""The unit HTCondor would give a job, from its ads: reading the facts as the caller, checking
them as the broker (hostile input), and the mapping with its policy choices."""

from __future__ import annotations

import pytest

from condor_systemd.broker.policy import Policy
from condor_systemd.errors import UsageError
from condor_systemd.htcondor import Facts, Mapping, apply, job_id
from condor_systemd.jobad import facts_from_env
from condor_systemd.spec import JobSpec, Limits

JOB_AD = ('ClusterId = 12\nProcId = 3\nOwner = "alice"\n'
          'GlobalJobId = "ap1#12.3#1796065539"\nRequestMemory = 128\n')
MACHINE_AD = 'Name = "slot1_1@node"\nCpus = 2\nMemory = 128\n'
FACTS = Facts(cluster=12, proc=3, global_job_id="ap1#12.3#1796065539", owner="alice",
              slot="slot1_1", cpus=2, memory_mb=128)


def environ(tmp_path, job: str = JOB_AD, machine: str = MACHINE_AD) -> dict[str, str]:
    (tmp_path / "job.ad").write_text(job)
    (tmp_path / "machine.ad").write_text(machine)
    return {"_CONDOR_JOB_AD": str(tmp_path / "job.ad"),
            "_CONDOR_MACHINE_AD": str(tmp_path / "machine.ad"), "_CONDOR_SLOT": "slot1_1"}


def spec(**kw) -> JobSpec:
    kw.setdefault("job_id", "12.3")
    return JobSpec(argv=("/bin/true",), executable="/bin/true", cwd="/", environment={}, **kw)


# -- reading the ads, as the caller ----------------------------------------------------------


def test_facts_from_the_ads(tmp_path):
    assert Facts(**facts_from_env(environ(tmp_path))) == FACTS


def test_not_under_htcondor_there_are_no_facts():
    assert facts_from_env({"PATH": "/bin"}) is None


@pytest.mark.parametrize("machine, expected", [
    ("Cpus = 2.5\nMemory = 128\n", {"memory_mb": 128}),        # not an integer literal
    ("Cpus = TotalCpus / 2\nMemory = -5\n", {}),                # expressions, negatives
    ("Cpus = 70000\nMemory = 1125899906842624\n", {}),          # beyond the bounds
    ("", {}),
])
def test_malformed_slot_facts_are_left_out(tmp_path, machine, expected):
    facts = facts_from_env(environ(tmp_path, machine=machine))
    assert {k: facts[k] for k in ("cpus", "memory_mb") if k in facts} == expected


def test_a_missing_ad_file_gives_what_the_others_say(tmp_path):
    env = environ(tmp_path)
    env["_CONDOR_MACHINE_AD"] = str(tmp_path / "gone")
    facts = facts_from_env(env)
    assert facts["cluster"] == 12 and "cpus" not in facts and "memory_mb" not in facts


def test_an_owner_with_control_characters_is_left_out(tmp_path):
    facts = facts_from_env(environ(tmp_path, job='ClusterId = 1\nOwner = "a\x1bb"\n'))
    assert "owner" not in facts


# -- the same facts, as the broker gets them ---------------------------------------------------


@pytest.mark.parametrize("data, message", [
    ([], "not an object"),
    ({"uid": 0}, "unknown key 'uid'"),
    ({"cpus": -1}, "cpus must be an integer"),
    ({"cpus": True}, "cpus must be an integer"),
    ({"memory_mb": 1.5}, "memory_mb must be an integer"),
    ({"memory_mb": 2**50}, "memory_mb must be an integer"),
    ({"owner": ""}, "owner must be printable text"),
    ({"slot": "x" * 256}, "slot must be printable text"),
    ({"global_job_id": "a\nb"}, "global_job_id must be printable text"),
    ({"owner": 5}, "owner must be printable text"),
])
def test_the_broker_refuses_malformed_facts_in_one_line(data, message):
    with pytest.raises(UsageError, match=message):
        Facts.from_parameters(data)


def test_the_broker_reads_what_the_client_sends(tmp_path):
    assert Facts.from_parameters(facts_from_env(environ(tmp_path))) == FACTS
    assert Facts.from_parameters({"cpus": None}) == Facts()


# -- the mapping ----------------------------------------------------------------------------


def test_with_no_options_the_unit_gets_the_slots_limits_as_htcondor_would():
    mapped = apply(spec(), FACTS, Mapping(), named=False)
    assert mapped.limits == Limits(memory_max=128 * 2**20, swap_max=0)
    assert mapped.properties == (("CPUWeight", "200"),)
    assert mapped.unit_name == "condor-job-12.3-slot1_1.service"
    assert mapped.description == "HTCondor job 12.3 of alice on slot1_1: /bin/true"
    assert mapped.log_fields == ("CONDOR_CLUSTER_ID=12", "CONDOR_PROC_ID=3",
                                 "CONDOR_GLOBAL_JOB_ID=ap1#12.3#1796065539",
                                 "CONDOR_OWNER=alice", "CONDOR_SLOT=slot1_1")


def test_explicit_options_win():
    given = spec(limits=Limits(memory_max=2**30, swap_max=2**20, cpu_quota_percent=50.0),
                 properties=(("CPUWeight", "7"),))
    mapped = apply(given, FACTS, Mapping(cpu_quota=True), named=True)
    assert mapped.limits == given.limits
    assert mapped.properties == (("CPUWeight", "7"),)
    assert mapped.job_id == "12.3"  # --name


@pytest.mark.parametrize("mapping, memory_max, memory_high, swap_max, quota", [
    (Mapping("soft"), None, 128 * 2**20, 0, None),
    (Mapping("none"), None, None, 0, None),
    (Mapping("hard", allow_swap=True), 128 * 2**20, None, None, None),
    (Mapping("hard", cpu_quota=True), 128 * 2**20, None, 0, 200.0),
])
def test_the_sites_choices(mapping, memory_max, memory_high, swap_max, quota):
    limits = apply(spec(), FACTS, mapping, named=False).limits
    assert (limits.memory_max, limits.memory_high, limits.swap_max,
            limits.cpu_quota_percent) == (memory_max, memory_high, swap_max, quota)


def test_missing_facts_map_to_nothing():
    mapped = apply(spec(), Facts(), Mapping(), named=False)
    assert mapped.limits == Limits(swap_max=0) and mapped.properties == ()
    assert mapped.job_id == "12.3" and mapped.log_fields == ()


def test_cpu_weight_stays_within_systemds_range():
    mapped = apply(spec(), Facts(cpus=4096), Mapping(), named=False)
    assert mapped.properties == (("CPUWeight", "10000"),)


def test_the_unit_name_is_unique_per_slot_and_valid():
    assert job_id(Facts(cluster=12, proc=0, slot="slot1_1@startd2")) == "12.0-slot1_1_startd2"
    assert job_id(Facts(cluster=12, proc=0)) == "12.0"
    assert job_id(Facts(cluster=12)) is None
    spec(job_id=job_id(Facts(cluster=1, proc=0, slot="s" * 255)))  # still a valid unit name


def test_the_policy_file_sets_the_choices(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('[htcondor]\nmemory_limit = "soft"\nallow_swap = true\ncpu_quota = true\n')
    assert Policy.load(str(path)).htcondor == Mapping("soft", True, True)
    assert Policy.load(str(tmp_path / "none.toml")).htcondor == Mapping()
    path.write_text('[htcondor]\nmemory_limit = "strict"\n')
    with pytest.raises(ValueError, match="memory_limit must be one of hard, soft, none"):
        Policy.load(str(path))
