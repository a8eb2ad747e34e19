"""cgroupfs: layout probing on mountinfo text, and readers on fake cgroup trees in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from condor_systemd.backends import cgroupfs
from condor_systemd.backends.cgroupfs import (
    PAGE,
    UNLIMITED,
    Accounting,
    Layout,
    probe_layout,
    read_accounting,
    read_limits,
)

UNIT = "/condor.slice/condor-job-1.0.service"

# -- probe_layout ----------------------------------------------------------------------------

UNIFIED_MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
24 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""

HYBRID_MOUNTINFO = """\
22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw
25 22 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
32 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 25 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
39 25 0:36 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
40 25 0:37 / /sys/fs/cgroup/net_cls rw,nosuid - cgroup cgroup rw,net_cls,release_agent=/x
"""

LEGACY_MOUNTINFO = """\
22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw
25 22 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
38 25 0:35 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio
"""

NONE_MOUNTINFO = """\
22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw
24 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
"""


def _probe(tmp_path, text):
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return probe_layout(str(path))


def test_probe_unified(tmp_path):
    layout = _probe(tmp_path, UNIFIED_MOUNTINFO)
    assert layout == Layout("unified", "/sys/fs/cgroup", {})


def test_probe_hybrid(tmp_path):
    layout = _probe(tmp_path, HYBRID_MOUNTINFO)
    assert layout.kind == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert layout.v1["pids"] == "/sys/fs/cgroup/pids"
    assert "rw" not in layout.v1
    assert not any(k.startswith("release_agent") for k in layout.v1)
    assert layout.v1_dir("memory", UNIT) == "/sys/fs/cgroup/memory" + UNIT
    assert layout.v2_dir(UNIT) == "/sys/fs/cgroup/unified" + UNIT
    assert layout.v1_dir("blkio", UNIT) is None
    assert layout.controllers() == ["cpu", "cpuacct", "memory", "net_cls", "pids"]


def test_probe_legacy(tmp_path):
    layout = _probe(tmp_path, LEGACY_MOUNTINFO)
    assert layout.kind == "legacy"
    assert layout.unified is None
    assert layout.v1 == {"name=systemd": "/sys/fs/cgroup/systemd",
                         "memory": "/sys/fs/cgroup/memory", "blkio": "/sys/fs/cgroup/blkio"}
    assert layout.v2_dir(UNIT) is None
    assert layout.controllers() == ["blkio", "memory"]


def test_probe_none(tmp_path):
    assert _probe(tmp_path, NONE_MOUNTINFO) == Layout("none", None, {})
    assert _probe(tmp_path, "") == Layout("none", None, {})
    assert probe_layout(str(tmp_path / "missing")) == Layout("none", None, {})


def test_probe_ignores_malformed_lines(tmp_path):
    text = "garbage\n1 2 3 - cgroup2\n" + UNIFIED_MOUNTINFO
    assert _probe(tmp_path, text).kind == "unified"


def test_probe_first_cgroup2_mount_wins(tmp_path):
    text = UNIFIED_MOUNTINFO + "99 26 0:50 / /mnt/other rw - cgroup2 cgroup2 rw\n"
    assert _probe(tmp_path, text).unified == "/sys/fs/cgroup"


def _fs_type(path: str) -> str | None:
    """statfs(2)'s f_type as coreutils names it: cgroup2fs, cgroupfs, tmpfs, ..."""
    proc = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True,
                          timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _v1_hierarchies() -> list[list[str]]:
    """This process's cgroup v1 hierarchies, each a list of controllers (/proc/self/cgroup:
    'ID:controllers:path'; ID 0 is the v2 tree)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    return [controllers.split(",") for hid, controllers, _path in lines if hid != "0"]


def test_probe_this_host_agrees_with_statfs_and_proc():
    """The host's real layout, read two other ways: the filesystem type of each mount point
    (statfs, not mountinfo) and the hierarchies the kernel lists for this process."""
    if shutil.which("stat") is None:
        pytest.skip("coreutils' stat is not installed: no independent reading of the mounts")
    top = _fs_type("/sys/fs/cgroup")
    if top not in ("cgroup2fs", "tmpfs"):
        pytest.skip(f"/sys/fs/cgroup is {top or 'missing'}: not a layout systemd mounts")
    layout = probe_layout()

    if top == "cgroup2fs":
        expected = "unified"
    else:
        v1 = any(_fs_type(os.path.join("/sys/fs/cgroup", d)) == "cgroupfs"
                 for d in os.listdir("/sys/fs/cgroup"))
        v2 = _fs_type("/sys/fs/cgroup/unified") == "cgroup2fs"
        expected = "hybrid" if v1 and v2 else "legacy" if v1 else "unified" if v2 else "none"
    assert layout.kind == expected

    if layout.unified:
        assert _fs_type(layout.unified) == "cgroup2fs", layout.unified
    for controller, mount in layout.v1.items():
        assert _fs_type(mount) == "cgroupfs", (controller, mount)

    # v1: a hierarchy is mounted with all its controllers in one place, or not at all; and
    # nothing else (a mount option, say) is taken for a controller
    hierarchies = _v1_hierarchies()
    for controllers in hierarchies:
        mounts = {layout.v1.get(c) for c in controllers}
        assert len(mounts) == 1, (controllers, mounts)
    assert set(layout.v1) <= {c for controllers in hierarchies for c in controllers}
    if layout.kind in ("hybrid", "legacy"):
        assert layout.v1, "a v1 layout without controllers"


def test_probe_mount_options_are_not_controllers(tmp_path):
    text = LEGACY_MOUNTINFO.replace("rw,name=systemd", "rw,xattr,name=systemd")
    assert "xattr" not in _probe(tmp_path, text).controllers()


def test_unified_controllers_from_root(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    layout = Layout("unified", str(tmp_path), {})
    assert layout.controllers() == ["cpuset", "cpu", "io", "memory", "pids"]
    assert Layout("unified", str(tmp_path / "nope"), {}).controllers() == []


# -- fake trees ------------------------------------------------------------------------------


def _files(base, files):
    base.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (base / name).write_text(text)


def _v2(tmp_path, files):
    root = tmp_path / "v2"
    _files(root / UNIT.lstrip("/"), files)
    return Layout("unified", str(root), {})


def _hybrid(tmp_path, unified=None, **v1_files):
    root = tmp_path / "unified"
    _files(root / UNIT.lstrip("/"), unified or {})
    v1 = {}
    for controller in ("memory", "cpu", "cpuacct", "pids", "blkio", "name=systemd"):
        mnt = tmp_path / controller
        v1[controller] = str(mnt)
        _files(mnt / UNIT.lstrip("/"), v1_files.get(controller.replace("=", "_"), {}))
    return Layout("hybrid", str(root), v1)


V2_CPU_STAT = "usage_usec 3500000\nuser_usec 2500000\nsystem_usec 1000000\nnr_periods 0\n"
V2_MEMORY_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"
V2_IO_STAT = ("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
              "253:0 rbytes=100 wbytes=1 rios=3 wios=4 dbytes=5 dios=6\n")


# -- read_accounting -------------------------------------------------------------------------


def test_read_accounting_v2(tmp_path):
    layout = _v2(tmp_path, {"cpu.stat": V2_CPU_STAT, "memory.peak": "123456789\n",
                            "memory.events": V2_MEMORY_EVENTS, "io.stat": V2_IO_STAT,
                            "pids.peak": "7\n"})
    assert read_accounting(layout, UNIT) == Accounting(
        cpu_user_seconds=2.5, cpu_system_seconds=1.0, memory_peak_bytes=123456789,
        oom_kills=1, io_read_bytes=4196, io_write_bytes=8193, tasks_peak=7)


def test_read_accounting_v2_zeroes_are_zeroes(tmp_path):
    layout = _v2(tmp_path, {"cpu.stat": "user_usec 0\nsystem_usec 0\n", "memory.peak": "0\n",
                            "memory.events": "oom_kill 0\n", "io.stat": "", "pids.peak": "0\n"})
    assert read_accounting(layout, UNIT) == Accounting(0.0, 0.0, 0, 0, 0, 0, 0)


def test_read_accounting_v2_missing_files_are_unknown(tmp_path):
    layout = _v2(tmp_path, {})
    acct = read_accounting(layout, UNIT)
    assert acct == Accounting()
    assert all(value is None for value in acct)


def test_read_accounting_v2_missing_cgroup(tmp_path):
    layout = Layout("unified", str(tmp_path / "nowhere"), {})
    assert read_accounting(layout, UNIT) == Accounting()


def test_read_accounting_v2_events_without_oom_kill(tmp_path):
    layout = _v2(tmp_path, {"memory.events": "low 0\nhigh 0\n", "memory.peak": "max\n"})
    acct = read_accounting(layout, UNIT)
    assert acct.oom_kills is None
    assert acct.memory_peak_bytes is None


def test_read_accounting_hybrid(tmp_path):
    layout = _hybrid(
        tmp_path, unified={"cpu.stat": V2_CPU_STAT},
        memory={"memory.max_usage_in_bytes": "52428800\n",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"},
        pids={"pids.peak": "3\n"})
    assert read_accounting(layout, UNIT) == Accounting(
        cpu_user_seconds=2.5, cpu_system_seconds=1.0, memory_peak_bytes=52428800,
        oom_kills=2, io_read_bytes=None, io_write_bytes=None, tasks_peak=3)


def test_read_accounting_hybrid_ignores_v2_memory_files(tmp_path):
    layout = _hybrid(tmp_path, unified={"memory.peak": "999\n", "io.stat": V2_IO_STAT})
    acct = read_accounting(layout, UNIT)
    assert acct.memory_peak_bytes is None
    assert (acct.io_read_bytes, acct.io_write_bytes) == (None, None)


def test_read_accounting_hybrid_cpuacct_fallback(tmp_path):
    hz = os.sysconf("SC_CLK_TCK")
    layout = _hybrid(tmp_path, unified={"cpu.stat": "usage_usec 5\n"},
                     cpuacct={"cpuacct.stat": f"user {3 * hz}\nsystem {hz // 2}\n"})
    acct = read_accounting(layout, UNIT)
    assert acct.cpu_user_seconds == 3.0
    assert acct.cpu_system_seconds == 0.5  # USER_HZ is even (100 on every Linux)


def test_read_accounting_hybrid_missing_files_are_unknown(tmp_path):
    assert read_accounting(_hybrid(tmp_path), UNIT) == Accounting()


# -- read_limits -----------------------------------------------------------------------------


def test_read_limits_v2(tmp_path):
    layout = _v2(tmp_path, {"memory.max": "max\n", "memory.high": "1073741824\n",
                            "memory.swap.max": "0\n", "pids.max": "100\n",
                            "cpu.max": "150000 100000\n", "cpuset.cpus": "0-1\n",
                            "io.weight": "default 200\n8:0 300\n"})
    assert read_limits(layout, UNIT) == {
        "memory_max": UNLIMITED, "memory_high": 1073741824, "swap_max": 0, "tasks_max": 100,
        "cpu_quota_percent": 150.0, "allowed_cpus": (0, 1), "io_weight": 200}


def test_read_limits_v2_unlimited_values(tmp_path):
    layout = _v2(tmp_path, {"memory.max": str(2**63 - 1), "pids.max": "max\n",
                            "cpu.max": "max 100000\n", "cpuset.cpus": "\n",
                            "io.weight": "default 100\n"})
    limits = read_limits(layout, UNIT)
    assert limits == {"memory_max": UNLIMITED, "tasks_max": UNLIMITED,
                      "cpu_quota_percent": UNLIMITED, "io_weight": 100}


def test_read_limits_v2_other_period(tmp_path):
    layout = _v2(tmp_path, {"cpu.max": "25000 50000\n"})
    assert read_limits(layout, UNIT) == {"cpu_quota_percent": 50.0}


def test_read_limits_v2_bfq_weight(tmp_path):
    layout = _v2(tmp_path, {"io.bfq.weight": "default 300\n"})
    assert read_limits(layout, UNIT) == {"io_weight": 300}


def test_read_limits_missing_files_are_absent(tmp_path):
    assert read_limits(_v2(tmp_path, {}), UNIT) == {}
    assert read_limits(_hybrid(tmp_path), UNIT) == {}


def test_read_limits_v1(tmp_path):
    layout = _hybrid(
        tmp_path,
        unified={"memory.max": "123\n", "cpu.max": "50000 100000\n"},  # ignored on hybrid
        memory={"memory.limit_in_bytes": "2147483648\n",
                "memory.memsw.limit_in_bytes": "9223372036854771712\n"},
        cpu={"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"},
        pids={"pids.max": "50\n"},
        blkio={"blkio.weight": "500\n"})
    assert read_limits(layout, UNIT) == {
        "memory_max": 2147483648, "swap_max": UNLIMITED, "tasks_max": 50,
        "cpu_quota_percent": UNLIMITED, "io_weight": 500}


def test_read_limits_v1_quota_and_unlimited(tmp_path):
    layout = _hybrid(
        tmp_path,
        memory={"memory.limit_in_bytes": "9223372036854771712\n"},
        cpu={"cpu.cfs_quota_us": "150000\n", "cpu.cfs_period_us": "100000\n"},
        pids={"pids.max": "max\n"})
    assert read_limits(layout, UNIT) == {"memory_max": UNLIMITED, "tasks_max": UNLIMITED,
                                         "cpu_quota_percent": 150.0}


def test_read_limits_v1_quota_without_period(tmp_path):
    layout = _hybrid(tmp_path, cpu={"cpu.cfs_quota_us": "150000\n"})
    assert "cpu_quota_percent" not in read_limits(layout, UNIT)


# -- verify ----------------------------------------------------------------------------------

G2 = 2 * 1024**3
UNIFIED = Layout("unified", "/sys/fs/cgroup", {})
HYBRID = Layout("hybrid", "/sys/fs/cgroup/unified", {"memory": "/sys/fs/cgroup/memory"})


def _rendered(asked: dict, actual: dict, layout: Layout) -> dict:
    """verify()'s verdicts as the usage record shows them: true, or "kind: reason"."""
    return {key: verdict.render() for key, verdict in cgroupfs.verify(asked, actual,
                                                                      layout).items()}


