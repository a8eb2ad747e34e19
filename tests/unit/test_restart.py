"""What outlives a restart of the broker: sd_notify(3) messages as a real datagram socket
receives them, the state a job's entry keeps, and how entries passed back are sorted.
(That systemd keeps and returns them is proven in tests/broker/test_restart.py.)"""

from __future__ import annotations

import array
import os
import socket

import pytest

from condor_systemd.broker import fdstore, restart
from condor_systemd.spec import Inheritance, JobSpec, Limits, Sandbox
from condor_systemd.usage import NOT_SENT, Verdict


@pytest.fixture
def manager(tmp_path, monkeypatch):
    """A socket standing in for systemd's notify socket: what it receives is what was sent."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(fdstore, "_notify", None)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> tuple[str, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data.decode(), list(fds)


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def test_a_store_message_carries_its_name_and_the_fds_themselves(manager):
    left, right = socket.socketpair()
    memfd = os.memfd_create("state")
    try:
        assert fdstore.store("job-1", [left.fileno(), memfd])
        text, fds = receive(manager)
        assert text == "FDSTORE=1\nFDNAME=job-1"
        assert len(fds) == 2 and same_file(fds[0], left.fileno()) and same_file(fds[1], memfd)
        for fd in fds:
            os.close(fd)
        assert fdstore.remove("job-1")
        assert receive(manager) == ("FDSTOREREMOVE=1\nFDNAME=job-1", [])
    finally:
        left.close()
        right.close()
        os.close(memfd)


def test_the_abstract_namespace_is_reached_too(monkeypatch):
    name = f"csd-test-notify-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.setattr(fdstore, "_notify", None)
    try:
        assert fdstore.notify("READY=1")
        assert receive(sock) == ("READY=1", [])
    finally:
        sock.close()


@pytest.mark.parametrize("value", [None, "", "relative/path", "/nonexistent/notify"])
def test_without_a_manager_listening_nothing_is_sent_and_nothing_fails(monkeypatch, value):
    monkeypatch.setattr(fdstore, "_notify", None)
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert fdstore.notify("READY=1") is False


def test_a_kept_entry_replaces_itself_and_goes_when_dropped(manager):
    kept = restart.Kept.new()
    left, right = socket.socketpair()
    try:
        kept.save({"spec": {}, "phase": "starting"})
        kept.store(left.fileno())
        text, fds = receive(manager)
        assert text == f"FDSTORE=1\nFDNAME={kept.name}" and len(fds) == 2
        for fd in fds:
            os.close(fd)
        kept.store(None)  # the caller hung up: the state alone, under the same name
        assert receive(manager) == (f"FDSTOREREMOVE=1\nFDNAME={kept.name}", [])
        text, fds = receive(manager)
        assert text == f"FDSTORE=1\nFDNAME={kept.name}" and len(fds) == 1
        assert same_file(fds[0], kept.memfd)
        os.close(fds[0])
        kept.drop()
        assert receive(manager) == (f"FDSTOREREMOVE=1\nFDNAME={kept.name}", [])
        assert kept.memfd == -1
    finally:
        left.close()
        right.close()


def test_names_are_unique_and_valid_fd_names():
    names = set()
    for _ in range(50):
        kept = restart.Kept.new()
        names.add(kept.name)
        kept.drop()
        assert kept.name.startswith("job-") and ":" not in kept.name and len(kept.name) < 255
    assert len(names) == 50


SPEC = JobSpec(argv=("sh", "-c", "exit 3"), executable="/bin/sh", job_id="u1000-12.0",
               cwd="/var/lib/condor/execute/dir_1", environment={"A": "1"},
               limits=Limits(cpu_quota_percent=150.0, memory_max=2 << 30,
                             allowed_cpus=(0, 2, 3), tasks_max=100),
               sandbox=Sandbox(private_tmp=False, protect_system="strict"),
               slot="slot1_1", user="alice", group="alice", stop_timeout=7.5,
               properties=(("IOWeight", "50"),),
               inherit=Inheritance(umask=0o22, cpus=(0, 1)))


def test_the_spec_survives_a_trip_through_the_state_but_what_only_the_start_needed():
    kept = restart.Kept.new()
    kept.save({"spec": restart.spec_to_state(SPEC)})
    entry = restart.Entry(kept.name, None, kept.memfd)
    back = restart.spec_from_state(entry.state()["spec"])
    assert back == SPEC._replace(environment={}, inherit=None)
    assert back.unit_name == SPEC.unit_name and back.description == SPEC.description
    kept.drop()


def test_verdicts_survive_a_trip_through_the_state():
    verdicts = {"memory_max": Verdict("enforced"), "IOWeight": Verdict(NOT_SENT, "too old")}
    assert restart.verdicts_from_state(restart.verdicts_to_state(verdicts)) == verdicts


@pytest.mark.parametrize("content", [b"", b"garbage", b"[1, 2]", b'{"spec": "x"}', b"\xff\xfe"])
def test_a_state_that_cannot_be_read_back_is_a_value_error(content):
    memfd = os.memfd_create("state")
    os.write(memfd, content)
    with pytest.raises(ValueError):
        restart.Entry("job-x", None, memfd).state()
    os.close(memfd)


def test_an_oversized_state_is_refused_without_reading_it():
    memfd = os.memfd_create("state")
    os.ftruncate(memfd, restart.MAX_STATE + 1)
    with pytest.raises(ValueError, match="bytes"):
        restart.Entry("job-x", None, memfd).state()
    os.close(memfd)


def test_entries_passed_back_are_sorted_and_strays_set_aside(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    pairs = [socket.socketpair() for _ in range(2)]
    memfds = [os.memfd_create(f"m{i}") for i in range(4)]
    received = [("job-a", pairs[0][0].fileno()), ("job-a", memfds[0]),  # complete
                ("job-b", memfds[1]),  # its caller hung up: the state alone
                ("other", memfds[2]),  # not ours
                ("job-c", memfds[3]), ("job-c", pairs[1][0].fileno()),  # two sockets, one
                ("job-c", pairs[1][1].fileno())]  # state: not an entry we made
    found, stray = restart.entries(received)
    assert [(e.name, e.connection, e.memfd) for e in found] == [
        ("job-a", pairs[0][0].fileno(), memfds[0]), ("job-b", None, memfds[1])]
    assert sorted(stray) == sorted([memfds[2], memfds[3], pairs[1][0].fileno(),
                                    pairs[1][1].fileno()])
    for a, b in pairs:
        a.close()
        b.close()
    for fd in memfds:
        os.close(fd)


def test_a_listening_socket_is_told_from_a_connection(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen(1)
    left, right = socket.socketpair()
    memfd = os.memfd_create("state")
    try:
        assert fdstore.is_listener(listener.fileno())
        assert not fdstore.is_listener(left.fileno())
        assert not fdstore.is_listener(memfd)
    finally:
        for s in (listener, left, right):
            s.close()
        os.close(memfd)
