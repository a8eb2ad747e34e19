"""Fixtures for the tests that run real jobs: `jobs` runs each behaviour test three ways: on
systemd in-process as root, on systemd through the broker as an unprivileged user, and on the
psutil fallback.

The systemd side needs root and the sandbox; as non-root it skips with the reason, and CI
(root) fails if it skipped. The psutil side runs on this host, where systemd is not PID 1.

On the VM tier (tests/vm/run sets CONDOR_SYSTEMD_TEST_SYSTEMD=pid1) the systemd side uses the
guest's own systemd, and only that side runs: the fallback is proven on this host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.harness import broker as broker_harness
from tests.harness import system
from tests.harness.sandbox import Sandbox, raise_on_sigterm, unavailable_reason
from tests.jobs import WORK_ROOT, BrokerJobs, HostJobs, Jobs, SystemdJobs

BACKENDS = ["systemd", "broker"] if system.wanted() else ["systemd", "broker", "psutil"]


@pytest.fixture(scope="session")
def sandbox():
    """The systemd the tests run jobs on: a throw-away one in namespaces, or the VM's PID 1."""
    if system.wanted():
        reason = system.unavailable_reason()
        if reason:
            pytest.fail(reason)
        yield system.RunningSystemd()
        return
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real-systemd tests need the sandbox: {reason}")
    raise_on_sigterm()
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="session")
def broker(sandbox):
    """The sandbox's (or guest's) systemd with the broker installed from units/."""
    broker_harness.install(sandbox)
    yield sandbox
    broker_harness.uninstall(sandbox)


def _work_dir() -> Path:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="csd-test-", dir=WORK_ROOT))
    os.chmod(work, 0o755)
    return work


def _jobs(backend: str, request: pytest.FixtureRequest):
    work = _work_dir()
    if backend == "systemd":
        j: Jobs = SystemdJobs(request.getfixturevalue("sandbox"), work)
    elif backend == "broker":
        j = BrokerJobs(request.getfixturevalue("broker"), work)
    else:
        j = HostJobs(work)
    yield j
    j.stop_started()
    left = j.leftovers()
    shutil.rmtree(work, ignore_errors=True)
    assert not left, f"left behind: {left}"


@pytest.fixture(params=BACKENDS)
def jobs(request):
    """A behaviour test, once per backend; jobs.expect says what differs."""
    yield from _jobs(request.param, request)
