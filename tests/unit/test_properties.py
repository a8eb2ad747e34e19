"""The property table against systemd: names and signatures as systemd documents them, values as
systemd reads them, and the bytes they become on the wire (per the D-Bus specification)."""

from __future__ import annotations

import struct

import pytest
from jeepney.wrappers import DBusAddress, new_method_call

from condor_systemd.backends.properties import (
    TABLE,
    cpu_mask,
    cpu_quota_usec,
    encode,
    encode_text,
    name_for_dbus,
    parse_assignment,
)
from condor_systemd.errors import UsageError
from tests.unit.test_bus import WireReader

INFINITY = 18446744073709551615  # UINT64_MAX: systemd's "infinity" for limits on the bus

# -- parse_assignment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MemoryMax=2G", ("MemoryMax", "2G")),
        ("CPUQuota=150%", ("CPUQuota", "150%")),
        ("PrivateTmp=no", ("PrivateTmp", "no")),
        ("MemoryHigh=infinity", ("MemoryHigh", "infinity")),
        ("AllowedCPUs=0-3,8", ("AllowedCPUs", "0-3,8")),
        ("ProtectSystem=strict", ("ProtectSystem", "strict")),
        ("Nice=-5", ("Nice", "-5")),
        ("ReadOnlyPaths=/a /b", ("ReadOnlyPaths", "/a /b")),
        ("UMask=0077", ("UMask", "0077")),
        ("TasksMax=infinity", ("TasksMax", "infinity")),
        ("LimitNOFILE=4096", ("LimitNOFILE", "4096")),
        (" MemoryMax =2G", ("MemoryMax", "2G")),
    ],
)
def test_parse_assignment_accepts(text, expected):
    assert parse_assignment(text) == expected


def test_parse_assignment_value_keeps_later_equals_signs():
    assert parse_assignment("ReadWritePaths=/a=b") == ("ReadWritePaths", "/a=b")


def _refused(text):
    with pytest.raises(UsageError) as info:
        parse_assignment(text)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text", ["Foo=1", "memorymax=2G", "CPUQuotaPerSecUSec=1000"])
def test_parse_assignment_unknown_name(text):
    name = text.partition("=")[0]
    message = _refused(text)
    assert message.startswith(f"-p {name}: unknown property")
    assert "MemoryMax" in message  # lists what is accepted
    assert "ExecStart" not in message  # but not the managed ones


# What condor-systemd sets itself: the command, its stdio, environment and identity, and the unit
# settings the job's lifecycle depends on (README: "-p" cannot override them).
MANAGED = ["ExecStart=/x", "ExecStopPost=/x", "Slice=a.slice", "Description=x", "Type=simple",
           "WorkingDirectory=/", "Environment=A=1", "User=root", "Group=root",
           "StandardInputFileDescriptor=0", "StandardOutputFileDescriptor=1",
           "StandardErrorFileDescriptor=2", "IgnoreSIGPIPE=yes", "CollectMode=inactive",
           "KillMode=process", "TimeoutStopSec=1", "OOMPolicy=continue", "PIDs=1"]


@pytest.mark.parametrize("text", MANAGED)
def test_parse_assignment_managed_name(text):
    name = text.partition("=")[0]
    assert _refused(text) == f"-p {name}: set by condor-systemd itself, not settable"


@pytest.mark.parametrize("text", ["MemoryMax", "", "=2G", " =2G"])
def test_parse_assignment_not_an_assignment(text):
    assert _refused(text) == f"-p '{text}' is not NAME=VALUE"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("MemoryMax=2X", "'2X' is not a size"),
        ("CPUQuota=0%", "must be more than zero"),
        ("PrivateTmp=maybe", "'maybe' is not a boolean"),
        ("IOWeight=0", "out of range (1-10000)"),
        ("CPUWeight=10001", "out of range (1-10000)"),
        ("AllowedCPUs=3-1", "runs backwards"),
        ("ProtectSystem=bogus", "'bogus' is not one of no, yes, full, strict"),
        ("Nice=20", "out of range (-20-19)"),
        ("UMask=0999", "not an octal number"),
        ("UMask=1000", "out of range (0-777)"),
        ("RuntimeMaxSec=-1", "must be zero or more"),
        ("TasksMax=0", "out of range"),
        ("ManagedOOMMemoryPressure=off", "not one of auto, kill"),
    ],
)
def test_parse_assignment_bad_value(text, fragment):
    name = text.partition("=")[0]
    message = _refused(text)
    assert message.startswith(f"-p {name}: ")
    assert fragment in message


