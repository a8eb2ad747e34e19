"""The usage record: JSON and ClassAd renderings."""

from __future__ import annotations

import json

import pytest

from condor_systemd.usage import IN_FORCE, KEYS, NOT_ENFORCED, Usage, Verdict


def _ad(text: str) -> dict[str, str]:
    lines = text.splitlines()
    out = {}
    for line in lines:
        name, sep, value = line.partition(" = ")
        assert sep, f"not an attribute line: {line!r}"
        assert name not in out, f"attribute {name} twice"
        out[name] = value
    return out


def _full() -> Usage:
    return Usage(
        unit="condor-job-1.0.service", backend="systemd", job_id="1.0", exit_code=3,
        signal=None, oom_killed=False, wall_seconds=12.5, cpu_user_seconds=1.25,
        cpu_system_seconds=0.5, memory_peak_bytes=1024 * 1024 + 1, io_read_bytes=2048,
        io_write_bytes=1, tasks_peak=4,
        limits={"memory_max": 2 * 1024**3, "allowed_cpus": "0-3", "private_tmp": True},
        enforced={"memory_max": IN_FORCE, "allowed_cpus": Verdict(NOT_ENFORCED, "reason")},
        cgroup_layout="unified", cgroup_controllers=["cpu", "io", "memory"],
        systemd_version=252)


# -- JSON ------------------------------------------------------------------------------------


def test_json_has_every_key_in_order():
    data = json.loads(_full().to_json())
    assert list(data) == list(KEYS)
    assert set(KEYS) == set(Usage.__dataclass_fields__)


def test_json_unknowns_are_null_not_zero():
    text = Usage(unit=None, backend="systemd", job_id="1.0").to_json()
    data = json.loads(text)
    assert list(data) == list(KEYS)
    for key in ("unit", "exit_code", "signal", "oom_killed", "wall_seconds", "cpu_user_seconds",
                "cpu_system_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes",
                "tasks_peak", "cgroup_layout", "systemd_version"):
        assert data[key] is None, key
    assert data["limits"] == {} and data["enforced"] == {}
    assert '"exit_code": null' in text
    assert text.endswith("}\n")


def test_json_values():
    data = json.loads(_full().to_json())
    assert data["exit_code"] == 3
    assert data["oom_killed"] is False
    assert data["cpu_user_seconds"] == 1.25
    assert data["limits"] == {"memory_max": 2 * 1024**3, "allowed_cpus": "0-3",
                              "private_tmp": True}
    assert data["enforced"]["allowed_cpus"] == "not enforced: reason"
    assert data["systemd_version"] == 252


# -- ClassAd ---------------------------------------------------------------------------------


def test_classad_htcondor_attributes():
    ad = _ad(_full().to_classad())
    assert ad["RemoteUserCpu"] == "1.25"
    assert ad["RemoteSysCpu"] == "0.5"
    assert ad["RemoteWallClockTime"] == "12.5"
    assert ad["ResidentSetSize"] == "1025"  # KiB, rounded up
    assert ad["MemoryUsage"] == "2"  # MiB, rounded up
    assert ad["BlockReadKbytes"] == "2"
    assert ad["BlockWriteKbytes"] == "1"  # one byte is one (started) KiB
    assert ad["ExitCode"] == "3"
    assert ad["ExitBySignal"] == "false"
    assert ad["ExitSignal"] == "undefined"


def test_classad_htcondor_attributes_come_first():
    lines = _full().to_classad().splitlines()
    assert [line.split(" = ")[0] for line in lines[:10]] == [
        "RemoteUserCpu", "RemoteSysCpu", "RemoteWallClockTime", "ResidentSetSize",
        "MemoryUsage", "BlockReadKbytes", "BlockWriteKbytes", "ExitBySignal", "ExitCode",
        "ExitSignal"]
    assert all(line.startswith("CondorSystemd") for line in lines[10:])


# HTCondor's job ClassAd attributes (HTCondor manual, "Job ClassAd Attributes"):
# BlockReadKbytes / BlockWriteKbytes are KiB read from / written to disk, as whole numbers.
@pytest.mark.parametrize(("nbytes", "kib"), [
    (0, "0"), (1023, "1"), (1024, "1"), (10 * 1024**2, "10240"), (10 * 1024**2 + 1, "10241"),
    (5 * 1024**3, "5242880")])
