"""One version everywhere the packages take it from (packaging/check-versions)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ("pyproject.toml", "condor_systemd/__init__.py", "packaging/debian/changelog",
         "packaging/rpm/condor-systemd.spec", "packaging/check-versions")


def _copy(tmp_path: Path) -> Path:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def test_every_package_says_pyprojects_version(tmp_path):
    from condor_systemd import __version__

    proc = subprocess.run([str(ROOT / "packaging/check-versions")], capture_output=True,
                          text=True)
    assert (proc.returncode, proc.stdout) == (0, f"{__version__}\n"), proc.stderr


def test_a_package_with_another_version_is_named(tmp_path):
    root = _copy(tmp_path)
    spec = root / "packaging/rpm/condor-systemd.spec"
    spec.write_text(spec.read_text().replace("Version:        ", "Version:        9", 1))
    proc = subprocess.run([str(root / "packaging/check-versions")], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "packaging/rpm/condor-systemd.spec says '9" in proc.stderr
