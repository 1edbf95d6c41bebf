"""A job environment file: ``export NAME='value'`` lines, written 0600, read back exactly.

Where secret environment values live (never in the database, the sbatch script or an API reply):
the controller writes them once when a run is created (``controller/services/secrets.py``) and,
per attempt, next to the attempt's sbatch script, which sources it (``. <file>``). Every value is
``shlex.quote``d, so bash reads it back literally; ``read`` parses the same lines without a shell.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from shared.env_policy import ENV_NAME_RE


def render(values: Mapping[str, str]) -> str:
    lines = []
    for name in sorted(values):
        value = values[name]
        if not ENV_NAME_RE.fullmatch(name) or any(c in value for c in "\n\r\x00"):
            raise ValueError(f"environment variable {name!r} cannot go into a job environment file")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines)


def write(path: Path, values: Mapping[str, str]) -> Path:
    """Write ``values`` to ``path`` with mode 0600, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the file may have existed with wider permissions
        os.write(fd, render(values).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read(path: Path) -> dict[str, str]:
    """The values of a file ``write`` made; ``ValueError`` for any line it would not have written."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = shlex.split(line)
        if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
            raise ValueError(f"{path}:{number}: not an 'export NAME=value' line")
        name, _, value = words[1].partition("=")
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{path}:{number}: {name!r} is not a variable name")
        out[name] = value
    return out
