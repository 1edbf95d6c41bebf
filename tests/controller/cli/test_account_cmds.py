"""``pyrecover user create|list|set|login-link`` on a fresh database (the token commands are
attacked in tests/security/test_dashboard_sessions.py and test_ownership.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.db import make_engine, make_session_factory
from controller.services.sessions import redeem_login_code
from controller.services.users import get_user
from controller.settings import Settings

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("PYRECOVER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return tmp_path


def test_user_create_set_and_list(data_dir: Path) -> None:
    assert "role admin" in runner.invoke(app, ["user", "create", "root"]).output
    made = runner.invoke(app, ["user", "create", "vic", "--role", "viewer", "--active-run-limit", "2"])
    assert made.exit_code == 0 and "role viewer" in made.output
    assert runner.invoke(app, ["user", "create", "vic"]).exit_code == 1
    changed = runner.invoke(app, ["user", "set", "vic", "--role", "user", "--active-run-limit", "5"])
    assert changed.exit_code == 0 and "role user, active-run limit 5" in changed.output
    lifted = runner.invoke(app, ["user", "set", "vic", "--no-limit"])
    assert "active-run limit none" in lifted.output
    both = runner.invoke(app, ["user", "set", "vic", "--no-limit", "--active-run-limit", "1"])
    assert both.exit_code == 1 and "contradict" in both.output
    last = runner.invoke(app, ["user", "set", "root", "--role", "viewer"])
    assert last.exit_code == 1 and "only admin" in last.output
    missing = runner.invoke(app, ["user", "set", "nobody", "--role", "user"])
    assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output
    listed = runner.invoke(app, ["user", "list"]).output
    assert re.search(r"root\s+│\s+admin", listed) and re.search(r"vic\s+│\s+user\s+│\s+0\s+│\s+none", listed)
    assert runner.invoke(app, ["user", "set", "vic", "--role", "boss"]).exit_code == 2


def test_login_link_prints_a_one_time_link_to_the_public_url(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.invoke(app, ["user", "create", "root"])
    monkeypatch.setenv("PYRECOVER_PUBLIC_URL", "https://ctl.example.org")
    printed = runner.invoke(app, ["user", "login-link", "root"])
    assert printed.exit_code == 0, printed.output
    match = re.fullmatch(r"https://ctl\.example\.org/login/link\?code=([\w-]+)", printed.output.strip())
    assert match is not None, printed.output
    factory = make_session_factory(make_engine(Settings().database_url))
    with factory() as s:
        user = redeem_login_code(s, match[1])
        assert user is not None and user.id == get_user(s, "root").id
        assert redeem_login_code(s, match[1]) is None
    assert runner.invoke(app, ["user", "login-link", "nobody"]).exit_code == 1
