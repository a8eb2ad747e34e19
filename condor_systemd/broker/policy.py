"""The broker's policy: what an unprivileged caller may ask for, and the caps on what it gets.

systemd's own check for StartTransientUnit (polkit) is all or nothing and caps no property, so
the broker is the only policy point. For a caller that is not root, always:

* the unit runs as the caller (User=/Group= are its uid/gid); --uid/--gid are root's only;
* only the properties in ALLOWED (and the site's [properties] allow) may be set with -p; the
  unit's command, identity, capabilities, stdio, Delegate=, a slice of the caller's choosing
  (slices.py chooses: one per caller cgroup), scopes (the broker cannot fork the caller's
  process) are refused in one line;
* limits are capped by the site policy file AND by the caller's own cgroup (under HTCondor: the
  slot's), so that leaving HTCondor's cgroup never means escaping the slot's limits: without
  --memory the job gets the caller's memory limit, with a larger one the smaller; the same for
  the CPU quota, the tasks limit and the CPUs;
* privileges the caller does not have are not handed out: rlimits at most the caller's hard
  limits, nice and oom_score_adj not below the caller's.

Every cap applied is returned as (key, text) so that the record and the journal can say it.
The policy file (TOML, root-owned): POLICY_FILE; every key and its default is in DEFAULTS and
in README ("The broker: policy").
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError
from ..htcondor import Mapping
from ..spec import (
    Inheritance,
    JobSpec,
    Limits,
    format_cpu_list,
    parse_cpu_list,
    parse_percent,
    parse_size,
)
from .peer import Caps

POLICY_FILE = "/etc/condor-systemd/broker.toml"
DEFAULT_EXECUTE_ROOT = "/var/lib/condor/execute"  # EXECUTE of Debian's and the RPMs' HTCondor
DEFAULTS: dict[str, dict[str, Any]] = {
    "broker": {
        "max_connections": 2048,     # open connections, all callers together
        "max_jobs_per_user": 256,    # running jobs per non-root uid
        "max_connections_per_user": 320,  # open connections per non-root uid
        "request_timeout": 10.0,     # seconds a new connection has to make its call
        "max_stop_timeout": 300.0,   # --stop-timeout ceiling for non-root callers
    },
    "limits": {  # ceilings for non-root callers' jobs ("" or absent: none)
        "memory_max": "",            # SIZE, e.g. "64G"
        "cpu_quota": "",             # percent of one CPU, e.g. "800%"
        "tasks_max": 0,              # 0: none
        # on the disk of the job's directory; also the default when a job asks none
        "io_read_bandwidth": "",     # bytes/s, e.g. "100M"
        "io_write_bandwidth": "",
        "io_read_iops": 0,           # 0: none
        "io_write_iops": 0,
        "cap_by_caller_cgroup": True,
    },
    "properties": {
        "allow": [],                 # more -p properties non-root callers may set
    },
    "sandbox": {
        "isolate": False,            # true: every non-root caller's job as with --isolate
        # where jobs' own directories live; --isolate hides the one a job's directory is under
        # and binds that directory back. []: HTCondor's EXECUTE (asked once at start), else
        # DEFAULT_EXECUTE_ROOT. A job elsewhere cannot be isolated through the broker.
        "execute_roots": [],
    },
    "htcondor": {  # the unit of a job under HTCondor, from its slot (htcondor.py)
        "memory_limit": "hard",      # the slot's Memory as MemoryMax; "soft": MemoryHigh; "none"
        "allow_swap": False,         # false: MemorySwapMax=0, as DISABLE_SWAP_FOR_JOB
        "cpu_quota": False,          # true: also CPUQuota = the slot's Cpus x 100 %
    },
}
# -p properties a non-root caller may set: limits (capped like the options), accounting, and
# sandboxing, which only takes rights away. Left out on purpose: SupplementaryGroups (grants
# groups), MemoryLow/MemoryMin (protection from other jobs' pressure), OOMPolicy.
ALLOWED = frozenset((
    "CPUQuota", "CPUWeight", "AllowedCPUs", "AllowedMemoryNodes", "MemoryMax", "MemoryHigh",
    "MemorySwapMax", "MemoryZSwapMax", "IOWeight", "TasksMax", "CPUAccounting",
    "MemoryAccounting", "IOAccounting", "TasksAccounting", "ManagedOOMMemoryPressure",
    "PrivateTmp", "PrivateUsers", "PrivateDevices", "PrivateNetwork", "PrivatePIDs",
    "ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectControlGroups",
    "ProtectProc", "NoNewPrivileges", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
    "Nice", "RuntimeMaxSec", "UMask",
    *(f"Limit{n}{soft}" for n in ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS",
                                  "NPROC", "MEMLOCK") for soft in ("", "Soft")),
))

# Every -p property a non-root caller may set has a rule here, as data, and the rule is what the
# broker does with it (apply() and the slices.py caller slice); tests/unit/test_policy.py fails
# when an allow-listed property has none. Kinds:
#   limit     a limit field (spec.Limits): capped by the policy and by the caller's cgroup
#   rlimit    at most the caller's own hard limit (from /proc/PID/limits)
#   nice      not below the caller's own nice
#   nodes     only memory nodes the caller's cgroup has (cpuset.mems.effective)
#   relative  a share among the caller's own jobs only: its slice carries the caller's weight
#   narrows   can only take rights or resources away from the job
CEILINGS: dict[str, tuple[str, str]] = {
    "CPUQuota": ("limit", "the policy's cpu_quota and the caller's cgroup's cpu.max"),
    "MemoryMax": ("limit", "the policy's memory_max and the caller's cgroup's memory.max"),
    "MemoryHigh": ("limit", "a throttle below MemoryMax, which is capped"),
    "MemorySwapMax": ("limit", "the caller's cgroup's memory.swap.max"),
    "AllowedCPUs": ("limit", "the CPUs of the caller's cgroup's cpuset"),
    "TasksMax": ("limit", "the policy's tasks_max and the caller's cgroup's pids.max"),
    "IOWeight": ("relative", "among the caller's own jobs, in its slice"),
    "CPUWeight": ("relative", "among the caller's own jobs; the slice has the caller's weight"),
    "AllowedMemoryNodes": ("nodes", "the memory nodes of the caller's cgroup's cpuset"),
    "MemoryZSwapMax": ("narrows", "zswap is charged to the job's memory, capped by MemoryMax"),
    "ManagedOOMMemoryPressure": ("narrows", "systemd-oomd may kill the job sooner"),
    "RuntimeMaxSec": ("narrows", "the job may only end sooner"),
    "UMask": ("narrows", "the permissions of the job's own files"),
    "Nice": ("nice", "not below the caller's own nice"),
    **{name: ("narrows", "accounting only") for name in (
        "CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting")},
    **{name: ("narrows", "sandboxing: takes rights away") for name in (
        "PrivateTmp", "PrivateUsers", "PrivateDevices", "PrivateNetwork", "PrivatePIDs",
        "ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectControlGroups",
        "NoNewPrivileges", "InaccessiblePaths", "ReadOnlyPaths", "ProtectProc")},
    "ReadWritePaths": ("narrows", "only undoes ProtectSystem= the job asked for; file "
                                  "permissions still hold (refused with --isolate)"),
    **{f"Limit{n}{soft}": ("rlimit", "at most the caller's own hard limit")
       for n in ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS", "NPROC", "MEMLOCK")
       for soft in ("", "Soft")},
}

# -p properties that, on an isolated job, could reach past its own directory: a path of the
# hidden execute root made read-write or read-only again (systemd drops the emptying tmpfs as
# a duplicate mount), or other processes shown in /proc.
UNDO_ISOLATION = frozenset(("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                            "ProtectProc"))


class Policy:
    def __init__(self, settings: dict[str, dict[str, Any]]) -> None:
        self.settings = settings
        broker, limits = settings["broker"], settings["limits"]
        self.max_connections = int(broker["max_connections"])
        self.max_jobs_per_user = int(broker["max_jobs_per_user"])
        self.max_connections_per_user = int(broker["max_connections_per_user"])
        self.request_timeout = float(broker["request_timeout"])
        self.max_stop_timeout = float(broker["max_stop_timeout"])
        self.memory_max = parse_size(limits["memory_max"]) if limits["memory_max"] else None
        self.cpu_quota = parse_percent(limits["cpu_quota"]) if limits["cpu_quota"] else None
        self.tasks_max = int(limits["tasks_max"]) or None
        self.io_caps = {key: (parse_size(limits[key]) if limits[key] else None)
                        for key in ("io_read_bandwidth", "io_write_bandwidth")}
        self.io_caps.update({key: int(limits[key]) or None
                             for key in ("io_read_iops", "io_write_iops")})
        self.cap_by_caller_cgroup = bool(limits["cap_by_caller_cgroup"])
        self.allowed = ALLOWED | frozenset(settings["properties"]["allow"])
        self.htcondor = Mapping.from_settings(settings["htcondor"])
        self.isolate = bool(settings["sandbox"]["isolate"])
        roots = settings["sandbox"]["execute_roots"]
        if not all(isinstance(r, str) and r.startswith("/") and os.path.normpath(r) == r
                   and r != "/" for r in roots):
            raise UsageError("[sandbox] execute_roots: absolute, normalised paths below /")
        self.execute_roots: tuple[str, ...] = tuple(roots)

    def with_htcondor_execute(self) -> Policy:
        """Without execute_roots in the file: HTCondor's EXECUTE, else the packages' default."""
        if not self.execute_roots:
            self.execute_roots = (htcondor_execute() or DEFAULT_EXECUTE_ROOT,)
        return self

    @classmethod
    def load(cls, path: str = POLICY_FILE) -> Policy:
        """The site's policy over DEFAULTS; a missing file is the defaults. Raises ValueError
        naming the key for anything it cannot use (the broker then refuses to start)."""
        settings = {section: dict(keys) for section, keys in DEFAULTS.items()}
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return cls(settings)
        try:
            import tomllib
        except ModuleNotFoundError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        for section, keys in data.items():
            if section not in DEFAULTS or not isinstance(keys, dict):
                raise ValueError(f"{path}: unknown section [{section}]")
            for key, value in keys.items():
                if key not in DEFAULTS[section]:
                    raise ValueError(f"{path}: unknown key {key} in [{section}]")
                if type(value) is not type(DEFAULTS[section][key]) and not (
                        isinstance(DEFAULTS[section][key], float) and type(value) is int):
                    raise ValueError(f"{path}: [{section}] {key} must be a "
                                     f"{type(DEFAULTS[section][key]).__name__}")
                settings[section][key] = value
        try:
            return cls(settings)
        except UsageError as exc:
            raise ValueError(f"{path}: {exc}") from None

    # -- one caller's job ------------------------------------------------------------------------
    def apply(self, spec: JobSpec, uid: int, gid: int, caps: Caps,
              inherit: Inheritance) -> tuple[JobSpec, list[tuple[str, str]]]:
        """The spec as a non-root caller may have it, and the caps applied (key, why)."""
        if spec.user is not None or spec.group is not None:
            raise UsageError("--uid/--gid need root")
        if spec.scope:
            raise UsageError("--scope is not available through the broker (a scope holds the "
                             "caller's own processes); run the job as a service")
        if spec.slice != "condor.slice":
            raise UsageError(f"--slice {spec.slice}: the broker chooses the slice of a caller's "
                             "jobs (one per caller cgroup, in condor.slice); --slice is root's")
        for name, _text in spec.properties:
            if name not in self.allowed:
                raise UsageError(f"-p {name} is not allowed for unprivileged callers (the "
                                 "broker's policy; see README)")
        capped: list[tuple[str, str]] = []
        limits = self._capped_limits(spec.limits, caps, capped)
        stop_timeout = spec.stop_timeout
        if stop_timeout > self.max_stop_timeout:
            capped.append(("stop_timeout", f"{stop_timeout:g} s capped to the policy's "
                                           f"{self.max_stop_timeout:g} s"))
            stop_timeout = self.max_stop_timeout
        properties = tuple(self._capped_property(name, text, inherit, caps, capped)
                           for name, text in spec.properties)
        sandbox = spec.sandbox
        if self.isolate and not sandbox.isolate:
            sandbox = sandbox._replace(isolate=True)
            capped.append(("isolate", "the broker's policy isolates every job"))
        if sandbox.isolate:
            for name, _text in spec.properties:
                if name in UNDO_ISOLATION:
                    raise UsageError(f"-p {name} is not allowed with --isolate through the "
                                     "broker: it would reach past the job's own directory")
        spec = spec._replace(user=str(uid), group=str(gid), limits=limits,
                             stop_timeout=stop_timeout, properties=properties, sandbox=sandbox)
        return spec, capped

    def _capped_limits(self, limits: Limits, caps: Caps, capped: list) -> Limits:
        by_cgroup = f"the caller's cgroup {caps.cgroup}"
        ceilings: dict[str, list[tuple[object, str]]] = {
            "memory_max": [(self.memory_max, "the broker's policy")],
            "cpu_quota_percent": [(self.cpu_quota, "the broker's policy")],
            "tasks_max": [(self.tasks_max, "the broker's policy")],
            **{key: [(cap, "the broker's policy")] for key, cap in self.io_caps.items()},
        }
        if self.cap_by_caller_cgroup:
            ceilings["memory_max"].append((caps.memory_max, by_cgroup))
            ceilings["cpu_quota_percent"].append((caps.cpu_quota_percent, by_cgroup))
            ceilings["tasks_max"].append((caps.tasks_max, by_cgroup))
            ceilings["swap_max"] = [(caps.swap_max, by_cgroup)]
        values = limits._asdict()
        for key, options in ceilings.items():
            for ceiling, why in options:
                if ceiling is None:
                    continue
                asked = values[key]
                if asked is None or asked > ceiling:
                    values[key] = ceiling
                    what = "none asked" if asked is None else f"asked {asked}"
                    capped.append((key, f"{what}, capped to {ceiling} by {why}"))
        if self.cap_by_caller_cgroup and caps.cpus is not None:
            asked_cpus = values["allowed_cpus"]
            if asked_cpus is not None:
                kept = tuple(c for c in asked_cpus if c in caps.cpus)
                if not kept:
                    raise UsageError(f"none of CPUs {format_cpu_list(asked_cpus)} is available "
                                     f"to the caller ({format_cpu_list(caps.cpus)})")
                if kept != asked_cpus:
                    values["allowed_cpus"] = kept
                    capped.append(("allowed_cpus", f"asked {format_cpu_list(asked_cpus)}, "
                                                   f"capped to {format_cpu_list(kept)} by "
                                                   f"{by_cgroup}"))
        return Limits(**values)

    def _capped_property(self, name: str, text: str, inherit: Inheritance, caps: Caps,
                         capped: list) -> tuple[str, str]:
        """-p values that would grant what the caller lacks: raised or lowered to its own."""
        if name == "AllowedMemoryNodes" and self.cap_by_caller_cgroup and caps.mems is not None:
            asked = parse_cpu_list(text)
            kept = tuple(n for n in asked if n in caps.mems)
            if not kept:
                raise UsageError(f"none of memory nodes {format_cpu_list(asked)} is available "
                                 f"to the caller ({format_cpu_list(caps.mems)})")
            if kept != asked:
                capped.append((name, f"asked {text}, capped to {format_cpu_list(kept)} by the "
                                     f"caller's cgroup {caps.cgroup}"))
                return name, format_cpu_list(kept)
        if name == "Nice" and inherit.nice is not None and int(text) < inherit.nice:
            capped.append((name, f"asked {text}, raised to the caller's own nice {inherit.nice}"))
            return name, str(inherit.nice)
        if name.startswith("Limit"):
            from ..backends.properties import TABLE

            rlimit = name[len("Limit"):].removesuffix("Soft")
            hard = inherit.hard_limit(rlimit)
            value = TABLE[name].parse(text)  # type: ignore[misc]
            if hard >= 0 and isinstance(value, int) and value > hard:
                capped.append((name, f"asked {text}, capped to the caller's hard limit {hard}"))
                return name, str(hard)
        return name, text


def htcondor_execute() -> str | None:
    """HTCondor's EXECUTE, as its own condor_config_val says (root's configuration)."""
    import shutil
    import subprocess

    tool = shutil.which("condor_config_val", path="/usr/bin:/usr/sbin:/bin:/sbin")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "EXECUTE"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    path = os.path.normpath(out.stdout.strip()) if out.returncode == 0 else ""
    return path if path.startswith("/") and path != "/" else None


def check_owner(path: str) -> None:
    """A policy file anybody but root could write is no policy: refuse it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise ValueError(f"{path} must be owned by root and writable by nobody else")
