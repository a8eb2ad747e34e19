"""Tests of what only the systemd backend has: units, the journal, scopes, D-Bus, reexec."""

from __future__ import annotations

import pytest

from tests.conftest import _jobs


@pytest.fixture
def jobs(request):
    yield from _jobs("systemd", request)


class Facts:
    """What the systemd under test is: its version and cgroup layout."""

    def __init__(self, sandbox) -> None:  # noqa: ANN001 - Sandbox or RunningSystemd
        fs = sandbox.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True,
                         text=True).stdout.strip()
        self.unified = fs == "cgroup2fs"
        first = sandbox.run(["systemctl", "--version"], capture_output=True,
                            text=True).stdout.split()
        self.version = int(first[1])

    def need_v2(self) -> None:
        if not self.unified:
            pytest.skip("needs the pure cgroup v2 hierarchy, which this tier (the namespace "
                        "sandbox on the host's v1 controllers) lacks: proven on the VM tier")

    def need_systemd(self, version: int) -> None:
        if self.version < version:
            pytest.skip(f"needs systemd >= {version} (this is {self.version}): proven on the "
                        "VM tier's trixie guest")


@pytest.fixture(scope="session")
def facts(sandbox):
    return Facts(sandbox)
