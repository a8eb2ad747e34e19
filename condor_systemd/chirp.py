"""The job's usage into its HTCondor job ad: Chirp's set_job_attr_delayed, spoken by the wrapper.

A job in its own unit has left the slot's cgroup, which is what HTCondor measures: the job ad's
RemoteUserCpu, ResidentSetSize... then describe the wrapper, not the job. At the job's end the
wrapper (which runs in the starter's environment) sends the record's figures to the starter's
Chirp proxy ($_CONDOR_CHIRP_CONFIG: "host port cookie"); the starter puts them in the job ad with
its final update (CHIRP_DELAYED_UPDATE_PREFIX admits Chirp*, at most
CHIRP_DELAYED_UPDATE_MAX_ATTRS = 100 names, each value at most 993 characters). Names and meanings:
README "Running under HTCondor".

The protocol (HTCondor's src/condor_chirp/PROTOCOL): LF-terminated request lines of words
separated by blanks, a blank or backslash inside a word escaped by a backslash; each answer is
one line with an integer, negative for an error. `cookie COOKIE` authenticates first.

Our own client: one connection for every attribute, nothing imported beyond the socket.
condor_chirp would be one process per attribute; htchirp is not packaged by Debian.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # (the thin client imports this module: no typing at run time)
    from collections.abc import Callable

CONFIG_VARIABLE = "_CONDOR_CHIRP_CONFIG"
TIMEOUT = 5.0  # the proxy is the starter on this node; a starter that hangs must not hold us
MAX_VALUE = 993
MAX_ATTRIBUTES = 100
ULOG_MAX = 128  # the starter keeps this much of a generic event's text


class ChirpError(Exception):
    """Could not publish; one line saying why."""


def _word(text: str) -> str:
    out = []
    for char in text:
        if char in " \t\\":
            out.append("\\")
        out.append(char)
    return "".join(out)


def publish(config_path: str, attributes: list[tuple[str, str]],
            log_line: str | None = None) -> None:
    """Send each (Name, ClassAd expression) with set_job_attr_delayed, and log_line as a
    generic event of the job's user log (`ulog`: only where the job ad's WantRemoteUpdates,
    or WantIOProxy, lets the starter take it); raise ChirpError."""
    try:
        with open(config_path, encoding="utf-8") as f:
            host, port, cookie = f.readline().split()[:3]
        address = (host, int(port))
    except (OSError, ValueError) as exc:
        raise ChirpError(f"cannot read the Chirp configuration {config_path}: {exc}") from None
    import socket

    try:
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            answers = sock.makefile("r", encoding="ascii", errors="replace")
            _ask(sock, answers, f"cookie {_word(cookie)}", "the Chirp cookie")
            for name, value in attributes[:MAX_ATTRIBUTES]:
                if len(value) > MAX_VALUE or "\n" in value:
                    raise ChirpError(f"{name}: value too long for Chirp")
                _ask(sock, answers, f"set_job_attr_delayed {_word(name)} {_word(value)}", name)
            if log_line:
                _ask(sock, answers, f"ulog {_word(log_line[:ULOG_MAX])}", "the user log event")
    except OSError as exc:
        raise ChirpError(f"Chirp proxy {host}:{port}: {exc.strerror or exc}") from None


def _ask(sock, answers, line: str, what: str) -> None:  # noqa: ANN001
    sock.sendall(line.encode("utf-8") + b"\n")
    answer = answers.readline().strip()
    if not answer:
        raise ChirpError(f"the Chirp proxy closed the connection at {what}")
    try:
        status = int(answer)
    except ValueError:
        raise ChirpError(f"the Chirp proxy answered {answer[:40]!r} to {what}") from None
    if status < 0:
        raise ChirpError(f"the Chirp proxy refused {what} (error {status})")


def publish_usage(environ: dict[str, str],
                  attributes: Callable[[], list[tuple[str, str]]]) -> str | None:
    """Under HTCondor ($_CONDOR_CHIRP_CONFIG), the record's attributes into the job ad and,
    where the job ad lets the starter take it, its line into the user log. The one-line reason
    it failed (for the journal: it never changes the job's status), or None."""
    path = environ.get(CONFIG_VARIABLE)
    if not path or not os.path.isabs(path):
        return None
    from .jobad import wants_remote_updates

    pairs = attributes()
    try:
        publish(path, pairs, log_line(pairs) if wants_remote_updates(environ) else None)
    except ChirpError as exc:
        return f"the usage did not reach the job ad: {exc}"
    return None


def log_line(attributes: list[tuple[str, str]]) -> str:
    """The record in one user-log line (at most ULOG_MAX characters)."""
    values = dict(attributes)

    def figure(name: str) -> str:
        return values.get(f"ChirpCondorSystemd{name}", "undefined")

    line = (f"condor-systemd: cpu {figure('CpuUserSeconds')} s user "
            f"{figure('CpuSystemSeconds')} s system, peak memory {figure('MemoryPeakMB')} MB")
    if figure("OomKilled") == "true":
        line += ", killed: out of memory"
    return line[:ULOG_MAX]
