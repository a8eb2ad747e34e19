"""The HTCondor tier: a real HTCondor pool (Debian's condor, in the trixie guest booted by
`tests/vm/run --release trixie --htcondor`), jobs submitted by alice through condor_submit, and
condor-systemd installed as a site installs it: from its Debian package (packaging/build-deb
makes dist/condor-systemd_*_all.deb), whose configuration snippets are used verbatim."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.system import RunningSystemd

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY_DIR = "/etc/condor-systemd"
# the seed's hard CPU cap on top of HTCondor's weight (off by default, like HTCondor)
POLICY = "[htcondor]\ncpu_quota = true\n"
TEST_CONFIG = "/etc/condor/config.d/90-csd-tests.conf"  # after the package's snippets: it wins
PROBE_EVERY = "STARTD_CRON_CONDORSYSTEMD_PERIOD = 2s\n"  # the snippet says 60 s


def configure(extra: str = "") -> None:
    """The tests' own settings over the package's snippets, then condor_reconfig."""
    Path(TEST_CONFIG).write_text(PROBE_EVERY + extra)
    subprocess.run(["condor_reconfig"], check=True, capture_output=True)


def node_ready(ready: bool, timeout: float = 60) -> None:
    """Wait until the collector's machine ad says the node can (or cannot) run jobs."""
    want = "true" if ready else "false"
    deadline = time.monotonic() + timeout
    while True:
        said = subprocess.run(["condor_status", "-af", "CondorSystemdReady",
                               "CondorSystemdReason"], capture_output=True, text=True).stdout
        if said.split()[:1] == [want]:
            return
        assert time.monotonic() < deadline, f"the node never said ready={want}: {said!r}"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def pool():
    """The pool with condor-systemd installed from its package: the broker's socket enabled,
    the job wrapper, the readiness probe and the hold policy in /etc/condor/config.d."""
    if shutil.which("condor_submit") is None or \
            not os.environ.get("CONDOR_SYSTEMD_TEST_TIER", "").startswith("vm-"):
        # (it installs and purges the package: only in a throw-away guest)
        pytest.skip("needs a HTCondor pool: tests/vm/run --release trixie --htcondor")
    debs = sorted(glob.glob(str(ROOT / "dist" / "condor-systemd_*_all.deb")))
    if not debs:
        pytest.skip("no package: packaging/build-deb makes dist/condor-systemd_*_all.deb")
    os.makedirs(POLICY_DIR, exist_ok=True)
    Path(POLICY_DIR, "broker.toml").write_text(POLICY)
    subprocess.run(["dpkg", "-i", debs[-1]], check=True, capture_output=True)
    configure()
    node_ready(True)
    yield RunningSystemd()
    subprocess.run(["dpkg", "--purge", "condor-systemd"], check=True, capture_output=True)
    shutil.rmtree(POLICY_DIR)
    os.unlink(TEST_CONFIG)
    subprocess.run(["condor_reconfig"], capture_output=True)
