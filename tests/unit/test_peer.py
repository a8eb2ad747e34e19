"""The broker's view of its caller (broker/peer.py) and of the caller's slice (broker/slices.py),
on a /proc and cgroup tree laid out in a temporary directory: the caps it reads, and that what
it cannot read refuses the job (fail closed) instead of meaning "no limit"."""

from __future__ import annotations

import os
import re
import socket

import pytest

from condor_systemd.backends.cgroupfs import Layout
from condor_systemd.broker import peer, slices
from condor_systemd.errors import LaunchError

CGROUP = "/condor.service/htcondor/slot1_1"


def tree(tmp_path, files: dict[str, str]):  # noqa: ANN001, ANN201
    """A unified hierarchy under tmp_path/cg with these files, and /proc/42/cgroup naming
    CGROUP; (layout, proc root)."""
    (tmp_path / "proc" / "42").mkdir(parents=True)
    (tmp_path / "proc" / "42" / "cgroup").write_text(f"0::{CGROUP}\n")
    for name, text in files.items():
        path = tmp_path / "cg" / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Layout("unified", str(tmp_path / "cg"), {}), str(tmp_path / "proc")


def test_caps_are_the_tightest_on_the_way_up_and_the_weight_is_the_callers_own(tmp_path):
    layout, proc = tree(tmp_path, {
        "/condor.service/memory.max": "1073741824\n",
        f"{CGROUP}/memory.max": "209715200\n",
        f"{CGROUP}/pids.max": "max\n",
        "/condor.service/htcondor/pids.max": "500\n",
        f"{CGROUP}/cpu.max": "150000 100000\n",
        f"{CGROUP}/cpu.weight": "300\n",
        f"{CGROUP}/cpuset.cpus.effective": "0-1\n",
    })
    caps = peer.cgroup_caps(42, layout, proc)
    assert caps.memory_max == 209715200
    assert caps.tasks_max == 500
    assert caps.cpu_quota_percent == 150.0
    assert caps.cpu_weight == 300
    assert caps.cpus == (0, 1)
    assert caps.cgroup == CGROUP


def test_io_caps_are_the_tightest_per_device_and_kind_on_the_way_up(tmp_path):
    """io.max (v2): each device's caps, the tightest of the caller's cgroup and its
    ancestors; "max" is none. A slot's caps thus go onto its caller slice (slices.io_caps)."""
    layout, proc = tree(tmp_path, {
        "/condor.service/io.max": "8:0 rbps=max wbps=5242880 riops=max wiops=max\n",
        f"{CGROUP}/io.max": "8:0 rbps=1048576 wbps=10485760 riops=max wiops=300\n"
                            "254:16 rbps=max wbps=max riops=50 wiops=max\n",
    })
    caps = peer.cgroup_caps(42, layout, proc)
    assert caps.io == (("254:16", "io_read_iops", 50), ("8:0", "io_read_bandwidth", 1048576),
                       ("8:0", "io_write_bandwidth", 5242880), ("8:0", "io_write_iops", 300))


