"""Where the controller is and which token to send: flags, environment, then a saved file.

First found wins: the explicit ``url`` / ``token`` arguments (the CLI's ``--url`` / ``--token``), the
environment (``PYRECOVER_URL``, ``PYRECOVER_TOKEN``), then ``cli.json`` in the controller's data
directory (``$PYRECOVER_DATA_DIR``, else ``./var``: the rule ``pyrecover serve`` follows;
``{"url": ..., "token": ...}``, mode 0600, written by ``pyrecover token create --save``), then
``http://127.0.0.1:8000`` without a token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from controller.client.errors import PyrecoverError
from controller.settings import DEFAULT_PORT, default_data_dir

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
CONFIG_NAME = "cli.json"
URL_ENV = "PYRECOVER_URL"
TOKEN_ENV = "PYRECOVER_TOKEN"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    source: str
    """Where the URL came from (named in "cannot reach" errors, so a person knows what to change)."""


def load_config(data_dir: Path) -> dict[str, str]:
    path = data_dir / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PyrecoverError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PyrecoverError(f"{path} must hold a JSON object with url and token")
    return {k: str(v) for k, v in data.items() if k in ("url", "token") and v}


def save_config(data_dir: Path, **values: str) -> Path:
    """Merge ``values`` into ``cli.json`` (created 0600: it holds a token)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_NAME
    current = load_config(data_dir) | values
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(current, f)
    os.chmod(path, 0o600)  # an older file may have had wider permissions
    return path


def resolve(url: str | None = None, token: str | None = None, data_dir: Path | None = None) -> Connection:
    """The connection to use (see the module docstring for the order)."""
    directory = data_dir or default_data_dir()
    config = load_config(directory)
    if url:
        chosen, source = url, "the --url option"
    elif os.environ.get(URL_ENV):
        chosen, source = os.environ[URL_ENV], f"${URL_ENV}"
    elif config.get("url"):
        chosen, source = config["url"], str(directory / CONFIG_NAME)
    else:
        chosen, source = DEFAULT_URL, f"the default (set --url or ${URL_ENV})"
    return Connection(
        url=chosen.rstrip("/"),
        token=token or os.environ.get(TOKEN_ENV) or config.get("token"),
        source=source,
    )
