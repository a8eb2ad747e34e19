"""Varlink framing for the broker and its thin client: NUL-terminated JSON, fds as SCM_RIGHTS.

Wire format (https://varlink.org/Method-Call, as systemd's sd-varlink speaks it): one JSON object
per message, then a NUL byte. Calls are {"method": "iface.Method", "parameters": {...}, "more":
true, "oneway": true}; replies {"parameters": {...}, "continues": true} or {"error":
"iface.Name", "parameters": {...}}. Fds travel as SCM_RIGHTS with the first bytes of their
message, which refers to them by index. The API, and the only one:

    encode(message) -> bytes            compact UTF-8 JSON + NUL (ValueError: NaN, lone
                                        surrogate, more than MAX_MESSAGE bytes)
    Reader(): .feed(data, fds)          takes ownership of fds (closed on ProtocolError)
              .next() -> (message, fds) | None    the caller owns the fds returned
              .buffered, .partial       bytes held; bytes of an incomplete message
              .close()                  closes every fd still held
    recv_into(sock, reader) -> bool     one recvmsg into reader; False once the peer is gone
    send(sock, message, fds=())         blocking socket (client); the caller keeps its fds
    Outbox(): .queue(message, fds=())   non-blocking socket (broker); takes ownership of fds:
                                        closed once sent with the message's first bytes, or
                                        at once if queue() raises
              .flush(sock) -> bool      True when all is sent; OSError once the peer is gone
              .pending, .close()        unsent bytes; drop them, closing their fds
    validate_call(message) -> (method, parameters, more, oneway)        server side
    validate_reply(message, more) -> (parameters, continues)            client side
    reply(parameters, continues=False), error(name, parameters=None)    messages to send
    ProtocolError   the peer broke the protocol (one-line reason): close the connection
    VarlinkError    an error reply received or to send: .name, .parameters
    INTERFACE_NOT_FOUND ... EXPECTED_MORE   org.varlink.service's errors (its interface text:
                                        broker/interface.py)

Limits, since every local user reaches the broker: MAX_MESSAGE bytes per frame (NUL included),
which is also all a Reader ever holds (messages not yet taken by next() count, so a client cannot
run more than that ahead of a server that stops reading); MAX_FDS fds per message; JSON at most
MAX_DEPTH deep, integers within 64 bits, no NaN/Infinity, duplicate keys or lone surrogates;
MAX_OUTBOX unsent bytes.

Fds: a message with fds must start its own sendmsg() and follow no unread message of the same
sender. The kernel glues earlier unread bytes to the read that brings fds and ends that read
after them, so the Reader gives the fds to the one message that starts in that read and refuses
fds that come mid-message or with two messages. SO_PASSCRED/SO_PASSPIDFD would take the control
space kept for fds: use SO_PEERCRED/SO_PEERPIDFD instead.

sd-varlink (sd-varlink.c) drops the connection on a reply with a top-level key other than
parameters/continues/error, "continues" without "more" or on an error; and on a call with a key
other than method/parameters/more/oneway (newer: upgrade), a non-string method or non-boolean
flags. It omits empty parameters, reads missing or null ones as {}, and takes fds only with the
first byte of a message (EPROTO otherwise).
"""

from __future__ import annotations

import _socket as socket  # socket.py's enums cost the thin client ~2.5 ms a start
import os
import sys

from . import jsoncodec
from .jsoncodec import MAX_DEPTH as MAX_DEPTH  # part of the API above

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

MAX_MESSAGE = 256 * 1024  # bytes of one frame, NUL included; also what a Reader may hold
MAX_FDS = 6  # a job's stdin, stdout and stderr, its HTCondor tmp and var/tmp, its own directory
MAX_OUTBOX = 1024 * 1024  # unsent bytes a peer may leave behind before it is cut off
_INT = 4  # sizeof(int): an fd in SCM_RIGHTS (the array module would import collections)
_READ_SIZE = 64 * 1024  # larger reads make each recvmsg() mmap a fresh buffer

INTERFACE_NOT_FOUND = "org.varlink.service.InterfaceNotFound"  # parameters {"interface": str}
METHOD_NOT_FOUND = "org.varlink.service.MethodNotFound"  # {"method": str}
METHOD_NOT_IMPLEMENTED = "org.varlink.service.MethodNotImplemented"  # {"method": str}
INVALID_PARAMETER = "org.varlink.service.InvalidParameter"  # {"parameter": str}
PERMISSION_DENIED = "org.varlink.service.PermissionDenied"
EXPECTED_MORE = "org.varlink.service.ExpectedMore"