def test_classad_block_kbytes_are_kib(nbytes, kib):
    ad = _ad(Usage(unit="u", backend="systemd", job_id="1", io_read_bytes=nbytes,
                   io_write_bytes=nbytes).to_classad())
    assert ad["BlockReadKbytes"] == kib
    assert ad["BlockWriteKbytes"] == kib


@pytest.mark.parametrize(
    ("peak", "rss", "mem"),
    [(0, "0", "0"), (1, "1", "1"), (1024, "1", "1"), (1025, "2", "1"),
     (1024 * 1024, "1024", "1"), (1024 * 1024 + 1, "1025", "2"), (3 * 1024**3, "3145728", "3072")],
)
def test_classad_memory_rounding(peak, rss, mem):
    ad = _ad(Usage(unit="u", backend="systemd", job_id="1", memory_peak_bytes=peak).to_classad())
    assert ad["ResidentSetSize"] == rss
    assert ad["MemoryUsage"] == mem


def test_classad_killed_by_signal():
    ad = _ad(Usage(unit="u", backend="systemd", job_id="1", signal=9).to_classad())
    assert ad["ExitBySignal"] == "true"
    assert ad["ExitSignal"] == "9"
    assert ad["ExitCode"] == "undefined"
    assert ad["CondorSystemdSignal"] == "9"


def test_classad_unknowns_are_undefined():
    ad = _ad(Usage(unit=None, backend="systemd", job_id="1").to_classad())
    for name in ("RemoteUserCpu", "RemoteSysCpu", "RemoteWallClockTime", "ResidentSetSize",
                 "MemoryUsage", "BlockReadKbytes", "BlockWriteKbytes", "ExitBySignal",
                 "ExitCode", "ExitSignal", "CondorSystemdUnit", "CondorSystemdOomKilled",
                 "CondorSystemdTasksPeak", "CondorSystemdSystemdVersion"):
        assert ad[name] == "undefined", name
    assert "0" not in (ad["ExitCode"], ad["RemoteUserCpu"], ad["MemoryUsage"])


def test_classad_zero_is_zero_not_undefined():
    ad = _ad(Usage(unit="u", backend="systemd", job_id="1", exit_code=0,
                   cpu_user_seconds=0.0, tasks_peak=0).to_classad())
    assert ad["ExitCode"] == "0"
    assert ad["ExitBySignal"] == "false"
    assert ad["RemoteUserCpu"] == "0.0"
    assert ad["CondorSystemdTasksPeak"] == "0"


def test_classad_record_attributes():
    ad = _ad(_full().to_classad())
    assert ad["CondorSystemdUnit"] == '"condor-job-1.0.service"'
    assert ad["CondorSystemdBackend"] == '"systemd"'
    assert ad["CondorSystemdJobId"] == '"1.0"'
    assert ad["CondorSystemdExitCode"] == "3"
    assert ad["CondorSystemdOomKilled"] == "false"
    assert ad["CondorSystemdWallSeconds"] == "12.5"
    assert ad["CondorSystemdMemoryPeakBytes"] == str(1024 * 1024 + 1)
    assert ad["CondorSystemdIoWriteBytes"] == "1"
    assert ad["CondorSystemdCgroupLayout"] == '"unified"'
    assert ad["CondorSystemdSystemdVersion"] == "252"


def test_classad_dicts_are_flattened():
    ad = _ad(_full().to_classad())
    assert ad["CondorSystemdLimitsMemoryMax"] == str(2 * 1024**3)
    assert ad["CondorSystemdLimitsAllowedCpus"] == '"0-3"'
    assert ad["CondorSystemdLimitsPrivateTmp"] == "true"
    assert ad["CondorSystemdEnforcedMemoryMax"] == "true"
    assert ad["CondorSystemdEnforcedAllowedCpus"] == '"not enforced: reason"'
    assert "CondorSystemdLimits" not in ad
    assert "CondorSystemdEnforced" not in ad


