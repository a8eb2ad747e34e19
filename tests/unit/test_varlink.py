"""The varlink framing the broker and its client share (condor_systemd.varlink), on real AF_UNIX
socketpairs where the kernel's part matters (fd passing, reads that split or glue frames), with
the hostile input every local user can send the broker. Every test also checks, through the
autouse fixture, that no fd is left open: a rejected message must close what came with it."""

from __future__ import annotations

import array
import fcntl
import gc
import json
import os
import random
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import tracemalloc

import pytest

from condor_systemd import varlink
from condor_systemd.broker import interface
from condor_systemd.varlink import MAX_DEPTH, MAX_FDS, MAX_MESSAGE, ProtocolError, Reader

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the Python 3.9 CI tier installs no hypothesis: a seeded fuzz runs instead
    given = None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak():
    """No fd the test opened is left open. (An fd of an earlier test that the garbage collector
    closes meanwhile is not this test's leak: collect first, and count only new fds.)"""
    gc.collect()
    before = _open_fds()
    yield
    gc.collect()
    assert _open_fds() - before == set(), "fds left open"


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (a, b):
        sock.settimeout(30)  # a test that would hang fails instead
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        os.close(fd)


def _rights(fds) -> list:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _close(fds) -> None:
    for fd in fds:
        os.close(fd)


def _receive(sock, reader, count=1):
    """The next `count` messages, reading as often as it takes."""
    got = []
    while len(got) < count:
        item = reader.next()
        if item is not None:
            got.append(item)
        elif not varlink.recv_into(sock, reader):
            raise EOFError
    return got


def _frame_of_size(size: int) -> bytes:
    head = b'{"method":"io.example.Pad","parameters":{"pad":"'
    return head + b"x" * (size - len(head) - 4) + b'"}}\0'


CALL = {"method": "io.condor.Broker.Run", "parameters": {"argv": ["./job", "é"], "stdio": [0, 1]}}


# --- encoding -------------------------------------------------------------------------------

def test_encode_is_compact_utf8_with_one_nul_at_the_end():
    assert varlink.encode({"a": "é\0", "b": [1, 2.5, None, True]}) == (
        '{"a":"é\\u0000","b":[1,2.5,null,true]}'.encode() + b"\0")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "\ud800"])
def test_encode_refuses_what_json_or_utf8_cannot_carry(value):
    with pytest.raises(ValueError):
        varlink.encode({"a": value})


def test_encode_allows_exactly_max_message_bytes():
    frame = _frame_of_size(MAX_MESSAGE)
    message = json.loads(frame[:-1])
    assert varlink.encode(message) == frame
    message["parameters"]["pad"] += "x"
    with pytest.raises(ValueError, match="MAX_MESSAGE"):
        varlink.encode(message)


# --- round trips on real sockets ------------------------------------------------------------

def test_fds_arrive_with_their_message_and_are_the_same_open_files(pair, pipe, tmp_path):
    a, b = pair
    r, w = pipe
    with open(tmp_path / "f", "w") as f:
        sent = [r, w, f.fileno()]
        varlink.send(a, CALL, sent)
        reader = Reader()
        [(message, fds)] = _receive(b, reader)
        try:
            assert message == CALL
            assert len(fds) == 3
            assert not any(os.get_inheritable(fd) for fd in fds)  # no leak into children
            for mine, theirs in zip(sent, fds):
                st_mine, st_theirs = os.fstat(mine), os.fstat(theirs)
                assert (st_mine.st_dev, st_mine.st_ino) == (st_theirs.st_dev, st_theirs.st_ino)
            os.write(fds[1], b"through the received end")
            assert os.read(r, 100) == b"through the received end"
        finally:
            _close(fds)
            reader.close()


