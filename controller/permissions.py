"""File modes of what the controller keeps: nobody but its own account reads them.

The data dir holds the database (job specs, event logs, token hashes), the run folders (worker
token files, secret environment files, sbatch scripts, attempt logs) and, by default, the
checkpoints. On a login node other accounts must see none of it:

* ``PRIVATE_UMASK`` (0077) is set once at start-up of every ``pyrecover`` command
  (``controller/cli/__init__.py:main``: ``serve``, ``demo``, ``db upgrade`` ...), so everything
  the controller creates — and every job it starts, which inherits it (SLURM passes the
  submitter's umask to the job as ``SLURM_UMASK``) — is 0600 / 0700;
* files that hold secrets are created 0600 explicitly whatever the umask (token files, secret
  environment files, sbatch scripts, the local backend's logs);
* ``secure_data_dir`` makes an existing data dir 0700 and its SQLite files 0600 when the
  controller starts (a data dir made by an older version was 0755 with a 0644 database).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy.engine import make_url

PRIVATE_UMASK = 0o077
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def set_private_umask() -> int:
    """Make new files 0600 and directories 0700 in this process and its children; the old umask."""
    return os.umask(PRIVATE_UMASK)


def secure_data_dir(data_dir: Path, database_url: str) -> None:
    """``data_dir`` (created if missing) 0700, its SQLite database files 0600."""
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _restrict(data_dir, 0o700)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        for suffix in SQLITE_SUFFIXES:
            _restrict(Path(url.database + suffix), 0o600)


def _restrict(path: Path, mode: int) -> None:
    # Only ever narrows, and only what this account owns (a shared parent is not ours to change).
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o777 & ~mode:
            os.chmod(path, st.st_mode & 0o777 & mode)
