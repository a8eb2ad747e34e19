"""Attacks on the broker by an unprivileged user with a shell on the node, run as that user:

    python3 csd_hostile.py NAME ARGS...     (PYTHONPATH: a world-readable copy of the package)

Each speaks the broker's protocol directly, as a hostile client would (our own client would
refuse to send most of this), and prints one JSON line with what it got; the tests judge it.
"""

from __future__ import annotations

import array
import json
import os
import resource
import signal
import socket
import sys
import time

from condor_systemd import varlink

SOCKET = "/run/condor-systemd/io.condorsystemd.Job"
RUN = "io.condorsystemd.Job.Run"
SIGNAL = "io.condorsystemd.Job.Signal"


def connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(SOCKET)
    return sock


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([varlink.encode(message)], rights if fds else [])


def replies(sock: socket.socket):  # noqa: ANN201 - a generator of replies, then None if cut off
    reader = varlink.Reader()
    while True:
        got = reader.next()
        if got is not None:
            yield got[0]
            continue
        try:
            if not varlink.recv_into(sock, reader):
                yield None
                return
        except (ConnectionResetError, BrokenPipeError):
            yield None
            return


def final(sock: socket.socket) -> dict | None:
    """The last reply of a call (the one without "continues"), or None if cut off."""
    for reply in replies(sock):
        if reply is None or not reply.get("continues"):
            return reply
    return None


def run_call(directory: str, command: list[str], arguments: list[str] = (),  # type: ignore[assignment]
             environment: list[str] = (), cwd: str | None = None,  # type: ignore[assignment]
             scratch: str | None = None) -> tuple[socket.socket, str]:
    """A Run call whose job writes its stdout and stderr to DIRECTORY/out; the connection."""
    out = os.path.join(directory, "out")
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                                      0o644)]
    fds.append(os.dup(fds[1]))
    parameters: dict = {"arguments": list(arguments), "command": command,
                        "executable": command[0], "cwd": cwd or directory,
                        "environment": ["PATH=/usr/bin:/bin", *environment],
                        "stdin": 0, "stdout": 1, "stderr": 2}
    if scratch is not None:
        fds.append(os.open(scratch, os.O_PATH | os.O_DIRECTORY))
        parameters["scratch"] = 3
    sock = connect()
    send(sock, {"method": RUN, "more": True, "parameters": parameters}, fds)
    for fd in fds:
        os.close(fd)
    return sock, out


def run_and_wait(directory: str, command: list[str], **kw: object) -> dict:
    sock, out = run_call(directory, command, **kw)  # type: ignore[arg-type]
    reply = final(sock)
    sock.close()
    with open(out) as f:
        return {"reply": reply, "out": f.read()}


PROBE_ETC = ("test -s /etc/passwd && echo etc-intact; grep NoNewPrivs /proc/self/status; "
             "test -e /etc/x && echo etc-x-exists; true")


def isolate_named_path(directory: str) -> dict:
    """--isolate, with the environment naming /etc/x as the job's directory and an fd of our own
    directory: before, /etc was emptied and our directory bound there (a path to root through
    any setuid program that trusts /etc)."""
    return run_and_wait(directory, ["/bin/sh", "-c", PROBE_ETC], arguments=["--isolate"],
                        environment=["_CONDOR_SCRATCH_DIR=/etc/x"], scratch=directory)


def isolate(directory: str, script: str, cwd: str, *arguments: str) -> dict:
    """--isolate (plus ARGUMENTS) of our own DIRECTORY, working in CWD: the job runs SCRIPT."""
    return run_and_wait(directory, ["/bin/sh", "-c", script], cwd=cwd,
                        arguments=["--isolate", *arguments], scratch=directory)


def broker_as_stdin(directory: str) -> dict:
    """A second connection to the broker as the job's stdin: the job would hold it, and our
    death (HTCondor's hard kill) would not end the job."""
    held = connect()
    fds = [os.dup(held.fileno()), os.open(os.devnull, os.O_WRONLY),
           os.open(os.devnull, os.O_WRONLY)]
    parameters = {"arguments": [], "command": ["/bin/sleep", "30"], "executable": "/bin/sleep",
                  "cwd": directory, "environment": ["PATH=/usr/bin:/bin"],
                  "stdin": 0, "stdout": 1, "stderr": 2}
    sock = connect()
    send(sock, {"method": RUN, "more": True, "parameters": parameters}, fds)
    for fd in fds:
        os.close(fd)
    reply = next(replies(sock))
    sock.close()
    held.close()
    return {"reply": reply}