def test_verify_all_in_force():
    asked = {"memory_max": G2, "memory_high": G2 // 2, "cpu_quota_percent": 150.0,
             "allowed_cpus": "0-3,8", "io_weight": 200, "tasks_max": 100, "swap_max": 0}
    actual = {"memory_max": G2, "memory_high": G2 // 2, "cpu_quota_percent": 150.0,
              "allowed_cpus": (0, 1, 2, 3, 8), "io_weight": 200, "tasks_max": 100,
              "swap_max": 0}
    assert _rendered(asked, actual, UNIFIED) == dict.fromkeys(asked, True)


def test_verify_memory_within_a_page():
    assert _rendered({"memory_max": G2}, {"memory_max": G2 - (PAGE - 1)}, UNIFIED) == \
        {"memory_max": True}
    assert _rendered({"memory_max": G2 + 1}, {"memory_max": G2}, UNIFIED) == {"memory_max": True}
    result = _rendered({"memory_max": G2}, {"memory_max": G2 + PAGE}, UNIFIED)
    assert result == {"memory_max": f"not in force: asked {G2}, the cgroup has {G2 + PAGE}"}


def test_verify_unlimited_is_not_in_force():
    result = _rendered({"memory_max": G2, "cpu_quota_percent": 50.0},
                    {"memory_max": UNLIMITED, "cpu_quota_percent": UNLIMITED}, UNIFIED)
    assert result == {
        "memory_max": f"not in force: asked {G2}, the cgroup has unlimited",
        "cpu_quota_percent": "not in force: asked 50.0, the cgroup has unlimited"}


