"""Reading HTCondor's job and machine ads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from condor_systemd.jobad import job_id_from_env, read_ad, slot_from_env

JOB_AD = """\
ClusterId = 123
ProcId = 4
Owner = "alice"
Cmd = "/home/alice/my job.sh"
Args = "say \\"hi\\""
RequestMemory = ifThenElse(MemoryUsage =!= undefined, MemoryUsage, 2048)
Iwd="/home/alice"
  Spaced   =   "  padded  "
not an attribute line
Empty =
Quote = "
"""


@pytest.fixture
def job_ad(tmp_path):
    path = tmp_path / ".job.ad"
    path.write_text(JOB_AD, encoding="utf-8")
    return path


def test_read_ad_literals(job_ad):
    ad = read_ad(str(job_ad))
    assert ad["clusterid"] == "123"
    assert ad["procid"] == "4"
    assert ad["owner"] == "alice"
    assert ad["cmd"] == "/home/alice/my job.sh"
    assert ad["args"] == 'say "hi"'
    assert ad["iwd"] == "/home/alice"


def test_read_ad_names_are_lowercased_and_stripped(job_ad):
    ad = read_ad(str(job_ad))
    assert "ClusterId" not in ad
    assert ad["spaced"] == "  padded  "  # inside the quotes is kept as is


def test_read_ad_expressions_are_kept_as_text(job_ad):
    ad = read_ad(str(job_ad))
    # split at the first '=': the rest of the expression is the (unevaluated) value
    assert ad["requestmemory"] == "ifThenElse(MemoryUsage =!= undefined, MemoryUsage, 2048)"


def test_read_ad_odd_lines(job_ad):
    ad = read_ad(str(job_ad))
    assert ad["empty"] == ""
    assert ad["quote"] == '"'  # a lone quote is not a quoted string
    assert not any(" " in name for name in ad)
    assert "not an attribute line" not in ad


def test_read_ad_missing_file(tmp_path):
    assert read_ad(str(tmp_path / "nope")) == {}


def test_read_ad_directory_is_unreadable(tmp_path):
    assert read_ad(str(tmp_path)) == {}


def test_read_ad_bad_utf8(tmp_path):
    path = tmp_path / "ad"
    path.write_bytes(b'Owner = "al\xffce"\nProcId = 1\n')
    ad = read_ad(str(path))
    assert ad["owner"] == "al\ufffdce"
    assert ad["procid"] == "1"


def test_read_ad_last_definition_wins(tmp_path):
    path = tmp_path / "ad"
    path.write_text("ProcId = 1\nprocid = 2\n")
    assert read_ad(str(path)) == {"procid": "2"}


# -- job_id_from_env -------------------------------------------------------------------------


def _ad_file(tmp_path, text, name="job.ad"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_job_id_from_env(job_ad):
    assert job_id_from_env({"_CONDOR_JOB_AD": str(job_ad)}) == "123.4"


def test_job_id_from_env_normalises_leading_zeros(tmp_path):
    path = _ad_file(tmp_path, "ClusterId = 007\nProcId = 00\n")
    assert job_id_from_env({"_CONDOR_JOB_AD": path}) == "7.0"


@pytest.mark.parametrize(
    "text",
    [
        "ClusterId = 123\n",
        "ProcId = 4\n",
        "ClusterId = abc\nProcId = 4\n",
        "ClusterId = 123\nProcId = -1\n",
        "ClusterId = 1.5\nProcId = 4\n",
        'ClusterId = "12 3"\nProcId = 4\n',
        "ClusterId = \nProcId = 4\n",
        "",
    ],
)
def test_job_id_from_env_unusable_ad(tmp_path, text):
    assert job_id_from_env({"_CONDOR_JOB_AD": _ad_file(tmp_path, text)}) is None


def test_job_id_from_env_quoted_numbers_are_accepted(tmp_path):
    path = _ad_file(tmp_path, 'ClusterId = "5"\nProcId = "6"\n')
    assert job_id_from_env({"_CONDOR_JOB_AD": path}) == "5.6"


def test_job_id_from_env_without_ad(tmp_path):
    assert job_id_from_env({}) is None
    assert job_id_from_env({"_CONDOR_JOB_AD": ""}) is None
    assert job_id_from_env({"_CONDOR_JOB_AD": str(tmp_path / "missing")}) is None


# -- slot_from_env ---------------------------------------------------------------------------


def test_slot_from_env_prefers_condor_slot(tmp_path):
    machine = _ad_file(tmp_path, 'Name = "slot1_1@host.example"\n', "machine.ad")
    env = {"_CONDOR_SLOT": "slot3", "_CONDOR_MACHINE_AD": machine}
    assert slot_from_env(env) == "slot3"


def test_slot_from_env_falls_back_to_machine_ad(tmp_path):
    machine = _ad_file(tmp_path, 'Name = "slot1_1@host.example"\nCpus = 4\n', "machine.ad")
    assert slot_from_env({"_CONDOR_MACHINE_AD": machine}) == "slot1_1@host.example"
    assert slot_from_env({"_CONDOR_SLOT": "", "_CONDOR_MACHINE_AD": machine}) == \
        "slot1_1@host.example"


def test_slot_from_env_nothing_known(tmp_path):
    assert slot_from_env({}) is None
    assert slot_from_env({"_CONDOR_MACHINE_AD": str(tmp_path / "missing")}) is None
    machine = _ad_file(tmp_path, "Cpus = 4\n", "machine.ad")
    assert slot_from_env({"_CONDOR_MACHINE_AD": machine}) is None


# -- ClassAd string literals and encoding ----------------------------------------------------


def test_read_ad_empty_string_literal_is_empty(tmp_path):
    # ClassAd syntax: "" is the empty string (an unset Owner-like attribute), not two quotes
    path = _ad_file(tmp_path, 'AcctGroup = ""\nOwner = "a"\n')
    assert read_ad(path) == {"acctgroup": "", "owner": "a"}


# The starter writes the ad as UTF-8 (ClassAd strings are UTF-8); the wrapper may run with any
# locale the execute node has, e.g. none at all (C/POSIX: ASCII) when Python's UTF-8 mode and
# locale coercion are off.
UTF8_AD = 'Owner = "José"\nCmd = "/home/josé/日本/job"\nClusterId = 7\nProcId = 1\n'


def test_read_ad_is_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / ".job.ad"
    path.write_bytes(UTF8_AD.encode("utf-8"))
    assert read_ad(str(path))["owner"] == "José"  # here, under the test runner's locale
    script = ("import sys; from condor_systemd.jobad import read_ad; "
              "ad = read_ad(sys.argv[1]); print(ascii((ad['owner'], ad['cmd'])))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ascii(("José", "/home/josé/日本/job"))
