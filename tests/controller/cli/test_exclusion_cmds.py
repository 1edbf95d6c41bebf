"""``pyrecover exclusions``: the list through a real served controller, and an admin's --clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.db.models import NodeExclusion
from shared.roles import Role
from tests.controller.client.conftest import Live, live

__all__ = ["live"]
runner = CliRunner()


def cli(live: Live, token: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--url", live.url, "--token", token])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(autouse=True)
def _no_saved_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path / "elsewhere"))


def test_list_then_clear_as_admin_and_a_user_may_not_clear(live: Live) -> None:
    admin = live.api.user
    run_id = live.api.create("excl")["id"]
    assert cli(live, admin, "exclusions", "excl") == (0, "run excl: no node is excluded")
    now = datetime.now(UTC)
    with live.api.factory() as s:
        s.add(NodeExclusion(run_id=run_id, host="vm-2", reason="node_fail", attempt=3, created_at=now,
                            expires_at=now + timedelta(hours=6)))  # fmt: skip
        s.commit()
    code, out = cli(live, admin, "exclusions", "excl")
    assert code == 0 and "vm-2" in out and "node_fail" in out
    viewer = live.api.token("vera", role=Role.VIEWER)
    code, out = cli(live, viewer, "exclusions", "excl", "--clear")
    assert code == 1 and "vm-2" not in out
    assert cli(live, admin, "exclusions", "excl", "--clear") == (0, "run excl: exclusion list cleared")
    assert cli(live, admin, "exclusions", "excl") == (0, "run excl: no node is excluded")
