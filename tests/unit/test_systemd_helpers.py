"""The pure helpers of the systemd backend: object paths, argv and environment checks, errors."""

from __future__ import annotations

import pytest

from condor_systemd.backends.bus import BusError
from condor_systemd.backends.properties import record_key as _record_key
from condor_systemd.backends.properties import refused_by
from condor_systemd.backends.service import _valid_env_name, _valid_env_value, exec_argv
from condor_systemd.backends.systemd import map_bus_error as _map_bus_error
from condor_systemd.backends.unitjob import unit_object_path
from condor_systemd.errors import BackendUnavailable, LaunchError, UnitExists

PREFIX = "/org/freedesktop/systemd1/unit/"

# -- unit_object_path ------------------------------------------------------------------------


def test_unit_object_path_job():
    assert unit_object_path("condor-job-1.0.service") == \
        "/org/freedesktop/systemd1/unit/condor_2djob_2d1_2e0_2eservice"


def test_unit_object_path_scope():
    assert unit_object_path("condor-job-12.3.scope") == \
        PREFIX + "condor_2djob_2d12_2e3_2escope"


def test_unit_object_path_leading_digit_is_escaped():
    assert unit_object_path("1job.service") == PREFIX + "_31job_2eservice"
    assert unit_object_path("12.service") == PREFIX + "_312_2eservice"  # only the first digit


@pytest.mark.parametrize(
    ("unit", "encoded"),
    [
        ("a_b.slice", "a_5fb_2eslice"),
        ("a:b", "a_3ab"),
        ("AbZ09", "AbZ09"),
        ("é", "_c3_a9"),
        ("a b", "a_20b"),
    ],
)
def test_unit_object_path_escapes_bytes(unit, encoded):
    assert unit_object_path(unit) == PREFIX + encoded


def test_unit_object_path_is_a_valid_object_path_element():
    path = unit_object_path("condor-job-local-1-abc:x_y.service")
    element = path.removeprefix(PREFIX)
    assert element and all(c.isascii() and (c.isalnum() or c == "_") for c in element)


# -- exec_argv -------------------------------------------------------------------------------


def test_exec_argv_escapes_dollars():
    assert exec_argv(("echo", "$HOME", "a$$b", "${X}", "plain")) == \
        ["echo", "$$HOME", "a$$$$b", "$${X}", "plain"]


def test_exec_argv_returns_a_list_and_keeps_length():
    argv = ("/bin/sh", "-c", 'echo "$1"', "", "%n")
    out = exec_argv(argv)
    assert isinstance(out, list)
    assert out == ["/bin/sh", "-c", 'echo "$$1"', "", "%n"]


# -- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PATH", "_X", "A_1", "x", "_CONDOR_SCRATCH_DIR", "a1"])
def test_valid_env_name_accepts(name):
    assert _valid_env_name(name) is True


@pytest.mark.parametrize("name", ["BASH_FUNC_f%%", "1X", "", "A-B", "A=B", "A B", "é", "A.B",
                                  "9"])
def test_valid_env_name_refuses(name):
    assert _valid_env_name(name) is False


@pytest.mark.parametrize("value", ["", "plain", "a\tb", "line1\nline2", "é漢字", "~!@#$%^&*()"])
def test_valid_env_value_accepts(value):
    assert _valid_env_value(value) is True


@pytest.mark.parametrize("value", ["\x01", "a\x01b", "\udcff", "x\udcffy", "\x7f", "\x00", "\r",
                                   "\x1b[0m"])
def test_valid_env_value_refuses(value):
    assert _valid_env_value(value) is False


# -- D-Bus errors ----------------------------------------------------------------------------


def test_bus_error_fields():
    exc = BusError("org.freedesktop.DBus.Error.PropertyReadOnly", "some text")
    assert exc.name == "org.freedesktop.DBus.Error.PropertyReadOnly"
    assert exc.text == "some text"
    assert str(exc) == "org.freedesktop.DBus.Error.PropertyReadOnly: some text"
    assert str(BusError("", "I/O failed")) == "I/O failed"


def test_unknown_property():
    exc = BusError("org.freedesktop.DBus.Error.PropertyReadOnly",
                   "Cannot set property Foo, or unknown property.")
    assert refused_by(exc.text) == "Foo"


def test_unknown_property_other_error_names():
    exc = BusError("org.freedesktop.DBus.Error.InvalidArgs",
                   "Cannot set property MemoryZSwapMax, or unknown property.")
    assert refused_by(exc.text) == "MemoryZSwapMax"


@pytest.mark.parametrize("text", ["", "Unit condor-job-1.service already exists.",
                                  "Invalid argument"])
def test_unknown_property_none(text):
    assert refused_by(BusError("org.freedesktop.DBus.Error.InvalidArgs", text).text) is None


def test_map_bus_error():
    unit = "condor-job-12.3.service"
    exists = _map_bus_error(BusError("org.freedesktop.systemd1.UnitExists", "x"), unit)
    assert isinstance(exists, UnitExists)
    assert "'12.3'" in str(exists)
    denied = _map_bus_error(BusError("org.freedesktop.DBus.Error.AccessDenied", "no"), unit)
    assert isinstance(denied, BackendUnavailable)
    invalid = _map_bus_error(BusError("org.freedesktop.DBus.Error.InvalidArgs", "bad"), unit)
    assert type(invalid) is LaunchError
    assert str(invalid) == f"systemd refused the unit {unit}: bad"
    lost = _map_bus_error(BusError("", "closed"), unit)
    assert str(lost) == "lost the connection to systemd: closed"


# -- _record_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("MemoryMax", "memory_max"),
        ("MemoryHigh", "memory_high"),
        ("MemorySwapMax", "swap_max"),
        ("CPUQuota", "cpu_quota_percent"),
        ("AllowedCPUs", "allowed_cpus"),
        ("IOWeight", "io_weight"),
        ("TasksMax", "tasks_max"),
        ("PrivateTmp", "private_tmp"),
        ("PrivateUsers", "private_users"),
        ("ProtectSystem", "protect_system"),
        ("PrivatePIDs", "PrivatePIDs"),
        ("MemoryZSwapMax", "MemoryZSwapMax"),
    ],
)
def test_record_key(name, key):
    assert _record_key(name) == key
