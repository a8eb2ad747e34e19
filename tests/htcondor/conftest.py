"""The HTCondor tier: a real HTCondor pool (Debian's condor, in the trixie guest booted by
`tests/vm/run --release trixie --htcondor`), jobs submitted by alice through condor_submit, the
project's USER_JOB_WRAPPER (packaging/htcondor/) and its broker."""

from __future__ import annotations

import shutil
import site
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import broker
from tests.harness.system import RunningSystemd

ROOT = broker.ROOT
LIBEXEC = "/usr/libexec/condor-systemd"
# the seed's hard CPU cap on top of HTCondor's weight (off by default, like HTCondor)
POLICY = "[htcondor]\ncpu_quota = true\n"
SNIPPET = "/etc/condor/config.d/50-condor-systemd.conf"  # the execute node's
HOLD_SNIPPET = "/etc/condor/config.d/50-condor-systemd-hold.conf"  # the access point's
TEST_CONFIG = "/etc/condor/config.d/90-csd-tests.conf"  # after the snippet: it wins
PROBE_EVERY = "STARTD_CRON_CONDORSYSTEMD_PERIOD = 2s\n"  # the snippet says 60 s


def configure(extra: str = "") -> None:
    """The tests' own settings over README's snippet (kept verbatim), then condor_reconfig."""
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
    """The pool with condor-systemd as its job wrapper, and the broker installed."""
    if shutil.which("condor_submit") is None:
        pytest.skip("needs a HTCondor pool: tests/vm/run --release trixie --htcondor")
    systemd = RunningSystemd()
    broker.install(systemd, policy=POLICY)
    # The starter runs the wrapper with /tmp bound to the job's scratch directory
    # (MOUNT_UNDER_SCRATCH): a checkout under /tmp (CI's) is not there, so the command also
    # finds the package in the broker harness's world-readable copy. (Issue 11: the .deb.)
    fallback = Path(site.getsitepackages()[0]) / "condor-systemd-pkg.pth"
    fallback.write_text(f"{broker.PKG}\n")
    for script in ("condor-systemd-wrapper", "condor-systemd-probe"):
        subprocess.run(["install", "-D", "-m", "755", str(ROOT / "packaging/htcondor" / script),
                        f"{LIBEXEC}/{script}"], check=True)
    subprocess.run(["install", "-m", "644", str(ROOT / "packaging/htcondor" /
                    "50-condor-systemd.conf"), SNIPPET], check=True)
    subprocess.run(["install", "-m", "644", str(ROOT / "packaging/htcondor" /
                    "50-condor-systemd-hold.conf"), HOLD_SNIPPET], check=True)
    configure()
    node_ready(True)
    yield systemd
    fallback.unlink()
    broker.uninstall(systemd)
