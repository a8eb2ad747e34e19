"""bus.Connection against a real socket pair, with this test playing systemd on the other end.

What Connection sends is read with recvmsg() and unmarshalled here by hand, following the
D-Bus specification's "Message Protocol" section, so that a mistake in how we drive jeepney (or
in fd passing, which only a real socket exercises) cannot hide behind jeepney parsing its own
output. What the fake systemd sends back is built with jeepney: those tests are about how
Connection frames, matches, queues and filters what arrives, not about encoding.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from jeepney import DBusAddress, Message, new_error, new_method_return, new_signal

from condor_systemd.backends import bus
from condor_systemd.backends.bus import BusError, Connection
from condor_systemd.backends.properties import encode

# -- D-Bus unmarshalling, per the specification ------------------------------------------------

# alignment of each type code ("Marshaling (Wire Format)", the table of type codes)
ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
         "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}
FIXED = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d",
         "h": "I"}
# header field codes ("Header Fields")
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = \
    range(1, 10)
METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4


def complete_types(signature: str) -> list[str]:
    """Split a signature into its single complete types: 'sa(sv)u' -> ['s', 'a(sv)', 'u']."""
    def end(i: int) -> int:
        if signature[i] == "a":
            return end(i + 1)
        if signature[i] in "({":
            close = ")" if signature[i] == "(" else "}"
            i += 1
            while signature[i] != close:
                i = end(i)
        return i + 1

    out, i = [], 0
    while i < len(signature):
        j = end(i)
        out.append(signature[i:j])
        i = j
    return out


class WireReader:
    """Values as they lie on the wire: aligned to their own size from the message start,
    padding zero, strings NUL-terminated, arrays preceded by their length in bytes."""

    def __init__(self, data: bytes, little_endian: bool = True) -> None:
        self.data, self.pos = data, 0
        self.endian = "<" if little_endian else ">"

    def align(self, n: int) -> None:
        pad = -self.pos % n
        assert self.data[self.pos:self.pos + pad] == bytes(pad), f"non-zero padding at {self.pos}"
        self.pos += pad

    def _fixed(self, code: str) -> Any:
        size = struct.calcsize(code)
        (value,) = struct.unpack_from(self.endian + code, self.data, self.pos)
        self.pos += size
        return value

    def read(self, sig: str) -> Any:
        code = sig[0]
        self.align(ALIGN[code])
        if code in FIXED:
            return self._fixed(FIXED[code])
        if code == "b":
            value = self._fixed("I")
            assert value in (0, 1), f"boolean {value}"
            return bool(value)
        if code in "sog":
            length = self._fixed("B" if code == "g" else "I")
            text = self.data[self.pos:self.pos + length]
            assert self.data[self.pos + length] == 0, "string not NUL-terminated"
            self.pos += length + 1
            return text.decode("utf-8")
        if code == "v":
            inner = self.read("g")
            return (inner, self.read(inner))
        if code == "a":
            length = self._fixed("I")
            element = sig[1:]
            self.align(ALIGN[element[0]])  # even an empty array pads to its element
            end = self.pos + length
            if element == "y":
                self.pos = end
                return self.data[end - length:end]
            items = []
            while self.pos < end:
                items.append(self.read(element))
            assert self.pos == end, "array length does not match its elements"
            return items
        if code in "({":
            return tuple(self.read(t) for t in complete_types(sig[1:-1]))
        raise AssertionError(f"type code {code!r}")


class Wire:
    """One message as received: header fields by code, body decoded, and the fds that came."""

    def __init__(self, raw: bytes, fds: list[int]) -> None:
        self.raw, self.fds = raw, fds
        assert raw[:1] in (b"l", b"B"), raw[:1]
        reader = WireReader(raw, little_endian=raw[:1] == b"l")
        reader.pos = 1
        self.type, self.flags, self.version = reader.read("y"), reader.read("y"), reader.read("y")
        body_length, self.serial = reader.read("u"), reader.read("u")
        fields = reader.read("a(yv)")
        self.fields = {code: value for code, (_sig, value) in fields}
        self.field_types = {code: sig for code, (sig, _value) in fields}
        reader.align(8)  # the body starts on an 8-byte boundary
        assert len(raw) == reader.pos + body_length, "message length"
        self.body_bytes = raw[reader.pos:]
        body = WireReader(self.body_bytes, little_endian=raw[:1] == b"l")
        self.body = tuple(body.read(t) for t in complete_types(self.fields.get(SIGNATURE, "")))
        assert body.pos == body_length, "body longer than its signature"


def message_size(head: bytes) -> int:
    """Total length from the first 16 bytes: fixed header, fields array, padding, body."""
    endian = "<" if head[:1] == b"l" else ">"
    body_length, _serial, fields_length = struct.unpack(endian + "III", head[4:16])
    return 16 + fields_length + (-fields_length % 8) + body_length


# -- the fake systemd --------------------------------------------------------------------------


class Peer:
    """The far end of the socket pair: receives what Connection sends, answers from a script
    run in a thread (Connection blocks in its call meanwhile)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[Wire] = []
        self.error: BaseException | None = None
        self._buf = b""
        self._fds: list[int] = []
        self._thread: threading.Thread | None = None

    def receive(self) -> Wire:
        while len(self._buf) < 16 or len(self._buf) < message_size(self._buf):
            data, ancdata, flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            assert not flags & socket.MSG_CTRUNC, "ancillary data truncated"
            if not data:
                raise EOFError("Connection closed its end")
            for level, kind, payload in ancdata:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
            self._buf += data
        size = message_size(self._buf)
        raw, self._buf = self._buf[:size], self._buf[size:]
        wire = Wire(raw, self._fds)
        self._fds = []
        self.received.append(wire)
        return wire

    def send(self, *messages: Message | bytes, serial: int = 1000) -> None:
        """All in one write: Connection may well receive them in one recv()."""
        data = b"".join(m if isinstance(m, bytes) else m.serialise(serial=serial + i)
                        for i, m in enumerate(messages))
        self.sock.sendall(data)

    def run(self, script: Callable[[Peer], None]) -> None:
        def target() -> None:
            try:
                script(self)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.error = exc
                self.sock.shutdown(socket.SHUT_RDWR)  # the call under test fails at once

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(10)
        assert not self._thread.is_alive(), "the fake systemd is stuck"
        if self.error is not None:
            raise self.error


