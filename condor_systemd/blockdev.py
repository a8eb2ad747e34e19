"""The block device under the job's directory, for its I/O caps (IOReadBandwidthMax= etc.).

The kernel throttles I/O per block device: a cap is set on the whole disk that holds the job's
directory (a partition's parent; device-mapper, md and loop devices are whole devices of their
own). A directory on a file system without one (tmpfs, overlay, NFS...) cannot be capped: that
is said, with the file system's type, never silently dropped.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Disk(NamedTuple):
    node: str    # /dev/vdb: what systemd gets
    number: str  # "254:16": what io.max and blkio files say


def whole_disk(st_dev: int, sys_block: str = "/sys/dev/block",
               mountinfo: str = "/proc/self/mountinfo") -> tuple[Disk | None, str]:
    """The whole disk behind a file system's st_dev, or (None, why not)."""
    major, minor = os.major(st_dev), os.minor(st_dev)
    if major == 0:
        return None, f"the job's directory is on {_fstype(major, minor, mountinfo)}, which " \
                     "has no block device"
    sysfs = os.path.realpath(f"{sys_block}/{major}:{minor}")
    if not os.path.isdir(sysfs):
        return None, f"no block device {major}:{minor} in {sys_block}"
    if os.path.exists(os.path.join(sysfs, "partition")):
        sysfs = os.path.dirname(sysfs)  # the disk the partition is on
    try:
        with open(os.path.join(sysfs, "dev")) as f:
            number = f.read().strip()
        node = f"/dev/{_uevent(sysfs).get('DEVNAME', os.path.basename(sysfs))}"
    except OSError as exc:
        return None, f"cannot read {sysfs}: {exc.strerror}"
    if not os.path.exists(node):
        return None, f"the job's directory is on {number}, which has no {node}"
    return Disk(node, number), ""


def node_of(number: str, sys_block: str = "/sys/dev/block") -> str | None:
    """The device node of block device "MAJ:MIN" (what systemd's IO*Max= take), if any."""
    try:
        name = _uevent(f"{sys_block}/{number}").get("DEVNAME")
    except OSError:
        return None
    return f"/dev/{name}" if name and os.path.exists(f"/dev/{name}") else None


def _uevent(sysfs: str) -> dict[str, str]:
    """A device's uevent file (DEVNAME=sda...) as a dict; OSError if unreadable."""
    with open(os.path.join(sysfs, "uevent")) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def _fstype(major: int, minor: int, mountinfo: str) -> str:
    """The type of the (first) file system mounted from device major:minor."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == f"{major}:{minor}" and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return f"device {major}:{minor}"
