"""GPUs as assigned: which device nodes a job's unit may open.

A job with assigned GPUs (``--gpus``, else HTCondor's ``_CONDOR_AssignedGPUs``, else
``CUDA_VISIBLE_DEVICES``), and any job on a node that has NVIDIA GPU nodes, gets
``DevicePolicy=closed`` with ``DeviceAllow=`` for every device driver of ``/proc/devices`` but
NVIDIA's, plus its own ``/dev/nvidiaN`` and the driver's shared control nodes. It loses the GPUs
it was not given and nothing else: InfiniBand, FUSE, ttys and disks stay as they were.

GPU ids: ``N`` or ``CUDAN`` is ``/dev/nvidiaN`` (the device minor); ``GPU-<uuid>`` (HTCondor's
form, a prefix of the UUID) is looked up in ``/proc/driver/nvidia/gpus/*/information``. AMD
GPUs are named by their render node (``renderDN``): a job given one loses the other render
nodes and keeps ``/dev/kfd``. Only NVIDIA GPUs are hidden from a job that names none (ROCm's
indices do not name render nodes, so an AMD node's HTCondor assignment cannot be mapped here).
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Mapping

from .errors import UsageError

NVIDIA_MAJOR = 195
DRM_MAJOR = 226  # /dev/dri/renderDN (and cardN)
AMD_CONTROL = ("/dev/kfd",)
NVIDIA_CONTROL = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                  "/dev/nvidia-modeset")
# what says "no GPU": CUDA's -1, HTCondor's 10000 (CUDA_VISIBLE_DEVICES of a job that asked
# for none on a node with GPUs) and its NoDevFiles
NONE = ("", "-1", "none", "10000", "NoDevFiles")
MAX_IDS = 64
_INDEX = re.compile(r"(?:CUDA)?(\d{1,4})")
_UUID = re.compile(r"GPU-[0-9a-fA-F-]{1,64}")
_RENDER = re.compile(r"(?:/dev/dri/)?(renderD\d{1,4})")


def assigned_ids(option: str | None, environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """The job's GPU ids, () for none, None when nothing says (no device rules then, unless
    the node has GPUs)."""
    for text in (option, environ.get("_CONDOR_AssignedGPUs"),
                 environ.get("CUDA_VISIBLE_DEVICES")):
        if text is None:
            continue
        ids = tuple(t for t in re.split(r"[,\s]+", text.strip()) if t)
        if not ids or (len(ids) == 1 and ids[0] in NONE):
            return ()
        if len(ids) > MAX_IDS:
            raise UsageError(f"more than {MAX_IDS} GPU ids")
        return ids
    return None


def check(ids: tuple[str, ...], given: bool) -> None:
    """Every id is a GPU here. Named with --gpus, a bad one is the caller's mistake (a usage
    error); assigned by HTCondor, it is this node's (a launch failure: the job is requeued)."""
    for gpu_id in ids:
        try:
            resolve(gpu_id)
        except UsageError as exc:
            if given:
                raise
            from .errors import LaunchError

            raise LaunchError(f"{exc}; it was assigned in the job's environment") from None


def node_gpus(dev: str = "/dev") -> list[str]:
    """The NVIDIA GPU nodes here (/dev/nvidiaN, char major 195)."""
    return sorted((p for p in glob.glob(f"{dev}/nvidia[0-9]*") if _is_nvidia_gpu(p)),
                  key=lambda p: int(p[len(dev) + 7:]) if p[len(dev) + 7:].isdigit() else -1)


def _is_nvidia_gpu(path: str, major: int = NVIDIA_MAJOR) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == major


def resolve(gpu_id: str, dev: str = "/dev",
            proc: str = "/proc/driver/nvidia/gpus") -> str:
    """The device node of one GPU id; UsageError naming it when there is none."""
    index, render = _INDEX.fullmatch(gpu_id), _RENDER.fullmatch(gpu_id)
    if render:
        path = f"{dev}/dri/{render.group(1)}"
        if not _is_nvidia_gpu(path, DRM_MAJOR):
            raise UsageError(f"GPU '{gpu_id}' does not exist on this node (no {path} with the "
                             f"DRM major number {DRM_MAJOR})")
        return path
    if index:
        minor = int(index.group(1))
    elif _UUID.fullmatch(gpu_id):
        found = _minor_of_uuid(gpu_id, proc)
        if found is None:
            raise UsageError(f"GPU '{gpu_id}' does not exist on this node (no such UUID in "
                             f"{proc})")
        minor = found
    else:
        raise UsageError(f"'{gpu_id[:80]}' is not a GPU id (N, CUDAN, GPU-<uuid> or renderDN)")
    path = f"{dev}/nvidia{minor}"
    if not _is_nvidia_gpu(path):
        raise UsageError(f"GPU '{gpu_id}' does not exist on this node (no {path} with the "
                         f"NVIDIA major number {NVIDIA_MAJOR})")
    return path


