"""Bad input → 422 naming the field, and nothing stored; body size limit → 413."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.db.models import Event, Run
from tests.controller.api.conftest import Api, make_api, run_body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = run_body("valid-name")
    section, _, key = path.rpartition(".")
    target: Any = body
    for part in section.split(".") if section else []:
        target = target.setdefault(part, {})
    target[key] = value
    return body


CASES = [
    ("name", "bad name", "name"),
    ("name", "../etc", "name"),
    ("name", "-leading-dash", "name"),
    ("name", "x" * 64, "name"),
    ("training.training_steps", -5, "training.training_steps"),
    ("training.training_steps", 0, "training.training_steps"),
    ("resources.scheduler", "kubernetes", "resources.scheduler"),
    ("training.dataset", "data/$(rm -rf ~).parquet", "training.dataset"),
    ("training.checkpoint_dir", "ckpt; reboot", "training.checkpoint_dir"),
    ("training.tokenizer_name_or_path", "tok`id`", "training.tokenizer_name_or_path"),
    ("resources.partition", "gpu && curl x", "resources.partition"),
    ("resources.env", {"OK_NAME": "a\nb"}, "resources.env"),
    ("resources.env", {"BAD-NAME": "1"}, "resources.env"),
    ("resources.env", {"PYRECOVER_TOKEN_FILE": "/x"}, "resources.env"),
    ("resources.extra_sbatch_args", ["--wrap=rm -rf /"], "resources.extra_sbatch_args"),
    ("resources.time_limit", "forever", "resources.time_limit"),
    ("training.surprise", 1, "training.surprise"),
    ("training.parallelism", "zero3", "training.parallelism"),
    ("training.gradient_accumulation_steps", 0, "training.gradient_accumulation_steps"),
    ("training.gradient_accumulation_steps", 3, "training"),  # batch 8 does not split into 3
    ("resources.gpu_type", "h1000", "resources.gpu_type"),
    ("resources.gpu_type", "h100-80gb; rm -rf /", "resources.gpu_type"),
    ("resources.gpu_memory", -1, "resources.gpu_memory"),
    ("resources.gpu_memory", 1e9, "resources.gpu_memory"),
    ("resources.gpu_type", "h100-80gb", "resources"),  # a GPU named, but gpus_per_node is 0
]


@pytest.mark.parametrize(("path", "value", "field"), CASES)
def test_bad_run_is_422_naming_the_field_and_stores_nothing(
    api: Api, path: str, value: Any, field: str
) -> None:
    r = api.client.post("/api/v1/runs", json=_with(path, value), headers=api.h())
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in [d["field"] for d in body["detail"]], body
    assert body["message"].startswith(field) or f"; {field}" in body["message"]
    assert all("input" not in d for d in body["detail"])  # never echo the rejected value back
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
        assert s.scalar(select(func.count()).select_from(Event)) == 0


def test_bad_report_is_422_with_the_event_index(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    bad = {
        "attempt": 1,
        "events": [
            {"type": "progress", "seq": -1, "time": 1.0, "step": 1, "loss": 1, "lr": 1, "tokens_seen": 1}
        ],
    }
    r = api.client.post(f"/api/v1/runs/{run_id}/reports", json=bad, headers=api.h(token))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events[0].seq"
    empty = api.client.post(
        f"/api/v1/runs/{run_id}/reports", json={"attempt": 1, "events": []}, headers=api.h(token)
    )
    assert empty.status_code == 422 and empty.json()["detail"][0]["field"] == "events"


def test_body_size_limit_is_413(api: Api) -> None:
    huge = _with("training.dataset", "a" * (api.settings.max_request_bytes + 10))
    r = api.client.post("/api/v1/runs", json=huge, headers=api.h())
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 100_000

    chunked = api.client.post(
        "/api/v1/runs", content=chunks(), headers=api.h() | {"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0


def test_a_locked_database_is_a_clean_503_that_changes_nothing(api: Api, tmp_path: Any) -> None:
    """SQLite busy past its timeout (or PostgreSQL away): 503 + Retry-After, never a bare 500."""
    import sqlite3

    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine

    from controller.api import create_app
    from controller.db import make_session_factory

    with contextlib.ExitStack() as stack:
        db = tmp_path / "pyrecover.db"
        assert db.exists()
        # The same database through an engine that gives up on a lock after 0.2 s.
        impatient = create_engine(f"sqlite:///{db}", connect_args={"timeout": 0.2})
        stack.callback(impatient.dispose)
        app = create_app(api.settings, session_factory=make_session_factory(impatient))
        client = stack.enter_context(TestClient(app, base_url="http://127.0.0.1:8000"))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            r = client.post("/api/v1/runs", json=run_body("locked-out"), headers=api.h())
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2"
        assert "database unavailable, nothing was changed" in r.json()["detail"]
        with api.factory() as s:
            assert s.scalar(select(func.count()).select_from(Run)) == 0
        # Once the lock is gone, the same request goes through.
        r = client.post("/api/v1/runs", json=run_body("locked-out"), headers=api.h())
        assert r.status_code == 201, r.text


def test_a_webhook_aimed_at_the_controllers_own_network_is_a_422_naming_it(api: Api) -> None:
    body = run_body("hooked")
    body["policy"]["notify"] = [{"url": "https://hooks.example/ok"}, {"url": "http://127.0.0.1:8000/api/v1"}]
    r = api.client.post("/api/v1/runs", json=body, headers=api.h())
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == "policy.notify[1].url"
    assert "loopback" in r.json()["message"]
    assert api.client.get("/api/v1/runs", headers=api.h()).json()["total"] == 0  # nothing stored


def _gpu_run(**training: Any) -> dict[str, Any]:
    body = run_body("big-run", model_preset="llama3-8b", sequence_length=4096, batch_size=32, **training)
    body["resources"] |= {"scheduler": "slurm", "nodes": 2, "ntasks_per_node": 4, "gpus_per_node": 4}
    return body


def test_a_run_that_cannot_fit_its_gpu_is_422_saying_what_to_change(api: Api) -> None:
    body = _gpu_run()
    body["resources"]["gpu_type"] = "h100-80gb"
    r = api.client.post("/api/v1/runs", json=body, headers=api.h())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["field"] for d in detail] == ["training"]
    assert "h100-80gb" in detail[0]["msg"] and "training.parallelism: fsdp" in detail[0]["msg"]
    assert "activation_checkpointing: true" in detail[0]["msg"]
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
    fixed = _gpu_run(parallelism="fsdp", activation_checkpointing=True)
    fixed["resources"]["gpu_type"] = "h100-80gb"
    assert api.client.post("/api/v1/runs", json=fixed, headers=api.h()).status_code == 201


def test_runs_that_name_no_gpu_are_not_planned(api: Api) -> None:
    r = api.client.post("/api/v1/runs", json=_gpu_run(), headers=api.h())  # the same run, GPU unnamed
    assert r.status_code == 201, r.text


def test_a_dataset_the_controller_sees_missing_is_a_422_naming_it(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    for api in make_api(tmp_path, inputs_visible=["local"]):
        body = run_body("no-data", dataset=str(tmp_path / "missing.parquet"), tokenizer_name_or_path=str(tok))
        r = api.client.post("/api/v1/runs", json=body, headers=api.h())
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "training.dataset"
        assert "missing.parquet: no such file or directory" in r.json()["message"]
        assert api.client.get("/api/v1/runs", headers=api.h()).json()["total"] == 0  # nothing stored
