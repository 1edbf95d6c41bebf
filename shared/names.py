"""Validation of names that end up in paths and sbatch scripts.

Run names become directory names and SLURM job names, so they are restricted to a conservative
alphabet: no shell metacharacters, no path separators, no leading dot or dash, no '..'.
``RUN_NAME_PATTERN`` is the whole rule (the OpenAPI document states it as is); the length comes
with it as ``RUN_NAME_MAX_CHARS``.
"""

from __future__ import annotations

import re

RUN_NAME_MAX_CHARS = 63
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.?$"
"""A letter or digit, then letters, digits, '_', '-' and single dots (never two in a row)."""
_RUN_NAME_RE = re.compile(RUN_NAME_PATTERN, re.ASCII)


def validate_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run name, else raise ``ValueError`` saying what is allowed."""
    if len(name) > RUN_NAME_MAX_CHARS or not _RUN_NAME_RE.fullmatch(name):
        raise ValueError(
            f"must be 1-{RUN_NAME_MAX_CHARS} characters of letters, digits, '.', '_' or '-', start with a "
            "letter or digit, and not contain '..'"
        )
    return name
