"""The broker on a real systemd, from the project's own units, and callers that are not root.

install() puts units/condor-systemd.socket and .service into the systemd's runtime unit directory
(/run/systemd/system: gone with the sandbox or the guest), with one drop-in that only points
ExecStart at this checkout's code and at a test policy file, and starts the socket: the broker
itself is started by socket activation on the first call, as on a real node.

Callers run as `nobody` with Debian's /usr/bin/python3 (on these machines the venv's interpreter
lives under /root, mode 0700, which nobody can execute) and a world-readable copy of the
package (PKG): exactly what README's install gives every job user.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PKG = Path("/var/lib/csd-tests/pkg")
CLIENT_PYTHON = "/usr/bin/python3"
JOB_USER, JOB_GROUP, JOB_UID = "nobody", "nogroup", 65534
SOCKET = "/run/condor-systemd/io.condorsystemd.Job"
POLICY = "/run/condor-systemd-test/broker.toml"
ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "units"
SCRIPT = PKG / "bin" / "condor-systemd"  # as pip installs bin/condor-systemd
RUNTIME_UNITS = "/run/systemd/system"
DROP_IN = f"{RUNTIME_UNITS}/condor-systemd.service.d/test.conf"


def copy_package() -> None:
    """The package where every user can read it (both sides see /var/lib), with the
    dependencies the test interpreter has (jeepney, psutil: Debian's python3 here may lack
    them; a guest has Debian's own)."""
    import importlib

    sources = [ROOT / "condor_systemd"]
    for name in ("jeepney", "psutil"):
        try:
            sources.append(Path(importlib.import_module(name).__file__).parent)  # type: ignore[arg-type]
        except ImportError:
            pass
    for source in sources:
        target = PKG / source.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    SCRIPT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "bin" / "condor-systemd", SCRIPT)
    for root, _dirs, files in os.walk(PKG):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def client_python() -> list[str]:
    """The job user's interpreter, with the package on its path (then: a script or -c)."""
    return ["setpriv", f"--reuid={JOB_USER}", f"--regid={JOB_GROUP}", "--clear-groups",
            "env", f"PYTHONPATH={PKG}", CLIENT_PYTHON]


def client_command() -> list[str]:
    """`condor-systemd` as the job user runs it (then: run OPTIONS -- CMD): the installed
    script, bin/condor-systemd."""
    return [*client_python(), str(SCRIPT)]


def in_process_command() -> list[str]:
    """`condor-systemd` as the job user runs it where no broker is installed."""
    return [*client_python()[:-1], "CONDOR_SYSTEMD_SOCKET=/run/condor-systemd/none",
            CLIENT_PYTHON, str(SCRIPT)]


# The tests' jobs have their own directories under /var/lib/csd-tests (tests/jobs.py's
# WORK_ROOT): that is their execute root, as HTCondor's EXECUTE is on a node; the attacks of
# tests/security lay out an execute root of their own below it, as a node's.
EXECUTE = "/var/lib/csd-tests/execute"
TEST_POLICY = f'[sandbox]\nexecute_roots = ["/var/lib/csd-tests", "{EXECUTE}"]\n'


def install(systemd, policy: str = TEST_POLICY) -> None:  # noqa: ANN001 - Sandbox or RunningSystemd
    """Install and start the broker's socket; (re)write the test policy (TOML text)."""
    copy_package()
    # the broker runs as root with this interpreter (it has jeepney: the venv, or Debian's
    # python3-jeepney in a guest), importing the same copy of the package as the callers
    exec_start = f"{sys.executable} -m condor_systemd broker --policy {POLICY}"
    lines = ["[Service]", "ExecStart=", f"ExecStart={exec_start}", f"Environment=PYTHONPATH={PKG}"]
    if sys.prefix.startswith("/tmp/"):
        # a venv under /tmp (a CI checkout there): the service's own private /tmp would hide
        # its interpreter. Installed, the broker lives in /opt or /usr and keeps PrivateTmp.
        lines.append("PrivateTmp=no")
    systemd.run(["mkdir", "-p", os.path.dirname(DROP_IN), os.path.dirname(POLICY)])
    systemd.run(["cp", str(UNITS / "condor-systemd.socket"), str(UNITS / "condor-systemd.service"),
                 RUNTIME_UNITS])
    systemd.run(["sh", "-c", "printf '%s\\n' " + " ".join(f"'{line}'" for line in lines) +
                 f" > {DROP_IN}"])
    set_policy(systemd, policy)
    systemd.run(["systemctl", "daemon-reload"])
    systemd.run(["systemctl", "start", "condor-systemd.socket"])


def set_policy(systemd, policy: str) -> None:  # noqa: ANN001
    """A new policy takes effect with the next broker: stop it, the socket starts it again."""
    systemd.run(["sh", "-c", f"cat > {POLICY}"], input=policy.encode())
    systemd.run(["systemctl", "stop", "condor-systemd.service"])


def uninstall(systemd) -> None:  # noqa: ANN001
    systemd.run(["systemctl", "stop", "condor-systemd.socket", "condor-systemd.service"],
                check=False)
    systemd.run(["rm", "-rf", f"{RUNTIME_UNITS}/condor-systemd.socket",
                 f"{RUNTIME_UNITS}/condor-systemd.service", os.path.dirname(DROP_IN)],
                check=False)
    systemd.run(["systemctl", "daemon-reload"], check=False)
