"""Tests of what only the systemd backend has: units, the journal, scopes, D-Bus, reexec."""

from __future__ import annotations

import pytest

from tests.conftest import _jobs


@pytest.fixture
def jobs(request):
    yield from _jobs("systemd", request)