@pytest.mark.parametrize(("want", "have", "ok"),
                         [(150.0, 151.4, True), (150.0, 148.5, True), (150.0, 152.0, False),
                          (10.0, 11.0, True), (10.0, 11.5, False), (0.5, 1.5, True)])
def test_verify_cpu_quota_tolerance(want, have, ok):
    result = _rendered({"cpu_quota_percent": want}, {"cpu_quota_percent": have}, UNIFIED)
    assert (result["cpu_quota_percent"] is True) == ok


def test_verify_mismatches():
    result = _rendered({"allowed_cpus": "0-3", "tasks_max": 100, "io_weight": 200},
                    {"allowed_cpus": (0, 1), "tasks_max": 99, "io_weight": 100}, UNIFIED)
    assert result == {
        "allowed_cpus": "not in force: asked 0-3, the cgroup has (0, 1)",
        "tasks_max": "not in force: asked 100, the cgroup has 99",
        "io_weight": "not in force: asked 200, the cgroup has 100"}


def test_verify_missing_on_unified():
    result = _rendered({"memory_max": G2, "allowed_cpus": "0"}, {}, UNIFIED)
    assert result == {
        "memory_max": "not enforced: no memory_max control file in the unit's cgroup "
                      "(controller not enabled?)",
        "allowed_cpus": "not enforced: no allowed_cpus control file in the unit's cgroup "
                        "(controller not enabled?)"}