def _minor_of_uuid(uuid: str, proc: str) -> int | None:
    for info in glob.glob(f"{proc}/*/information"):
        try:
            with open(info) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if fields.get("GPU UUID", "").strip().lower().startswith(uuid.lower()):
            minor = fields.get("Device Minor", "").strip()
            if minor.isdigit():
                return int(minor)
    return None


def job_identity(user: str | None, group: str | None) -> tuple[int, set[int]]:
    """The uid and groups the unit's processes get (User=/Group=, and the user's groups)."""
    import grp
    import pwd

    if user is None:
        return os.getuid(), set(os.getgroups()) | {os.getgid()}
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        uid = int(user) if user.isdigit() else -1
        return uid, set() if group is None else {_gid(group, grp)}
    gid = entry.pw_gid if group is None else _gid(group, grp)
    return entry.pw_uid, set(os.getgrouplist(entry.pw_name, gid)) | {gid}


def _gid(group: str, grp: object) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid  # type: ignore[attr-defined]
    except KeyError:
        return -1


def may_open(path: str, uid: int, gids: set[int]) -> bool:
    """Whether the file mode lets uid (with these groups) read and write the node: a GPU the
    caller names is granted only if it could open it outside any job."""
    st = os.stat(path)
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & 0o6 == 0o6


def rule_of(node: str) -> str:
    """The cgroup v1 devices.list line systemd writes for a node allowed "rw"."""
    st = os.stat(node)
    return f"c {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} rw"


def is_control_rule(rule: str) -> bool:
    """The driver's shared nodes on the GPUs' major (nvidiactl 255, nvidia-modeset 254)."""
    return rule in (f"c {NVIDIA_MAJOR}:255 rw", f"c {NVIDIA_MAJOR}:254 rw")


def is_gpu_rule(rule: str, gpus: list[str]) -> bool:
    """A devices.list line on a major the filter keeps to the given GPUs: NVIDIA's always,
    DRM's once an AMD GPU is given."""
    majors = [NVIDIA_MAJOR] + ([DRM_MAJOR] if any("/dri/" in p for p in gpus) else [])
    return rule.startswith(tuple(f"c {major}:" for major in majors))


def allow_list(gpus: list[str], proc_devices: str = "/proc/devices") -> list[tuple[str, str]]:
    """DeviceAllow= entries: every driver but NVIDIA's (and, once an AMD GPU is given, DRM's
    and KFD's), by name, and these GPU nodes with the control nodes their drivers need."""
    amd = any("/dri/" in path for path in gpus)
    nvidia = any("/dri/" not in path for path in gpus)
    allowed: list[tuple[str, str]] = []
    seen = set()
    kind = ""
    with open(proc_devices) as f:
        for line in f:
            line = line.strip()
            if line.endswith("devices:"):
                kind = "char" if line.startswith("Character") else "block"
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not parts[0].isdigit():
                continue
            major, name = int(parts[0]), parts[1]
            if kind == "char" and (major == NVIDIA_MAJOR or name.startswith("nvidia")):
                continue
            if kind == "char" and amd and (major == DRM_MAJOR or name in ("drm", "kfd")):
                continue
            if any(c in name for c in "*?[\\"):
                continue  # systemd matches names as globs: such a driver stays closed
            if (kind, name) not in seen:
                seen.add((kind, name))
                allowed.append((f"{kind}-{name}", "rwm"))
    control = []
    if nvidia:
        control += [p for p in NVIDIA_CONTROL if os.path.exists(p)]
        control += sorted(glob.glob("/dev/nvidia-caps/*"))
    if amd:
        control += [p for p in AMD_CONTROL if os.path.exists(p)]
    allowed += [(path, "rw") for path in gpus + control]
    return allowed
