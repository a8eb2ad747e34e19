"""Parsers and records of condor_systemd.spec: pure functions, no systemd needed."""

from __future__ import annotations

import os
import stat

import pytest

from condor_systemd.errors import (
    CommandNotExecutable,
    CommandNotFound,
    LaunchError,
    UsageError,
)
from condor_systemd.spec import (
    MAX_CPU,
    JobSpec,
    Limits,
    Sandbox,
    check_job_id,
    check_slice,
    format_cpu_list,
    parse_cpu_count,
    parse_cpu_list,
    parse_int,
    parse_interval,
    parse_percent,
    parse_seconds,
    parse_size,
    resolve_command,
)

# -- parse_size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * 1024**3),
        ("2g", 2 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("1.5g", int(1.5 * 1024**3)),
        ("1048576", 1048576),
        ("1", 1),
        (" 3 K ", 3 * 1024),
        ("4k", 4096),
        ("1T", 1024**4),
        ("1P", 1024**5),
        ("0.5K", 512),
        ("100B", 100),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2X", "-1", "0", "1.5.2", "G", "2 GB?", "0.1", "2Ki",
                                  "2GiBB", "0K", "1e3", "two"])
def test_parse_size_refuses_with_the_text_in_the_message(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert f"'{text}'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["16384P", "16777216T", "18446744073709551616"])
def test_parse_size_refuses_what_no_uint64_holds(text):
    """2**64 bytes and more: systemd's sizes travel as D-Bus 't' (uint64); refused up front,
    naming the value, not turned into a failure when the unit is created."""
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert f"'{text}'" in str(info.value)
    assert "too large" in str(info.value)


def test_parse_size_result_is_int():
    assert isinstance(parse_size("1.5K"), int)
    assert parse_size("1.5K") == 1536


# -- parse_percent / parse_cpu_count ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("150%", 150.0), ("150", 150.0), (" 50 % ", 50.0), ("0.5%", 0.5), ("1000%", 1000.0)],
)
def test_parse_percent_accepts(text, expected):
    assert parse_percent(text) == expected


@pytest.mark.parametrize("text", ["abc", "0%", "0", "-5", "-5%", "inf", "inf%", "nan", "",
                                  "%", "150%%"])
def test_parse_percent_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_percent(text)
    assert f"'{text}'" in str(info.value)


# The largest machine Linux builds for has 8192 CPUs (arch/x86/Kconfig: NR_CPUS up to 8192 with
# MAXSMP), numbered 0-8191. README: --cpus N is CPUQuota=N*100%, and --allowed-cpus takes CPU
# numbers: all three options must accept that machine whole, and nothing beyond it.
LARGEST_MACHINE_CPUS = 8192


def test_cpu_options_accept_the_largest_machine_whole():
    assert parse_cpu_list(f"0-{LARGEST_MACHINE_CPUS - 1}") == tuple(range(LARGEST_MACHINE_CPUS))
    assert parse_cpu_count(str(LARGEST_MACHINE_CPUS)) == LARGEST_MACHINE_CPUS
    assert parse_percent(f"{LARGEST_MACHINE_CPUS * 100}%") == LARGEST_MACHINE_CPUS * 100


@pytest.mark.parametrize("text", [str(LARGEST_MACHINE_CPUS + 1), f"{LARGEST_MACHINE_CPUS}.5"])
def test_parse_cpu_count_refuses_more_cpus_than_any_machine(text):
    with pytest.raises(UsageError) as info:
        parse_cpu_count(text)
    assert f"number of CPUs '{text}' is too large" == str(info.value)


@pytest.mark.parametrize("text", [f"{LARGEST_MACHINE_CPUS * 100 + 1}%",
                                  f"{LARGEST_MACHINE_CPUS * 100}.5"])
def test_parse_percent_refuses_more_cpus_than_any_machine(text):
    with pytest.raises(UsageError) as info:
        parse_percent(text)
    assert str(info.value) == f"percentage '{text}' is more than {LARGEST_MACHINE_CPUS} CPUs"