def test_verify_missing_on_v1():
    result = _rendered({"memory_high": G2, "swap_max": G2, "allowed_cpus": "0-1",
                     "io_weight": 100, "memory_max": G2, "tasks_max": 5}, {}, HYBRID)
    assert result["memory_high"] == "not enforced: cgroup v1 has no memory.high"
    assert result["swap_max"] == "not enforced: systemd sets swap limits only on cgroup v2"
    assert result["allowed_cpus"] == \
        "not enforced: systemd manages cpusets only on cgroup v2"
    assert result["io_weight"].startswith("not enforced: no blkio.weight")
    assert "CFQ" in result["io_weight"]
    assert result["memory_max"] == ("not enforced: no memory_max control file in the unit's "
                                    "cgroup (controller not enabled?)")
    assert result["tasks_max"].startswith("not enforced: no tasks_max control file")


@pytest.mark.parametrize(("weight", "blkio"),
                         [(100, 500), (1, 10), (2, 10), (3, 15), (200, 1000), (10000, 1000),
                          (150, 750)])
def test_verify_v1_io_weight_mapping(weight, blkio):
    assert _rendered({"io_weight": weight}, {"io_weight": blkio}, HYBRID) == {"io_weight": True}
    # on cgroup v2 the weight is not mapped
    assert _rendered({"io_weight": weight}, {"io_weight": weight}, UNIFIED) == {"io_weight": True}


