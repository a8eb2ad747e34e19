"""Tests of what only the fallback backend does, on this host (where systemd is not PID 1)."""

from __future__ import annotations

import pytest

from tests.conftest import _jobs


@pytest.fixture
def jobs(request):
    yield from _jobs("psutil", request)