def parent(wire: Wire) -> Any:
    """What jeepney's reply builders (new_method_return, new_error) read from the call: its
    serial, as parsed here."""
    return SimpleNamespace(header=SimpleNamespace(serial=wire.serial, fields={}))


@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setattr(bus, "CALL_TIMEOUT", 5.0)  # a broken test fails in seconds, not minutes
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(ours, via_bus_daemon=False)
    peer = Peer(theirs)
    yield conn, peer
    if peer._thread is not None:
        peer.join()  # a failure in the fake systemd is reported even if the test missed it
    ours.close()
    theirs.close()
    for wire in peer.received:
        for fd in wire.fds:
            os.close(fd)


UNIT_PATH = "/org/freedesktop/systemd1/unit/condor_2djob_2d1_2e0_2eservice"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
MANAGER = DBusAddress("/org/freedesktop/systemd1", interface="org.freedesktop.systemd1.Manager")
JOB = "/org/freedesktop/systemd1/job/42"


def job_removed(job_id: int) -> Message:
    return new_signal(MANAGER, "JobRemoved", "uoss",
                      (job_id, f"/org/freedesktop/systemd1/job/{job_id}", "x.service", "done"))


def properties_changed(path: str, interface: str, state: str) -> Message:
    return new_signal(DBusAddress(path, interface="org.freedesktop.DBus.Properties"),
                      "PropertiesChanged", "sa{sv}as", (interface, {"ActiveState": ("s", state)},
                                                         []))


