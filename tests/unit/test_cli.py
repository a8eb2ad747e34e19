"""The command line as HTCondor sees it: exit status, one line on stderr, the wrapper error file.

Run as a subprocess. On the machines these unit tests run on systemd is not the init system, so
every launch fails before anything is started (asserted below, so a systemd host is noticed).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_SYSTEMD = not os.path.isdir("/run/systemd/system")
needs_no_systemd = pytest.mark.skipif(not NO_SYSTEMD, reason="systemd is the init system here")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_CONDOR_")}
    env.update(extra)
    return env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "condor_systemd", *args], cwd=ROOT,
                          env=_env(**env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


def _one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stderr.endswith("\n")
    assert lines[0].startswith("condor-systemd: ")
    assert "internal error" not in lines[0]
    return lines[0]


# -- usage errors: 2 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--memory", "2X", "--", "true"], "'2X' is not a size"),
        (["run", "--cpus", "0", "--", "true"], "'0' must be more than zero"),
        (["run", "--allowed-cpus", "3-1", "--", "true"], "runs backwards"),
        (["run", "-p", "Foo=1", "--", "true"], "unknown property"),
        (["run", "-p", "ExecStart=/x", "--", "true"], "not settable"),
        (["run"], "missing command"),
        (["run", "--"], "missing command"),
        (["run", "--name", "a/b", "--", "true"], "'a/b'"),
        (["run", "--cpus", "1", "--cpu-quota", "50%", "--", "true"], "not both"),
        (["run", "--io-weight", "0", "--", "true"], "out of range (1-10000)"),
        (["run", "--tasks-max", "-1", "--", "true"], "'-1'"),
        (["run", "--slice", "bad", "--", "true"], "'bad' is not a slice name"),
        (["run", "--backend", "nope", "--", "true"], "'nope'"),
        (["run", "--scope", "--private-users", "--", "true"], "scopes cannot be sandboxed"),
        (["run", "--scope", "--protect-system", "--", "true"], "scopes cannot be sandboxed"),
        (["run", "--protect-system", "bogus", "--", "true"], "'bogus'"),
        (["run", "--stop-timeout", "-1", "--", "true"], "'-1'"),
        (["run", "--no-such-option", "--", "true"], "--no-such-option"),
        ([], "VERB"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, fragment, tmp_path):
    error_file = tmp_path / "wrapper-error"
    proc = cli(*args, _CONDOR_WRAPPER_ERROR_FILE=str(error_file))
    line = _one_line_error(proc, 2)
    assert fragment in line
    assert not error_file.exists()  # usage errors are the admin's, not the job's


@pytest.mark.skipif(os.geteuid() == 0, reason="root may use --uid; see the root variant")
def test_uid_needs_root():
    line = _one_line_error(cli("run", "--uid", "nobody", "--", "true"), 2)
    assert "need root" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="unknown users are checked only for root")
def test_uid_unknown_user_as_root():
    line = _one_line_error(cli("run", "--uid", "no-such-user-xyz", "--", "true"), 2)
    assert "no-such-user-xyz" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="unknown groups are checked only for root")
def test_gid_unknown_group_as_root():
    line = _one_line_error(cli("run", "--gid", "no-such-group-xyz", "--", "true"), 2)
    assert "no-such-group-xyz" in line


# -- the command: 127 / 126 ------------------------------------------------------------------


def test_command_not_found(tmp_path):
    error_file = tmp_path / "wrapper-error"
    proc = cli("run", "--", "no-such-command-xyz", "arg",
               _CONDOR_WRAPPER_ERROR_FILE=str(error_file))
    line = _one_line_error(proc, 127)
    assert line == "condor-systemd: no-such-command-xyz: command not found"
    assert error_file.read_text() == "condor-systemd: no-such-command-xyz: command not found\n"


def test_the_error_file_is_visible_through_a_private_scratch_directory(tmp_path):
    """HTCondor's starter checks for the file as the condor user: a 0700 scratch directory
    (the job owner's, as the starter makes it) hid it, and the job completed with 125."""
    scratch = tmp_path / "dir_1234"
    scratch.mkdir(mode=0o700)
    proc = cli("run", "--", "no-such-command-xyz", _CONDOR_WRAPPER_ERROR_FILE=str(
        scratch / ".job_wrapper_failure"))
    _one_line_error(proc, 127)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o711
    assert stat.S_IMODE((scratch / ".job_wrapper_failure").stat().st_mode) == 0o644


def test_command_not_found_without_error_file():
    line = _one_line_error(cli("run", "--", "no-such-command-xyz"), 127)
    assert "command not found" in line


def test_command_searched_in_the_job_path(tmp_path):
    proc = cli("run", "--", "true", PATH=str(tmp_path))
    line = _one_line_error(proc, 127)
    assert "true: command not found" in line


def test_command_not_executable(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    error_file = tmp_path / "wrapper-error"
    proc = cli("run", "--", str(plain), _CONDOR_WRAPPER_ERROR_FILE=str(error_file))
    line = _one_line_error(proc, 126)
    assert str(plain) in line
    assert "not executable" in line
    assert str(plain) in error_file.read_text()


def test_command_is_a_directory(tmp_path):
    line = _one_line_error(cli("run", "--", str(tmp_path)), 126)
    assert "is a directory" in line


# -- no backend: 125 -------------------------------------------------------------------------


# (--backend auto falls back to psutil here: tests/fallback)
@needs_no_systemd
def test_no_systemd_here(tmp_path):
    error_file = tmp_path / "wrapper-error"
    proc = cli("run", "--backend", "systemd", "--memory", "1G", "--", "true",
               _CONDOR_WRAPPER_ERROR_FILE=str(error_file))
    line = _one_line_error(proc, 125)
    assert "systemd is not the init system" in line
    written = error_file.read_text()
    assert written == line + "\n"


@needs_no_systemd
def test_no_systemd_without_error_file():
    _one_line_error(cli("run", "--backend", "systemd", "--", "true"), 125)


@needs_no_systemd
def test_unwritable_error_file_is_not_fatal(tmp_path):
    proc = cli("run", "--backend", "systemd", "--", "true",
               _CONDOR_WRAPPER_ERROR_FILE=str(tmp_path / "no-such-dir" / "err"))
    _one_line_error(proc, 125)


@needs_no_systemd
def test_log_file_gets_the_error(tmp_path):
    log = tmp_path / "log"
    proc = cli("run", "--backend", "systemd", "--log-file", str(log), "--", "true")
    line = _one_line_error(proc, 125)
    assert line.removeprefix("condor-systemd: ") in log.read_text()


# -- help ------------------------------------------------------------------------------------


def _options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text))


