"""Blocking D-Bus transport to the systemd manager, built on jeepney's wire format.

Only jeepney's message (de)serialisation and SASL pieces are used: the socket handling is ours so
that the connection can be multiplexed with other fds in one ``select()`` (the job's wait loop
waits on D-Bus signals and on the wrapper's own signals at the same time, without polling).

As root we talk to the manager's private socket (``/run/systemd/private``), as ``systemctl`` does:
no bus daemon in between, no Hello/AddMatch/Subscribe round trips, and the manager sends every
unit signal to private connections unconditionally. Otherwise we use the system bus and must
call ``Manager.Subscribe()`` (without it, systemd sends no unit signals there).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections import deque

from jeepney import HeaderFields, Message, MessageType
from jeepney.auth import BEGIN, Authenticator
from jeepney.low_level import Header, calc_msg_size, padding
from jeepney.wrappers import DBusAddress, new_method_call

PRIVATE_SOCKET = "/run/systemd/private"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
AUTH_TIMEOUT = 5.0
# systemd answers in microseconds; a manager busy reloading may take seconds. Past this, give up
# (on the whole call: signals arriving meanwhile do not extend it).
CALL_TIMEOUT = 120.0


class BusError(Exception):
    """An error reply or a transport failure; ``name`` is the D-Bus error name ('' for I/O)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if name else text)
        self.name = name
        self.text = text