@pytest.mark.parametrize("text", ["MemoryMax=16777216T", "CPUQuota=1e20%"])
def test_parse_assignment_refuses_values_beyond_uint64(text):
    with pytest.raises(UsageError):
        parse_assignment(text)


def test_parse_assignment_accepts_zero_rlimit():
    assert parse_assignment("LimitCORE=0") == ("LimitCORE", "0")


# -- names and signatures, as systemd documents them -----------------------------------------

# Every property condor-systemd sends -> (D-Bus name, signature). Written from
# org.freedesktop.systemd1(5) of systemd 252 (Debian 12's), its Service, Scope and Unit
# interfaces, and for what a transient unit takes that is not a readable property of that
# version, from systemd's own parsers of StartTransientUnit's properties (src/core/):
#   ExecStart, ExecStopPost  a(sasb)  dbus-execute.c bus_set_transient_exec_command enters
#                                     "(sasb)" (the readable property is a(sasbttttuii))
#   Standard*FileDescriptor  h        dbus-service.c bus_set_transient_std_fd reads "h"
#   PIDs                     au       dbus-scope.c enters 'a' "u"
#   PrivatePIDs              s        dbus-execute.c reads "s" ("yes"/"no"; systemd 257)
#   MemoryZSwapMax           t        dbus-cgroup.c SD_BUS_PROPERTY("MemoryZSwapMax", "t") (253)
#   LogExtraFields           aay      dbus-execute.c enters 'a' "ay" (a byte array per field)
# The -p name differs from the D-Bus name where systemd's does: CPUQuota= is sent as
# CPUQuotaPerSecUSec, RuntimeMaxSec= as RuntimeMaxUSec, TimeoutStopSec= as TimeoutStopUSec.
DOCUMENTED = {
    "CPUQuota": ("CPUQuotaPerSecUSec", "t"),
    "CPUWeight": ("CPUWeight", "t"),
    "AllowedCPUs": ("AllowedCPUs", "ay"),
    "AllowedMemoryNodes": ("AllowedMemoryNodes", "ay"),
    "MemoryMax": ("MemoryMax", "t"),
    "MemoryHigh": ("MemoryHigh", "t"),
    "MemoryLow": ("MemoryLow", "t"),
    "MemoryMin": ("MemoryMin", "t"),
    "MemorySwapMax": ("MemorySwapMax", "t"),
    "MemoryZSwapMax": ("MemoryZSwapMax", "t"),
    "IOWeight": ("IOWeight", "t"),
    "TasksMax": ("TasksMax", "t"),
    "CPUAccounting": ("CPUAccounting", "b"),
    "MemoryAccounting": ("MemoryAccounting", "b"),
    "IOAccounting": ("IOAccounting", "b"),
    "TasksAccounting": ("TasksAccounting", "b"),
    "OOMPolicy": ("OOMPolicy", "s"),
    "ManagedOOMMemoryPressure": ("ManagedOOMMemoryPressure", "s"),
    # dbus-cgroup.c: the IO*Max properties are "a(st)" (device path, value)
    "IOReadBandwidthMax": ("IOReadBandwidthMax", "a(st)"),
    "IOWriteBandwidthMax": ("IOWriteBandwidthMax", "a(st)"),
    "IOReadIOPSMax": ("IOReadIOPSMax", "a(st)"),
    "IOWriteIOPSMax": ("IOWriteIOPSMax", "a(st)"),
    # dbus-cgroup.c: SD_BUS_PROPERTY("DevicePolicy", "s", ...), ("DeviceAllow", "a(ss)", ...)
    "DevicePolicy": ("DevicePolicy", "s"),
    "DeviceAllow": ("DeviceAllow", "a(ss)"),
    "PrivateTmp": ("PrivateTmp", "b"),
    "PrivateUsers": ("PrivateUsers", "b"),
    "PrivateDevices": ("PrivateDevices", "b"),
    "PrivateNetwork": ("PrivateNetwork", "b"),
    "PrivatePIDs": ("PrivatePIDs", "s"),
    "ProtectSystem": ("ProtectSystem", "s"),
    "ProtectHome": ("ProtectHome", "s"),
    "ProtectKernelTunables": ("ProtectKernelTunables", "b"),
    "ProtectControlGroups": ("ProtectControlGroups", "b"),
    "ProtectProc": ("ProtectProc", "s"),
    "NoNewPrivileges": ("NoNewPrivileges", "b"),
    "ReadWritePaths": ("ReadWritePaths", "as"),
    "ReadOnlyPaths": ("ReadOnlyPaths", "as"),
    "InaccessiblePaths": ("InaccessiblePaths", "as"),
    "Nice": ("Nice", "i"),
    "RuntimeMaxSec": ("RuntimeMaxUSec", "t"),
    "OOMScoreAdjust": ("OOMScoreAdjust", "i"),
    "CPUAffinity": ("CPUAffinity", "ay"),
    "UMask": ("UMask", "u"),
    "SupplementaryGroups": ("SupplementaryGroups", "as"),
    "Description": ("Description", "s"),
    "Slice": ("Slice", "s"),
    "Type": ("Type", "s"),
    "ExecStart": ("ExecStart", "a(sasb)"),
    "WorkingDirectory": ("WorkingDirectory", "s"),
    "Environment": ("Environment", "as"),
    "EnvironmentFiles": ("EnvironmentFiles", "a(sb)"),
    "LogExtraFields": ("LogExtraFields", "aay"),
    "BindPaths": ("BindPaths", "a(ssbt)"),
    # dbus-execute.c: SD_BUS_PROPERTY("TemporaryFileSystem", "a(ss)", ...)
    "TemporaryFileSystem": ("TemporaryFileSystem", "a(ss)"),
    "StandardInputFileDescriptor": ("StandardInputFileDescriptor", "h"),
    "StandardOutputFileDescriptor": ("StandardOutputFileDescriptor", "h"),
    "StandardErrorFileDescriptor": ("StandardErrorFileDescriptor", "h"),
    "User": ("User", "s"),
    "Group": ("Group", "s"),
    "ExecStopPost": ("ExecStopPost", "a(sasb)"),
    "IgnoreSIGPIPE": ("IgnoreSIGPIPE", "b"),
    "CollectMode": ("CollectMode", "s"),
    "KillMode": ("KillMode", "s"),
    "TimeoutStopSec": ("TimeoutStopUSec", "t"),
    "PIDs": ("PIDs", "au"),
    # resource limits: hard and soft, each a 't' (RLIM_INFINITY as UINT64_MAX)
    "LimitCPU": ("LimitCPU", "t"), "LimitCPUSoft": ("LimitCPUSoft", "t"),
    "LimitFSIZE": ("LimitFSIZE", "t"), "LimitFSIZESoft": ("LimitFSIZESoft", "t"),
    "LimitDATA": ("LimitDATA", "t"), "LimitDATASoft": ("LimitDATASoft", "t"),
    "LimitSTACK": ("LimitSTACK", "t"), "LimitSTACKSoft": ("LimitSTACKSoft", "t"),
    "LimitCORE": ("LimitCORE", "t"), "LimitCORESoft": ("LimitCORESoft", "t"),
    "LimitNOFILE": ("LimitNOFILE", "t"), "LimitNOFILESoft": ("LimitNOFILESoft", "t"),
    "LimitAS": ("LimitAS", "t"), "LimitASSoft": ("LimitASSoft", "t"),
    "LimitNPROC": ("LimitNPROC", "t"), "LimitNPROCSoft": ("LimitNPROCSoft", "t"),
    "LimitMEMLOCK": ("LimitMEMLOCK", "t"), "LimitMEMLOCKSoft": ("LimitMEMLOCKSoft", "t"),
}