def test_send_puts_the_whole_frame_and_its_fds_in_one_sendmsg(pair, pipe):
    # the kernel ends a read after the skb that carried fds: one sendmsg, one read
    a, b = pair
    frame = varlink.encode(CALL)
    varlink.send(a, CALL, [pipe[0]])
    data, ancillary, _, _ = b.recvmsg(65536, socket.CMSG_SPACE(64))
    fds = array.array("i", ancillary[0][2])
    _close(fds)
    assert (data, len(fds)) == (frame, 1)


def test_a_frame_split_into_single_bytes_comes_out_whole_with_the_fds_of_its_first_byte(
        pair, pipe):
    a, b = pair
    frame = varlink.encode(CALL)
    reader = Reader()
    a.sendmsg([frame[:1]], _rights([pipe[1]]))
    for i in range(1, len(frame)):
        assert varlink.recv_into(b, reader)
        assert reader.next() is None
        a.send(frame[i:i + 1])
    [(message, fds)] = _receive(b, reader)
    assert message == CALL
    assert len(fds) == 1 and not _closed(fds[0])
    _close(fds)


def test_several_frames_in_one_read(pair):
    a, b = pair
    messages = [varlink.reply({"n": n}, continues=n < 2) for n in range(3)]
    a.sendall(b"".join(varlink.encode(m) for m in messages))
    reader = Reader()
    assert varlink.recv_into(b, reader)
    assert [reader.next() for _ in range(4)] == [(m, []) for m in messages] + [None]


def _write_in_background(sock, data: bytes) -> threading.Thread:
    def write():
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    thread = threading.Thread(target=write)
    thread.start()
    return thread


def _wait_until_queued(sock, size: int) -> None:
    for _ in range(10000):
        if struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0] >= size:
            return
        time.sleep(0.001)
    raise AssertionError(f"{size} bytes never queued")


def _drain(sock) -> int:
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total


def test_a_message_of_exactly_max_message_bytes_passes(pair):
    a, b = pair
    frame = _frame_of_size(MAX_MESSAGE)
    writer = _write_in_background(a, frame)
    [(message, fds)] = _receive(b, Reader())
    writer.join()
    assert varlink.encode(message) == frame and fds == []


@pytest.mark.parametrize("data", [_frame_of_size(MAX_MESSAGE + 1), b"x" * (2 * MAX_MESSAGE)],
                         ids=["one byte over", "no NUL at all"])
def test_a_longer_message_is_refused_without_reading_past_the_limit(pair, data):
    a, b = pair
    first = varlink.encode(CALL)  # so that reads of a fixed size would not end on the limit
    writer = _write_in_background(a, first + data)
    _wait_until_queued(b, 150000)  # full-sized reads from here on
    reader = Reader()
    got = []
    with pytest.raises(ProtocolError, match="longer than"):
        while varlink.recv_into(b, reader):
            got += iter(reader.next, None)
    unread = _drain(b)
    writer.join()
    assert got == [(CALL, [])]
    assert len(data) - unread <= MAX_MESSAGE
    assert reader.buffered == 0


def test_more_fds_than_the_control_buffer_holds_are_all_closed(pair, pipe):
    a, b = pair
    many = [os.dup(pipe[0]) for _ in range(MAX_FDS + 8)]  # beyond the buffer's alignment slack
    a.sendmsg([varlink.encode(CALL)], _rights(many))
    _close(many)
    reader = Reader()
    with pytest.raises(ProtocolError, match="truncated"):
        varlink.recv_into(b, reader)
    with pytest.raises(ProtocolError):
        reader.next()


def test_one_fd_too_many_is_refused_and_closed(pair, pipe):
    a, b = pair
    a.sendmsg([varlink.encode(CALL)], _rights([pipe[0]] * (MAX_FDS + 1)))
    with pytest.raises(ProtocolError, match=f"{MAX_FDS + 1} fds"):
        varlink.recv_into(b, Reader())


def test_fds_arriving_in_the_middle_of_a_frame_are_refused_and_closed(pair, pipe):
    a, b = pair
    frame = varlink.encode(CALL)
    reader = Reader()
    a.sendmsg([frame[:10]], _rights([pipe[0]]))
    assert varlink.recv_into(b, reader)
    a.sendmsg([frame[10:]], _rights([pipe[1]]))
    with pytest.raises(ProtocolError, match="middle of a message"):
        varlink.recv_into(b, reader)