class Connection:
    """One authenticated connection to systemd with fd passing enabled."""

    def __init__(self, sock: socket.socket, via_bus_daemon: bool) -> None:
        self.sock = sock
        self.via_bus_daemon = via_bus_daemon
        self._buf = bytearray()
        self._serial = 0
        self.signals: deque[Message] = deque()
        # Which signals to keep (None: all). systemd broadcasts every unit's PropertiesChanged,
        # each with dozens of properties: parsing those bodies in Python costs more than the
        # rest of a job start, so unwanted signals are dropped after reading only the header.
        self._members: set[str] | None = None
        self._properties: set[tuple[str, str]] = set()

    # -- connecting -------------------------------------------------------------------------
    @classmethod
    def open(cls) -> Connection:
        """Connect to systemd: the private socket when we may, else the system bus."""
        private = os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET)
        path = PRIVATE_SOCKET if private else _system_bus_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(AUTH_TIMEOUT)
            sock.connect(path)
            _authenticate(sock)
            sock.settimeout(None)  # blocking: deadlines are kept with select(), see _next_raw
        except OSError as exc:
            sock.close()
            raise BusError("", f"cannot connect to {path}: {exc.strerror or exc}") from None
        conn = cls(sock, via_bus_daemon=not private)
        if conn.via_bus_daemon:
            bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus",
                              "org.freedesktop.DBus")
            conn._call_address(bus, "Hello")
            rule = f"type='signal',sender='{SYSTEMD}'"
            conn._call_address(bus, "AddMatch", "s", (rule,))
            conn.call_manager("Subscribe")
        return conn

    def reconnect(self, timeout: float) -> None:
        """Open a fresh connection in place: `systemctl daemon-reexec` closes every one. What
        is kept: the signal filter and signals already received."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fresh = Connection.open()
                break
            except BusError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)  # systemd is re-executing: it accepts again within moments
        self.sock.close()
        self.sock, self.via_bus_daemon = fresh.sock, fresh.via_bus_daemon
        self._buf, self._serial = fresh._buf, fresh._serial
        self.signals.extend(fresh.signals)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- calls ------------------------------------------------------------------------------
    def call_manager(self, method: str, signature: str | None = None, body: tuple = ()) -> tuple:
        return self.call(MANAGER_PATH, MANAGER_IFACE, method, signature, body)

    def call(self, path: str, interface: str, method: str,
             signature: str | None = None, body: tuple = ()) -> tuple:
        return self._call_address(DBusAddress(path, SYSTEMD, interface), method, signature, body)

    def get_all(self, path: str, interface: str) -> dict:
        (props,) = self.call(path, PROPERTIES_IFACE, "GetAll", "s", (interface,))
        return {name: value for name, (_sig, value) in props.items()}

    def _call_address(self, address: DBusAddress, method: str,
                      signature: str | None = None, body: tuple = ()) -> tuple:
        msg = new_method_call(address, method, signature, body)
        self._serial += 1
        serial = self._serial
        fds: list[int] = []
        data = msg.serialise(serial=serial, fds=fds)
        deadline = time.monotonic() + CALL_TIMEOUT
        try:
            if fds:
                sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                   _int_array(fds))])
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
            while True:
                reply = self._next_message(deadline)
                if reply is None:  # pragma: no cover - with a deadline, _next_message blocks
                    continue
                if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                    break
                if reply.header.message_type == MessageType.signal:
                    self.signals.append(reply)
        except OSError as exc:
            raise BusError("", f"D-Bus connection failed: {exc.strerror or exc}") from None
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "")
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusError(name, text)
        return tuple(reply.body)

    # -- signals ----------------------------------------------------------------------------
    def keep_signals(self, members: set[str], properties: set[tuple[str, str]]) -> None:
        """Keep only signals named in members, and PropertiesChanged for (path, interface)."""
        self._members = members
        self._properties = properties

    def watch(self, path: str, interface: str) -> None:
        """Also keep PropertiesChanged of this object's interface (one more job's unit)."""
        self._properties.add((path, interface))

    def unwatch(self, path: str, interface: str) -> None:
        self._properties.discard((path, interface))

    def read_signals(self) -> list[Message]:
        """Every signal received so far, reading what the socket has without blocking."""
        try:
            while (msg := self._next_message(None)) is not None:
                if msg.header.message_type == MessageType.signal:
                    self.signals.append(msg)
        except OSError as exc:
            raise BusError("", f"D-Bus connection failed: {exc.strerror or exc}") from None
        out = list(self.signals)
        self.signals.clear()
        return out

    def _next_message(self, deadline: float | None) -> Message | None:
        """The next reply or wanted signal; unwanted signals are skipped unparsed. With a
        deadline (time.monotonic()), waits for one until then; without, only reads what is
        there."""
        while True:
            raw = self._next_raw(deadline)
            if raw is None:
                return None
            header, pos = Header.from_buffer(raw)
            if header.message_type != MessageType.signal or self._wanted(header, raw, pos):
                return Message.from_buffer(raw)

    def _wanted(self, header: Header, raw: bytes, pos: int) -> bool:
        if self._members is None:
            return True
        member = header.fields.get(HeaderFields.member)
        if member in self._members:
            return True
        if member != "PropertiesChanged":
            return False
        path = header.fields.get(HeaderFields.path)
        if not any(p == path for p, _iface in self._properties):
            return False
        # the body (8-byte aligned) starts with the interface name: a string (u32 length, bytes)
        pos += padding(pos, 8)
        (length,) = struct.unpack(header.endianness.struct_code() + "I", raw[pos:pos + 4])
        interface = raw[pos + 4:pos + 4 + length].decode("utf-8", "replace")
        return (path, interface) in self._properties

    def _next_raw(self, deadline: float | None) -> bytes | None:
        while True:
            if len(self._buf) >= 16:
                size = calc_msg_size(self._buf)
                if len(self._buf) >= size:
                    raw = bytes(self._buf[:size])
                    del self._buf[:size]
                    return raw
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    raise OSError(0, f"systemd did not answer within {CALL_TIMEOUT:g} s")
            try:
                data = self.sock.recv(65536, 0 if deadline is not None else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            if not data:
                raise OSError(0, "systemd closed the connection")
            self._buf += data


def _system_bus_path() -> str:
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    for part in address.split(";"):
        if part.startswith("unix:path="):
            return part[len("unix:path="):].split(",")[0]
    return SYSTEM_BUS_SOCKET


def _authenticate(sock: socket.socket) -> None:
    """SASL EXTERNAL with unix-fd negotiation; the kernel vouches for our uid (SO_PEERCRED)."""
    # the first line starts with the protocol's NUL byte (jeepney 0.8, Debian 12's, always
    # sends it; 0.9 does by default)
    auth = Authenticator(enable_fds=True)
    try:
        for line in auth:
            sock.sendall(line)
            data = sock.recv(1024)
            if not data:
                raise OSError(0, "connection closed during authentication")
            auth.feed(data)
    except ValueError as exc:  # jeepney's AuthenticationError / FDNegotiationError
        raise OSError(0, f"authentication refused ({exc})") from None
    sock.sendall(BEGIN)


def _int_array(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()