def idle_connection() -> socket.socket | None:
    """A connection that will never call (None if the kernel refused it: a full backlog)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(SOCKET)
    except OSError:
        sock.close()
        return None
    return sock


def hold_connections(count: str, seconds: str) -> None:
    """COUNT idle connections, held for SECONDS (prints how many it got, then waits), and
    whatever the broker closes is opened again at once."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, int(count) + 64), hard))
    held = []
    deadline = time.monotonic() + 20
    while len(held) < int(count) and time.monotonic() < deadline:
        sock = idle_connection()
        if sock is None:
            time.sleep(0.01)  # the backlog is full: the broker is accepting
        else:
            held.append(sock)
    print(json.dumps({"opened": len(held)}), flush=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for sock in list(held):
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b"":
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            held.remove(sock)
            sock.close()
            again = idle_connection()
            if again is not None:
                held.append(again)


def job_with_pid(directory: str, seconds: int) -> tuple[socket.socket, dict, int | None]:
    """A job that writes its pid and sleeps SECONDS: the connection, the first reply, and the
    job's pid (None if it never started)."""
    pid_file = os.path.join(directory, "pid")
    sock, _out = run_call(directory, ["/bin/sh", "-c",
                                      f"echo $$ > {pid_file}; exec sleep {seconds}"])
    first = next(replies(sock))
    deadline = time.monotonic() + 30
    while not read(pid_file):
        if time.monotonic() > deadline:
            return sock, first, None
        time.sleep(0.05)
    return sock, first, int(read(pid_file))


def finals_and_outputs(calls: list[tuple[socket.socket, str]]) -> dict:
    """Every call's final reply, then what its job wrote."""
    finals = [final(sock) for sock, _out in calls]
    outs = []
    for sock, out in calls:
        sock.close()
        outs.append(read(out))
    return {"finals": finals, "outs": outs}


def signal_flood(directory: str, count: str) -> dict:
    """COUNT forwarded signals as fast as we can send them, then kill our own job's main
    process: before, the broker crashed (and five such crashes in 10 s would have hit
    systemd's start limit: no broker for anybody)."""
    sock, first, job = job_with_pid(directory, 60)
    if job is None:
        return {"first": first, "error": "the job never started"}
    message = varlink.encode({"method": SIGNAL, "oneway": True,
                              "parameters": {"signal": int(signal.SIGWINCH)}})
    sent = 0
    for _ in range(int(count)):
        try:
            sock.sendall(message)
            sent += 1
        except OSError:
            break
    os.kill(job, signal.SIGKILL)
    reply = final(sock)
    sock.close()
    return {"first": first, "sent": sent, "final": reply}


HOLD = """
import os, sys, time
directory, me, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
block = bytearray(mib << 20)
for i in range(0, len(block), 4096):  # every page touched: resident, counted
    block[i] = 1
open(os.path.join(directory, "held-" + me), "w").close()
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    if all(os.path.exists(os.path.join(directory, "held-" + k)) for k in "012"):
        print("all three held at once")
        sys.exit(0)
    time.sleep(0.05)
sys.exit(3)
"""


def three_jobs(directory: str, mib: str) -> dict:
    """Three jobs at once from our one cgroup, each holding MIB MiB until all three hold it:
    per-job caps alone let a caller multiply its slot."""
    calls = []
    for n in "012":
        job_dir = os.path.join(directory, f"job{n}")
        os.mkdir(job_dir)
        calls.append(run_call(job_dir, ["/usr/bin/python3", "-c", HOLD, directory, n, mib]))
    return finals_and_outputs(calls)


WRITE = """
import mmap, os, sys, time
block = mmap.mmap(-1, 1 << 20)  # page aligned, as O_DIRECT wants
start = time.monotonic()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
for _ in range(int(sys.argv[2])):
    os.write(fd, block)
os.close(fd)
print(time.monotonic() - start)
"""


def two_writers(directory: str, disk_directory: str, mib: str) -> dict:
    """Two jobs at once from our one cgroup, each writing MIB MiB past the page cache to
    DISK_DIRECTORY: capped per job only, each had our cgroup's whole I/O budget."""
    calls = []
    for n in "01":
        job_dir = os.path.join(directory, f"writer{n}")
        os.mkdir(job_dir)
        calls.append(run_call(job_dir, ["/usr/bin/python3", "-c", WRITE,
                                        os.path.join(disk_directory, f"data{n}"), mib]))
    return finals_and_outputs(calls)


def connection_outlives_caller(directory: str) -> dict:
    """Start a job, hand the connection to a child of ours that keeps it open, and die: the
    broker saw no hang-up before, and the job ran on (HTCondor's hard kill kills the wrapper;
    a process it left behind in a cgroup HTCondor does not clean, or a job of its own, would
    keep the job alive)."""
    sock, _out = run_call(directory, ["/bin/sleep", "300"])
    first = next(replies(sock))
    if os.fork() == 0:  # the child: holds the connection for 60 s, reads nothing
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the test reads our output to its end: not the child's
            os.dup2(devnull, fd)
        time.sleep(60)
        os._exit(0)
    return {"first": first}


def kill_held_job(directory: str) -> dict:
    """Our job held while we are stopped, then its main process killed by a second process of
    ours: were the job held in systemd's freezer, systemd would start the unit's ExecStopPost
    process in the frozen cgroup, where it freezes before its exec, and systemd >= 255 waits
    for that exec: PID 1 hangs, for every user of the node. (The caller is a child of ours:
    whoever started us would stop with it.)"""
    result = os.path.join(directory, "result")
    caller = os.fork()
    if caller == 0:
        try:
            outcome = stop_caller_and_kill_job(directory)
        except Exception as exc:  # noqa: BLE001 - said in the verdict
            outcome = {"error": repr(exc)}
        with open(result, "w") as f:
            json.dump(outcome, f)
        os._exit(0)
    os.waitpid(caller, 0)
    with open(result) as f:
        return json.load(f)


def stop_caller_and_kill_job(directory: str) -> dict:
    sock, first, job = job_with_pid(directory, 300)
    if job is None:
        return {"first": first, "error": "the job never started"}
    caller = os.getpid()
    report = os.path.join(directory, "held")
    if os.fork() == 0:  # the second process: waits until the broker holds the job, kills it
        held = ""
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:
            held = how_held(job)
            time.sleep(0.05)
        with open(report, "w") as f:
            f.write(held or "not held")
        os.kill(job, signal.SIGKILL)
        time.sleep(1)
        os.kill(caller, signal.SIGCONT)
        os._exit(0)
    os.kill(caller, signal.SIGSTOP)  # as HTCondor's procd suspends the wrapper (cgroup v1)
    reply = final(sock)
    sock.close()
    return {"first": first, "held": read(report), "final": reply}


def how_held(pid: int) -> str:
    """'frozen' (its cgroup's freezer), 'stopped' (SIGSTOP), or '' (running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return "stopped"
        with open(f"/proc/{pid}/cgroup") as f:
            path = f.read().strip().split("::", 1)[-1]
        with open(f"/sys/fs/cgroup{path}/cgroup.events") as f:
            return "frozen" if "frozen 1" in f.read() else ""
    except (OSError, IndexError):
        return ""


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


ATTACKS = {
    "isolate-named-path": isolate_named_path,
    "isolate": isolate,
    "broker-as-stdin": broker_as_stdin,
    "hold-connections": hold_connections,
    "signal-flood": signal_flood,
    "three-jobs": three_jobs,
    "two-writers": two_writers,
    "connection-outlives-caller": connection_outlives_caller,
    "kill-held-job": kill_held_job,
}


if __name__ == "__main__":
    result = ATTACKS[sys.argv[1]](*sys.argv[2:])
    if result is not None:
        print(json.dumps(result))