def unparseable(message: Message, marker: str) -> bytes:
    """The message with marker's bytes replaced by invalid UTF-8 of the same length: framing
    intact, but any attempt to parse the body fails."""
    raw = message.serialise(serial=999)
    assert raw.count(marker.encode()) == 1
    return raw.replace(marker.encode(), b"\xff" * len(marker))


# -- calls -------------------------------------------------------------------------------------


def test_call_passes_fds_with_scm_rights(pair, tmp_path):
    conn, peer = pair
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    log = open(tmp_path / "err", "wb")  # noqa: SIM115 - closed below
    props = [encode("Type", "exec"),
             encode("StandardInputFileDescriptor", stdin_r),
             encode("StandardOutputFileDescriptor", stdout_w),
             encode("StandardErrorFileDescriptor", log.fileno())]

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        peer.send(new_method_return(parent(call), "o", (JOB,)))

    peer.run(systemd)
    try:
        reply = conn.call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                  ("condor-job-1.0.service", "fail", props, []))
        peer.join()
        assert reply == (JOB,)
        (call,) = peer.received
        # the header, field by field
        assert (call.type, call.version, call.serial) == (METHOD_CALL, 1, 1)
        assert call.fields[PATH] == "/org/freedesktop/systemd1"
        assert call.fields[INTERFACE] == "org.freedesktop.systemd1.Manager"
        assert call.fields[MEMBER] == "StartTransientUnit"
        assert call.fields[DESTINATION] == "org.freedesktop.systemd1"
        assert call.fields[SIGNATURE] == "ssa(sv)a(sa(sv))"
        assert call.fields[UNIX_FDS] == 3
        assert call.field_types == {PATH: "o", INTERFACE: "s", MEMBER: "s", DESTINATION: "s",
                                    SIGNATURE: "g", UNIX_FDS: "u"}
        # the body: each 'h' is an index into the fds that came with the message, in order
        assert call.body == ("condor-job-1.0.service", "fail",
                             [("Type", ("s", "exec")),
                              ("StandardInputFileDescriptor", ("h", 0)),
                              ("StandardOutputFileDescriptor", ("h", 1)),
                              ("StandardErrorFileDescriptor", ("h", 2))], [])
        # the fds are new descriptors for the same open files
        assert len(call.fds) == 3
        for sent, got in zip((stdin_r, stdout_w, log.fileno()), call.fds):
            assert got != sent
            mine, theirs = os.fstat(sent), os.fstat(got)
            assert (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)
        os.write(call.fds[1], b"through systemd's copy")
        assert os.read(stdout_r, 100) == b"through systemd's copy"
        os.write(stdin_w, b"to the job")
        assert os.read(call.fds[0], 100) == b"to the job"
    finally:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            os.close(fd)
        log.close()