def test_io_caps_on_cgroup_v1(tmp_path):
    """blkio.throttle.*_device (v1/hybrid): "MAJ:MIN value" a line, the tightest on the way up."""
    (tmp_path / "proc" / "42").mkdir(parents=True)
    (tmp_path / "proc" / "42" / "cgroup").write_text(f"3:blkio:{CGROUP}\n1:name=systemd:{CGROUP}\n")
    blkio = tmp_path / "blkio"
    for directory, text in (("condor.service", "8:0 2097152\n"), (CGROUP, "8:0 4194304\n")):
        (blkio / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (blkio / directory.lstrip("/") / "blkio.throttle.write_bps_device").write_text(text)
    (blkio / CGROUP.lstrip("/") / "blkio.throttle.read_iops_device").write_text("8:16 70\n")
    layout = Layout("hybrid", None, {"blkio": str(blkio)})
    caps = peer.cgroup_caps(42, layout, str(tmp_path / "proc"))
    assert caps.io == (("8:0", "io_write_bandwidth", 2097152), ("8:16", "io_read_iops", 70))


def test_io_caps_on_a_device_without_a_node_refuse_the_job(tmp_path, monkeypatch):
    """The slice names devices by node: a cap on one without a node here cannot be carried,
    and the job is refused (fail closed) rather than run past it."""
    monkeypatch.setattr(slices.blockdev, "node_of", lambda number: None)
    caps = peer.Caps(io=(("8:0", "io_write_bandwidth", 1048576),))
    with pytest.raises(LaunchError, match="block device 8:0, which has no device node"):
        slices.io_caps(caps)


class RecordingBackend:
    """What the slice is started with (SystemdBackend.ensure_slice's arguments)."""

    def __init__(self) -> None:
        self.slices: list[tuple] = []

    def ensure_slice(self, *args: object) -> None:
        self.slices.append(args)


def test_the_callers_io_caps_go_onto_its_slice_by_device_node(monkeypatch):
    monkeypatch.setattr(slices.blockdev, "node_of", {"8:0": "/dev/sda"}.get)
    backend = RecordingBackend()
    caps = peer.Caps(memory_max=1 << 30, cgroup=CGROUP,
                     io=(("8:0", "io_write_bandwidth", 1048576), ("8:0", "io_read_iops", 70)))
    slices.CallerSlices(backend).enter("condor-u1000_c0123456789abcdef.slice", 1000, caps, True)
    [(_name, _description, limits, _weight, io)] = backend.slices
    assert limits.memory_max == 1 << 30
    assert io == (("/dev/sda", "io_write_bandwidth", 1048576), ("/dev/sda", "io_read_iops", 70))
    # the policy says not to cap by the caller's cgroup: nothing of it goes onto the slice
    slices.CallerSlices(backend).enter("condor-u1000_c0123456789abcdef.slice", 1000, caps, False)
    assert backend.slices[1][2].memory_max is None and backend.slices[1][4] == ()


def test_an_absent_limit_file_is_no_limit(tmp_path):
    """A controller not enabled there: its files are not there, and limit nothing."""
    layout, proc = tree(tmp_path, {f"{CGROUP}/cgroup.procs": "42\n"})
    caps = peer.cgroup_caps(42, layout, proc)
    assert (caps.memory_max, caps.tasks_max, caps.cpu_quota_percent) == (None, None, None)


def test_an_unreadable_cgroup_refuses_the_job(tmp_path):
    """/proc/PID/cgroup hidden or unreadable (hidepid, no fds left): no caps is not "no
    limit", it is no job."""
    layout, proc = tree(tmp_path, {})
    os.remove(os.path.join(proc, "42", "cgroup"))
    with pytest.raises(LaunchError, match="cannot read the caller's cgroup .*refused"):
        peer.cgroup_caps(42, layout, proc)


def test_an_unreadable_limit_file_refuses_the_job(tmp_path):
    layout, proc = tree(tmp_path, {})
    (tmp_path / "cg" / CGROUP.lstrip("/") / "memory.max").mkdir(parents=True)  # EISDIR
    with pytest.raises(LaunchError, match="cannot read the caller's limits .*memory.max"):
        peer.cgroup_caps(42, layout, proc)


def test_the_peer_is_bound_to_its_process_and_its_start_time():
    """A socketpair's peer is this process: alive while it is, with /proc's start time."""
    ours, theirs = socket.socketpair()
    try:
        caller = peer.identify(ours)
        assert (caller.uid, caller.pid) == (os.getuid(), os.getpid())
        assert caller.start_time == peer.start_time(os.getpid()) is not None
        assert caller.alive()
        caller.close()
        # a peer whose process started after the accept is not the caller: it counts as gone
        late = peer.identify(ours, accepted_at=0.0)
        if late.pidfd == peer.NO_PIDFD:  # only without SO_PEERPIDFD (the kernel's is exact)
            assert not late.alive()
        late.close()
    finally:
        ours.close()
        theirs.close()


def test_a_caller_slice_is_named_for_its_cgroup_and_a_job_calls_into_its_own():
    first = slices.name_for(1000, CGROUP)
    assert re.fullmatch(r"condor-u1000_c[0-9a-f]{16}\.slice", first)
    assert slices.name_for(1000, CGROUP) == first
    assert slices.name_for(1000, CGROUP + "_2") != first
    # a job of that slice calling the broker from its own unit: the same slice, same budget
    inside = f"/condor.slice/{first}/condor-job-u1000-7.0.service"
    assert slices.name_for(1000, inside) == first
    # not for another uid, and not from a cgroup a user could make elsewhere with that name
    assert slices.name_for(1001, inside) != first
    assert slices.name_for(1000, f"/user.slice/{first}/x") != first