def _readme_options() -> set[str]:
    """The first column of README's options table (section "Options (`condor-systemd run
    --help`)")."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Options", 1)[1].split("\n\n", 2)[1]
    cells = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    assert len(cells) > 10, "README's options table not found"
    return _options_in("\n".join(re.findall(r"`([^`]*)`", "\n".join(cells))))


def test_run_help_offers_exactly_the_options_readme_documents():
    proc = cli("run", "--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("usage: condor-systemd run [OPTIONS] -- CMD [ARGS...]\n")
    # argparse heads the section "optional arguments:" before Python 3.10, "options:" after
    options = re.split(r"\n(?:options|optional arguments):\n", proc.stdout, maxsplit=1)[1]
    offered = {o for line in options.splitlines() if line.startswith("  -")
               for o in _options_in(line.split("  ")[1])} - {"-h", "--help"}
    assert offered == _readme_options()


def test_top_level_help_lists_the_verbs_and_each_works():
    proc = cli("--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    listed = proc.stdout.split("positional arguments:\n", 1)[1].split("\n\n", 1)[0]
    verbs = [line.split()[0] for line in listed.splitlines() if line.startswith("    ")]
    assert verbs == ["run", "probe", "broker"]  # the three README documents
    for verb in verbs:
        sub = cli(verb, "--help")
        assert (sub.returncode, sub.stderr) == (0, ""), verb
        assert sub.stdout.startswith(f"usage: condor-systemd {verb} "), sub.stdout


# -- from options to a JobSpec (in process, nothing is started) ------------------------------


def _spec(*args: str, environ: dict[str, str] | None = None):
    from condor_systemd.cli import build_parser, spec_from_args

    parsed = build_parser().parse_args(["run", *args])
    return spec_from_args(parsed, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   **(environ or {})})


def test_spec_from_options():
    spec = _spec("--cpus", "1.5", "--memory", "2G", "--allowed-cpus", "0-1", "--name", "7.1",
                 "--", "true", "$x")
    assert spec.argv == ("true", "$x")
    assert os.path.basename(spec.executable) == "true"
    assert spec.job_id == "7.1"
    assert spec.unit_name == "condor-job-7.1.service"
    assert spec.limits.cpu_quota_percent == 150.0
    assert spec.limits.memory_max == 2 * 1024**3
    assert spec.limits.allowed_cpus == (0, 1)
    assert spec.sandbox.private_tmp is True
    assert spec.properties == ()


def test_spec_properties_override_options():
    spec = _spec("--cpu-quota", "50%", "-p", "CPUQuota=150%", "-p", "PrivateTmp=no",
                 "-p", "ProtectSystem=no", "-p", "Nice=5", "--", "true")
    assert spec.limits.cpu_quota_percent == 150.0
    assert spec.sandbox.private_tmp is False
    assert spec.sandbox.protect_system is None
    assert spec.properties == (("Nice", "5"),)


GIB = 1024**3


# README's options table: each option sets a unit property, and -p that property overrides it
@pytest.mark.parametrize(
    ("option", "prop", "field", "alone", "overridden"),
    [
        (["--cpus", "1"], "CPUQuota=150%", "limits.cpu_quota_percent", 100.0, 150.0),
        (["--cpu-quota", "50%"], "CPUQuota=150%", "limits.cpu_quota_percent", 50.0, 150.0),
        (["--memory", "1G"], "MemoryMax=2G", "limits.memory_max", GIB, 2 * GIB),
        (["--memory-high", "1G"], "MemoryHigh=2G", "limits.memory_high", GIB, 2 * GIB),
        (["--swap", "1G"], "MemorySwapMax=2G", "limits.swap_max", GIB, 2 * GIB),
        (["--allowed-cpus", "0"], "AllowedCPUs=1-2", "limits.allowed_cpus", (0,), (1, 2)),
        (["--io-weight", "100"], "IOWeight=300", "limits.io_weight", 100, 300),
        (["--tasks-max", "10"], "TasksMax=20", "limits.tasks_max", 10, 20),
        (["--private-tmp"], "PrivateTmp=no", "sandbox.private_tmp", True, False),
        (["--private-users"], "PrivateUsers=no", "sandbox.private_users", True, False),
        (["--protect-system"], "ProtectSystem=full", "sandbox.protect_system", "strict", "full"),
    ],
)
def test_property_overrides_its_option(option, prop, field, alone, overridden):
    group, name = field.split(".")
    assert getattr(getattr(_spec(*option, "--", "true"), group), name) == alone
    spec = _spec(*option, "-p", prop, "--", "true")
    assert getattr(getattr(spec, group), name) == overridden
    assert spec.properties == ()  # taken as the option's value, not also sent as given


def test_spec_job_id_and_slot_from_ads(tmp_path):
    job_ad = tmp_path / "job.ad"
    job_ad.write_text("ClusterId = 42\nProcId = 3\n")
    spec = _spec("--", "true", environ={"_CONDOR_JOB_AD": str(job_ad), "_CONDOR_SLOT": "slot2",
                                         "_CONDOR_WRAPPER_ERROR_FILE": "/x"})
    assert spec.job_id == "42.3"
    assert spec.slot == "slot2"
    assert "_CONDOR_WRAPPER_ERROR_FILE" not in spec.environment
    assert spec.environment["_CONDOR_SLOT"] == "slot2"


def test_spec_local_job_id():
    spec = _spec("--", "true")
    assert spec.job_id.startswith(f"local-{os.getpid()}-")
    assert len(spec.job_id.rsplit("-", 1)[1]) == 6


def test_spec_infinity_property_overrides_option():
    spec = _spec("--memory", "2G", "-p", "MemoryMax=infinity", "--", "true")
    assert spec.limits.memory_max is None


def test_io_weight_to_ionice_level():
    from condor_systemd.backends.fallback import io_level

    assert [io_level(w) for w in (1, 10, 50, 100, 200, 1000, 10000)] == [7, 6, 5, 4, 3, 2, 0]


def test_read_stat_of_this_process():
    from condor_systemd.backends.family import read_stat

    stat = read_stat(os.getpid())
    assert stat is not None and stat.ppid == os.getppid() and stat.state in "RS"
    assert stat.threads >= 1 and stat.rss_bytes > 1 << 20
    assert read_stat(2**22 + 1) is None  # beyond pid_max: no such process
