"""Caps per caller, not per job: one slice per caller cgroup.

The caller's cgroup (under HTCondor: the slot's) caps each job the broker runs for it, and that
alone would let a caller multiply its slot: three jobs, each within a 200 MiB slot, hold 600 MiB.
So every job of one caller cgroup runs in one slice, `condor-u<uid>_c<digest>.slice` in
condor.slice, that carries the caller cgroup's memory, swap, CPU quota, tasks, CPU set and I/O
caps (per device) and its CPU weight (HTCondor's 100 x Cpus for a slot): all of that caller's
jobs together stay within them, and share the node against other slots as the slot itself
would. The digest names the caller's
cgroup as the kernel gives it; a job that calls the broker from inside its own unit is in such
a slice already (under condor.slice, where nobody but root makes cgroups), and its jobs go into
that same slice: the same budget.

The slice is created (or its caps updated) before each job starts, and stopped when the last
of its jobs has gone.
"""

from __future__ import annotations

import collections
import hashlib
import re
from typing import TYPE_CHECKING

from .. import blockdev
from ..errors import LaunchError
from ..spec import Limits

if TYPE_CHECKING:
    from ..backends.systemd import SystemdBackend
    from .peer import Caps


def name_for(uid: int, cgroup: str) -> str:
    """The slice for a caller of this uid in this cgroup."""
    inside = re.match(rf"/condor\.slice/(condor-u{uid}_c[0-9a-f]{{16}}\.slice)(/|$)", cgroup)
    if inside:  # a job of ours calling from its own unit: its caller's slice, the same budget
        return inside.group(1)
    digest = hashlib.sha256(cgroup.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"condor-u{uid}_c{digest}.slice"


def io_caps(caps: Caps) -> tuple[tuple[str, str, int], ...]:
    """The caller's I/O caps by device node. A cap on a device with no node here cannot be
    set on the slice: the job is refused rather than run past it (fail closed)."""
    out = []
    for number, key, value in caps.io:
        node = blockdev.node_of(number)
        if node is None:
            raise LaunchError(f"the caller's cgroup caps I/O on block device {number}, which "
                              "has no device node here: the job is refused rather than run "
                              "without that cap")
        out.append((node, key, value))
    return tuple(out)


class CallerSlices:
    def __init__(self, backend: SystemdBackend) -> None:
        self.backend = backend
        self.jobs: collections.Counter[str] = collections.Counter()  # slice -> jobs in it

    def enter(self, name: str, uid: int, caps: Caps, capped: bool) -> None:
        """Before a job starts in slice `name`: the slice exists, with the caller's caps when
        the policy caps by the caller's cgroup. LaunchError if systemd refuses it."""
        limits = Limits(memory_max=caps.memory_max, cpu_quota_percent=caps.cpu_quota_percent,
                        swap_max=caps.swap_max,
                        tasks_max=caps.tasks_max, allowed_cpus=caps.cpus) if capped else Limits()
        self.backend.ensure_slice(name, f"condor-systemd: the jobs of uid {uid} from "
                                        f"{caps.cgroup or 'an unknown cgroup'}", limits,
                                  caps.cpu_weight if capped else None,
                                  io_caps(caps) if capped else ())
        self.jobs[name] += 1

    def adopt(self, name: str) -> None:
        """A job taken back after a restart of the broker is in this slice already."""
        self.jobs[name] += 1

    def leave(self, name: str) -> None:
        """A job of this slice is gone; the slice goes with its last one."""
        if self.jobs[name] <= 0:
            return
        self.jobs[name] -= 1
        if self.jobs[name] == 0:
            del self.jobs[name]
            self.backend.stop_slice(name)
