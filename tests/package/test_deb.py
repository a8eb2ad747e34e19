"""The Debian package on a clean guest (tests/vm/run --release trixie, no HTCondor): it
installs with the guest's own dependencies, enables and starts the broker's socket, runs a
user's job as a unit through it, and purges without leaving a file, a unit or a socket.

The package is dist/condor-systemd_<version>_all.deb in the checkout: packaging/build-deb."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SOCKET = "/run/condor-systemd/io.condorsystemd.Job"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert not check or proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def deb() -> str:
    if not os.environ.get("CONDOR_SYSTEMD_TEST_TIER", "").startswith("vm-"):
        pytest.skip("installs and purges a package: only in a throw-away guest "
                    "(tests/vm/run --release trixie -- python3 -m pytest tests/package)")
    found = sorted(glob.glob(str(ROOT / "dist" / "condor-systemd_*_all.deb")))
    if not found:
        pytest.skip("no package: packaging/build-deb makes dist/condor-systemd_*_all.deb")
    if sh("dpkg-query", "-W", "condor", check=False).returncode == 0:
        pytest.skip("needs a guest without HTCondor (its /etc/condor is not ours to check)")
    return found[-1]


def test_the_package_installs_runs_a_users_job_and_purges_cleanly(deb):
    sh("dpkg", "-i", deb)
    try:
        files = [f for f in sh("dpkg-query", "-L", "condor-systemd").stdout.splitlines()
                 if os.path.isfile(f)]
        conffiles = sh("dpkg-query", "-W", "-f", "${Conffiles}", "condor-systemd").stdout
        assert "/etc/condor/config.d/50-condor-systemd.conf" in conffiles
        assert "/etc/condor/config.d/50-condor-systemd-hold.conf" in conffiles
        assert sh("systemctl", "is-enabled", "condor-systemd.socket").stdout.strip() == "enabled"
        assert sh("systemctl", "is-active", "condor-systemd.socket").stdout.strip() == "active"
        work = Path("/var/lib/csd-package-test")  # (pytest's tmp_path is root's only)
        work.mkdir(exist_ok=True)
        os.chown(work, 65534, 65534)
        usage = work / "usage.json"
        job = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "/usr/bin/condor-systemd", "run", "--usage-file", str(usage),
                              "--", "sh", "-c", "id -u; exit 3"], cwd=work,
                             capture_output=True, text=True)
        assert (job.returncode, job.stdout, job.stderr) == (3, "65534\n", ""), job
        record = json.loads(usage.read_text())
        assert record["backend"] == "systemd" and record["unit"].startswith("condor-job-u65534-")
        probe = sh("/usr/libexec/condor-systemd/condor-systemd-probe").stdout
        assert probe.startswith("CondorSystemdReady = true\n"), probe
    finally:
        sh("dpkg", "--purge", "condor-systemd")
    left = [f for f in files if os.path.lexists(f)]
    assert not left, f"left after purge: {left}"
    assert not os.path.lexists("/etc/condor"), os.listdir("/etc/condor")
    assert not os.path.lexists(SOCKET)
    units = sh("systemctl", "list-units", "--all", "--plain", "--no-legend",
               "condor-systemd*").stdout.strip()
    assert units == "", units
    assert not glob.glob("/etc/systemd/system/*/condor-systemd*")
