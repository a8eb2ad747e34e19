"""The `condor-systemd` command's entry point: the thin client when a broker is installed.

`condor-systemd run [OPTIONS] -- CMD...` goes to the broker whenever its socket exists, as root
and as anybody else (client.py), importing nothing else; everything else (`probe`, `broker`,
`--help`, `--backend psutil`, a run without `--`, no broker installed) goes to the full command
line (cli.py), which runs the job in-process.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and "--" in argv:
        split = argv.index("--")
        options, command = argv[1:split], argv[split + 1:]
        taken = take_socket(options)
        if command and taken is not None and not _in_process_only(taken[0]):
            from . import client

            options, chosen = taken
            client.use_socket(chosen)
            if client.broker_installed():
                return client.run(options, command)
    from .cli import main as cli_main

    return cli_main(argv)


def take_socket(options: list[str]) -> tuple[list[str], str | None] | None:
    """The options without --socket PATH, and PATH (None when not given); None when --socket
    has no path (the full command line reports that)."""
    rest: list[str] = []
    chosen: str | None = None
    i = 0
    while i < len(options):
        option = options[i]
        if option == "--socket" or option.startswith("--socket="):
            value = option[len("--socket="):] if "=" in option else \
                (options[i + 1] if i + 1 < len(options) else "")
            if not value:
                return None
            chosen = value
            i += 1 if "=" in option else 2
            continue
        rest.append(option)
        i += 1
    return rest, chosen


def _in_process_only(options: list[str]) -> bool:
    """Asked for something only the in-process path does: help, or the psutil fallback."""
    for i, option in enumerate(options):
        if option in ("-h", "--help") or option == "--backend=psutil":
            return True
        if option == "--backend" and options[i + 1:i + 2] == ["psutil"]:
            return True
    return False
