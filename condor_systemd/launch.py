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
        if command and not _in_process_only(options):
            from . import client

            if client.broker_installed():
                return client.run(options, command)
    from .cli import main as cli_main

    return cli_main(argv)


def _in_process_only(options: list[str]) -> bool:
    """Asked for something only the in-process path does: help, or the psutil fallback."""
    for i, option in enumerate(options):
        if option in ("-h", "--help") or option == "--backend=psutil":
            return True
        if option == "--backend" and options[i + 1:i + 2] == ["psutil"]:
            return True
    return False