# What a scope accepts, of the above: the Scope interface's properties in
# org.freedesktop.systemd1(5) (cgroup and kill settings, RuntimeMaxUSec, OOMPolicy), the Unit
# interface's (Description, CollectMode), and PIDs (dbus-scope.c). Nothing of a service's exec
# context: no command, stdio, environment, identity, sandboxing or rlimits.
SCOPE_ACCEPTS = {
    "CPUQuotaPerSecUSec", "CPUWeight", "AllowedCPUs", "AllowedMemoryNodes", "MemoryMax",
    "MemoryHigh", "MemoryLow", "MemoryMin", "MemorySwapMax", "MemoryZSwapMax", "IOWeight",
    "TasksMax", "CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting",
    "ManagedOOMMemoryPressure", "OOMPolicy", "RuntimeMaxUSec", "Description", "Slice",
    "DevicePolicy", "DeviceAllow", "IOReadBandwidthMax", "IOWriteBandwidthMax", "IOReadIOPSMax",
    "IOWriteIOPSMax",
    "CollectMode", "KillMode", "TimeoutStopUSec", "PIDs",
}
# The Scope interface has these too, but the table sends them to services only (one `since`
# serves both unit types, and scopes gained them later than services): not sent to scopes is
# safe, so the test allows it.
SERVICES_ONLY_BY_CHOICE = {"OOMPolicy", "RuntimeMaxSec"}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_dbus_name_and_signature_are_systemds(name):
    dbus_name, (signature, _value) = encode(name, None)
    assert (dbus_name, signature) == DOCUMENTED[name]


