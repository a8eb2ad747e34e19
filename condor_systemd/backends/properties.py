"""Transient unit properties as data: name -> D-Bus name, signature, text parser, minimum systemd.

``-p NAME=VALUE`` is validated against this table (names as systemd-run users know them, e.g.
``CPUQuota=150%``); properties condor-systemd manages itself (ExecStart, stdio, Slice, ...) are in
the table too, so their encodings are written down once, but are not settable with ``-p``.
``since`` is the systemd version whose manager first accepted the property on transient units:
a property newer than the running manager is not sent, and the usage record says so.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from ..errors import UsageError
from ..spec import parse_cpu_list, parse_int, parse_percent, parse_seconds, parse_size

USEC = 1_000_000
UINT64_MAX = 2**64 - 1


class Prop(NamedTuple):
    dbus_name: str
    signature: str
    parse: Callable[[str], object] | None  # None: managed by condor-systemd, not for -p
    since: int
    services_only: bool = False  # sandboxing needs a service; scopes cannot have it


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "y", "true", "t", "on"):
        return True
    if low in ("0", "no", "n", "false", "f", "off"):
        return False
    raise UsageError(f"'{text}' is not a boolean (yes/no)")


def _yes_no(text: str) -> str:
    """Booleans systemd carries as strings, to grow more values later (PrivatePIDs in 257)."""
    return "yes" if _bool(text) else "no"


def _size_or_infinity(text: str) -> int:
    return UINT64_MAX if text.strip() == "infinity" else parse_size(text)


def _size_zero_or_infinity(text: str) -> int:
    """Where 0 means something: MemorySwapMax=0 is no swap, MemoryLow=0 no protection."""
    return UINT64_MAX if text.strip() == "infinity" else parse_size(text, allow_zero=True)


def _count_or_infinity(text: str) -> int:
    return UINT64_MAX if text.strip() == "infinity" else parse_int(text, "value", 1, 2**63 - 1)


def _rlimit(text: str) -> int:
    """setrlimit values: 'infinity', a count (0 allowed: LimitCORE=0), or a size like 4G."""
    text = text.strip()
    if text == "infinity":
        return UINT64_MAX
    if text.isdigit():
        return parse_int(text, "limit", 0, 2**63 - 1)
    return parse_size(text)


def _weight(text: str) -> int:
    return parse_int(text, "weight", 1, 10000)


def _quota(text: str) -> int:
    return cpu_quota_usec(parse_percent(text))


def _usec(text: str) -> int:
    return int(parse_seconds(text) * USEC)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise UsageError(f"'{text}' is not one of {', '.join(allowed)}")
        return text
    return parse


def _octal(text: str, high: int) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise UsageError(f"'{text}' is not an octal number (e.g. 0022)") from None
    if not 0 <= value <= high:
        raise UsageError(f"'{text}' is out of range (0-{high:o})")
    return value


def _words(text: str) -> list[str]:
    return text.split()


def _paths(text: str) -> list[str]:
    """Absolute paths, as systemd requires (a leading '-' marks one that may be missing)."""
    paths = text.split()
    for path in paths:
        if not path.lstrip("-+").startswith("/") or "\0" in path:
            raise UsageError(f"'{path}' is not an absolute path")
    return paths


def cpu_quota_usec(percent: float) -> int:
    """CPUQuota=150% is sent as CPUQuotaPerSecUSec=1500000 (CPU time per second of wall time)."""
    return max(1, round(percent * USEC / 100))


def cpu_mask(cpus: tuple[int, ...]) -> bytes:
    """AllowedCPUs travels as a little-endian bitmask ('ay')."""
    mask = bytearray(max(cpus) // 8 + 1 if cpus else 0)
    for c in cpus:
        mask[c // 8] |= 1 << (c % 8)
    return bytes(mask)


def _allowed_cpus(text: str) -> bytes:
    return cpu_mask(parse_cpu_list(text))


TABLE: dict[str, Prop] = {
    # resource control (systemd.resource-control(5))
    "CPUQuota": Prop("CPUQuotaPerSecUSec", "t", _quota, 213),
    "CPUWeight": Prop("CPUWeight", "t", _weight, 230),
    "AllowedCPUs": Prop("AllowedCPUs", "ay", _allowed_cpus, 244),
    "AllowedMemoryNodes": Prop("AllowedMemoryNodes", "ay", _allowed_cpus, 244),
    "MemoryMax": Prop("MemoryMax", "t", _size_or_infinity, 231),
    "MemoryHigh": Prop("MemoryHigh", "t", _size_or_infinity, 231),
    "MemoryLow": Prop("MemoryLow", "t", _size_zero_or_infinity, 231),
    "MemoryMin": Prop("MemoryMin", "t", _size_zero_or_infinity, 240),
    "MemorySwapMax": Prop("MemorySwapMax", "t", _size_zero_or_infinity, 232),
    "MemoryZSwapMax": Prop("MemoryZSwapMax", "t", _size_zero_or_infinity, 253),
    "IOWeight": Prop("IOWeight", "t", _weight, 230),
    "TasksMax": Prop("TasksMax", "t", _count_or_infinity, 227),
    "CPUAccounting": Prop("CPUAccounting", "b", _bool, 208),
    "MemoryAccounting": Prop("MemoryAccounting", "b", _bool, 208),
    "IOAccounting": Prop("IOAccounting", "b", _bool, 230),
    "TasksAccounting": Prop("TasksAccounting", "b", _bool, 227),
    "OOMPolicy": Prop("OOMPolicy", "s", None, 243, services_only=True),
    # managed: the disk of the job's directory (blockdev.py), [(device node, value)]
    "IOReadBandwidthMax": Prop("IOReadBandwidthMax", "a(st)", None, 230),
    "IOWriteBandwidthMax": Prop("IOWriteBandwidthMax", "a(st)", None, 230),
    "IOReadIOPSMax": Prop("IOReadIOPSMax", "a(st)", None, 230),
    "IOWriteIOPSMax": Prop("IOWriteIOPSMax", "a(st)", None, 230),
    "DevicePolicy": Prop("DevicePolicy", "s", None, 208),  # managed: GPUs (devices.py)
    "DeviceAllow": Prop("DeviceAllow", "a(ss)", None, 208),
    "ManagedOOMMemoryPressure": Prop("ManagedOOMMemoryPressure", "s",
                                     _choice("auto", "kill"), 247),
    # sandboxing (systemd.exec(5)): services only
    "PrivateTmp": Prop("PrivateTmp", "b", _bool, 209, services_only=True),
    "PrivateUsers": Prop("PrivateUsers", "b", _bool, 232, services_only=True),
    "PrivateDevices": Prop("PrivateDevices", "b", _bool, 209, services_only=True),
    "PrivateNetwork": Prop("PrivateNetwork", "b", _bool, 209, services_only=True),
    "PrivatePIDs": Prop("PrivatePIDs", "s", _yes_no, 257, services_only=True),
    "ProtectSystem": Prop("ProtectSystem", "s", _choice("no", "yes", "full", "strict"), 232,
                          services_only=True),
    "ProtectHome": Prop("ProtectHome", "s", _choice("no", "yes", "read-only", "tmpfs"), 232,
                        services_only=True),
    "ProtectKernelTunables": Prop("ProtectKernelTunables", "b", _bool, 232, services_only=True),
    "ProtectControlGroups": Prop("ProtectControlGroups", "b", _bool, 232, services_only=True),
    "ProtectProc": Prop("ProtectProc", "s", _choice("noaccess", "invisible", "ptraceable",
                                                    "default"), 247, services_only=True),
    "NoNewPrivileges": Prop("NoNewPrivileges", "b", _bool, 232, services_only=True),
    "ReadWritePaths": Prop("ReadWritePaths", "as", _paths, 231, services_only=True),
    "ReadOnlyPaths": Prop("ReadOnlyPaths", "as", _paths, 231, services_only=True),
    "InaccessiblePaths": Prop("InaccessiblePaths", "as", _paths, 231, services_only=True),
    "Nice": Prop("Nice", "i", lambda t: parse_int(t, "nice value", -20, 19), 209,
                 services_only=True),
    "RuntimeMaxSec": Prop("RuntimeMaxUSec", "t", _usec, 229, services_only=True),
    "OOMScoreAdjust": Prop("OOMScoreAdjust", "i",
                           lambda t: parse_int(t, "OOM score adjustment", -1000, 1000), 209,
                           services_only=True),
    "CPUAffinity": Prop("CPUAffinity", "ay", _allowed_cpus, 243, services_only=True),
    "UMask": Prop("UMask", "u", lambda t: _octal(t, 0o777), 209, services_only=True),
    "SupplementaryGroups": Prop("SupplementaryGroups", "as", _words, 209, services_only=True),
    # managed by condor-systemd: never from -p
    "Description": Prop("Description", "s", None, 1),
    "Slice": Prop("Slice", "s", None, 1),
    "Type": Prop("Type", "s", None, 240, services_only=True),  # Type=exec since 240
    "ExecStart": Prop("ExecStart", "a(sasb)", None, 1, services_only=True),
    "WorkingDirectory": Prop("WorkingDirectory", "s", None, 1, services_only=True),
    "Environment": Prop("Environment", "as", None, 1, services_only=True),
    "EnvironmentFiles": Prop("EnvironmentFiles", "a(sb)", None, 1, services_only=True),
    "LogExtraFields": Prop("LogExtraFields", "aay", None, 236, services_only=True),
    "BindPaths": Prop("BindPaths", "a(ssbt)", None, 233, services_only=True),
    "TemporaryFileSystem": Prop("TemporaryFileSystem", "a(ss)", None, 238, services_only=True),
    "StandardInputFileDescriptor": Prop("StandardInputFileDescriptor", "h", None, 1,
                                        services_only=True),
    "StandardOutputFileDescriptor": Prop("StandardOutputFileDescriptor", "h", None, 1,
                                         services_only=True),
    "StandardErrorFileDescriptor": Prop("StandardErrorFileDescriptor", "h", None, 1,
                                        services_only=True),
    "User": Prop("User", "s", None, 1, services_only=True),
    "Group": Prop("Group", "s", None, 1, services_only=True),
    "ExecStopPost": Prop("ExecStopPost", "a(sasb)", None, 1, services_only=True),
    "IgnoreSIGPIPE": Prop("IgnoreSIGPIPE", "b", None, 1, services_only=True),
    "CollectMode": Prop("CollectMode", "s", None, 236),
    "KillMode": Prop("KillMode", "s", None, 1),
    "TimeoutStopSec": Prop("TimeoutStopUSec", "t", None, 1),
    "PIDs": Prop("PIDs", "au", None, 1),
}

# Resource limits (setrlimit): the job inherits the wrapper's, as it would without systemd.
for _name in ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS", "NPROC", "MEMLOCK"):
    TABLE[f"Limit{_name}"] = Prop(f"Limit{_name}", "t", _rlimit, 209, services_only=True)
    TABLE[f"Limit{_name}Soft"] = Prop(f"Limit{_name}Soft", "t", _rlimit, 209,
                                        services_only=True)

# Limits fields and the property each one becomes.
LIMIT_PROPERTY = {
    "cpu_quota_percent": "CPUQuota",
    "memory_max": "MemoryMax",
    "memory_high": "MemoryHigh",
    "swap_max": "MemorySwapMax",
    "allowed_cpus": "AllowedCPUs",
    "io_weight": "IOWeight",
    "tasks_max": "TasksMax",
}


def limit_properties(limits: object) -> list[tuple[str, tuple[str, object]]]:
    """The unit properties of the limits that are set (a Limits: spec.py)."""
    out = []
    for field, name in LIMIT_PROPERTY.items():
        value = getattr(limits, field)
        if value is None:
            continue
        if field == "cpu_quota_percent":
            value = cpu_quota_usec(value)
        elif field == "allowed_cpus":
            value = cpu_mask(value)
        out.append(encode(name, value))
    return out


# the limits on one block device: not -p settable (the device is the job directory's)
IO_DEVICE_PROPERTY = {
    "io_read_bandwidth": "IOReadBandwidthMax",
    "io_write_bandwidth": "IOWriteBandwidthMax",
    "io_read_iops": "IOReadIOPSMax",
    "io_write_iops": "IOWriteIOPSMax",
}
SANDBOX_PROPERTY = {
    "private_tmp": "PrivateTmp",
    "private_users": "PrivateUsers",
    "protect_system": "ProtectSystem",
}


def parse_assignment(text: str) -> tuple[str, str]:
    """Validate one ``-p NAME=VALUE``; returns (NAME, VALUE) with VALUE known to parse."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(f"-p '{text}' is not NAME=VALUE")
    prop = TABLE.get(name)
    if prop is None:
        raise UsageError(f"-p {name}: unknown property (condor-systemd accepts: "
                         f"{', '.join(n for n, p in TABLE.items() if p.parse)})")
    if prop.parse is None:
        raise UsageError(f"-p {name}: set by condor-systemd itself, not settable")
    try:
        prop.parse(value)
    except UsageError as exc:
        raise UsageError(f"-p {name}: {exc}") from None
    return name, value


def encode(name: str, value: object) -> tuple[str, tuple[str, object]]:
    """One (name, variant) entry of StartTransientUnit's a(sv), value already in D-Bus form."""
    prop = TABLE[name]
    return prop.dbus_name, (prop.signature, value)


def encode_text(name: str, text: str) -> tuple[str, tuple[str, object]]:
    prop = TABLE[name]
    assert prop.parse is not None
    return encode(name, prop.parse(text))


def name_for_dbus(dbus_name: str) -> str | None:
    for name, prop in TABLE.items():
        if prop.dbus_name == dbus_name:
            return name
    return None


def refused_by(error_text: str) -> str | None:
    """The property systemd's error names as one it cannot set, if any."""
    # systemd: "Cannot set property X, or unknown property." (org.freedesktop.DBus.Error.*)
    marker = "Cannot set property "
    if marker in error_text:
        return error_text.split(marker, 1)[1].split(",", 1)[0].strip()
    return None


def record_key(name: str) -> str:
    """The usage record's key for a property: a Limits/Sandbox field when it is one."""
    for table in (LIMIT_PROPERTY, IO_DEVICE_PROPERTY, SANDBOX_PROPERTY):
        for key, prop_name in table.items():
            if prop_name == name:
                return key
    return name