def test_verify_v1_io_weight_unmapped_value_is_a_mismatch():
    result = _rendered({"io_weight": 100}, {"io_weight": 100}, HYBRID)
    assert result == {"io_weight": "not in force: asked 100, the cgroup has 100"}


def test_verify_empty():
    assert _rendered({}, {"memory_max": 1}, UNIFIED) == {}


# -- processes -------------------------------------------------------------------------------


def test_unit_cgroup_nests_slices(tmp_path):
    layout = Layout("unified", str(tmp_path), {})
    cgroup = "/a.slice/a-b.slice/condor-job-1.service"
    assert cgroupfs.unit_cgroup(layout, "a-b.slice", "condor-job-1.service") is None
    (tmp_path / cgroup.lstrip("/")).mkdir(parents=True)
    assert cgroupfs.unit_cgroup(layout, "a-b.slice", "condor-job-1.service") == cgroup
    assert cgroupfs.unit_cgroup(layout, "a.slice", "condor-job-1.service") is None


def test_procs(tmp_path):
    layout = _v2(tmp_path, {"cgroup.procs": "12\n34\n"})
    assert cgroupfs.procs(layout, UNIT) == [12, 34]
    legacy = _hybrid(tmp_path, name_systemd={"cgroup.procs": ""})
    legacy = legacy._replace(unified=None, kind="legacy")
    assert cgroupfs.procs(legacy, UNIT) == []
    assert cgroupfs.procs(legacy, "/gone") is None
