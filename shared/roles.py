"""Roles of the controller's users and what each may do: the contract the API, the CLI and the
dashboard apply. docs/architecture.md ("Who may do what") has the whole table.

* ``admin``: every run, every user and every token.
* ``user``: creates runs; reads and acts on their own runs and on runs shared with them.
* ``viewer``: reads the runs shared with them; changes nothing.

With ``Settings.users_read_all_runs`` users and viewers also *read* every run (acting stays as
above). Everything else answers 404 when it names a run the caller may not read, so ids never
tell an outsider which runs exist.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    VIEWER = "viewer"


RUN_CREATING_ROLES = frozenset({Role.ADMIN, Role.USER})
"""May create runs (and act on the runs they may act on)."""
ALL_RUNS_ROLES = frozenset({Role.ADMIN})
"""Read and act on every run, manage users and tokens."""
DEFAULT_ROLE = Role.USER
"""What ``pyrecover token create --name NAME`` gives a new user (the first user is an admin)."""

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_USER_NAME_RE = re.compile(USER_NAME_PATTERN)


def validate_user_name(name: str) -> str:
    """``name`` if it is a valid user name, else ``ValueError`` saying what is allowed."""
    if not _USER_NAME_RE.fullmatch(name):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name
