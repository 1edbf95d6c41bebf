"""Validation of names that end up in paths and sbatch scripts.

Run names become directory names and SLURM job names, so they are restricted to a conservative
alphabet: no shell metacharacters, no path separators, no leading dot or dash.
"""

from __future__ import annotations

import re

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_RUN_NAME_RE = re.compile(RUN_NAME_PATTERN)


def validate_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run name, else raise ``ValueError`` saying what is allowed."""
    if not _RUN_NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', start with a letter or digit, "
            "and not contain '..'"
        )
    return name
