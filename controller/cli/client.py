"""The CLI's REST client: where the controller is, which token to send, and one-line errors.

Connection settings, first found wins: the ``--url`` / ``--token`` flags, the environment
(``PYRECOVER_URL``, ``PYRECOVER_TOKEN``), then ``cli.json`` in the controller's data directory
(``$PYRECOVER_DATA_DIR``, else ``./var``: the same rule ``pyrecover serve`` follows;
``{"url": ..., "token": ...}``, written by ``pyrecover token create --save``), then
``http://127.0.0.1:8000`` without a token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from controller.settings import DEFAULT_PORT
from controller.settings import default_data_dir as default_data_dir

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
CONFIG_NAME = "cli.json"
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def load_config(data_dir: Path) -> dict[str, str]:
    path = data_dir / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    return {k: str(v) for k, v in data.items() if k in ("url", "token") and v}


def save_config(data_dir: Path, **values: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_NAME
    current = load_config(data_dir) | values
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(current, f)
    return path


def format_http_error(resp: httpx.Response) -> str:
    """One line for an error reply; a 422 lists every rejected field (``training.steps: must be > 0``)."""
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc", []) if p not in ("body",)]
            parts.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', 'invalid')}")
        message = "; ".join(parts)
    elif detail is not None:
        message = str(detail)
    else:
        message = resp.text.strip()[:300] or resp.reason_phrase
    return f"HTTP {resp.status_code}: {message}"


@dataclass
class Api:
    """A thin wrapper over httpx that turns every failure into a ``CliError`` with one clear line."""

    url: str
    token: str | None = None
    timeout: float = 15.0
    transport: httpx.BaseTransport | None = None

    @classmethod
    def resolve(cls, url: str | None, token: str | None, data_dir: Path | None = None) -> Api:
        config = load_config(data_dir or default_data_dir())
        return cls(
            url=(url or os.environ.get("PYRECOVER_URL") or config.get("url") or DEFAULT_URL).rstrip("/"),
            token=token or os.environ.get("PYRECOVER_TOKEN") or config.get("token"),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout, transport=self.transport) as client:
                resp = client.request(method, f"/api/v1{path}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the controller at {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            raise CliError(format_http_error(resp))
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def run_id(self, ref: str) -> int:
        """A run given by id or by name."""
        if ref.isdigit():
            return int(ref)
        page = self.get("/runs", name=ref, limit=500)
        for run in items(page):
            if run.get("name") == ref:
                return int(run["id"])
        raise CliError(f"no run named {ref!r}")


def items(page: Any) -> list[dict[str, Any]]:
    """The rows of a list reply, paginated (``{"items": [...]}``) or plain."""
    if isinstance(page, dict):
        return list(page.get("items", []))
    return list(page or [])
