"""The property table: -p validation, D-Bus encodings, and a wire-level round trip."""

from __future__ import annotations

import os

import pytest
from jeepney import HeaderFields, MessageType
from jeepney.low_level import Parser, parse_signature
from jeepney.wrappers import DBusAddress, new_method_call

from condor_systemd.backends.properties import (
    LIMIT_PROPERTY,
    SANDBOX_PROPERTY,
    TABLE,
    UINT64_MAX,
    cpu_mask,
    cpu_quota_usec,
    encode,
    encode_text,
    name_for_dbus,
    parse_assignment,
)
from condor_systemd.errors import UsageError

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


@pytest.mark.parametrize("text", ["ExecStart=/x", "Slice=a.slice", "Description=x", "User=root",
                                  "StandardInputFileDescriptor=0", "PIDs=1", "Type=simple"])
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


def test_every_unparsed_entry_is_refused():
    managed = [name for name, prop in TABLE.items() if prop.parse is None]
    assert "ExecStart" in managed and "Slice" in managed
    for name in managed:
        with pytest.raises(UsageError, match="not settable"):
            parse_assignment(f"{name}=x")


def test_every_parsed_entry_is_reachable():
    settable = [name for name, prop in TABLE.items() if prop.parse is not None]
    for name in settable:
        message = ""
        try:
            parse_assignment(f"{name}=")
        except UsageError as exc:
            message = str(exc)
        assert "unknown property" not in message
        assert "not settable" not in message


# -- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("CPUQuota", "150%", ("CPUQuotaPerSecUSec", ("t", 1500000))),
        ("CPUQuota", "100", ("CPUQuotaPerSecUSec", ("t", 1000000))),
        ("CPUQuota", "0.00001%", ("CPUQuotaPerSecUSec", ("t", 1))),
        ("AllowedCPUs", "0-3,8", ("AllowedCPUs", ("ay", b"\x0f\x01"))),
        ("AllowedCPUs", "0", ("AllowedCPUs", ("ay", b"\x01"))),
        ("AllowedMemoryNodes", "1", ("AllowedMemoryNodes", ("ay", b"\x02"))),
        ("MemoryMax", "infinity", ("MemoryMax", ("t", 2**64 - 1))),
        ("MemoryMax", " infinity ", ("MemoryMax", ("t", 2**64 - 1))),
        ("MemoryMax", "2G", ("MemoryMax", ("t", 2 * 1024**3))),
        ("MemorySwapMax", "0.5K", ("MemorySwapMax", ("t", 512))),
        ("TasksMax", "infinity", ("TasksMax", ("t", 2**64 - 1))),
        ("TasksMax", "100", ("TasksMax", ("t", 100))),
        ("IOWeight", "200", ("IOWeight", ("t", 200))),
        ("UMask", "0022", ("UMask", ("u", 0o22))),
        ("UMask", "777", ("UMask", ("u", 0o777))),
        ("RuntimeMaxSec", "1.5", ("RuntimeMaxUSec", ("t", 1500000))),
        ("RuntimeMaxSec", "0", ("RuntimeMaxUSec", ("t", 0))),
        ("PrivateTmp", "no", ("PrivateTmp", ("b", False))),
        ("PrivateTmp", "Yes", ("PrivateTmp", ("b", True))),
        ("NoNewPrivileges", "on", ("NoNewPrivileges", ("b", True))),
        ("CPUAccounting", "0", ("CPUAccounting", ("b", False))),
        ("PrivatePIDs", "true", ("PrivatePIDs", ("s", "yes"))),  # a string on D-Bus (257)
        ("PrivatePIDs", "off", ("PrivatePIDs", ("s", "no"))),
        ("Nice", "-5", ("Nice", ("i", -5))),
        ("ProtectHome", "read-only", ("ProtectHome", ("s", "read-only"))),
        ("ReadWritePaths", " /a  /b ", ("ReadWritePaths", ("as", ["/a", "/b"]))),
        ("LimitNOFILE", "4096", ("LimitNOFILE", ("t", 4096))),
        ("LimitCORESoft", "infinity", ("LimitCORESoft", ("t", 2**64 - 1))),
    ],
)
def test_encode_text(name, text, expected):
    assert encode_text(name, text) == expected


def test_encode_managed_values():
    assert encode("Description", "d") == ("Description", ("s", "d"))
    assert encode("TimeoutStopSec", 20_000_000) == ("TimeoutStopUSec", ("t", 20_000_000))
    assert encode("PIDs", [1, 2]) == ("PIDs", ("au", [1, 2]))


def test_uint64_max():
    assert UINT64_MAX == 18446744073709551615


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