class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot go on."""


class VarlinkError(Exception):
    """An error reply: .name (e.g. METHOD_NOT_FOUND) and .parameters (a dict)."""

    def __init__(self, name: str, parameters: dict | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.parameters = {} if parameters is None else parameters

    def __str__(self) -> str:
        return f"{self.name} {jsoncodec.dumps(self.parameters)}" if self.parameters else self.name


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _decode(frame: bytes) -> dict:
    try:
        text = frame.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not UTF-8 (byte {exc.start})") from None
    try:
        value = jsoncodec.loads(text)
    except jsoncodec.Invalid as exc:
        raise ProtocolError(str(exc)) from None
    if type(value) is not dict:
        raise ProtocolError("message is not a JSON object")
    return value


def encode(message: dict) -> bytes:
    frame = jsoncodec.dumps(message).encode() + b"\0"
    if len(frame) > MAX_MESSAGE:
        raise ValueError(f"message of {len(frame)} bytes, more than MAX_MESSAGE ({MAX_MESSAGE})")
    return frame


def _rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if len(fds) > MAX_FDS:
        raise ValueError(f"{len(fds)} fds for one message, at most {MAX_FDS}")
    data = b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds)
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, data)]


_TAKEN: tuple[bytes, list[int]] = (b"", [])


class Reader:
    """Splits one connection's byte stream into messages and pairs them with their fds."""

    def __init__(self) -> None:
        self._partial = bytearray()  # a bytearray: a trickling peer must not cost O(n^2)
        self._partial_fds: list[int] = []
        self._frames: list[tuple[bytes, list[int]]] = []
        self._head = 0  # next() reads from here: list.pop(0) is O(n) per message
        self._failed = ""
        self.buffered = 0

    @property
    def partial(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> None:
        try:
            self._check_feed(data, fds)
        except ProtocolError as exc:
            _close_all(fds)
            self._fail(str(exc))
            raise
        # from here on nothing raises, so every fd has exactly one owner
        self.buffered += len(data)
        pieces = data.split(b"\0")
        if len(pieces) == 1:
            self._partial += data
            self._partial_fds += fds
            return
        self._partial += pieces[0]
        self._frames.append((bytes(self._partial), self._partial_fds + list(fds)))
        self._frames.extend((piece, []) for piece in pieces[1:-1])
        self._partial, self._partial_fds = bytearray(pieces[-1]), []

    def _check_feed(self, data: bytes, fds: Sequence[int]) -> None:
        if self._failed:
            raise ProtocolError(self._failed)
        last = data.rfind(b"\0")
        if (len(data) - last - 1 if last >= 0 else len(self._partial) + len(data)) >= MAX_MESSAGE:
            raise ProtocolError(f"message longer than {MAX_MESSAGE} bytes")
        if self.buffered + len(data) > MAX_MESSAGE:
            raise ProtocolError(f"more than {MAX_MESSAGE} bytes unprocessed: the peer runs ahead")
        if not fds:
            return
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"{len(fds)} fds with one message, at most {MAX_FDS}")
        if self._partial:
            raise ProtocolError("fds arrived in the middle of a message")
        if not data:
            raise ProtocolError("fds arrived without a message")
        if -1 < data.find(b"\0") < len(data) - 1:
            raise ProtocolError("fds arrived with two messages: the sender pipelined")

    def next(self) -> tuple[dict, list[int]] | None:
        if self._failed:
            raise ProtocolError(self._failed)
        if self._head == len(self._frames):
            return None
        frame, fds = self._frames[self._head]
        self._frames[self._head] = _TAKEN
        self._head += 1
        if self._head == len(self._frames):
            self._frames.clear()
            self._head = 0
        self.buffered -= len(frame) + 1
        try:
            return _decode(frame), fds
        except BaseException as exc:
            _close_all(fds)
            self._fail(str(exc))
            raise

    def _fail(self, reason: str) -> None:
        self.close()
        self._failed = reason

    def close(self) -> None:
        held = self._partial_fds + [fd for _, fds in self._frames[self._head:] for fd in fds]
        self._partial, self._partial_fds, self._frames, self._head = bytearray(), [], [], 0
        self.buffered = 0
        self._failed = self._failed or "connection closed"
        _close_all(held)


# room for one fd more than allowed, so that too many fds is told apart from a truncated cmsg
_ANCILLARY = socket.CMSG_SPACE((MAX_FDS + 1) * _INT)


def recv_into(sock: socket.socket, reader: Reader) -> bool:
    # never read past what the reader may hold; one byte when full, which feed() then refuses
    size = max(1, min(_READ_SIZE, MAX_MESSAGE - reader.buffered))
    try:
        data, ancillary, flags, _ = sock.recvmsg(size, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(payload[i:i + _INT], sys.byteorder, signed=True)
                       for i in range(0, len(payload) - _INT + 1, _INT))
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)  # the kernel closed the ones that did not fit
        reader._fail("too many fds: control data truncated")
        raise ProtocolError("too many fds with one message: control data truncated")
    if not data:
        _close_all(fds)
        return False
    reader.feed(data, fds)
    return True