@pytest.mark.parametrize(("text", "expected"), [("2", 2.0), ("0.5", 0.5), ("16", 16.0)])
def test_parse_cpu_count_accepts(text, expected):
    assert parse_cpu_count(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "inf", "nan", "2%"])
def test_parse_cpu_count_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_cpu_count(text)
    assert f"'{text}'" in str(info.value)


# -- CPU lists -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8", (0, 1, 2, 3, 8)),
        ("8,0-3", (0, 1, 2, 3, 8)),
        ("0", (0,)),
        ("1,1,1", (1,)),
        ("0-3,2-5", (0, 1, 2, 3, 4, 5)),
        ("3-3", (3,)),
        (" 1 , 2 ", (1, 2)),
        (str(MAX_CPU), (MAX_CPU,)),
    ],
)
def test_parse_cpu_list_accepts(text, expected):
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text", ["3-1", "a", "", "1,,2", "9000", "1-", "-1", "0-9000", "1;2",
                                  str(MAX_CPU + 1)])
def test_parse_cpu_list_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_cpu_list(text)
    assert f"'{text}'" in str(info.value)


def test_parse_cpu_list_backwards_range_is_named():
    with pytest.raises(UsageError, match="backwards"):
        parse_cpu_list("0,3-1")


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ((0, 1, 2, 3, 8), "0-3,8"),
        ((0,), "0"),
        ((), ""),
        ((1, 3, 5), "1,3,5"),
        ((0, 1, 4, 5, 6, 9), "0-1,4-6,9"),
    ],
)
def test_format_cpu_list(cpus, text):
    assert format_cpu_list(cpus) == text


@pytest.mark.parametrize("text", ["0-3,8", "0", "1,3,5", "0-1,4-6,9", "0-8191", "7,100-101"])
def test_cpu_list_round_trip(text):
    assert format_cpu_list(parse_cpu_list(text)) == text
    assert parse_cpu_list(format_cpu_list(parse_cpu_list(text))) == parse_cpu_list(text)


# -- parse_int / parse_seconds ---------------------------------------------------------------


def test_parse_int_inclusive_bounds():
    assert parse_int("1", "weight", 1, 10000) == 1
    assert parse_int("10000", "weight", 1, 10000) == 10000
    assert parse_int("-20", "nice", -20, 19) == -20


@pytest.mark.parametrize("text", ["0", "10001", "-1"])
def test_parse_int_out_of_range(text):
    with pytest.raises(UsageError) as info:
        parse_int(text, "weight", 1, 10000)
    message = str(info.value)
    assert "out of range (1-10000)" in message
    assert f"weight '{text}'" in message


@pytest.mark.parametrize("text", ["1.5", "abc", "", "1e3"])
def test_parse_int_not_whole(text):
    with pytest.raises(UsageError, match="not a whole number") as info:
        parse_int(text, "weight", 1, 10000)
    assert f"'{text}'" in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("20", 20.0), ("1.5", 1.5)])
def test_parse_seconds_accepts(text, expected):
    assert parse_seconds(text) == expected


@pytest.mark.parametrize("text", ["-1", "abc", "", "inf", "nan", "1e9", "1s"])
def test_parse_seconds_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_seconds(text)
    assert f"'{text}'" in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [("3600", 3600.0), ("86400", 86400.0),
                                                ("604800", 604800.0)])
def test_parse_seconds_accepts_hours_days_and_weeks(text, expected):
    # --stop-timeout and RuntimeMaxSec= of real jobs: an hour, a day, a week
    assert parse_seconds(text) == expected


# README: --sample-interval SECONDS, "0.05-3600", both ends included
@pytest.mark.parametrize(("text", "expected"), [("0.05", 0.05), ("1", 1.0), ("3600", 3600.0)])
def test_parse_interval_accepts_the_documented_range(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["0.049", "0", "3600.5", "3601", "86400"])
def test_parse_interval_refuses_outside_the_documented_range(text):
    with pytest.raises(UsageError) as info:
        parse_interval(text)
    assert str(info.value) == \
        f"sampling interval '{text}' must be between 0.05 and 3600 seconds"


