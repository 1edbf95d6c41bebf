"""Path traversal: run names, checkpoint and data paths, reported checkpoint paths and URLs.

Every directory pyrecover derives from user input is ``<root>/<run name>/...`` or
``<data dir>/runs/<run id>/...``: a run name that cannot hold ``/`` or ``..`` and paths without
``..`` components keep them confined. Each case here is refused with 422 (and stores nothing) or
provably stays below its root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from controller.db.models import Checkpoint, Run, WorkerEventRecord
from controller.reconciler.jobspec import resolve_checkpoint_dir, run_dir
from controller.settings import Settings
from controller.web.rendering import STATIC_DIR
from shared.names import RUN_NAME_PATTERN, validate_run_name
from shared.paths import run_checkpoint_dir, step_dir
from shared.schemas import TrainingSpec
from shared.states import AttemptState
from tests.security.conftest import Api, progress, report, run_body

NAMES = [
    "..",
    ".",
    "../etc",
    "a/../../b",
    "a/b",
    "/abs",
    ".hidden",
    "a..b",
    "..a",
    "a\\..\\b",
    "%2e%2e",
    "%2e%2e%2fetc",
    "a\x00b",
    "a\nb",
    "~root",
    "",
    "-rf",
]
PATHS = [
    "..",
    "../secrets",
    "data/../../etc/passwd",
    "/srv/data/../../../etc",
    "a//..//b",
    "data/..",
    "./../x",
    "data\n/etc",
    "data\x00",
    "~/x",
    "$HOME/x",
    "data/%2e%2e/x",
]
PATH_FIELDS = ["dataset", "tokenizer_name_or_path", "checkpoint_dir"]


def _counts(api: Api) -> tuple[int, int, int]:
    with api.factory() as s:
        return tuple(  # type: ignore[return-value]
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Run, Checkpoint, WorkerEventRecord)
        )


def test_run_names_that_could_leave_their_directory_are_refused(api: Api) -> None:
    for name in NAMES:
        r = api.client.post("/api/v1/runs", json=run_body(name), headers=api.h())
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "name", (name, r.text)
    assert _counts(api) == (0, 0, 0)


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_paths_with_dot_dot_or_shell_characters_are_refused(api: Api, field: str) -> None:
    for value in PATHS:
        r = api.client.post("/api/v1/runs", json=run_body("p", **{field: value}), headers=api.h())
        assert r.status_code == 422, (field, value, r.text)
        assert r.json()["detail"][0]["field"] == f"training.{field}", r.text
    assert _counts(api) == (0, 0, 0)


def test_url_path_traversal_finds_nothing(api: Api) -> None:
    for path in (
        "/api/v1/runs/..%2f..%2fetc",
        "/api/v1/runs/1%2f..%2f2",
        "/api/v1/runs/%2e%2e",
        "/api/v1/runs/-1",
        "/api/v1/runs/1e3",
    ):
        r = api.client.get(path, headers=api.h())
        assert r.status_code in (404, 422), (path, r.status_code)
    secret = Path(__file__).resolve()
    for path in (
        "/static/../../../etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/settings.py",
        f"/static/{os.path.relpath(secret, STATIC_DIR)}",
        "/static//etc/passwd",
        f"/static/{secret}",
    ):
        r = api.client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "root:" not in r.text and "import" not in r.text


BAD_REPORTED = [
    "/ckpt/run/../../../etc/passwd",
    "../step-5",
    "ckpt/run/step-5/..",
    "ckpt\\..\\..\\windows",
    "/ckpt/run/step-5\n/etc/cron.d/x",
    "/ckpt/run/step-5\x00",
    "/ckpt/" + "a" * 5000,
]


def _ckpt(seq: int, path: str, key: str = "path") -> dict[str, Any]:
    if key == "resumed_from":
        return {
            "type": "started",
            "seq": seq,
            "time": 1.8e9,
            "step": 10,
            "world_size": 1,
            "resumed_from": path,
            "resume_step": 10,
        }
    return {
        "type": "checkpoint_committed",
        "seq": seq,
        "time": 1.8e9,
        "step": 10,
        "path": path,
        "format": "dcp",
        "size_bytes": 1,
        "save_seconds": 1.0,
    }


@pytest.mark.parametrize("key", ["path", "resumed_from"])
def test_reported_checkpoint_paths_with_dot_dot_or_control_characters_are_refused(api: Api, key: str) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id, state=AttemptState.RUNNING)
    before = _counts(api)
    for i, path in enumerate(BAD_REPORTED):
        batch = report(progress(100 + i, 1), _ckpt(i, path, key))  # one bad event refuses the batch
        r = api.client.post(f"/api/v1/runs/{run_id}/reports", json=batch, headers=api.h(token))
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["field"] == f"events[1].{key}", r.text
    assert _counts(api) == before, "a refused batch stored something"
    ok = api.client.post(
        f"/api/v1/runs/{run_id}/reports",
        json=report(_ckpt(50, api.step_dir("run-1", 10), key)),
        headers=api.h(token),
    )
    assert ok.status_code == 200 and ok.json()["accepted"] == 1


@settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(
    name=st.from_regex(RUN_NAME_PATTERN, fullmatch=True),
    parts=st.lists(st.from_regex(r"[A-Za-z0-9_.+@:=,-]{1,12}", fullmatch=True), min_size=1, max_size=4),
    step=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_every_accepted_name_and_relative_dir_stays_below_the_roots(
    name: str, parts: list[str], step: int
) -> None:
    """Property: whatever a user may submit, the run's checkpoint folders resolve below the admin's
    checkpoint root, and its run folder below the data dir."""
    try:
        validate_run_name(name)
        training = TrainingSpec(
            dataset="d",
            tokenizer_name_or_path="t",
            training_steps=1,
            lr_warmup_steps=0,
            checkpoint_dir="/".join(parts),
        )
    except ValueError:
        return  # refused: nothing to confine
    root = Path("/srv/ckpt-root")
    resolved = resolve_checkpoint_dir(_Settings(root), training.checkpoint_dir)
    for path in (run_checkpoint_dir(resolved, name), step_dir(resolved, name, step)):
        normal = Path(os.path.normpath(path))
        assert normal.is_relative_to(root), (training.checkpoint_dir, name, normal)
        assert normal.is_relative_to(Path(os.path.normpath(resolved))), (name, normal)
    assert Path(os.path.normpath(run_dir(Path("/srv/data"), 7))).is_relative_to("/srv/data")


class _Settings:
    """What ``resolve_checkpoint_dir`` reads of the settings (a real ``Settings`` per example is slow)."""

    def __init__(self, root: Path) -> None:
        self.checkpoint_root = root
        self.data_dir = Path("/srv/data")

    def resolve_checkpoint_dir(self, checkpoint_dir: str) -> Path:
        return Settings.resolve_checkpoint_dir(self, checkpoint_dir)  # type: ignore[arg-type]
