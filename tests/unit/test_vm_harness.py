"""The VM tier harness's own logic (tests/vm/harness.py); its guests are exercised by CI."""

from __future__ import annotations

import subprocess

import pytest

from tests.vm import harness

KERNEL = "[    0.000000] Linux version 6.1.0-37-amd64\n[    1.2] Freeing unused kernel image\n"
INIT = "[    1.5] Run /init as init process\n"
SYSTEMD = "[    4.1] systemd[1]: systemd 252.38-1~deb12u1 running in system mode\n"


@pytest.mark.parametrize("serial, stage", [
    ("", "firmware (the kernel printed nothing)"),
    (KERNEL, "kernel"),
    (KERNEL + INIT + "Gave up waiting for root file system device.\n",
     "initrd (finding or mounting the root disk)"),
    (KERNEL + INIT + SYSTEMD, "systemd boot (csd-vm-guest.service never started)"),
    (KERNEL + INIT + SYSTEMD + "csd-vm-guest: cannot mount the run share\n",
     "csd-vm-guest (the run directory's 9p share did not mount)"),
])
def test_boot_stage_is_read_off_the_serial_console(serial, stage):
    assert harness.boot_stage(serial) == stage


def test_recipe_hash_covers_release_and_every_recipe_file():
    assert harness.recipe_hash("bookworm") != harness.recipe_hash("trixie")
    names = {p.name for p in harness.recipe_files()}
    assert {"build-image.sh", "csd-vm-guest", "csd-vm-guest.service", "condor-systemd"} <= names


def test_recipe_hash_changes_with_a_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "guest").mkdir()
    (tmp_path / "build-image.sh").write_text("echo one\n")
    (tmp_path / "guest" / "unit").write_text("[Unit]\n")
    monkeypatch.setattr(harness, "HERE", tmp_path)
    before = harness.recipe_hash("trixie")
    (tmp_path / "guest" / "unit").write_text("[Unit]\nDescription=changed\n")
    assert harness.recipe_hash("trixie") != before


def test_the_htcondor_flavour_has_its_own_recipe_and_cache_entry():
    assert harness.recipe_hash("trixie", "htcondor") != harness.recipe_hash("trixie")
    names = {p.name for p in harness.recipe_files("htcondor")}
    assert "50-csd-pool.conf" in names


def test_a_new_image_replaces_only_its_own_stale_builds(tmp_path, monkeypatch):
    """Rebuilding plain trixie must not throw the HTCondor image away, nor the reverse."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = harness.cache_dir()
    for name in ("trixie-aaaa", "trixie-htcondor-bbbb", "bookworm-cccc", ".build-trixie-1",
                 ".build-trixie-htcondor-2"):
        (cache / name).mkdir(parents=True)

    def fake_build(argv, **_kw):  # noqa: ANN001 - build-image.sh RELEASE OUT FLAVOUR
        (harness.Path(argv[-2]) / "image.raw").write_text("disk")

    monkeypatch.setattr(harness.subprocess, "run", fake_build)
    harness.image("trixie")
    left = {p.name for p in cache.iterdir() if not p.name.startswith(".lock")}
    assert left == {"bookworm-cccc", ".build-trixie-htcondor-2", "trixie-htcondor-bbbb",
                    f"trixie-{harness.recipe_hash('trixie')}"}
    harness.image("trixie", flavour="htcondor")
    left = {p.name for p in cache.iterdir() if not p.name.startswith(".lock")}
    assert left == {"bookworm-cccc", f"trixie-{harness.recipe_hash('trixie')}",
                    f"trixie-htcondor-{harness.recipe_hash('trixie', 'htcondor')}"}


def test_accelerator_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert harness.accelerators("tcg") == ["tcg"]
    assert harness.accelerators("kvm") == ["kvm"]
    monkeypatch.setattr(harness.os, "access", lambda path, mode: True)  # a /dev/kvm to try
    assert harness.accelerators("auto") == ["kvm", "tcg"]  # not yet known: try, fall back
    verdict = harness._kvm_verdict_file()
    verdict.parent.mkdir(parents=True)
    verdict.write_text("no\n")
    assert harness.accelerators("auto") == ["tcg"]
    verdict.write_text("yes\n")
    assert harness.accelerators("auto") == ["kvm"]
    monkeypatch.setattr(harness.os, "access", lambda path, mode: False)
    assert harness.accelerators("auto") == ["tcg"]


def test_guest_kernel_arguments(tmp_path):
    img = harness.Image("trixie", tmp_path)
    argv = harness.qemu_command(img, tmp_path, harness.Guest(kernel_args=("quiet",)), "tcg")
    append = argv[argv.index("-append") + 1]
    assert "cgroup_no_v1=all" in append and append.endswith(" quiet")
    assert f"file={tmp_path / 'image.raw'},format=raw,if=virtio,snapshot=on" in argv
    assert "readonly=on" in argv[-1] and "-nic" in argv


class _Booting(harness.Run):
    """A Run whose boots fail as scripted (no qemu): the retry decision alone."""

    def __init__(self, accel: str, failures: list[str]) -> None:
        self.accel, self.failures, self.boots = accel, failures, 0
        self.qemu = subprocess.Popen(["true"])
        self.qemu.wait()

    def _boot(self) -> None:
        self.boots += 1
        if self.failures:
            raise harness.HarnessError("boot, systemd boot", "qemu exited",
                                       self.failures.pop(0))


PANIC = "[ 6.9] Kernel panic - not syncing: Fatal exception in interrupt"


@pytest.mark.parametrize("accel, failures, boots, raises", [
    ("tcg", [PANIC], 2, False),                       # a crash while booting: once more
    ("tcg", [PANIC, PANIC], 2, True),                 # twice: reported
    ("tcg", ["VFS: Unable to mount root fs"], 1, True),  # not a crash: reported at once
    ("kvm", [PANIC], 1, True),                        # only emulation's crashes are retried
    ("tcg", [], 1, False),
])
def test_a_guest_crash_while_booting_is_booted_once_more(accel, failures, boots, raises):
    run = _Booting(accel, failures)
    if raises:
        with pytest.raises(harness.HarnessError):
            run._boot_once_more_after_a_crash()
    else:
        run._boot_once_more_after_a_crash()
    assert run.boots == boots