@pytest.mark.parametrize("text", ["-1", "abc", ""])
def test_parse_interval_refuses_what_is_not_seconds(text):
    with pytest.raises(UsageError) as info:
        parse_interval(text)
    assert f"'{text}'" in str(info.value)


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["123.0", "local-1-abc", "1", "a_b:c.d-e", "x" * 200])
def test_check_job_id_accepts(job_id):
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", ["a/b", "../x", "", "a b", "x" * 201, "-x", "x@y", ".x",
                                    "a\nb", "a$b", "é"])
def test_check_job_id_refuses(job_id):
    with pytest.raises(UsageError) as info:
        check_job_id(job_id)
    assert f"'{job_id}'" in str(info.value)


@pytest.mark.parametrize("name", ["condor.slice", "condor-jobs.slice", "a.slice", "a_b:c.slice"])
def test_check_slice_accepts(name):
    assert check_slice(name) == name


@pytest.mark.parametrize("name", ["bad", "condor", ".slice", "-.slice", "-a.slice",
                                  "a--b.slice", "a/b.slice", "a b.slice", "condor.service",
                                  "condor.slice.x", ""])
def test_check_slice_refuses(name):
    with pytest.raises(UsageError) as info:
        check_slice(name)
    assert f"'{name}'" in str(info.value)


def test_check_slice_refuses_trailing_dash():
    with pytest.raises(UsageError):
        check_slice("condor-.slice")


# -- JobSpec ---------------------------------------------------------------------------------


def _spec(**kwargs):
    fields = {"argv": ("/bin/true",), "executable": "/bin/true", "job_id": "12.3",
              "cwd": "/", "environment": {}}
    fields.update(kwargs)
    return JobSpec(**fields)


def test_jobspec_unit_name_service_and_scope():
    assert _spec().unit_name == "condor-job-12.3.service"
    assert _spec(scope=True).unit_name == "condor-job-12.3.scope"


def test_jobspec_defaults():
    spec = _spec()
    assert spec.limits == Limits()
    assert spec.sandbox == Sandbox()
    assert spec.sandbox.private_tmp is True
    assert spec.slice == "condor.slice"
    assert spec.stop_timeout == 20.0
    assert spec.properties == ()


def test_jobspec_description():
    assert _spec().description == "HTCondor job 12.3: /bin/true"
    assert _spec(slot="slot1@host").description == "HTCondor job 12.3 on slot1@host: /bin/true"
    assert _spec(argv=("echo", "a b")).description == "HTCondor job 12.3: echo a b"


def test_jobspec_description_exactly_120_is_not_truncated():
    argv = ("x" * 120,)
    assert _spec(argv=argv).description == "HTCondor job 12.3: " + "x" * 120


def test_jobspec_description_truncated_beyond_120():
    argv = ("echo", "y" * 200)
    command = " ".join(argv)
    description = _spec(argv=argv).description
    tail = description.removeprefix("HTCondor job 12.3: ")
    assert len(tail) == 120
    assert tail == command[:117] + "..."


@pytest.mark.parametrize("sandbox", [Sandbox(private_users=True),
                                     Sandbox(protect_system="strict")])
def test_jobspec_scope_cannot_be_sandboxed(sandbox):
    with pytest.raises(UsageError, match="scopes cannot be sandboxed"):
        _spec(scope=True, sandbox=sandbox)
    assert _spec(sandbox=sandbox).sandbox == sandbox  # fine for a service


def test_jobspec_scope_with_default_sandbox_is_fine():
    assert _spec(scope=True).scope is True


def test_jobspec_validates_job_id_slice_and_argv():
    with pytest.raises(UsageError, match="job id"):
        _spec(job_id="a/b")
    with pytest.raises(UsageError, match="slice"):
        _spec(slice="nope")
    with pytest.raises(UsageError, match="missing command"):
        _spec(argv=())


# -- Limits / Sandbox ------------------------------------------------------------------------


def test_limits_asked_empty():
    assert Limits().asked() == {}


def test_limits_asked_only_what_was_set():
    limits = Limits(cpu_quota_percent=150.0, memory_max=2 * 1024**3, allowed_cpus=(0, 1, 2, 3, 8),
                    io_weight=200, tasks_max=0)
    assert limits.asked() == {"cpu_quota_percent": 150.0, "memory_max": 2 * 1024**3,
                              "allowed_cpus": "0-3,8", "io_weight": 200, "tasks_max": 0}


