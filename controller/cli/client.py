"""The CLI's side of the REST API: the public client (``controller.client``) plus one-line failures.

The CLI never talks HTTP itself: ``Api`` wraps ``controller.client.Client`` (URL and token found as
``controller.client.config`` says) and keeps the reply as plain JSON for the tables it prints.
Every failure is a ``controller.client.PyrecoverError`` whose text is the one line ``fail`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from controller.client import Client, PyrecoverError, load_config, resolve, save_config
from controller.client.config import DEFAULT_URL
from controller.client.errors import error_for
from controller.settings import default_data_dir

__all__ = [
    "DEFAULT_URL",
    "Api",
    "CliError",
    "default_data_dir",
    "fail",
    "format_http_error",
    "items",
    "load_config",
    "save_config",
]

CliError = PyrecoverError
"""What a command raises for a user-facing failure: printed as one line, exit status 1."""
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def format_http_error(resp: httpx.Response) -> str:
    """One line for an error reply; a 422 lists every rejected field (``training.steps: must be > 0``)."""
    return str(error_for(resp))


@dataclass
class Api:
    """The public client, answering in plain JSON (what the CLI's tables print). Each call opens and
    closes its own connection: a CLI command makes a handful of calls, and nothing is left open."""

    url: str
    token: str | None = None
    timeout: float = 15.0
    transport: httpx.BaseTransport | None = None

    @classmethod
    def resolve(cls, url: str | None, token: str | None, data_dir: Path | None = None) -> Api:
        connection = resolve(url, token, data_dir)
        return cls(url=connection.url, token=connection.token)

    def _client(self) -> Client:
        return Client(
            self.url, self.token, timeout=self.timeout, transport=self.transport, data_dir=_NO_CONFIG
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._client() as client:
            return client.request(method, path, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def run_id(self, ref: str) -> int:
        """A run given by id or by name."""
        with self._client() as client:
            return client.run_id(ref)


_NO_CONFIG = Path("/nonexistent")
"""The connection is already resolved: the client must not read cli.json again."""


def items(page: Any) -> list[dict[str, Any]]:
    """The rows of a list reply, paginated (``{"items": [...]}``) or plain."""
    if isinstance(page, dict):
        return list(page.get("items", []))
    return list(page or [])