def test_call_without_fds_sends_no_ancillary_data(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        peer.send(new_method_return(parent(call), "a{sv}",
                                    ({"ActiveState": ("s", "active"), "MainPID": ("u", 1234)},)))

    peer.run(systemd)
    props = conn.get_all(UNIT_PATH, UNIT_IFACE)
    peer.join()
    assert props == {"ActiveState": "active", "MainPID": 1234}
    (call,) = peer.received
    assert call.fds == []
    assert UNIX_FDS not in call.fields
    assert call.fields[PATH] == UNIT_PATH
    assert call.fields[INTERFACE] == "org.freedesktop.DBus.Properties"
    assert call.fields[MEMBER] == "GetAll"
    assert call.fields[SIGNATURE] == "s"
    assert call.body == (UNIT_IFACE,)


def test_serials_count_up_and_replies_are_matched_by_reply_serial(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        first = peer.receive()
        peer.send(new_method_return(parent(first), "s", ("one",)))
        second = peer.receive()
        # a late reply to an earlier call, then the right one: only reply_serial decides
        peer.send(new_method_return(parent(first), "s", ("stale",)),
                  new_method_return(parent(second), "s", ("two",)))

    peer.run(systemd)
    assert conn.call_manager("GetDefaultTarget") == ("one",)
    assert conn.call_manager("GetDefaultTarget") == ("two",)
    peer.join()
    assert [w.serial for w in peer.received] == [1, 2]
    assert SIGNATURE not in peer.received[0].fields  # no arguments, no signature field


def test_error_reply_raises_bus_error(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        peer.send(new_error(parent(call), "org.freedesktop.systemd1.UnitExists", "s",
                            ("Unit condor-job-1.0.service was already loaded",)))

    peer.run(systemd)
    with pytest.raises(BusError) as info:
        conn.call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                          ("condor-job-1.0.service", "fail", [], []))
    peer.join()
    assert info.value.name == "org.freedesktop.systemd1.UnitExists"
    assert info.value.text == "Unit condor-job-1.0.service was already loaded"
    assert str(info.value) == ("org.freedesktop.systemd1.UnitExists: Unit condor-job-1.0.service "
                               "was already loaded")


def test_error_reply_without_a_message(pair):
    conn, peer = pair
    peer.run(lambda p: p.send(new_error(parent(p.receive()),
                                        "org.freedesktop.DBus.Error.AccessDenied")))
    with pytest.raises(BusError) as info:
        conn.call_manager("Subscribe")
    peer.join()
    assert (info.value.name, info.value.text) == ("org.freedesktop.DBus.Error.AccessDenied", "")


# -- signals -----------------------------------------------------------------------------------


def test_signals_before_the_reply_are_queued_in_order(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        # one write per message: each arrives on its own
        for message in (job_removed(1), properties_changed(UNIT_PATH, UNIT_IFACE, "active"),
                        job_removed(2)):
            peer.send(message)
            time.sleep(0.01)
        peer.send(new_method_return(parent(call), "o", (JOB,)))

    peer.run(systemd)
    assert conn.call_manager("StartUnit", "ss", ("x.service", "replace")) == (JOB,)
    peer.join()
    queued = conn.read_signals()
    assert [(m.header.fields[3], m.body[0]) for m in queued] == \
        [("JobRemoved", 1), ("PropertiesChanged", UNIT_IFACE), ("JobRemoved", 2)]
    assert conn.read_signals() == []  # handed out once


def test_keep_signals_drops_the_rest_unparsed(pair):
    conn, peer = pair
    conn.keep_signals({"JobRemoved"}, {(UNIT_PATH, UNIT_IFACE)})
    other_path = "/org/freedesktop/systemd1/unit/other_2eservice"

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        peer.send(
            # unwanted, with bodies nobody can parse: dropping them must not need the body
            unparseable(new_signal(MANAGER, "UnitNew", "so",
                                   ("BAD-UNIT-NAME", "/org/freedesktop/systemd1/unit/x")),
                        "BAD-UNIT-NAME"),
            unparseable(properties_changed(other_path, UNIT_IFACE, "BAD-STATE"), "BAD-STATE"),
            # the right path, another interface: read only up to the interface name
            unparseable(properties_changed(UNIT_PATH, "org.freedesktop.systemd1.Service",
                                           "BAD-STATE"), "BAD-STATE"),
            # wanted
            job_removed(7),
            properties_changed(UNIT_PATH, UNIT_IFACE, "deactivating"),
            new_method_return(parent(call), "o", (JOB,)),
            # after the reply, in the same write: left in the buffer for read_signals()
            unparseable(new_signal(MANAGER, "UnitRemoved", "so",
                                   ("BAD-UNIT-NAME", "/org/freedesktop/systemd1/unit/x")),
                        "BAD-UNIT-NAME"),
            job_removed(8))

    peer.run(systemd)
    assert conn.call_manager("StopUnit", "ss", ("x.service", "replace")) == (JOB,)
    peer.join()
    kept = conn.read_signals()
    assert [(m.header.fields[3], m.body[0]) for m in kept] == \
        [("JobRemoved", 7), ("PropertiesChanged", UNIT_IFACE), ("JobRemoved", 8)]
    assert kept[1].body[1] == {"ActiveState": ("s", "deactivating")}


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call(), failing (not hanging) if it does not return in time."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_read_signals_reads_without_blocking(pair):
    conn, peer = pair
    assert within(1, conn.read_signals) == []  # nothing there: returns at once
    peer.send(job_removed(3))
    deadline = time.monotonic() + 5
    got: list[Message] = []
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
        got = conn.read_signals()
    assert [m.body[0] for m in got] == [3]
    assert conn.fileno() == conn.sock.fileno()


# -- framing -----------------------------------------------------------------------------------


def test_reply_split_across_several_reads(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        raw = new_method_return(parent(call), "s", ("x" * 300,)).serialise(serial=5)
        # inside the 16 bytes that give the size, inside the header fields, inside the body
        for piece in (raw[:3], raw[3:20], raw[20:100], raw[100:]):
            peer.sock.sendall(piece)
            time.sleep(0.02)

    peer.run(systemd)
    assert conn.call_manager("Dump") == ("x" * 300,)
    peer.join()


def test_signal_and_reply_in_one_read(pair):
    conn, peer = pair
    peer.run(lambda p: p.send(job_removed(4),
                              new_method_return(parent(p.receive()), "s", ("done",))))
    assert conn.call_manager("Dump") == ("done",)
    peer.join()
    assert [m.body[0] for m in conn.read_signals()] == [4]


# -- failures ----------------------------------------------------------------------------------


def test_peer_closing_raises_bus_error_with_no_name(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        peer.receive()
        peer.sock.shutdown(socket.SHUT_RDWR)

    peer.run(systemd)
    with pytest.raises(BusError) as info:
        conn.call_manager("Reload")
    peer.join()
    assert info.value.name == ""
    assert info.value.text == "D-Bus connection failed: systemd closed the connection"


def test_peer_closing_mid_message(pair):
    conn, peer = pair

    def systemd(peer: Peer) -> None:
        call = peer.receive()
        raw = new_method_return(parent(call), "s", ("x",)).serialise(serial=5)
        peer.sock.sendall(raw[:20])
        peer.sock.shutdown(socket.SHUT_RDWR)

    peer.run(systemd)
    with pytest.raises(BusError) as info:
        conn.call_manager("Reload")
    peer.join()
    assert info.value.name == ""


def test_read_signals_after_the_peer_closed(pair):
    conn, peer = pair
    peer.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(BusError) as info:
        within(5, conn.read_signals)
    assert info.value.name == ""
    assert info.value.text == "D-Bus connection failed: systemd closed the connection"


def test_no_answer_within_call_timeout(pair, monkeypatch):
    conn, peer = pair
    monkeypatch.setattr(bus, "CALL_TIMEOUT", 0.5)
    peer.run(lambda p: p.receive())  # and never answers
    start = time.monotonic()
    with pytest.raises(BusError) as info:
        conn.call_manager("Reload")
    elapsed = time.monotonic() - start
    peer.join()
    assert info.value.name == ""
    assert "did not answer within" in info.value.text
    # the timeout, not some other wait (with room for a loaded machine)
    assert 0.5 <= elapsed < 1.5


def test_signals_do_not_extend_the_timeout(pair, monkeypatch):
    """CALL_TIMEOUT bounds the whole call: systemd broadcasts other units' signals all the
    time, and a call whose reply never comes must still give up."""
    conn, peer = pair
    monkeypatch.setattr(bus, "CALL_TIMEOUT", 0.5)
    stop = threading.Event()

    def systemd(peer: Peer) -> None:
        peer.receive()
        for i in range(40):  # a signal every 0.05 s for 2 s, never the reply
            if stop.wait(0.05):
                return
            peer.send(job_removed(i))

    peer.run(systemd)
    start = time.monotonic()
    with pytest.raises(BusError) as info:
        conn.call_manager("Reload")
    elapsed = time.monotonic() - start
    stop.set()
    peer.join()
    assert "did not answer within 0.5 s" in info.value.text
    assert 0.5 <= elapsed < 1.5  # a deadline per silence would wait the 2 s of signals
    assert len(conn.read_signals()) >= 3  # the signals that came meanwhile are kept
