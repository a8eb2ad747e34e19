"""cgroupfs at the edges of the kernel's formats: mountinfo lines as proc(5) allows them, the
legacy layout's tracking hierarchy, limits stored in whole pages. Found by the mutation check
(tests/mutation.sh): each test fails on a mutant that the rest of the suite let through."""

from __future__ import annotations

import os

import pytest

from condor_systemd.backends import cgroupfs
from condor_systemd.backends.cgroupfs import Layout, probe_layout, read_limits

UNIT = "/condor.slice/condor-job-1.0.service"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
G2 = 2 * 1024**3


def _probe(tmp_path, text: str) -> Layout:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return probe_layout(str(path))


# proc(5), /proc/PID/mountinfo: "(7) optional fields ... (8) separator: a single hyphen
# (9) filesystem type (10) mount source: filesystem-specific information or 'none'
# (11) super options". The type is field 9, whatever the source says; the separator is the
# first " - " (paths in fields 4 and 5 have their spaces escaped as \040).
ROOT = "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"


@pytest.mark.parametrize("source", ["cgroup", "none", "cg2", "-"])
def test_cgroup2_is_found_by_its_type_not_its_source(tmp_path, source):
    # Docker and podman show the host's cgroup2 as source "cgroup"; mount(8) takes any source
    line = f"30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 {source} rw,nsdelegate\n"
    assert _probe(tmp_path, ROOT + line) == Layout("unified", "/sys/fs/cgroup", {})


@pytest.mark.parametrize("source", ["cgroup2", "none", "-"])
def test_v1_hierarchy_is_found_by_its_type_not_its_source(tmp_path, source):
    line = f"31 22 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup {source} rw,memory\n"
    layout = _probe(tmp_path, ROOT + line)
    assert (layout.kind, layout.unified, layout.v1) == \
        ("legacy", None, {"memory": "/sys/fs/cgroup/memory"})


# On the legacy layout systemd tracks a unit's processes in the name=systemd hierarchy (there
# is no v2 tree): the unit's cgroup is found there, and only there.
def _legacy(tmp_path) -> Layout:
    v1 = {c: str(tmp_path / c) for c in ("name=systemd", "memory", "pids")}
    for mount in v1.values():
        os.makedirs(mount)
    return Layout("legacy", None, v1)


def test_unit_cgroup_on_legacy_is_found_in_the_systemd_hierarchy(tmp_path):
    layout = _legacy(tmp_path)
    assert cgroupfs.unit_cgroup(layout, "condor.slice", "condor-job-1.0.service") is None
    os.makedirs(tmp_path / "name=systemd" / UNIT.lstrip("/"))
    assert cgroupfs.unit_cgroup(layout, "condor.slice", "condor-job-1.0.service") == UNIT


def test_unit_cgroup_on_legacy_ignores_controller_hierarchies(tmp_path):
    layout = _legacy(tmp_path)
    os.makedirs(tmp_path / "memory" / UNIT.lstrip("/"))
    os.makedirs(tmp_path / "pids" / UNIT.lstrip("/"))
    assert cgroupfs.unit_cgroup(layout, "condor.slice", "condor-job-1.0.service") is None


def test_procs_on_legacy_come_from_the_systemd_hierarchy(tmp_path):
    layout = _legacy(tmp_path)
    for hierarchy, pids in (("name=systemd", "10\n11\n"), ("memory", "99\n")):
        os.makedirs(tmp_path / hierarchy / UNIT.lstrip("/"))
        (tmp_path / hierarchy / UNIT.lstrip("/") / "cgroup.procs").write_text(pids)
    assert cgroupfs.procs(layout, UNIT) == [10, 11]


# memory.max, memory.high and memory.swap.max are kept in whole pages (mm/page_counter.c,
# page_counter_memparse): a byte count is stored rounded down to a page, and read back so.
@pytest.mark.parametrize("key", ["memory_max", "memory_high", "swap_max"])
@pytest.mark.parametrize("asked", [G2 + 1, G2 + PAGE_SIZE - 1, 1536 * 1024**2 + 100])
def test_sizes_read_back_rounded_down_to_a_page_are_in_force(key, asked):
    kernel_shows = asked // PAGE_SIZE * PAGE_SIZE
    verdicts = cgroupfs.verify({key: asked}, {key: kernel_shows}, Layout("unified", "/x", {}))
    assert verdicts[key].render() is True


@pytest.mark.parametrize("key", ["memory_max", "memory_high", "swap_max"])
def test_sizes_a_page_or_more_apart_are_not_in_force(key):
    for have in (G2 - PAGE_SIZE, G2 + PAGE_SIZE, G2 // 2):
        verdict = cgroupfs.verify({key: G2}, {key: have}, Layout("unified", "/x", {}))[key]
        assert verdict.render() == f"not in force: asked {G2}, the cgroup has {have}"


# Every reader returns None when it cannot tell: a limit file whose text is not the kernel's
# (a number or "max") is unknown, never a crash that loses the usage record.
@pytest.mark.parametrize("text", ["", "\n", "garbage\n", "-1\n", "1.5G\n"])
def test_an_unreadable_limit_is_absent_not_an_error(tmp_path, text):
    base = tmp_path / UNIT.lstrip("/")
    base.mkdir(parents=True)
    (base / "memory.max").write_text(text)
    (base / "pids.max").write_text("100\n")
    assert read_limits(Layout("unified", str(tmp_path), {}), UNIT) == {"tasks_max": 100}


def test_mount_points_with_escaped_characters(tmp_path):
    """proc(5): mountinfo escapes space, tab, newline and backslash in paths as \\ooo."""
    text = ("22 1 252:1 / / rw - ext4 /dev/vda1 rw\n"
            "26 22 0:24 / /run/my\\040cgroup\\134x rw - cgroup2 cgroup2 rw\n")
    path = tmp_path / "mountinfo"
    path.write_text(text)
    layout = probe_layout(str(path))
    assert layout.kind == "unified" and layout.unified == "/run/my cgroup\\x"
