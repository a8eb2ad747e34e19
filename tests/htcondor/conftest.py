"""The HTCondor tier: a real HTCondor pool (Debian's condor, in the trixie guest booted by
`tests/vm/run --release trixie --htcondor`), jobs submitted by alice through condor_submit, the
project's USER_JOB_WRAPPER (packaging/htcondor/) and its broker."""

from __future__ import annotations

import shutil
import subprocess

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
    subprocess.run(["install", "-D", "-m", "755", str(ROOT / "packaging/htcondor" /
                    "condor-systemd-wrapper"), WRAPPER], check=True)
    subprocess.run(["install", "-m", "644", str(ROOT / "packaging/htcondor" /
                    "50-condor-systemd.conf"), "/etc/condor/config.d/"], check=True)
    subprocess.run(["condor_reconfig"], check=True, capture_output=True)
    yield systemd
    broker.uninstall(systemd)
