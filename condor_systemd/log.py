"""Diagnostics: to the journal (and --log-file), to stderr only when stderr is a terminal.

Under HTCondor the wrapper's stdout/stderr are the job's output files, so nothing condor-systemd
says may land there during a normal run. Journal entries carry OBJECT_SYSTEMD_UNIT=<the job's
unit>, so that (as root) ``journalctl -u condor-job-<id>`` shows them next to systemd's own lines.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "condor-systemd"
ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7


class Log:
    def __init__(self, log_file: str | None = None, to_tty: bool | None = None) -> None:
        self.unit: str | None = None
        self.job_id: str | None = None
        self._log_file = log_file
        self._to_tty = sys.stderr.isatty() if to_tty is None else to_tty
        self._journal: Any = None  # a socket, opened on first use

    def error(self, message: str) -> None:
        self.emit(ERR, message)

    def warning(self, message: str) -> None:
        self.emit(WARNING, message)

    def notice(self, message: str) -> None:
        self.emit(NOTICE, message)

    def info(self, message: str) -> None:
        self.emit(INFO, message)

    def emit(self, priority: int, message: str) -> None:
        self._to_journal(priority, message)
        if self._log_file:
            self._append(priority, message)
        if self._to_tty and priority <= NOTICE:
            print(f"condor-systemd: {message}", file=sys.stderr)

    def _to_journal(self, priority: int, message: str) -> None:
        fields = [f"MESSAGE={message}", f"PRIORITY={priority}", f"SYSLOG_IDENTIFIER={IDENTIFIER}"]
        if self.unit:
            fields.append(f"OBJECT_SYSTEMD_UNIT={self.unit}")
        if self.job_id:
            fields.append(f"CONDOR_JOB_ID={self.job_id}")
        data = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace") + b"\n"
        try:
            if self._journal is None:
                import socket

                self._journal = socket.socket(socket.AF_UNIX,
                                              socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._journal.sendto(data, JOURNAL_SOCKET)
        except OSError:
            pass  # no journal here: diagnostics are best-effort, never fatal

    def _append(self, priority: int, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        who = f" {self.unit}" if self.unit else ""
        try:
            with open(self._log_file, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
                f.write(f"{stamp} {IDENTIFIER}[{os.getpid()}]{who}: {message}\n")
        except OSError:
            pass