def test_every_property_we_send_is_checked_above():
    assert sorted(TABLE) == sorted(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_what_scopes_cannot_take_is_not_sent_to_them(name):
    services_only = TABLE[name].services_only
    if DOCUMENTED[name][0] not in SCOPE_ACCEPTS:
        assert services_only, f"systemd refuses {name} on a scope: the scope would not start"
    elif name not in SERVICES_ONLY_BY_CHOICE:
        assert not services_only, f"{name} works on scopes: it must not be dropped there"


@pytest.mark.parametrize(
    ("dbus_name", "name"),
    [("CPUQuotaPerSecUSec", "CPUQuota"), ("RuntimeMaxUSec", "RuntimeMaxSec"),
     ("TimeoutStopUSec", "TimeoutStopSec"), ("MemoryMax", "MemoryMax"),
     ("LimitNOFILESoft", "LimitNOFILESoft"), ("NoSuchThing", None),
     ("CPUQuota", None)],  # the -p spelling is not a D-Bus name
)
def test_name_for_dbus(dbus_name, name):
    # systemd's errors name D-Bus properties; the record and log say the -p name
    assert name_for_dbus(dbus_name) == name


def test_dbus_names_are_unique():
    dbus_names = [p.dbus_name for p in TABLE.values()]
    assert len(dbus_names) == len(set(dbus_names))


# -- values, as systemd reads them -----------------------------------------------------------

RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS", "NPROC", "MEMLOCK")

# -p NAME=VALUE -> the (D-Bus name, (signature, value)) entry of StartTransientUnit's a(sv).
ENCODINGS = [
    # systemd-run: CPUQuota=P% is sent as P*100 (permyriad) * USEC_PER_SEC / 10000
    ("CPUQuota=150%", ("CPUQuotaPerSecUSec", ("t", 1500000))),
    ("CPUQuota=100", ("CPUQuotaPerSecUSec", ("t", 1000000))),
    ("CPUQuota=0.00001%", ("CPUQuotaPerSecUSec", ("t", 1))),  # never 0: that means no CPU
    ("CPUWeight=200", ("CPUWeight", ("t", 200))),
    # a little-endian bitmask: bit i of byte i // 8 is CPU 8 * (i // 8) + i % 8
    ("AllowedCPUs=0-3,8", ("AllowedCPUs", ("ay", b"\x0f\x01"))),
    ("AllowedCPUs=0", ("AllowedCPUs", ("ay", b"\x01"))),
    ("AllowedMemoryNodes=1", ("AllowedMemoryNodes", ("ay", b"\x02"))),
    ("MemoryMax=infinity", ("MemoryMax", ("t", INFINITY))),
    ("MemoryMax= infinity ", ("MemoryMax", ("t", INFINITY))),
    ("MemoryMax=2G", ("MemoryMax", ("t", 2147483648))),  # K/M/G are powers of 1024 in systemd
    ("MemoryHigh=infinity", ("MemoryHigh", ("t", INFINITY))),
    ("MemoryLow=512M", ("MemoryLow", ("t", 536870912))),
    ("MemoryMin=1K", ("MemoryMin", ("t", 1024))),
    ("MemorySwapMax=0.5K", ("MemorySwapMax", ("t", 512))),
    ("MemoryZSwapMax=1G", ("MemoryZSwapMax", ("t", 1073741824))),
    ("IOWeight=200", ("IOWeight", ("t", 200))),
    ("TasksMax=infinity", ("TasksMax", ("t", INFINITY))),
    ("TasksMax=100", ("TasksMax", ("t", 100))),
    ("CPUAccounting=0", ("CPUAccounting", ("b", False))),
    ("MemoryAccounting=yes", ("MemoryAccounting", ("b", True))),
    ("IOAccounting=on", ("IOAccounting", ("b", True))),
    ("TasksAccounting=false", ("TasksAccounting", ("b", False))),
    ("ManagedOOMMemoryPressure=kill", ("ManagedOOMMemoryPressure", ("s", "kill"))),
    ("PrivateTmp=no", ("PrivateTmp", ("b", False))),
    ("PrivateTmp=Yes", ("PrivateTmp", ("b", True))),
    ("PrivateUsers=1", ("PrivateUsers", ("b", True))),
    ("PrivateDevices=yes", ("PrivateDevices", ("b", True))),
    ("PrivateNetwork=off", ("PrivateNetwork", ("b", False))),
    # a string on the bus since 257, to grow more values than yes/no
    ("PrivatePIDs=true", ("PrivatePIDs", ("s", "yes"))),
    ("PrivatePIDs=off", ("PrivatePIDs", ("s", "no"))),
    ("ProtectSystem=strict", ("ProtectSystem", ("s", "strict"))),
    ("ProtectHome=read-only", ("ProtectHome", ("s", "read-only"))),
    ("ProtectKernelTunables=yes", ("ProtectKernelTunables", ("b", True))),
    ("ProtectControlGroups=y", ("ProtectControlGroups", ("b", True))),
    ("ProtectProc=invisible", ("ProtectProc", ("s", "invisible"))),
    ("NoNewPrivileges=on", ("NoNewPrivileges", ("b", True))),
    ("ReadWritePaths= /a  /b ", ("ReadWritePaths", ("as", ["/a", "/b"]))),
    ("ReadOnlyPaths=/usr", ("ReadOnlyPaths", ("as", ["/usr"]))),
    ("InaccessiblePaths=/root /home", ("InaccessiblePaths", ("as", ["/root", "/home"]))),
    ("Nice=-5", ("Nice", ("i", -5))),
    ("RuntimeMaxSec=1.5", ("RuntimeMaxUSec", ("t", 1500000))),
    ("RuntimeMaxSec=0", ("RuntimeMaxUSec", ("t", 0))),
    ("OOMScoreAdjust=800", ("OOMScoreAdjust", ("i", 800))),  # HTCondor's for its jobs
    ("CPUAffinity=0-1,3", ("CPUAffinity", ("ay", b"\x0b"))),  # CPUs 0, 1, 3: bits 0, 1, 3
    ("UMask=0022", ("UMask", ("u", 18))),
    ("UMask=777", ("UMask", ("u", 511))),
    ("SupplementaryGroups=video audio", ("SupplementaryGroups", ("as", ["video", "audio"]))),
    ("LimitNOFILE=4096", ("LimitNOFILE", ("t", 4096))),
    ("LimitCORE=0", ("LimitCORE", ("t", 0))),
    ("LimitAS=4G", ("LimitAS", ("t", 4294967296))),
    ("LimitCORESoft=infinity", ("LimitCORESoft", ("t", INFINITY))),
] + [(f"Limit{r}=1024", (f"Limit{r}", ("t", 1024))) for r in RLIMITS] \
  + [(f"Limit{r}Soft=infinity", (f"Limit{r}Soft", ("t", INFINITY))) for r in RLIMITS]


@pytest.mark.parametrize(("text", "expected"), ENCODINGS)
def test_encode_text(text, expected):
    name, value = parse_assignment(text)
    assert encode_text(name, value) == expected


def test_every_settable_property_has_an_encoding_above():
    covered = {text.partition("=")[0] for text, _ in ENCODINGS}
    assert covered == {name for name, prop in TABLE.items() if prop.parse is not None}


@pytest.mark.parametrize(
    ("percent", "usec"),
    [(150.0, 1_500_000), (100.0, 1_000_000), (0.5, 5_000), (12.34567, 123_457), (1e-9, 1)],
)
def test_cpu_quota_usec(percent, usec):
    assert cpu_quota_usec(percent) == usec


@pytest.mark.parametrize(
    ("cpus", "mask"),
    [
        ((), b""),
        ((0,), b"\x01"),
        ((7,), b"\x80"),
        ((8,), b"\x00\x01"),
        ((0, 1, 2, 3, 8), b"\x0f\x01"),
        (tuple(range(8)), b"\xff"),
        (tuple(range(16)), b"\xff\xff"),
        ((15,), b"\x00\x80"),
        ((63,), b"\x00" * 7 + b"\x80"),
        ((8191,), b"\x00" * 1023 + b"\x80"),
    ],
)
def test_cpu_mask(cpus, mask):
    assert cpu_mask(cpus) == mask


def test_cpu_mask_order_and_duplicates_do_not_matter():
    assert cpu_mask((8, 0, 3, 1, 2, 3)) == b"\x0f\x01"


def test_cpu_mask_read_as_systemd_reads_it():
    # src/shared/cpu-set-util.c cpu_set_from_dbus(): CPU i is set iff
    # bits[i / 8] & (1u << (i % 8))
    cpus = (1, 5, 9, 17, 100)
    mask = cpu_mask(cpus)
    assert tuple(i for i in range(len(mask) * 8) if mask[i // 8] & (1 << (i % 8))) == cpus


# -- on the wire -------------------------------------------------------------------------------

MANAGER = DBusAddress("/org/freedesktop/systemd1", "org.freedesktop.systemd1",
                      "org.freedesktop.systemd1.Manager")


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _properties_body(props: list) -> bytes:
    """The a(sv) body as bus.Connection sends it (it serialises with jeepney, little-endian)."""
    data = new_method_call(MANAGER, "SetUnitProperties", "a(sv)", (props,)).serialise(serial=1)
    (body_length,) = struct.unpack("<I", data[4:8])
    return data[len(data) - body_length:]


# One property each, laid out by hand per the D-Bus specification: an array is its length in
# bytes, then padding to its element's alignment (a struct: 8); a string is its u32 length, the
# bytes and a NUL; a variant is its signature (length byte, codes, NUL) then the value aligned
# to its own size; every offset counts from the start of the body (itself 8-aligned).
WIRE = [
    ("MemoryMax=infinity",
     _u32(32) + bytes(4)                      # array of 32 bytes, pad to 8
     + _u32(9) + b"MemoryMax\0"               # name
     + b"\x01t\0" + bytes(7)                  # variant 't', pad to 8
     + b"\xff\xff\xff\xff\xff\xff\xff\xff"),  # UINT64_MAX
    ("CPUQuota=150%",
     _u32(40) + bytes(4)
     + _u32(18) + b"CPUQuotaPerSecUSec\0"
     + b"\x01t\0" + bytes(6)
     + b"\x60\xe3\x16\x00\x00\x00\x00\x00"),  # 1500000, little-endian
    ("AllowedCPUs=0-3,8",
     _u32(26) + bytes(4)
     + _u32(11) + b"AllowedCPUs\0"
     + b"\x02ay\0"                            # variant 'ay'
     + _u32(2) + b"\x0f\x01"),                # two bytes: CPUs 0-3, then CPU 8
    ("UMask=0022",
     _u32(20) + bytes(4)
     + _u32(5) + b"UMask\0"
     + b"\x01u\0" + bytes(3)
     + b"\x12\x00\x00\x00"),                  # 0o022 = 18
    ("PrivatePIDs=yes",
     _u32(28) + bytes(4)
     + _u32(11) + b"PrivatePIDs\0"
     + b"\x01s\0" + bytes(1)
     + _u32(3) + b"yes\0"),
    ("PrivateTmp=yes",
     _u32(24) + bytes(4)
     + _u32(10) + b"PrivateTmp\0"
     + b"\x01b\0" + bytes(2)
     + b"\x01\x00\x00\x00"),                  # a boolean is a u32 0 or 1
    ("Nice=-5",
     _u32(16) + bytes(4)
     + _u32(4) + b"Nice\0"
     + b"\x01i\0"
     + b"\xfb\xff\xff\xff"),                  # -5, two's complement
]


@pytest.mark.parametrize(("text", "expected"), WIRE)
def test_bytes_on_the_wire(text, expected):
    name, value = parse_assignment(text)
    assert _properties_body([encode_text(name, value)]) == expected


def test_start_transient_unit_body_read_per_the_specification():
    props = [
        encode_text("CPUQuota", "150%"),
        encode_text("AllowedCPUs", "0-3,8"),
        encode_text("MemoryMax", "infinity"),
        encode_text("UMask", "0022"),
        encode_text("Nice", "-5"),
        encode_text("PrivateTmp", "yes"),
        encode_text("ReadWritePaths", "/a /b"),
        encode("Description", "HTCondor job 1.0: /bin/echo $HOME"),
        encode("ExecStart", [("/bin/echo", ["echo", "$$HOME"], False)]),
        encode("Environment", ["A=1", "B=x y"]),
        encode("PIDs", [1234, 5678]),
        encode("TimeoutStopSec", 20_000_000),
    ]
    body = ("condor-job-1.0.service", "fail", props, [])
    data = new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", body).serialise(
        serial=1)
    (body_length,) = struct.unpack("<I", data[4:8])
    reader = WireReader(data[len(data) - body_length:])
    assert reader.read("s") == "condor-job-1.0.service"
    assert reader.read("s") == "fail"
    assert reader.read("a(sv)") == [
        ("CPUQuotaPerSecUSec", ("t", 1500000)),
        ("AllowedCPUs", ("ay", b"\x0f\x01")),
        ("MemoryMax", ("t", INFINITY)),
        ("UMask", ("u", 18)),
        ("Nice", ("i", -5)),
        ("PrivateTmp", ("b", True)),
        ("ReadWritePaths", ("as", ["/a", "/b"])),
        ("Description", ("s", "HTCondor job 1.0: /bin/echo $HOME")),
        ("ExecStart", ("a(sasb)", [("/bin/echo", ["echo", "$$HOME"], False)])),
        ("Environment", ("as", ["A=1", "B=x y"])),
        ("PIDs", ("au", [1234, 5678])),
        ("TimeoutStopUSec", ("t", 20000000)),
    ]
    assert reader.read("a(sa(sv))") == []
    assert reader.pos == body_length
