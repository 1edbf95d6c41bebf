"""``pyrecover db upgrade`` and ``token create`` on a fresh SQLite database in a temporary data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.db import make_engine, make_session_factory
from controller.services import authenticate_token
from controller.settings import Settings

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("PYRECOVER_DATABASE_URL", "PYRECOVER_HOST", "PYRECOVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    return tmp_path


def test_upgrade_then_token_create_prints_a_working_token_once(data_dir: Path) -> None:
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "up to date" in upgraded.output
    created = runner.invoke(app, ["token", "create", "--name", "alice", "--save"])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[0]
    factory = make_session_factory(make_engine(Settings().database_url))
    with factory() as session:
        assert authenticate_token(session, token) is not None
        assert authenticate_token(session, token + "x") is None
    assert token in (data_dir / "cli.json").read_text()


def test_token_create_on_an_unmigrated_database_is_one_line(data_dir: Path) -> None:
    result = runner.invoke(app, ["token", "create", "--name", "bob"])
    assert result.exit_code == 1
    assert "could not create the token" in result.output and "Traceback" not in result.output