def test_fds_are_never_given_to_an_unread_message_sent_before_theirs(pair, pipe):
    # the kernel glues the unread first message to the read that brings the second one's fds
    a, b = pair
    first, second = varlink.reply({"n": 1}), varlink.reply({"n": 2})
    a.send(varlink.encode(first))
    a.sendmsg([varlink.encode(second)], _rights([pipe[0]]))
    reader = Reader()
    try:
        got = _receive(b, reader, 2)
    except ProtocolError as exc:
        assert "two messages" in str(exc)
    else:
        assert got[0] == (first, [])
        _close(got[1][1])
        assert len(got[1][1]) == 1


def test_feed_accepts_fds_only_with_the_start_of_exactly_one_message(pipe):
    reader = Reader()
    fd = os.dup(pipe[0])
    reader.feed(b'{"a":', [fd])
    reader.feed(b"1}\0")
    assert reader.next() == ({"a": 1}, [fd])
    os.close(fd)
    for chunk in (b"{}\0{}\0", b"{}\0{", b""):
        fd = os.dup(pipe[0])
        with pytest.raises(ProtocolError, match="fds"):
            Reader().feed(chunk, [fd])
        assert _closed(fd)


def test_a_reader_holds_no_more_than_max_message_bytes_of_unread_messages():
    reader = Reader()
    frame = b"{}\0"
    for _ in range(MAX_MESSAGE // len(frame)):
        reader.feed(frame)
    assert reader.buffered <= MAX_MESSAGE
    with pytest.raises(ProtocolError, match="runs ahead"):
        reader.feed(frame)


def test_a_full_reader_refuses_the_next_read_instead_of_reading_on(pair):
    a, b = pair
    reader = Reader()
    writer = _write_in_background(a, b"{}\0" * (MAX_MESSAGE // 3 + 10))
    with pytest.raises(ProtocolError, match="runs ahead"):
        while varlink.recv_into(b, reader):
            pass
    _drain(b)
    writer.join()
    assert reader.buffered == 0


# --- hostile content ------------------------------------------------------------------------

GARBAGE = [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a":"\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded as UTF-8
    (b"hello", "invalid JSON"),
    (b"{}{}", "invalid JSON"),
    (b"", "invalid JSON"),
    (b"{} x", "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (b'{"a":NaN}', "NaN is not JSON"),
    (b'{"a":-Infinity}', "-Infinity is not JSON"),
    (b'{"a":1e999}', "out of range"),
    (b'{"a":1,"a":2}', "duplicate key"),
    (b'{"a":{"b":1,"b":1}}', "duplicate key"),
    (b'{"a":"\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"\\uDC00":1}', "lone UTF-16 surrogate"),
    (b'{"a":["\\ud83d"]}', "lone UTF-16 surrogate"),
    (b'{"a":18446744073709551616}', "outside 64 bits"),
    (b'{"a":-9223372036854775809}', "outside 64 bits"),
    (b'{"a":' + b"1" * 5000 + b"}", "outside 64 bits"),
    (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nested deeper"),
    (b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", "nested deeper"),
    (b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", "nested deeper"),
    (b'{"a":' + b"[" * 100000, "nested deeper"),
]


@pytest.mark.parametrize(("payload", "reason"), GARBAGE, ids=[r for _, r in GARBAGE])
def test_garbage_is_a_one_line_protocol_error_and_closes_the_fds_that_came_with_it(
        pipe, payload, reason):
    reader = Reader()
    fd = os.dup(pipe[0])
    reader.feed(payload + b"\0", [fd])
    with pytest.raises(ProtocolError, match=reason) as raised:
        reader.next()
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is None  # and no chained traceback (RecursionError...):
    assert raised.value.__context__ is None or raised.value.__suppress_context__
    assert _closed(fd)
    with pytest.raises(ProtocolError, match=reason):  # the reader stays failed
        reader.next()


@pytest.mark.parametrize("payload", [
    b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH,
    b'{"pad":"[[[[","a":' + b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * MAX_DEPTH,
    b'{"pad":"[[[[","a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}",
    b'{"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}",
    b'{"a":"\\ud83d\\ude00","b":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[","\\uD7FF":1}',
    b'{"a":18446744073709551615,"b":-9223372036854775808,"c":1.5e300}',
    b' {"a" : [ ] }\n',
])
def test_what_sits_just_inside_the_limits_is_accepted(payload):
    reader = Reader()
    reader.feed(payload + b"\0")
    assert reader.next() == (json.loads(payload), [])


def test_messages_queued_before_a_bad_one_are_still_delivered(pipe):
    reader = Reader()
    fd1, fd2 = os.dup(pipe[0]), os.dup(pipe[0])
    reader.feed(b'{"n":1}\0', [fd1])
    reader.feed(b"garbage\0{}\0")
    reader.feed(b'{"n":', [])
    assert reader.next() == ({"n": 1}, [fd1])
    os.close(fd1)
    with pytest.raises(ProtocolError):
        reader.next()
    with pytest.raises(ProtocolError):
        reader.feed(b"2}\0", [fd2])
    assert _closed(fd2)


def test_a_long_lived_reader_does_not_grow():
    reader = Reader()
    tracemalloc.start()
    try:
        for round_ in range(300):
            reader.feed(b"{}\0" * 1000)
            assert sum(1 for _ in iter(reader.next, None)) == 1000
            if round_ == 0:
                start = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 200_000


def test_close_closes_the_fds_of_messages_not_taken_and_of_a_partial_one(pipe):
    reader = Reader()
    fds = [os.dup(pipe[0]) for _ in range(3)]
    reader.feed(b"{}\0", fds[:1])
    reader.feed(b"{}\0", fds[1:2])
    reader.feed(b"{", fds[2:])
    reader.close()
    assert all(_closed(fd) for fd in fds)
    reader.close()
    assert reader.buffered == 0


# --- end of stream --------------------------------------------------------------------------

def test_eof_after_complete_messages_leaves_them_readable(pair):
    a, b = pair
    a.sendall(varlink.encode(CALL) + b'{"unfinished"')
    a.close()
    reader = Reader()
    while varlink.recv_into(b, reader):
        pass
    assert reader.next() == (CALL, [])
    assert reader.next() is None
    assert reader.partial == len(b'{"unfinished"')


def test_a_reset_connection_counts_as_gone(pair):
    a, b = pair
    b.send(b"unread by a")
    a.close()
    assert varlink.recv_into(b, Reader()) is False


def test_nothing_to_read_on_a_non_blocking_socket_is_not_eof(pair):
    a, b = pair
    b.setblocking(False)
    reader = Reader()
    assert varlink.recv_into(b, reader) is True
    assert reader.buffered == 0 and reader.next() is None


class _CannedSocket:
    def __init__(self, data: bytes, fds, flags: int = 0):
        self.reply = (data, _rights(fds), flags, None)

    def recvmsg(self, *args):
        return self.reply


@pytest.mark.parametrize(("data", "flags"), [(b"", 0), (b"{}\0", socket.MSG_CTRUNC)],
                         ids=["eof", "truncated"])
def test_fds_that_come_with_eof_or_a_truncated_read_are_closed(pipe, data, flags):
    fd = os.dup(pipe[0])
    sock = _CannedSocket(data, [fd], flags)
    if flags:
        with pytest.raises(ProtocolError):
            varlink.recv_into(sock, Reader())
    else:
        assert varlink.recv_into(sock, Reader()) is False
    assert _closed(fd)


# --- the server's output --------------------------------------------------------------------

def test_outbox_sends_fds_with_the_first_bytes_and_then_closes_them(pair, pipe):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    b.setblocking(False)
    outbox = varlink.Outbox()
    fd = os.dup(pipe[1])
    big, small = varlink.reply({"blob": "y" * 100000}), varlink.reply({"n": 2})
    outbox.queue(big, [fd])
    outbox.queue(small)
    assert outbox.flush(a) is False  # the socket took only part of it
    assert _closed(fd) and 0 < outbox.pending < len(varlink.encode(big))
    reader = Reader()
    got = []
    for _ in range(10000):
        if len(got) == 2:
            break
        outbox.flush(a)
        varlink.recv_into(b, reader)
        got += iter(reader.next, None)
    assert outbox.flush(a) is True and outbox.pending == 0
    assert [message for message, _ in got] == [big, small]
    assert len(got[0][1]) == 1 and got[1][1] == []
    os.write(got[0][1][0], b"!")
    assert os.read(pipe[0], 1) == b"!"
    _close(got[0][1])


def test_outbox_cuts_off_a_peer_that_never_reads(pair, pipe):
    a, b = pair
    a.setblocking(False)
    outbox = varlink.Outbox()
    event = varlink.reply({"blob": "z" * 10000}, continues=True)
    with pytest.raises(ProtocolError, match="does not read its replies"):
        for _ in range(1000):
            outbox.queue(event)
            outbox.flush(a)
            assert outbox.pending <= varlink.MAX_OUTBOX
    fd = os.dup(pipe[0])
    with pytest.raises(ProtocolError):
        outbox.queue(event, [fd])
    assert _closed(fd)
    assert outbox.flush(a) is False
    outbox.close()
    assert outbox.pending == 0


def test_outbox_close_closes_unsent_fds_and_queue_refuses_too_many(pipe):
    outbox = varlink.Outbox()
    fds = [os.dup(pipe[0]) for _ in range(MAX_FDS + 1)]
    with pytest.raises(ValueError):
        outbox.queue(varlink.reply(), fds)
    assert all(_closed(fd) for fd in fds)
    fd = os.dup(pipe[0])
    outbox.queue(varlink.reply(), [fd])
    outbox.close()
    assert _closed(fd)


def test_outbox_reports_a_peer_that_is_gone(pair):
    a, b = pair
    a.setblocking(False)
    b.close()
    outbox = varlink.Outbox()
    outbox.queue(varlink.reply())
    with pytest.raises(BrokenPipeError):
        outbox.flush(a)
    outbox.close()


def test_send_refuses_too_many_fds_and_keeps_the_callers(pair, pipe):
    a, _ = pair
    with pytest.raises(ValueError):
        varlink.send(a, CALL, [pipe[0]] * (MAX_FDS + 1))
    varlink.send(a, CALL, [pipe[0]])
    assert not _closed(pipe[0])


@pytest.mark.parametrize("how", ["send", "outbox"])
@pytest.mark.parametrize("fds", [[], [0]], ids=["no fds", "fds"])
def test_writing_to_a_vanished_peer_is_an_error_not_a_sigpipe(how, fds):
    code = (
        "import os, signal, socket\n"
        "from condor_systemd import varlink\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "a, b = socket.socketpair()\n"
        "b.close()\n"
        "try:\n"
        f"    if {how!r} == 'send':\n"
        f"        varlink.send(a, varlink.reply(), {fds})\n"
        "    else:\n"
        "        outbox = varlink.Outbox()\n"
        f"        outbox.queue(varlink.reply(), [os.dup(fd) for fd in {fds}])\n"
        "        a.setblocking(False)\n"
        "        outbox.flush(a)\n"
        "except BrokenPipeError:\n"
        "    print('EPIPE')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (done.returncode, done.stdout) == (0, "EPIPE\n"), done.stderr


# --- calls and replies ----------------------------------------------------------------------

@pytest.mark.parametrize(("message", "expected"), [
    ({"method": "io.condor.Broker.Run"}, ("io.condor.Broker.Run", {}, False, False)),
    ({"method": "a.B", "parameters": None}, ("a.B", {}, False, False)),
    ({"method": "io.sys-temd.x1.Get2", "parameters": {"x": 1}, "more": True, "oneway": False,
      "upgrade": False}, ("io.sys-temd.x1.Get2", {"x": 1}, True, False)),
    ({"method": "org.varlink.service.GetInfo", "oneway": True, "more": False},
     ("org.varlink.service.GetInfo", {}, False, True)),
])
def test_valid_calls(message, expected):
    assert varlink.validate_call(message) == expected


@pytest.mark.parametrize(("message", "reason"), [
    ({}, "method name"),
    ({"method": 1}, "method name"),
    ({"method": None}, "method name"),
    ({"method": "NoInterface"}, "method name"),
    ({"method": "io.example.lowercase"}, "method name"),
    ({"method": "io..example.M"}, "method name"),
    ({"method": "io.example-.M"}, "method name"),
    ({"method": "io.-example.M"}, "method name"),
    ({"method": "io.ex--ample.M"}, "method name"),
    ({"method": "1io.example.M"}, "method name"),
    ({"method": ".M"}, "method name"),
    ({"method": "io.example."}, "method name"),
    ({"method": "io.example.M_x"}, "method name"),
    ({"method": "io.exämple.M"}, "method name"),
    ({"method": "io.example.M\n"}, "method name"),
    ({"method": "a.B", "parameters": []}, "parameters are not a JSON object"),
    ({"method": "a.B", "parameters": "x"}, "parameters are not a JSON object"),
    ({"method": "a.B", "more": 1}, '"more" is not a boolean'),
    ({"method": "a.B", "oneway": "yes"}, '"oneway" is not a boolean'),
    ({"method": "a.B", "more": True, "oneway": True}, "both"),
    ({"method": "a.B", "upgrade": True}, "upgrade"),
    ({"method": "a.B", "upgrade": None}, '"upgrade" is not a boolean'),
    ({"method": "a.B", "error": "x.Y"}, "unknown key 'error'"),
    ({"method": "a.B", "x" * 1000: 1}, "unknown key 'xxxx"),
])
def test_malformed_calls(message, reason):
    with pytest.raises(ProtocolError, match=reason) as raised:
        varlink.validate_call(message)
    assert len(str(raised.value)) < 100


@pytest.mark.parametrize(("message", "more", "expected"), [
    ({}, False, ({}, False)),
    ({"parameters": None}, False, ({}, False)),
    ({"parameters": {"a": 1}, "continues": False}, False, ({"a": 1}, False)),
    ({"parameters": {"a": 1}, "continues": True}, True, ({"a": 1}, True)),
    ({"parameters": {"a": 1}}, True, ({"a": 1}, False)),
])
def test_valid_replies(message, more, expected):
    assert varlink.validate_reply(message, more) == expected


@pytest.mark.parametrize(("message", "more", "reason"), [
    ({"parameters": {}, "extension": 1}, False, "unknown key"),
    ({"method": "a.B"}, False, "unknown key"),
    ({"continues": True}, False, "continues"),
    ({"continues": "yes"}, True, "not a boolean"),
    ({"parameters": [1]}, False, "not a JSON object"),
    ({"error": 7}, False, "error name"),
    ({"error": None}, False, "error name"),
    ({"error": "a.B", "continues": True}, True, "cannot continue"),
])
def test_malformed_replies(message, more, reason):
    with pytest.raises(ProtocolError, match=reason):
        varlink.validate_reply(message, more)


def test_an_error_reply_raises_varlink_error_with_its_name_and_parameters():
    with pytest.raises(varlink.VarlinkError) as raised:
        varlink.validate_reply(varlink.error(varlink.METHOD_NOT_FOUND, {"method": "a.B"}))
    assert raised.value.name == "org.varlink.service.MethodNotFound"
    assert raised.value.parameters == {"method": "a.B"}
    assert str(raised.value) == 'org.varlink.service.MethodNotFound {"method":"a.B"}'
    with pytest.raises(varlink.VarlinkError) as raised:
        varlink.validate_reply({"error": varlink.PERMISSION_DENIED})
    assert raised.value.parameters == {} and str(raised.value) == varlink.PERMISSION_DENIED


def test_reply_and_error_build_what_validate_reply_takes():
    assert varlink.reply() == {"parameters": {}}
    assert varlink.reply({"a": 1}, continues=True) == {"parameters": {"a": 1}, "continues": True}
    assert varlink.error(varlink.EXPECTED_MORE) == {
        "error": "org.varlink.service.ExpectedMore", "parameters": {}}
    assert varlink.error(varlink.INVALID_PARAMETER, {"parameter": "argv"}) == {
        "error": "org.varlink.service.InvalidParameter", "parameters": {"parameter": "argv"}}


def test_the_service_interface_declares_what_varlink_org_defines():
    lines = interface.SERVICE_INTERFACE.splitlines()
    assert interface.SERVICE_INTERFACE.endswith(")\n")
    assert lines[:3] == [
        "# The Varlink Service Interface is provided by every varlink service. It",
        "# describes the service and the interfaces it implements.",
        "interface org.varlink.service"]
    declarations = [line for line in lines if line.startswith(("method ", "error "))]
    assert declarations == [
        "method GetInfo() -> (",
        "method GetInterfaceDescription(interface: string) -> (description: string)",
        "error InterfaceNotFound (interface: string)",
        "error MethodNotFound (method: string)",
        "error MethodNotImplemented (method: string)",
        "error InvalidParameter (parameter: string)",
        "error PermissionDenied ()",
        "error ExpectedMore ()"]
    start = lines.index("method GetInfo() -> (")
    assert lines[start + 1:start + 7] == [
        "  vendor: string,", "  product: string,", "  version: string,", "  url: string,",
        "  interfaces: []string", ")"]
    for name in ("INTERFACE_NOT_FOUND", "METHOD_NOT_FOUND", "METHOD_NOT_IMPLEMENTED",
                 "INVALID_PARAMETER", "PERMISSION_DENIED", "EXPECTED_MORE"):
        short = getattr(varlink, name).rpartition(".")[2]
        assert f"error {short} (" in interface.SERVICE_INTERFACE


# --- fuzzing --------------------------------------------------------------------------------

FRAGMENTS = [b"{", b"}", b"[", b"]", b"\0", b'"a":', b'"', b"1", b",", b"\\u", b"d800", b"\xff",
             b"NaN", b"1e999", b" ", b"null", b"\xc3\xa9", b'{"method":"a.B"}\0']


def _garbage_property(chunks, pipe_fd):
    """Feeding any bytes in any chunks, with up to MAX_FDS + 1 fds each, raises nothing but
    ProtocolError and, once the reader is closed, leaves no fd open that it was given."""
    before = _open_fds()
    reader = Reader()
    try:
        for data, n_fds in chunks:
            fds = [os.dup(pipe_fd) for _ in range(n_fds)]
            reader.feed(data, fds)
            while (item := reader.next()) is not None:
                assert isinstance(item[0], dict)
                _close(item[1])
    except ProtocolError as exc:
        assert "\n" not in str(exc)
    finally:
        reader.close()
    assert _open_fds() == before


def _round_trip_property(messages, cuts, fds_per_message, pipe_fd):
    """Valid messages fed in any chunking come out equal, each with its own fds."""
    stream = [varlink.encode(m) for m in messages]
    reader = Reader()
    got = []
    for frame, n_fds in zip(stream, fds_per_message):
        points = sorted({c % len(frame) for c in cuts} | {0, len(frame)})
        fds = [os.dup(pipe_fd) for _ in range(n_fds)]
        for start, end in zip(points, points[1:]):
            reader.feed(frame[start:end], fds if start == 0 else [])
        while (item := reader.next()) is not None:
            got.append((item[0], len(item[1])))
            _close(item[1])
    assert got == list(zip(messages, fds_per_message))
    # the same stream cut across frame boundaries, without fds
    whole = b"".join(stream)
    points = sorted({c % (len(whole) + 1) for c in cuts} | {0, len(whole)})
    for start, end in zip(points, points[1:]):
        reader.feed(whole[start:end])
    assert [item[0] for item in iter(reader.next, None)] == messages
    reader.close()


def _socket_round_trip_property(messages, cuts, fds_per_message, pipe_fd):
    """The same through a real socket, each message written in pieces, request/response style:
    its first piece with fds, the next message only once this one is read."""
    a, b = socket.socketpair()
    b.settimeout(30)
    reader = Reader()
    try:
        for message, n_fds in zip(messages, fds_per_message):
            frame = varlink.encode(message)
            points = sorted({c % len(frame) for c in cuts} | {0, len(frame)})
            for start, end in zip(points, points[1:]):
                if start == 0 and n_fds:
                    a.sendmsg([frame[start:end]], _rights([pipe_fd] * n_fds))
                else:
                    a.sendall(frame[start:end])
            [(received, fds)] = _receive(b, reader)
            assert received == message and len(fds) == n_fds
            _close(fds)
    finally:
        reader.close()
        a.close()
        b.close()


if given is not None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=4),
        max_leaves=12)
    json_messages = st.lists(st.dictionaries(st.text(max_size=10), json_values, max_size=5),
                             min_size=1, max_size=5)
    fuzz = settings(deadline=None, max_examples=200,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

    @fuzz
    @given(chunks=st.lists(st.tuples(
        st.lists(st.binary(max_size=8) | st.sampled_from(FRAGMENTS), max_size=12).map(b"".join),
        st.integers(0, MAX_FDS + 1)), max_size=20))
    def test_fuzz_any_bytes_in_any_chunks(pipe, chunks):
        _garbage_property(chunks, pipe[0])

    @fuzz
    @given(messages=json_messages, cuts=st.lists(st.integers(0, 10**6), max_size=8),
           data=st.data())
    def test_fuzz_valid_messages_round_trip_whatever_the_chunking(pipe, messages, cuts, data):
        n_fds = data.draw(st.lists(st.integers(0, MAX_FDS), min_size=len(messages),
                                   max_size=len(messages)))
        _round_trip_property(messages, cuts, n_fds, pipe[0])
        _socket_round_trip_property(messages, cuts, n_fds, pipe[0])
else:
    def _random_json(rng, depth=0):
        kind = rng.randrange(7 if depth < 4 else 5)
        if kind == 5:
            return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
        if kind == 6:
            return {str(rng.random()): _random_json(rng, depth + 1)
                    for _ in range(rng.randrange(4))}
        return [None, rng.random() < 0.5, rng.randint(-(2**63), 2**64 - 1),
                rng.uniform(-1e300, 1e300),
                "".join(chr(rng.randrange(1, 0xD800)) for _ in range(rng.randrange(6)))][kind]

    def test_fuzz_any_bytes_in_any_chunks(pipe):
        rng = random.Random(10)
        for _ in range(300):
            chunks = [(b"".join(rng.choice(FRAGMENTS + [os.urandom(rng.randrange(8))])
                                for _ in range(rng.randrange(12))), rng.randrange(MAX_FDS + 2))
                      for _ in range(rng.randrange(20))]
            _garbage_property(chunks, pipe[0])

    def test_fuzz_valid_messages_round_trip_whatever_the_chunking(pipe):
        rng = random.Random(10)
        for _ in range(200):
            messages = [{str(k): _random_json(rng) for k in range(rng.randrange(5))}
                        for _ in range(rng.randrange(1, 5))]
            cuts = [rng.randrange(10**6) for _ in range(rng.randrange(8))]
            n_fds = [rng.randrange(MAX_FDS + 1) for _ in messages]
            _round_trip_property(messages, cuts, n_fds, pipe[0])
            _socket_round_trip_property(messages, cuts, n_fds, pipe[0])
