"""GPU ids, their device nodes and the DeviceAllow= list (devices.py). Real nodes made with
mknod in a scratch directory (tests run as root); /proc/devices and the driver's information
files as the kernel and the NVIDIA driver write them."""

from __future__ import annotations

import os
import stat

import pytest

from condor_systemd import devices
from condor_systemd.errors import LaunchError, UsageError

PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  5 /dev/tty
 10 misc
136 pts
195 nvidia-frontend
231 infiniband_verbs
234 nvidia-uvm
235 nvidia-caps
240 weird[0]

Block devices:
  8 sd
253 device-mapper
"""
INFORMATION = """Model: \t\t NVIDIA A100-SXM4-40GB
IRQ:   \t\t 0
GPU UUID: \t GPU-c4a646d7-3a4b-1e8e-7a5f-aaaaaaaaaaaa
Video BIOS: \t 92.00.36.00.01
Bus Type: \t PCIe
Device Minor: \t 3
"""


def test_the_option_wins_then_htcondors_assignment_then_cuda():
    env = {"_CONDOR_AssignedGPUs": "CUDA1,CUDA2", "CUDA_VISIBLE_DEVICES": "0"}
    assert devices.assigned_ids("3", env) == ("3",)
    assert devices.assigned_ids(None, env) == ("CUDA1", "CUDA2")
    assert devices.assigned_ids(None, {"CUDA_VISIBLE_DEVICES": "0, 1"}) == ("0", "1")
    assert devices.assigned_ids(None, {}) is None


@pytest.mark.parametrize("text", ["", " ", "-1", "none", "10000", "NoDevFiles"])
def test_words_for_no_gpu(text):
    assert devices.assigned_ids(text, {}) == ()


def test_too_many_ids_are_refused():
    with pytest.raises(UsageError, match="more than 64 GPU ids"):
        devices.assigned_ids(",".join(str(i) for i in range(65)), {})


@pytest.fixture
def dev(tmp_path):
    for minor in (0, 3):
        os.mknod(tmp_path / f"nvidia{minor}", stat.S_IFCHR | 0o666, os.makedev(195, minor))
    os.mknod(tmp_path / "nvidia1", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # not NVIDIA's
    (tmp_path / "nvidia2").write_text("")  # not a device
    return str(tmp_path)


def test_indices_and_cuda_names_are_device_minors(dev):
    assert devices.resolve("0", dev) == f"{dev}/nvidia0"
    assert devices.resolve("CUDA3", dev) == f"{dev}/nvidia3"
    for missing in ("1", "2", "4"):
        with pytest.raises(UsageError, match=f"GPU '{missing}' does not exist on this node "
                                             f"\\(no {dev}/nvidia{missing} with the NVIDIA"):
            devices.resolve(missing, dev)
    assert devices.node_gpus(dev) == [f"{dev}/nvidia0", f"{dev}/nvidia3"]


def test_uuids_are_looked_up_in_the_drivers_information(dev, tmp_path):
    proc = tmp_path / "proc"
    (proc / "0000:07:00.0").mkdir(parents=True)
    (proc / "0000:07:00.0" / "information").write_text(INFORMATION)
    assert devices.resolve("GPU-c4a646d7", dev, str(proc)) == f"{dev}/nvidia3"  # HTCondor's
    assert devices.resolve("GPU-C4A646D7-3A4B", dev, str(proc)) == f"{dev}/nvidia3"
    with pytest.raises(UsageError, match="GPU 'GPU-0000' does not exist on this node"):
        devices.resolve("GPU-0000", dev, str(proc))


@pytest.mark.parametrize("bad", ["nvidia0", "../0", "CUDA-1", "0x1", "GPU-xyz", "1" * 5])
def test_what_is_not_a_gpu_id(bad, dev):
    with pytest.raises(UsageError, match="is not a GPU id"):
        devices.resolve(bad, dev)


def test_htcondors_bad_assignment_is_a_launch_failure_and_the_options_a_usage_error():
    with pytest.raises(UsageError) as given:
        devices.check(("4095",), given=True)
    assert not isinstance(given.value, LaunchError)
    with pytest.raises(LaunchError, match="assigned in the job's environment"):
        devices.check(("4095",), given=False)


def test_every_driver_but_nvidias_stays_open(tmp_path):
    listing = tmp_path / "devices"
    listing.write_text(PROC_DEVICES)
    allowed = devices.allow_list([], str(listing))
    assert allowed == [("char-mem", "rwm"), ("char-/dev/vc/0", "rwm"), ("char-tty", "rwm"),
                       ("char-/dev/tty", "rwm"), ("char-misc", "rwm"), ("char-pts", "rwm"),
                       ("char-infiniband_verbs", "rwm"), ("block-sd", "rwm"),
                       ("block-device-mapper", "rwm")]


def test_assigned_gpus_come_with_the_control_nodes_that_exist(tmp_path):
    listing = tmp_path / "devices"
    listing.write_text(PROC_DEVICES)
    allowed = devices.allow_list(["/dev/nvidia3"], str(listing))
    assert allowed[9] == ("/dev/nvidia3", "rw")  # after the nine drivers above
    control = [path for path, _ in allowed if path.startswith("/dev/nvidia-") or
               path == "/dev/nvidiactl"]
    assert control == [p for p in devices.NVIDIA_CONTROL if os.path.exists(p)]


def test_file_mode_decides_who_may_open(tmp_path):
    node = tmp_path / "n"
    node.write_text("")
    os.chown(node, 1000, 2000)
    os.chmod(node, 0o660)
    assert devices.may_open(str(node), 1000, set())
    assert devices.may_open(str(node), 1001, {2000})
    assert not devices.may_open(str(node), 1001, {2001})
    assert devices.may_open(str(node), 0, set())
    os.chmod(node, 0o640)
    assert not devices.may_open(str(node), 1001, {2000})  # read only
    os.chmod(node, 0o606)
    assert devices.may_open(str(node), 1001, {2001}) and not devices.may_open(str(node), 1001,
                                                                              {2000})


def test_amd_gpus_are_render_nodes(tmp_path):
    (tmp_path / "dri").mkdir()
    os.mknod(tmp_path / "dri" / "renderD128", stat.S_IFCHR | 0o666, os.makedev(226, 128))
    assert devices.resolve("renderD128", str(tmp_path)) == f"{tmp_path}/dri/renderD128"
    assert devices.resolve("/dev/dri/renderD128", str(tmp_path)) == f"{tmp_path}/dri/renderD128"
    with pytest.raises(UsageError, match="no .*/dri/renderD129 with the DRM major number 226"):
        devices.resolve("renderD129", str(tmp_path))


def test_an_amd_gpu_closes_drm_and_kfd_and_keeps_the_rest(tmp_path):
    listing = tmp_path / "devices"
    listing.write_text(PROC_DEVICES.replace("240 weird[0]", "226 drm\n240 kfd"))
    allowed = devices.allow_list(["/dev/dri/renderD128"], str(listing))
    names = [path for path, _ in allowed]
    assert "char-drm" not in names and "char-kfd" not in names and "char-misc" in names
    assert ("/dev/dri/renderD128", "rw") in allowed
    nvidia_only = [path for path, _ in devices.allow_list([], str(listing))]
    assert "char-drm" in nvidia_only and "char-kfd" in nvidia_only  # only NVIDIA's closed
