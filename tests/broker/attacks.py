"""Hostile callers of the broker, run as an unprivileged user inside the sandbox or guest:

    python3 -m tests.broker.attacks NAME     (PYTHONPATH: the package copy and the checkout)

Each attack prints one JSON line saying what the broker did; the tests judge it. None of them
may kill the broker, leave a unit behind or go unanswered forever.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from condor_systemd import varlink

SOCKET = "/run/condor-systemd/io.condorsystemd.Job"
RUN = "io.condorsystemd.Job.Run"


def connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    deadline = time.monotonic() + 20
    while True:  # a full backlog says EAGAIN: an eager caller tries again
        try:
            sock.connect(SOCKET)
            return sock
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def outcome(sock: socket.socket) -> dict:
    """The broker's answer, or how it ended the connection."""
    reader = varlink.Reader()
    try:
        while True:
            got = reader.next()
            if got is not None:
                return {"reply": got[0]}
            if not varlink.recv_into(sock, reader):
                return {"closed": True}
    except (ConnectionResetError, BrokenPipeError):
        return {"closed": True}
    except socket.timeout:
        return {"timeout": True}


def call(message: dict, fds: list[int] = ()) -> dict:  # type: ignore[assignment]
    """Sent as our own client would, but with any number of fds (it refuses more than 5)."""
    import array

    sock = connect()
    try:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sock.sendmsg([varlink.encode(message)], rights if fds else [])
        return outcome(sock)
    finally:
        sock.close()


def raw(data: bytes) -> dict:
    sock = connect()
    try:
        sock.sendall(data)
        return outcome(sock)
    finally:
        sock.close()


def run_parameters(**overrides: object) -> dict:
    parameters = {"arguments": [], "command": ["true"], "executable": "/bin/true",
                  "cwd": "/", "environment": ["PATH=/usr/bin:/bin"], "stdin": 0, "stdout": 1,
                  "stderr": 2}
    parameters.update(overrides)
    return parameters


def stdio() -> list[int]:
    null_r = os.open(os.devnull, os.O_RDONLY)
    null_w = os.open(os.devnull, os.O_WRONLY)
    return [null_r, null_w, null_w]


ATTACKS = {
    "garbage": lambda: raw(b"\x00\xff\xfe{]][" * 100 + b"\0"),
    "no-nul": lambda: raw(b"{" + b"a" * (300 * 1024)),
    "not-an-object": lambda: raw(b"[1, 2, 3]\0"),
    "method-not-a-string": lambda: call({"method": 5}),
    "unknown-method": lambda: call({"method": "io.condorsystemd.Job.Explode"}),
    "unknown-interface": lambda: call({"method": "com.example.Nothing"}),
    "wrong-types": lambda: call({"method": RUN, "more": True,
                                 "parameters": run_parameters(arguments="--memory 1G")},
                                stdio()),
    "seven-fds": lambda: call({"method": RUN, "more": True, "parameters": run_parameters()},
                              stdio() + [os.open(os.devnull, os.O_RDONLY)] * 4),
    "tmp-not-a-directory": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(tmp=3, var_tmp=4)},
        stdio() + [os.open(os.devnull, os.O_RDONLY), os.open("/", os.O_PATH)]),
    "scratch-not-a-directory": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(scratch=3)},
        stdio() + [os.open(os.devnull, os.O_RDONLY)]),
    "scratch-index-out-of-range": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(scratch=7)}, stdio()),
    "isolate-with-roots-directory": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(arguments=["--isolate"],
                                                                   scratch=3)},
        stdio() + [os.open("/etc", os.O_PATH | os.O_DIRECTORY)]),
    "htcondor-malformed": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(htcondor={"cpus": -1})},
        stdio()),
    "var-tmp-index-out-of-range": lambda: call(
        {"method": RUN, "more": True, "parameters": run_parameters(tmp=3, var_tmp=7)},
        stdio() + [os.open("/", os.O_PATH)]),
    "directory-as-stdout": lambda: call({"method": RUN, "more": True,
                                         "parameters": run_parameters()},
                                        [os.open(os.devnull, os.O_RDONLY),
                                         os.open("/", os.O_RDONLY), os.open("/", os.O_RDONLY)]),
    "o-path-stdin": lambda: call({"method": RUN, "more": True, "parameters": run_parameters()},
                                 [os.open("/etc/hostname", os.O_PATH), *stdio()[1:]]),
    "read-only-stdout": lambda: call({"method": RUN, "more": True,
                                      "parameters": run_parameters()},
                                     [os.open(os.devnull, os.O_RDONLY)] * 3),
    "relative-executable": lambda: call({"method": RUN, "more": True,
                                         "parameters": run_parameters(executable="true")},
                                        stdio()),
    "help": lambda: call({"method": RUN, "more": True,
                          "parameters": run_parameters(arguments=["--help"])}, stdio()),
    "uid-root": lambda: call({"method": RUN, "more": True,
                              "parameters": run_parameters(arguments=["--uid", "root"])},
                             stdio()),
}


def idle(count: int) -> dict:
    """count connections that say nothing; meanwhile the broker must still answer others."""
    held = [connect() for _ in range(count)]
    start = time.monotonic()
    answer = call({"method": "org.varlink.service.GetInfo"})
    took = time.monotonic() - start
    closed = 0
    for sock in held:  # they are cut off after the request timeout
        sock.settimeout(30)
        try:
            if sock.recv(1) == b"":
                closed += 1
        except OSError:
            closed += 1
        sock.close()
    return {"answered": "reply" in answer, "took": took, "idle_closed": closed}


def disconnect_mid_launch() -> dict:
    sock = connect()
    varlink.send(sock, {"method": RUN, "more": True,
                        "parameters": run_parameters(command=["sleep", "4262"],
                                                     executable="/bin/sleep")}, stdio())
    sock.close()
    return {"sent": True}


def never_reads() -> dict:
    """Calls GetInfo without ever reading the replies, until the broker cuts it off."""
    sock = connect()
    sock.setblocking(False)
    frame = varlink.encode({"method": "org.varlink.service.GetInfo"})
    sent, deadline = 0, time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            sock.send(frame)
            sent += 1
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            return {"cut_off": True, "calls": sent}
    return {"cut_off": False, "calls": sent}


def main() -> None:
    name = sys.argv[1]
    if name == "idle":
        result = idle(int(sys.argv[2]))
    elif name == "disconnect-mid-launch":
        result = disconnect_mid_launch()
    elif name == "never-reads":
        result = never_reads()
    else:
        result = ATTACKS[name]()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
