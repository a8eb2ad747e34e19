"""The pure parts of backends/child.py: which paths a private /tmp hides, user and group ids, and
the fork-pipe protocol at its edges (long, odd or truncated reports). Found by the mutation
check (tests/mutation.sh): each test fails on a mutant that the rest of the suite let through."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest

from condor_systemd.backends import child
from condor_systemd.errors import CommandNotExecutable, CommandNotFound, LaunchError
from tests.unit.test_child import _through_a_pipe

# -- what PrivateTmp= hides ------------------------------------------------------------------
# systemd.exec(5), PrivateTmp=: "sets up a new file system namespace for the executed processes
# and mounts private /tmp/ and /var/tmp/ directories inside it": exactly those two trees.


@pytest.mark.parametrize("path", ["/tmp", "/tmp/", "/tmp/job", "/tmp/a/b/c", "/var/tmp",
                                  "/var/tmp/x", "/tmp/../tmp/x", "//tmp/x"])
def test_paths_in_tmp_and_var_tmp_are_hidden(path):
    assert child.under_tmp(path) is True


@pytest.mark.parametrize("path", ["/", "/tmpx", "/tmp-old/job", "/var/tmpfs/x", "/var",
                                  "/var/lib/condor/execute/dir_1", "/usr/bin/true", "/home/tmp",
                                  "/TMP/x", "/tmp/../usr/bin"])
def test_other_paths_are_not(path):
    assert child.under_tmp(path) is False


def _outside_tmp() -> str:
    """A new directory that is not under /tmp or /var/tmp: in /dev/shm, else in the tree the
    tests run from."""
    for base in ("/dev/shm", os.getcwd()):
        real = os.path.realpath(base)
        if os.access(base, os.W_OK) and not real.startswith(("/tmp/", "/var/tmp/")):
            return tempfile.mkdtemp(prefix=".csd-test-", dir=base)
    raise AssertionError("no writable directory outside /tmp to test symlinks with")


def test_a_symlink_into_tmp_is_hidden_and_one_out_of_it_too(tmp_path):
    """Either the path as given or where it leads is enough: the job sees both through the
    same mount namespace."""
    outside = _outside_tmp()
    try:
        into = os.path.join(outside, "scratch")
        os.symlink(tmp_path, into)
        assert child.under_tmp(into) is True  # given outside, resolves into /tmp
        assert child.under_tmp(os.path.join(into, "job")) is True
        out_of = tmp_path / "usr"
        os.symlink("/usr", out_of)
        assert str(tmp_path).startswith("/tmp/") or str(tmp_path).startswith("/var/tmp/")
        assert child.under_tmp(str(out_of)) is True  # given in /tmp, resolves to /usr
        assert child.under_tmp(outside) is False
    finally:
        shutil.rmtree(outside)


def test_a_relative_path_counts_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir("/tmp")
    assert child.under_tmp("job") is True
    monkeypatch.chdir("/")
    assert child.under_tmp("job") is False
    assert child.under_tmp("tmp/job") is True


@pytest.mark.parametrize(("cwd", "executable", "hidden"), [
    ("/var/lib/condor/execute/dir_1", "/usr/bin/true", None),
    ("/tmp/job", "/usr/bin/true", "working directory"),
    ("/home/u", "/var/tmp/bin/job", "command"),
    ("/tmp/job", "/tmp/job/run", "working directory and command"),
])
def test_private_tmp_conflict_names_what_would_be_hidden(cwd, executable, hidden):
    reason = child.private_tmp_conflict(cwd, executable)
    if hidden is None:
        assert reason is None
    else:
        assert reason == f"the {hidden} under /tmp or /var/tmp would be hidden by it"


# -- user and group ids ----------------------------------------------------------------------
# As systemd's User=/Group=: a number is an id as it is, whether or not a name has it; a name
# is looked up. The superuser and its group are 0 (POSIX; every Linux /etc/passwd has root).


def test_ids_by_number_need_no_name():
    assert child.uid_of("0") == 0
    assert child.uid_of("4242") == 4242
    assert child.gid_of("4242") == 4242


def test_ids_by_name():
    assert child.uid_of("root") == 0
    assert child.gid_of("root") == 0


def test_unknown_names_are_refused():
    with pytest.raises(KeyError):
        child.uid_of("no-such-user-csd")
    with pytest.raises(KeyError):
        child.gid_of("no-such-group-csd")


# -- the fork-pipe protocol at its edges -----------------------------------------------------


def test_a_long_report_arrives_whole():
    # a working directory can be as long as PATH_MAX (4096): its stage names it
    cwd = "/scratch/" + "d" * 250 + "/" + "e" * 250 + "/" + "f" * 250
    failure = _through_a_pipe(f"working directory {cwd}",
                              FileNotFoundError(errno.ENOENT, "No such file or directory"))
    error = child.launch_error("./job", failure)
    assert type(error) is LaunchError
    assert str(error) == \
        f"could not start the job: working directory {cwd}: No such file or directory"


def test_an_exec_failure_that_is_not_an_oserror_is_not_about_the_command():
    # os.execve raises ValueError (no errno) for a NUL byte in an argument: not "not found",
    # not "permission denied"
    failure = _through_a_pipe(child.EXEC, ValueError("embedded null byte"))
    error = child.launch_error("./job", failure)
    assert type(error) is LaunchError
    assert str(error) == "could not start the job: exec: embedded null byte"


def test_an_oserror_without_errno_still_says_what_happened():
    failure = _through_a_pipe("user/group", OSError("setgroups refused"))
    assert str(child.launch_error("./job", failure)) == \
        "could not start the job: user/group: setgroups refused"


def test_an_exception_without_a_message_is_named_by_its_type():
    failure = _through_a_pipe("rlimits", RuntimeError())
    assert str(child.launch_error("./job", failure)) == \
        "could not start the job: rlimits: RuntimeError"


@pytest.mark.parametrize("failure", [
    b"exec",                     # cut off after the stage
    b"exec\0",                   # ... after the first separator
    b"exec\0\0Permission denied",  # no errno at all
    b"exec\0x2\0No such file",   # an errno that is not a number
    b"working directory /x\0" + str(errno.ENOENT).encode() + b"\0caf\xc3",  # a cut character
    b"\xff\xfe\0" + str(errno.ENOENT).encode() + b"\0\xe9t\xe9",  # not UTF-8 at all
])
def test_a_garbled_report_is_a_launch_error_not_a_crash(failure):
    """Whatever comes through the pipe, the parent reports a launch failure, and never claims
    "not found"/"not executable" without an errno that says so."""
    error = child.launch_error("./job", failure)
    assert type(error) is LaunchError
    assert str(error).startswith("could not start the job: ")
    assert "\n" not in str(error)


def test_an_exec_report_with_an_errno_still_decides_after_a_garbled_text():
    failure = b"exec\0" + str(errno.ENOENT).encode() + b"\0\xff"
    assert type(child.launch_error("./job", failure)) is CommandNotFound
    failure = b"exec\0" + str(errno.EACCES).encode() + b"\0\xff"
    assert type(child.launch_error("./job", failure)) is CommandNotExecutable