def test_classad_empty_dicts_give_no_lines():
    text = Usage(unit="u", backend="systemd", job_id="1").to_classad()
    assert "CondorSystemdLimits" not in text
    assert "CondorSystemdEnforced" not in text


def test_classad_strings_are_quoted_and_escaped():
    usage = Usage(unit="u", backend="systemd", job_id="1",
                  enforced={"memory_max": Verdict(NOT_ENFORCED, 'asked "2G"\\ then\nmore')})
    text = usage.to_classad()
    ad = _ad(text)
    assert ad["CondorSystemdEnforcedMemoryMax"] == '"not enforced: asked \\"2G\\"\\\\ then more"'
    assert text.count("\n") == len(ad)  # the newline did not split the attribute


def test_classad_floats_are_rounded_to_microseconds():
    ad = _ad(Usage(unit="u", backend="systemd", job_id="1",
                   cpu_user_seconds=0.1 + 0.2, wall_seconds=1.23456789).to_classad())
    assert ad["RemoteUserCpu"] == "0.3"
    assert ad["RemoteWallClockTime"] == "1.234568"


def test_classad_ends_with_newline_and_has_no_blank_lines():
    text = _full().to_classad()
    assert text.endswith("\n")
    assert "" not in text.splitlines()


def test_cgroup_controllers():
    data = json.loads(_full().to_json())
    assert data["cgroup_controllers"] == ["cpu", "io", "memory"]
    ad = _ad(_full().to_classad())
    assert ad["CondorSystemdCgroupControllers"] == '"cpu io memory"'
    empty = Usage(unit="u", backend="systemd", job_id="1")
    assert json.loads(empty.to_json())["cgroup_controllers"] == []
    assert _ad(empty.to_classad())["CondorSystemdCgroupControllers"] == '""'


# -- records are independent -----------------------------------------------------------------


def test_records_do_not_share_their_containers():
    """A write to one record's limits/enforced/accuracy/controllers must not show in another
    (NamedTuple defaults were one shared dict for every record)."""
    first = Usage(unit=None, backend="psutil", job_id="1")
    first.limits["memory_max"] = 1
    first.enforced["memory_max"] = IN_FORCE
    first.accuracy["cpu"] = "exact"
    first.cgroup_controllers.append("memory")
    second = Usage(unit=None, backend="psutil", job_id="2")
    assert second.limits == {} and second.enforced == {}
    assert second.accuracy == {} and second.cgroup_controllers == []


# -- verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "rendered"), [
    (IN_FORCE, True),
    (Verdict("approximate", "a watchdog"), "approximate: a watchdog"),
    (Verdict("not sent", "systemd 252 lacks X"), "not sent: systemd 252 lacks X"),
    (Verdict("not in force", "asked 1, has 2"), "not in force: asked 1, has 2"),
    (Verdict("off", "the command under /tmp"), "off: the command under /tmp"),
    (Verdict("unknown", "no cgroup"), "unknown: no cgroup"),
])
def test_verdicts_render_as_documented(verdict, rendered):
    """README: `true`, or a string saying why not, starting with its kind."""
    data = json.loads(Usage(unit=None, backend="x", job_id="1",
                            enforced={"k": verdict}).to_json())
    assert data["enforced"]["k"] == rendered


def test_verdict_kinds_are_checked_and_raw_values_refused():
    with pytest.raises(ValueError, match="unknown verdict kind"):
        Verdict("enforced-ish", "x")
    with pytest.raises(TypeError, match="Verdicts"):
        Usage(unit=None, backend="x", job_id="1", enforced={"k": True}).to_json()


@pytest.mark.parametrize(("raw", "type_name"), [(True, "bool"), ("approximate: x", "str")])
def test_a_raw_verdict_is_named_by_its_type(raw, type_name):
    """The old raw forms (true, "kind: why" strings) are refused, and the error says which."""
    with pytest.raises(TypeError) as info:
        Usage(unit=None, backend="x", job_id="1", enforced={"k": raw}).to_classad()
    assert str(info.value) == f"enforced values are Verdicts, not {type_name}"
