"""Where the job's command is: argv[0] resolved the way a shell would, in the caller's PATH.

Its own module because the thin client resolves the command itself (in its own view of the
filesystem, with its own permissions) and must not import spec.py's parsers to do it.
"""

from __future__ import annotations

import os

from .errors import CommandNotExecutable, CommandNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def resolve_command(command: str, environment: Mapping[str, str], cwd: str) -> str:
    """The absolute path the job's argv[0] names, searched in the job's own PATH like a shell."""
    if "/" in command:
        candidates = [os.path.join(cwd, command)]
    else:
        search = environment.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [os.path.join(d or ".", command) for d in search.split(":")]
        candidates = [c if os.path.isabs(c) else os.path.join(cwd, c) for c in candidates]
    found_unexecutable = None
    for path in candidates:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return os.path.normpath(path)
            found_unexecutable = found_unexecutable or path
        elif os.path.isdir(path) and "/" in command:
            raise CommandNotExecutable(f"{command}: is a directory")
    if found_unexecutable:
        raise CommandNotExecutable(f"{command}: permission denied (not executable)")
    raise CommandNotFound(f"{command}: command not found")
