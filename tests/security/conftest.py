"""Attacks on the broker by real unprivileged users (SECURITY.md): an attacker and a victim,
two accounts of their own (csd-attacker, csd-victim), on the sandbox's systemd or a guest's
PID 1, against the broker installed from units/ (tests/harness/broker.py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import broker as harness
from tests.jobs import WORK_ROOT

USERS = ("csd-attacker", "csd-victim")


class User:
    def __init__(self, name: str, systemd) -> None:  # noqa: ANN001 - Sandbox or RunningSystemd
        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, entry.pw_uid, entry.pw_gid
        self.systemd = systemd

    def as_user(self, *argv: str) -> list[str]:
        """argv as this user, with the package copy on Python's path."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "env", f"PYTHONPATH={harness.PKG}", *argv]

    def argv(self, *argv: str) -> list[str]:
        """The same, where the broker's systemd runs (the sandbox's namespaces, or the guest)."""
        return self.systemd.command(self.as_user(*argv), str(WORK_ROOT))

    def run(self, *argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(*argv), text=True, timeout=timeout, check=False, **kw)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*argv), text=True, **kw)

    def attack(self, name: str, *args: str, timeout: float = 120) -> dict:
        """One of hostile.py's attacks, as this user; its JSON verdict."""
        proc = self.run(harness.CLIENT_PYTHON, str(HOSTILE), name, *args, timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    def client(self, *args: str) -> list[str]:
        """`condor-systemd ARGS` as this user runs it (the installed script)."""
        return [harness.CLIENT_PYTHON, str(harness.SCRIPT), *args]


HOSTILE = harness.PKG / "csd_hostile.py"


@pytest.fixture(scope="session")
def users(broker) -> dict[str, User]:
    """The two accounts, made here if the node lacks them (system users, no home)."""
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", name], check=True)
    shutil.copy(Path(__file__).with_name("hostile.py"), HOSTILE)
    os.chmod(HOSTILE, 0o644)
    return {name.removeprefix("csd-"): User(name, broker) for name in USERS}


@pytest.fixture
def execute(users):
    """An execute root as HTCondor lays it out (root's, 0755; one of the broker's test
    policy's execute_roots), with one directory of each user's in it (0700, as HTCondor's
    scratch directories)."""
    root = Path(harness.EXECUTE)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    dirs = {}
    for key, user in users.items():
        path = root / f"dir_{key}"
        path.mkdir()
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o700)
        dirs[key] = path
    yield root, dirs
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def facts(broker):  # noqa: ANN001, ANN201
    from tests.systemd.conftest import Facts

    return Facts(broker)
