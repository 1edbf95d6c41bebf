"""What W&B may take from the worker's environment, and what it may not.

W&B turns every ``WANDB_*`` variable into a setting, and some of them act: ``WANDB_X_EXECUTABLE``
names the program it starts, ``WANDB_CONFIG_PATHS`` reads files into the run's config (uploaded
online), ``WANDB_DIR`` / ``WANDB_CACHE_DIR`` / ``WANDB_DATA_DIR`` / ``WANDB_ARTIFACT_DIR`` choose where
it writes, ``WANDB_RUN_ID`` / ``WANDB_RESUME`` choose the run, ``WANDB_BASE_URL`` where the API key is
sent, ``WANDB_SERVICE`` attaches to another process's service. It also reads a settings file from
``$WANDB_CONFIG_DIR`` or ``$HOME/.config/wandb``. A run's environment is partly the user's (the
run's ``resources.env``), so before W&B is imported the worker

- removes every ``WANDB_*`` and ``_WANDB*`` variable except ``WANDB_API_KEY``, ``WANDB_PROJECT``,
  ``WANDB_ENTITY`` and ``WANDB_MODE``, each kept only if it has the expected form (``NETRC`` goes too:
  the key store is the account's own ``~/.netrc``);
- points W&B's cache, data, artifact and config directories into the run's tracker directory;
- takes the settings file from the service account's home as the password database knows it, not
  from ``$HOME``; the run directory, id and executable are passed to ``wandb.init`` explicitly
  (``worker.trackers.backends.WandbBackend``).

An API key is sent to the W&B server named by that settings file (default api.wandb.ai), never to
an address from the environment. The default mode is ``offline``: nothing leaves the machine unless
``WANDB_MODE=online``.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

DEFAULT_PROJECT = "pyrecover"
Mode = Literal["offline", "online", "disabled"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,512}$")
_KEPT: dict[str, re.Pattern[str]] = {
    "WANDB_API_KEY": _KEY_RE,
    "WANDB_PROJECT": _NAME_RE,
    "WANDB_ENTITY": _NAME_RE,
    "WANDB_MODE": re.compile(r"^(offline|online|disabled)$"),
}
_PINNED_DIRS = {
    "WANDB_CACHE_DIR": "cache",
    "WANDB_DATA_DIR": "data",
    "WANDB_ARTIFACT_DIR": "artifacts",
    "WANDB_CONFIG_DIR": "config",
}
_ALSO_REMOVED = ("NETRC",)


@dataclass(frozen=True)
class WandbEnv:
    """The W&B settings the worker allows: where, as whom, and whether anything goes online."""

    mode: Mode
    project: str
    entity: str | None
    system_settings: Path
    """The service account's own W&B settings file (it may name a self-hosted server)."""
    ignored: tuple[str, ...]
    """Names of the variables that were removed (for one warning; values are never logged)."""
    dirs: tuple[Path, ...]
    """W&B's cache, data, artifact and config directories (in the run's tracker directory)."""


def account_home() -> Path:
    """The home directory of the account running the worker, from the password database."""
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # no passwd entry (some containers): a path that holds no settings file
        return Path("/nonexistent")


def prepare_wandb_env(environ: MutableMapping[str, str], *, state_dir: Path) -> WandbEnv:
    """Make ``environ`` (the process's, before W&B is imported) safe for W&B; returns what is allowed."""
    ignored: list[str] = []
    for key in sorted(environ):
        if not key.startswith(("WANDB_", "_WANDB")) and key not in _ALSO_REMOVED:
            continue
        if key in _PINNED_DIRS:  # replaced below
            del environ[key]
            continue
        pattern = _KEPT.get(key)
        if pattern is not None and pattern.fullmatch(environ[key]):
            continue
        ignored.append(key)
        del environ[key]
    for key, sub in _PINNED_DIRS.items():
        environ[key] = str(state_dir / sub)  # created when W&B starts (not before the first step)
    return WandbEnv(
        mode=cast(Mode, environ.get("WANDB_MODE", "offline")),  # checked against _KEPT above
        project=environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        entity=environ.get("WANDB_ENTITY"),
        system_settings=account_home() / ".config" / "wandb" / "settings",
        ignored=tuple(ignored),
        dirs=tuple(state_dir / sub for sub in _PINNED_DIRS.values()),
    )
