"""The thin client's launch path: what it imports is what every job start pays for."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each costs a start of the client milliseconds (enum ~2.5 ms, json with re ~5 ms on the CI
# machine) or belongs to the in-process path only.
HEAVY = {"enum", "json", "re", "socket", "signal", "typing", "dataclasses", "argparse", "array",
         "collections", "inspect", "selectors", "asyncio", "jeepney", "psutil",
         "condor_systemd.cli", "condor_systemd.spec", "condor_systemd.usage",
         "condor_systemd.backends"}


def test_the_launch_path_imports_nothing_heavy():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from condor_systemd import launch, client, varlink\n"
            "client._job_ids({}); client.socket_path()\n"
            "varlink.encode({'a': [1, 2.5, None, True, 'é']})\n"
            "varlink.Reader().feed(b'{\"parameters\": {}}\\0')\n"
            "print(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert HEAVY & set(out.split()) == set(), out


def test_a_run_through_the_client_module_never_touches_the_heavy_modules():
    """The whole client run, up to the failed connection (no broker here): still light."""
    code = (f"import sys, os; sys.path.insert(0, {str(ROOT)!r})\n"
            "os.environ['CONDOR_SYSTEMD_SOCKET'] = '/nonexistent/broker'\n"
            "from condor_systemd import client\n"
            "code = client.run(['--memory', '1G'], ['true'])\n"
            "print(code, ' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True)
    code, *modules = proc.stdout.split()
    assert code == "125" and "cannot be reached" in proc.stderr
    assert HEAVY & set(modules) == set(), modules


def test_the_installed_script_adds_nothing_heavy(tmp_path):
    """bin/condor-systemd, which pip installs as the command (its console_scripts wrapper
    would import re), on its way to a broker that refuses the connection."""
    script = ROOT / "bin" / "condor-systemd"
    assert script.read_text().startswith("#!python\n")  # pip points it at the install's python
    refusing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    refusing.bind(str(tmp_path / "broker"))  # bound, not listening: ECONNREFUSED
    code = (f"import sys, os, atexit; sys.path.insert(0, {str(ROOT)!r})\n"
            f"os.environ['CONDOR_SYSTEMD_SOCKET'] = {str(tmp_path / 'broker')!r}\n"
            "atexit.register(lambda: print(' '.join(sorted(sys.modules))))\n"
            "sys.argv = ['condor-systemd', 'run', '--', 'true']\n"
            f"exec(compile(open({str(script)!r}).read(), 'condor-systemd', 'exec'))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True)
    refusing.close()
    assert proc.returncode == 125 and "cannot be reached" in proc.stderr
    assert HEAVY & set(proc.stdout.split()) == set(), proc.stdout


def test_every_package_is_installed():
    """A package missing from pyproject's list works from a checkout and is absent from an
    install (the broker was, once)."""
    listed = ROOT.joinpath("pyproject.toml").read_text().split("packages = [", 1)[1]
    listed = listed.split("]", 1)[0]
    for init in sorted(ROOT.joinpath("condor_systemd").rglob("__init__.py")):
        name = ".".join(init.parent.relative_to(ROOT).parts)
        assert f'"{name}"' in listed, f"{name} is not installed (pyproject.toml packages)"


@pytest.mark.parametrize(("options", "taken"), [
    (["--memory", "1G"], (["--memory", "1G"], None)),
    (["--socket", "/run/x.sock", "--memory", "1G"], (["--memory", "1G"], "/run/x.sock")),
    (["--memory", "1G", "--socket=/run/x.sock"], (["--memory", "1G"], "/run/x.sock")),
    (["--socket"], None),
    (["--socket="], None),
])
def test_socket_is_taken_from_the_options_before_they_go_to_the_broker(options, taken):
    from condor_systemd.launch import take_socket

    assert take_socket(options) == taken


def test_a_socket_named_on_the_command_line_wins_over_the_environment(monkeypatch):
    """Under HTCondor the environment is the job's (getenv = true): the root-owned wrapper
    names the broker's socket, and CONDOR_SYSTEMD_SOCKET then chooses nothing."""
    from condor_systemd import client

    monkeypatch.setenv(client.SOCKET_VARIABLE, "/home/someone/fake-broker")
    assert client.socket_path() == "/home/someone/fake-broker"
    monkeypatch.setattr(client, "_chosen_socket", None)
    client.use_socket("/run/condor-systemd/io.condorsystemd.Job")
    assert client.socket_path() == "/run/condor-systemd/io.condorsystemd.Job"
