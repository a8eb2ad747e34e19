"""The HTCondor tier: a real HTCondor pool (Debian's condor, in the trixie guest booted by
`tests/vm/run --release trixie --htcondor`), jobs submitted by alice through condor_submit, the
project's USER_JOB_WRAPPER (packaging/htcondor/) and its broker."""

from __future__ import annotations

import shutil
import site
import subprocess
from pathlib import Path

import pytest

from tests.harness import broker
from tests.harness.system import RunningSystemd

ROOT = broker.ROOT
WRAPPER = "/usr/libexec/condor-systemd/condor-systemd-wrapper"


@pytest.fixture(scope="session")
def pool():
    """The pool with condor-systemd as its job wrapper, and the broker installed."""
    if shutil.which("condor_submit") is None:
        pytest.skip("needs a HTCondor pool: tests/vm/run --release trixie --htcondor")
    systemd = RunningSystemd()
    broker.install(systemd)
    # The starter runs the wrapper with /tmp bound to the job's scratch directory
    # (MOUNT_UNDER_SCRATCH): a checkout under /tmp (CI's) is not there, so the command also
    # finds the package in the broker harness's world-readable copy. (Issue 11: the .deb.)
    fallback = Path(site.getsitepackages()[0]) / "condor-systemd-pkg.pth"
    fallback.write_text(f"{broker.PKG}\n")
    subprocess.run(["install", "-D", "-m", "755", str(ROOT / "packaging/htcondor" /
                    "condor-systemd-wrapper"), WRAPPER], check=True)
    subprocess.run(["install", "-m", "644", str(ROOT / "packaging/htcondor" /
                    "50-condor-systemd.conf"), "/etc/condor/config.d/"], check=True)
    subprocess.run(["condor_reconfig"], check=True, capture_output=True)
    yield systemd
    fallback.unlink()
    broker.uninstall(systemd)
