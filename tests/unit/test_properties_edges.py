"""-p values at the edges of what systemd accepts: its boolean spellings, the ranges of counts,
umasks and rlimits, and what a D-Bus 't' (uint64) can carry. Found by the mutation check
(tests/mutation.sh): each test fails on a mutant that the rest of the suite let through."""

from __future__ import annotations

import pytest

from condor_systemd.backends.properties import TABLE, encode_text, parse_assignment
from condor_systemd.errors import UsageError

UINT64_MAX = 18446744073709551615  # D-Bus 't' is a uint64; systemd's "infinity"


def _sent(text: str) -> tuple[str, tuple[str, object]]:
    """What StartTransientUnit would carry for -p text."""
    return encode_text(*parse_assignment(text))


# systemd's parse_boolean() (src/basic/parse-util.c): "1", "yes", "y", "true", "t", "on" and
# "0", "no", "n", "false", "f", "off", the words compared without regard to case.
SYSTEMD_TRUE = ["1", "yes", "y", "true", "t", "on", "YES", "Y", "True", "T", "ON"]
SYSTEMD_FALSE = ["0", "no", "n", "false", "f", "off", "NO", "N", "False", "F", "OFF"]


@pytest.mark.parametrize("word", SYSTEMD_TRUE)
def test_every_systemd_spelling_of_true(word):
    assert _sent(f"PrivateTmp={word}") == ("PrivateTmp", ("b", True))
    assert _sent(f"PrivatePIDs={word}") == ("PrivatePIDs", ("s", "yes"))


@pytest.mark.parametrize("word", SYSTEMD_FALSE)
def test_every_systemd_spelling_of_false(word):
    assert _sent(f"PrivateTmp={word}") == ("PrivateTmp", ("b", False))
    assert _sent(f"PrivatePIDs={word}") == ("PrivatePIDs", ("s", "no"))


@pytest.mark.parametrize("word", ["2", "ye", "tru", "of", "nope", "-1", ""])
def test_what_systemd_does_not_call_a_boolean_is_refused(word):
    with pytest.raises(UsageError, match="is not a boolean"):
        parse_assignment(f"PrivateTmp={word}")


# TasksMax= (systemd.resource-control(5)): a positive count or "infinity"; systemd refuses 0.
@pytest.mark.parametrize(("value", "sent"), [("1", 1), ("512", 512), ("4096", 4096),
                                             ("4194304", 4194304)])  # PID_MAX_LIMIT
def test_tasks_max_counts(value, sent):
    assert _sent(f"TasksMax={value}") == ("TasksMax", ("t", sent))


# setrlimit(2) values: 0 is a real limit (LimitCORE=0: no core dumps), counts as large as
# nr_open (1048576 by default; up to 2**30), RLIM_INFINITY as "infinity".
@pytest.mark.parametrize(("text", "sent"), [
    ("LimitCORE=0", 0), ("LimitNOFILE=1048576", 1048576),
    ("LimitNOFILESoft=1073741816", 1073741816), ("LimitNPROC=4194304", 4194304)])
def test_rlimit_counts(text, sent):
    name = text.partition("=")[0]
    assert _sent(text) == (name, ("t", sent))


@pytest.mark.parametrize("text", [f"TasksMax={UINT64_MAX + 1}", f"LimitNOFILE={UINT64_MAX + 1}",
                                  f"LimitCORE={3 * UINT64_MAX}"])
def test_counts_a_uint64_cannot_carry_are_refused_up_front(text):
    """Refused when the option is read, naming the value, rather than failing to serialise when
    the unit is started."""
    name, _, value = text.partition("=")
    with pytest.raises(UsageError) as info:
        parse_assignment(text)
    assert str(info.value).startswith(f"-p {name}: ")
    assert f"'{value}'" in str(info.value)


# UMask= (systemd.exec(5)): an octal mode, 0000 to 0777; 0000 is a real umask.
@pytest.mark.parametrize(("text", "sent"), [("0", 0), ("0000", 0), ("0002", 2), ("0777", 511)])
def test_umask_takes_the_whole_octal_range(text, sent):
    assert _sent(f"UMask={text}") == ("UMask", ("u", sent))


def test_unknown_property_message_lists_exactly_what_p_accepts():
    with pytest.raises(UsageError) as info:
        parse_assignment("NoSuchProperty=1")
    message = str(info.value)
    listed = message.partition("(condor-systemd accepts: ")[2].removesuffix(")").split(", ")
    # a reader can take any name from the list and use it: -p knows it and may set it
    for name in listed:
        try:
            parse_assignment(f"{name}=1")
        except UsageError as exc:  # refused for its value, if at all: never for its name
            assert str(exc).startswith(f"-p {name}: ")
            assert "unknown property" not in str(exc)
            assert "not settable" not in str(exc)
    # README's -p examples and the limits the options map to are among them
    for name in ("MemoryMax", "CPUQuota", "AllowedCPUs", "IOWeight", "TasksMax", "PrivateTmp",
                 "ProtectSystem", "MemorySwapMax", "MemoryHigh"):
        assert name in listed
    assert len(listed) == len(set(listed)) == sum(1 for p in TABLE.values() if p.parse)


def test_swap_and_protection_take_zero():
    assert encode_text("MemorySwapMax", "0") == ("MemorySwapMax", ("t", 0))
    assert encode_text("MemoryLow", "0") == ("MemoryLow", ("t", 0))
    with pytest.raises(UsageError):
        encode_text("MemoryMax", "0")


@pytest.mark.parametrize("text", ["relative/dir", "/ok ./not", "-rel"])
def test_path_lists_are_absolute(text):
    """systemd.exec(5): ReadWritePaths= etc. take absolute paths ('-' prefix: may be missing);
    refused here, before anything starts, not by systemd at unit start."""
    with pytest.raises(UsageError, match="not an absolute path"):
        parse_assignment(f"ReadWritePaths={text}")
    assert parse_assignment("ReadWritePaths=-/opt/x /srv") == ("ReadWritePaths", "-/opt/x /srv")
