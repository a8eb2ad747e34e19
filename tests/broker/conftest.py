"""Tests of what only the broker does: identity, policy, caps from the caller's cgroup, the
caller's death, hostile input, many callers at once. The broker runs from the project's units
on the sandbox's systemd (or a VM guest's PID 1); callers are `nobody`."""

from __future__ import annotations

import pytest

from tests.conftest import _jobs
from tests.systemd.conftest import Facts


@pytest.fixture
def jobs(request):
    yield from _jobs("broker", request)


@pytest.fixture(scope="session")
def facts(broker):
    return Facts(broker)