def test_sandbox_asked():
    assert Sandbox().asked() == {"private_tmp": True}
    assert Sandbox(private_tmp=False).asked() == {"private_tmp": False}
    assert Sandbox(private_users=True, protect_system="full").asked() == {
        "private_tmp": True, "private_users": True, "protect_system": "full"}


# -- resolve_command -------------------------------------------------------------------------


def _write(path, mode):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_resolve_command_via_path(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = _write(bindir / "myjob", 0o755)
    found = resolve_command("myjob", {"PATH": f"/nonexistent:{bindir}"}, "/")
    assert found == str(exe)


def test_resolve_command_path_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _write(first / "tool", 0o755)
    _write(second / "tool", 0o755)
    assert resolve_command("tool", {"PATH": f"{first}:{second}"}, "/") == str(first / "tool")
    assert resolve_command("tool", {"PATH": f"{second}:{first}"}, "/") == str(second / "tool")


def test_resolve_command_skips_unexecutable_in_path(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _write(first / "tool", 0o644)
    _write(second / "tool", 0o755)
    assert resolve_command("tool", {"PATH": f"{first}:{second}"}, "/") == str(second / "tool")


def test_resolve_command_relative_with_slash(tmp_path):
    exe = _write(tmp_path / "x", 0o755)
    assert resolve_command("./x", {"PATH": ""}, str(tmp_path)) == str(exe)
    sub = tmp_path / "sub"
    sub.mkdir()
    assert resolve_command("../x", {}, str(sub)) == str(exe)


def test_resolve_command_absolute(tmp_path):
    exe = _write(tmp_path / "abs", 0o755)
    assert resolve_command(str(exe), {}, "/") == str(exe)


def test_resolve_command_empty_path_entry_means_cwd(tmp_path):
    exe = _write(tmp_path / "here", 0o755)
    assert resolve_command("here", {"PATH": "/nonexistent:"}, str(tmp_path)) == str(exe)


def test_resolve_command_not_executable(tmp_path):
    exe = _write(tmp_path / "plain", 0o644)
    assert not os.stat(exe).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    with pytest.raises(CommandNotExecutable) as info:
        resolve_command("./plain", {}, str(tmp_path))
    assert "./plain" in str(info.value)
    assert info.value.exit_code == 126
    with pytest.raises(CommandNotExecutable):
        resolve_command("plain", {"PATH": str(tmp_path)}, "/")


def test_resolve_command_missing(tmp_path):
    with pytest.raises(CommandNotFound) as info:
        resolve_command("no-such-command-xyz", {"PATH": str(tmp_path)}, str(tmp_path))
    assert "no-such-command-xyz: command not found" in str(info.value)
    assert info.value.exit_code == 127
    assert isinstance(info.value, LaunchError)
    with pytest.raises(CommandNotFound):
        resolve_command("./missing", {}, str(tmp_path))


def test_resolve_command_directory_with_slash(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CommandNotExecutable, match="is a directory"):
        resolve_command("./d", {}, str(tmp_path))


def test_resolve_command_directory_in_path_is_skipped(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CommandNotFound):
        resolve_command("d", {"PATH": str(tmp_path)}, "/")


def test_resolve_command_default_path_when_unset():
    # /bin/sh exists everywhere this runs; with no PATH the shell default is searched
    assert resolve_command("sh", {}, "/") in ("/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh")


def test_zero_size_only_where_it_means_something():
    """systemd takes MemorySwapMax=0 (no swap: HTCondor's DISABLE_SWAP_FOR_JOB); a zero memory
    limit would kill the job at its first page, so --memory 0 stays refused."""
    assert parse_size("0", allow_zero=True) == 0
    assert parse_size("0G", allow_zero=True) == 0
    with pytest.raises(UsageError, match="must be more than zero"):
        parse_size("0")


def test_whole_sizes_are_exact_beyond_float_precision():
    assert parse_size("9007199254740993") == 2**53 + 1  # a float would give 2**53
    assert parse_size("9223372036854775807") == 2**63 - 1
