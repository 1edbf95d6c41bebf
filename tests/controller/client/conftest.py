"""The real app served by uvicorn on loopback, with a user token: what the public client talks to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.api import create_app
from tests.controller.api.conftest import Api, make_api
from tests.live_server import free_port, serve


@dataclass
class Live:
    url: str
    api: Api
    """The same app in process, for arranging state (attempts, tokens)."""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    port = free_port()
    for api in make_api(tmp_path, allowed_hosts=[f"127.0.0.1:{port}"]):
        app = create_app(api.settings, session_factory=api.factory)
        with serve(app, port) as url:
            yield Live(url=url, api=api)