def send(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    # MSG_NOSIGNAL: a vanished peer must be an error to handle, not a SIGPIPE death, whatever
    # the caller did with SIGPIPE
    data = encode(message)
    if fds:
        data = data[sock.sendmsg([data], _rights(fds), socket.MSG_NOSIGNAL):]
    if data:
        sock.sendall(data, socket.MSG_NOSIGNAL)


class Outbox:
    """Messages waiting for a non-blocking socket to take them, each sent with its own send()
    (never glued to the one before, so fds always ride the first bytes of their message)."""

    def __init__(self) -> None:
        self._items: list[tuple[memoryview, list[int]]] = []
        self._head = 0
        self.pending = 0

    def queue(self, message: dict, fds: Sequence[int] = ()) -> None:
        try:
            _rights(fds)  # refuses too many fds before they are taken
            data = encode(message)
            if self.pending + len(data) > MAX_OUTBOX:
                raise ProtocolError("peer does not read its replies")
        except BaseException:
            _close_all(fds)
            raise
        self._items.append((memoryview(data), list(fds)))
        self.pending += len(data)

    def flush(self, sock: socket.socket) -> bool:
        flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
        while self._head < len(self._items):
            data, fds = self._items[self._head]
            try:
                sent = sock.sendmsg([data], _rights(fds), flags) if fds else sock.send(data, flags)
            except BlockingIOError:
                return False
            _close_all(fds)  # the kernel holds its own references once sendmsg() succeeded
            self.pending -= sent
            if sent < len(data):
                self._items[self._head] = (data[sent:], [])
                continue
            self._head += 1
        self._items.clear()
        self._head = 0
        return True

    def close(self) -> None:
        held = [fd for _, fds in self._items[self._head:] for fd in fds]
        self._items, self._head, self.pending = [], 0, 0
        _close_all(held)


_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LETTERS = _UPPER | frozenset("abcdefghijklmnopqrstuvwxyz")
_ALNUM = _LETTERS | frozenset("0123456789")


def _qualified_name(name: str) -> bool:
    """interface.Member as systemd's varlink_idl_qualified_symbol_name_is_valid()
    (sd-varlink-idl.c) takes it: a letter, then letters, digits and single '.' or '-' between
    them; a dot; an uppercase letter, then letters and digits."""
    interface, _, member = name.rpartition(".")
    if not interface or not member or member[0] not in _UPPER or not _ALNUM.issuperset(member):
        return False
    if interface[0] not in _LETTERS:
        return False
    separator = False
    for char in interface[1:]:
        if char in (".", "-"):
            if separator:
                return False
            separator = True
        elif char in _ALNUM:
            separator = False
        else:
            return False
    return not separator


def _flag(message: dict, key: str) -> bool:
    value = message.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f'"{key}" is not a boolean')
    return value


def _parameters(message: dict) -> dict:
    value = message.get("parameters")
    if value is None:  # sd-varlink leaves out empty parameters and reads null as {}
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("parameters are not a JSON object")
    return value


def validate_call(message: dict) -> tuple[str, dict, bool, bool]:
    """A call as sd-varlink's varlink_dispatch_method() accepts it, and stricter in two ways: the
    method must be a valid qualified name (sd-varlink answers MethodNotFound to any string; the
    name is then safe to log and to echo), and "more" with "oneway" is refused in any order."""
    for key in message:
        if key not in ("method", "parameters", "more", "oneway", "upgrade"):
            raise ProtocolError(f"unknown key {key[:40]!r} in a call")
    method = message.get("method")
    if not isinstance(method, str) or not _qualified_name(method):
        raise ProtocolError("call without a valid method name (interface.Method)")
    parameters = _parameters(message)
    more, oneway = _flag(message, "more"), _flag(message, "oneway")
    if _flag(message, "upgrade"):
        raise ProtocolError("protocol upgrade is not supported")
    if more and oneway:
        raise ProtocolError('a call cannot be both "more" and "oneway"')
    return method, parameters, more, oneway


def validate_reply(message: dict, more: bool = False) -> tuple[dict, bool]:
    """(parameters, continues) of a reply to a call made with `more`, as sd-varlink's
    varlink_dispatch_reply() checks it; an error reply raises VarlinkError."""
    for key in message:
        if key not in ("parameters", "continues", "error"):
            raise ProtocolError(f"unknown key {key[:40]!r} in a reply")
    parameters = _parameters(message)
    continues = _flag(message, "continues")
    if continues and not more:
        raise ProtocolError('"continues" in a reply to a call without "more"')
    if "error" in message:
        name = message["error"]
        if not isinstance(name, str):
            raise ProtocolError("error name is not a string")
        if continues:
            raise ProtocolError("an error reply cannot continue")
        raise VarlinkError(name, parameters)
    return parameters, continues


def reply(parameters: dict | None = None, continues: bool = False) -> dict:
    message: dict = {"parameters": {} if parameters is None else parameters}
    if continues:
        message["continues"] = True
    return message


def error(name: str, parameters: dict | None = None) -> dict:
    return {"error": name, "parameters": {} if parameters is None else parameters}
