"""The whole disk under a file system (blockdev.py), against a sysfs laid out as the kernel
lays it out (/sys/dev/block/M:m links into /sys/devices/.../block/<disk>[/<partition>])."""

from __future__ import annotations

import os

from condor_systemd.blockdev import Disk, node_of, whole_disk


def sysfs(tmp_path, disk: str, number: str, partitions: dict[str, str]) -> str:
    devices = tmp_path / "devices" / "virtio1" / "block" / disk
    devices.mkdir(parents=True)
    (devices / "dev").write_text(number + "\n")
    (devices / "uevent").write_text(f"MAJOR={number.split(':')[0]}\nDEVNAME={disk}\n")
    links = tmp_path / "dev-block"
    links.mkdir(exist_ok=True)
    (links / number).symlink_to(devices)
    for name, part_number in partitions.items():
        (devices / name).mkdir()
        (devices / name / "partition").write_text("1\n")
        (devices / name / "dev").write_text(part_number + "\n")
        (links / part_number).symlink_to(devices / name)
    return str(links)


def test_a_partition_is_capped_on_its_disk(tmp_path):
    links = sysfs(tmp_path, "null", "254:16", {"null1": "254:17"})  # /dev/null exists
    assert whole_disk(os.makedev(254, 17), links) == (Disk("/dev/null", "254:16"), "")
    assert whole_disk(os.makedev(254, 16), links) == (Disk("/dev/null", "254:16"), "")


def test_a_disk_without_a_node_or_in_sysfs_says_so(tmp_path):
    links = sysfs(tmp_path, "vdz", "254:32", {})
    assert whole_disk(os.makedev(254, 32), links) == \
        (None, "the job's directory is on 254:32, which has no /dev/vdz")
    assert whole_disk(os.makedev(254, 48), links) == \
        (None, f"no block device 254:48 in {links}")


def test_no_block_device_names_the_file_system(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw\n"
                         "40 27 0:45 / /var/lib/condor/execute rw - tmpfs tmpfs rw\n")
    assert whole_disk(os.makedev(0, 45), mountinfo=str(mountinfo)) == \
        (None, "the job's directory is on tmpfs, which has no block device")
    assert whole_disk(os.makedev(0, 99), mountinfo=str(mountinfo))[1].startswith(
        "the job's directory is on device 0:99")


def test_node_of_a_device_number_is_its_uevent_devname_when_the_node_exists(tmp_path):
    """What the caller slice names a cap's device by (slices.io_caps)."""
    for number, name in (("1:3", "null"), ("8:0", "csd-no-such-disk")):
        (tmp_path / number).mkdir()
        (tmp_path / number / "uevent").write_text(f"MAJOR=1\nDEVNAME={name}\nDEVTYPE=disk\n")
    assert node_of("1:3", str(tmp_path)) == "/dev/null"
    assert node_of("8:0", str(tmp_path)) is None  # no such node here
    assert node_of("9:9", str(tmp_path)) is None  # no such device
