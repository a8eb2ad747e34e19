"""GPUs as assigned, proven without a GPU: character devices with NVIDIA's major number (195)
made with mknod. Opening one the device filter lets through fails with ENXIO (no driver behind
it); one the filter refuses fails with EPERM."""

from __future__ import annotations

import os
import stat

import pytest

from tests.jobs import PY

OPEN_EACH = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR))
        print(path, "opened")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""
NODES = ("/dev/nvidia0", "/dev/nvidia1")
NO_DRIVER = ("ENXIO", "ENODEV")


@pytest.fixture
def fake_gpus():
    with open("/proc/devices") as f:
        if any(line.split()[1:2] == ["nvidia"] or "nvidia-frontend" in line for line in f):
            pytest.skip("this machine has the NVIDIA driver: its GPUs are not ours to fake")
    for minor, path in enumerate(NODES):
        if os.path.lexists(path):
            os.unlink(path)  # a fake one an interrupted run left
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(195, minor))
        os.chmod(path, 0o666)  # as the driver makes them
    yield NODES
    for path in NODES:
        if os.path.lexists(path):
            os.unlink(path)


def opened(jobs, *args: str, env: dict | None = None) -> tuple[dict, dict]:
    proc, usage = jobs.run_with_usage(*args, "--", PY, "-c", OPEN_EACH, *NODES, "/dev/null",
                                      env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split() for line in proc.stdout.splitlines()), usage


def test_only_the_assigned_gpu_can_be_opened(jobs, fake_gpus):
    seen, usage = opened(jobs, "--gpus", "0")
    assert usage["limits"]["gpus"] == "0"
    assert seen["/dev/null"] == "opened"
    if not jobs.expect.has_unit:  # no cgroup, no filter: said so, and really not held
        assert seen["/dev/nvidia1"] in NO_DRIVER, seen
        assert usage["enforced"]["gpus"].startswith("not enforced: a device filter needs")
        return
    assert seen["/dev/nvidia0"] in NO_DRIVER and seen["/dev/nvidia1"] == "EPERM", seen
    if usage["cgroup_layout"] == "unified":
        assert usage["enforced"]["gpus"].startswith("unknown: DevicePolicy=closed")
    else:  # devices.list, read back
        assert usage["enforced"]["gpus"] is True, usage["enforced"]


def test_htcondors_assignment_is_the_default_and_a_job_given_none_gets_none(jobs, fake_gpus):
    env = dict(os.environ, _CONDOR_AssignedGPUs="CUDA1", CUDA_VISIBLE_DEVICES="0")
    seen, usage = opened(jobs, env=env)
    assert usage["limits"]["gpus"] == "CUDA1"
    assert seen["/dev/nvidia1"] in NO_DRIVER, seen
    unassigned = "EPERM" if jobs.expect.has_unit else seen["/dev/nvidia1"]  # no filter there
    assert seen["/dev/nvidia0"] == unassigned, seen
    env = {k: v for k, v in os.environ.items() if k not in ("_CONDOR_AssignedGPUs",
                                                            "CUDA_VISIBLE_DEVICES")}
    seen, usage = opened(jobs, env=env)  # the node has GPUs, the job names none
    assert seen["/dev/null"] == "opened"
    if jobs.expect.has_unit:
        assert seen["/dev/nvidia0"] == seen["/dev/nvidia1"] == "EPERM", seen
        assert usage["limits"]["gpus"] == "none"
    else:  # nothing asked, nothing claimed
        assert "gpus" not in usage["limits"] and "gpus" not in usage["enforced"]
    # HTCondor's word for "no GPU" on a node that has some: the job runs, with none
    seen, usage = opened(jobs, env=dict(env, CUDA_VISIBLE_DEVICES="10000"))
    assert usage["limits"]["gpus"] == "none" and seen["/dev/null"] == "opened"
    if jobs.expect.has_unit:
        assert seen["/dev/nvidia0"] == seen["/dev/nvidia1"] == "EPERM", seen


def test_a_gpu_that_is_not_there_is_refused_before_launch(jobs, fake_gpus):
    """--gpus names a GPU this node lacks: a usage error (2). HTCondor assigned it: this
    node's fault, a launch failure (125), which requeues the job."""
    for gpus, words in (("7", "GPU '7' does not exist on this node (no /dev/nvidia7"),
                        ("GPU-0000dead", "GPU 'GPU-0000dead' does not exist on this node"),
                        ("bogus", "'bogus' is not a GPU id")):
        proc = jobs.run("--gpus", gpus, "--", "true")
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    proc = jobs.run("--", "true", env=dict(os.environ, _CONDOR_AssignedGPUs="CUDA7"))
    assert proc.returncode == 125, proc
    assert proc.stderr == ("condor-systemd: GPU 'CUDA7' does not exist on this node (no "
                           "/dev/nvidia7 with the NVIDIA major number 195); it was assigned in "
                           "the job's environment\n"), proc.stderr
    # (the fixture's leftover check: no unit was made)


def test_a_gpu_the_user_could_not_open_is_not_granted(jobs, fake_gpus):
    """The broker narrows a job's devices, it grants none: a node its caller could not open
    (file mode) is refused. Root may open it, and its job runs."""
    os.chmod("/dev/nvidia1", 0o600)
    proc = jobs.run("--gpus", "1", "--", "true")
    if jobs.expect.caller_is_root:
        assert proc.returncode == 0, proc
        return
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1, proc
    assert "GPU '1': the job's user may not open /dev/nvidia1" in proc.stderr


RENDER = ("/dev/dri/renderD200", "/dev/dri/renderD201")


def test_an_amd_gpu_is_given_by_its_render_node_and_keeps_kfd(jobs):
    """AMD: fake render nodes (DRM's major, 226). The job given renderD200 opens it (ENXIO: no
    driver behind the filter), not renderD201 (EPERM)."""
    made_dir = not os.path.exists("/dev/dri")
    os.makedirs("/dev/dri", exist_ok=True)
    for path, minor in zip(RENDER, (200, 201)):
        if os.path.lexists(path):
            os.unlink(path)
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(226, minor))
        os.chmod(path, 0o666)
    try:
        proc, usage = jobs.run_with_usage("--gpus", "renderD200", "--", PY, "-c", OPEN_EACH,
                                          *RENDER, "/dev/null")
        assert proc.returncode == 0, proc.stderr
        seen = dict(line.split() for line in proc.stdout.splitlines())
        assert usage["limits"]["gpus"] == "renderD200" and seen["/dev/null"] == "opened"
        assert seen[RENDER[0]] in NO_DRIVER, seen
        assert seen[RENDER[1]] == ("EPERM" if jobs.expect.has_unit else seen[RENDER[0]]), seen
    finally:
        for path in RENDER:
            if os.path.lexists(path):
                os.unlink(path)
        if made_dir:
            os.rmdir("/dev/dri")


def test_htcondors_no_gpu_on_a_node_without_gpus_changes_nothing(jobs):
    """HTCondor sets CUDA_VISIBLE_DEVICES=10000 for every job that asked for no GPU (the real
    pool's jobs were all refused when that was taken for a GPU id): with no GPU on the node
    there is nothing to hide, and no device filter is set."""
    assert not any(os.path.exists(path) for path in NODES)
    proc, usage = jobs.run_with_usage("--", "true",
                                      env=dict(os.environ, CUDA_VISIBLE_DEVICES="10000"))
    assert proc.returncode == 0, proc.stderr
    assert "gpus" not in usage["limits"] and "gpus" not in usage["enforced"]