def test_cpu_mask_bits_match_the_list():
    cpus = (1, 5, 9, 17, 100)
    mask = cpu_mask(cpus)
    bits = [i for i in range(len(mask) * 8) if mask[i // 8] >> (i % 8) & 1]
    assert tuple(bits) == cpus


# -- the table itself ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_signature_is_one_valid_type(name):
    sig = list(TABLE[name].signature)
    parse_signature(sig)  # raises on an invalid signature
    assert sig == [], f"{name}: signature {TABLE[name].signature!r} is more than one type"


def test_table_dbus_names_are_unique_and_map_back():
    dbus_names = [p.dbus_name for p in TABLE.values()]
    assert len(dbus_names) == len(set(dbus_names))
    for name, prop in TABLE.items():
        assert name_for_dbus(prop.dbus_name) == name
    assert name_for_dbus("NoSuchThing") is None


def test_limit_and_sandbox_properties_are_settable_table_entries():
    for prop_name in list(LIMIT_PROPERTY.values()) + list(SANDBOX_PROPERTY.values()):
        assert TABLE[prop_name].parse is not None


def test_rlimit_entries_exist():
    for rlimit in ("CPU", "FSIZE", "DATA", "STACK", "CORE", "NOFILE", "AS", "NPROC", "MEMLOCK"):
        for name in (f"Limit{rlimit}", f"Limit{rlimit}Soft"):
            assert TABLE[name].signature == "t"
            assert TABLE[name].services_only


def test_sandboxing_is_services_only():
    for name in ("PrivateTmp", "PrivateUsers", "ProtectSystem", "ExecStart", "ReadWritePaths"):
        assert TABLE[name].services_only
    for name in ("CPUQuota", "MemoryMax", "AllowedCPUs", "Slice", "Description", "PIDs"):
        assert not TABLE[name].services_only


# -- wire level ------------------------------------------------------------------------------


MANAGER = DBusAddress("/org/freedesktop/systemd1", "org.freedesktop.systemd1",
                      "org.freedesktop.systemd1.Manager")


def _round_trip(props, fds_in=None):
    body = ("condor-job-1.0.service", "fail", props, [])
    msg = new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", body)
    fds: list[int] = []
    data = msg.serialise(serial=1, fds=fds)
    parser = Parser()
    parser.add_data(data, fds=fds if fds_in is None else fds_in)
    parsed = parser.get_next_message()
    assert parsed is not None
    assert parser.get_next_message() is None
    return body, fds, parsed


def test_start_transient_unit_round_trip():
    props = [
        encode_text("CPUQuota", "150%"),
        encode_text("AllowedCPUs", "0-3,8"),
        encode_text("MemoryMax", "infinity"),
        encode_text("MemoryHigh", "1G"),
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
    body, fds, parsed = _round_trip(props)
    assert fds == []
    assert HeaderFields.unix_fds not in parsed.header.fields
    assert parsed.header.message_type == MessageType.method_call
    assert parsed.header.fields[HeaderFields.member] == "StartTransientUnit"
    assert parsed.header.fields[HeaderFields.signature] == "ssa(sv)a(sa(sv))"
    assert parsed.header.fields[HeaderFields.path] == "/org/freedesktop/systemd1"
    assert parsed.header.serial == 1
    assert parsed.body == body
    as_dict = dict(parsed.body[2])
    assert as_dict["CPUQuotaPerSecUSec"] == ("t", 1500000)
    assert as_dict["AllowedCPUs"] == ("ay", b"\x0f\x01")
    assert as_dict["MemoryMax"] == ("t", 2**64 - 1)
    assert as_dict["UMask"] == ("u", 0o22)


def test_start_transient_unit_round_trip_with_fd():
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        props = [encode("Type", "exec"),
                 encode("StandardInputFileDescriptor", fd),
                 encode_text("MemoryMax", "2G")]
        body, fds, parsed = _round_trip(props)
        assert fds == [fd]
        assert parsed.header.fields[HeaderFields.unix_fds] == 1
        assert parsed.body == body
        assert dict(parsed.body[2])["StandardInputFileDescriptor"] == ("h", fd)
    finally:
        os.close(fd)


def test_three_fds_are_indexed_in_order():
    opened = [os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) for _ in range(3)]
    try:
        props = [encode("StandardInputFileDescriptor", opened[0]),
                 encode("StandardOutputFileDescriptor", opened[1]),
                 encode("StandardErrorFileDescriptor", opened[2])]
        body, fds, parsed = _round_trip(props)
        assert fds == opened
        assert parsed.header.fields[HeaderFields.unix_fds] == 3
        assert parsed.body == body
    finally:
        for fd in opened:
            os.close(fd)


def test_out_of_range_uint64_cannot_be_serialised():
    # what the encoder must never produce: the wire format has no room for it
    msg = new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                          ("x.service", "fail", [encode("MemoryMax", 2**64)], []))
    with pytest.raises(Exception):  # noqa: B017 - jeepney raises struct.error
        msg.serialise(serial=1)


@pytest.mark.parametrize("text", ["MemoryMax=16777216T", "CPUQuota=1e20%"])
def test_parse_assignment_refuses_values_beyond_uint64(text):
    with pytest.raises(UsageError):
        parse_assignment(text)


def test_parse_assignment_accepts_zero_rlimit():
    assert parse_assignment("LimitCORE=0") == ("LimitCORE", "0")
