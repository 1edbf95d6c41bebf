"""The run page's downloads: every metric point as CSV, the spec as YAML (redacted), behind the
run page's own rules."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.web.runspec import load_yaml
from shared.schemas import RunCreate
from tests.controller.web.web_seed import (
    HOSTILE_VALUE,
    add_hostile_run,
    add_run,
    make_app,
    make_token,
    seed_dashboard,
    sign_in,
)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[TestClient, Any, Any]]:
    app, factory, _settings = make_app(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        sign_in(client, factory, "ada")  # the first user: an admin
        yield client, factory, seed_dashboard(factory)


def test_the_csv_holds_every_point_in_step_order(parts: tuple[TestClient, Any, Any]) -> None:
    client, _factory, seeded = parts
    resp = client.get(f"/runs/{seeded.chart_run}/metrics.csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"] == 'attachment; filename="llama-1b-main-metrics.csv"'
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == seeded.metric_points
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[0] == 0
    assert {r["attempt"] for r in rows} == {"1", "2", "3"} and float(rows[10]["loss"]) > 0
    cpu = list(csv.DictReader(io.StringIO(client.get(f"/runs/{seeded.cpu_run}/metrics.csv").text)))
    assert len(cpu) == 60 and {r["mfu"] for r in cpu} == {""}  # not measured: empty, never 0


def test_the_yaml_is_the_api_spec_redacted_and_submittable(parts: tuple[TestClient, Any, Any]) -> None:
    client, factory, seeded = parts
    resp = client.get(f"/runs/{seeded.chart_run}/config.yaml")
    assert resp.status_code == 200 and resp.text.startswith("# pyrecover run llama-1b-main")
    spec = RunCreate.model_validate(load_yaml(resp.text))
    bearer = {"Authorization": f"Bearer {make_token(factory, 'ada')}"}
    api = client.get(f"/api/v1/runs/{seeded.chart_run}", headers=bearer).json()["spec"]
    assert spec.model_dump(mode="json") == RunCreate.model_validate(api).model_dump(mode="json")
    hostile_run = add_hostile_run(factory)
    hostile = client.get(f"/runs/{hostile_run}/config.yaml")
    assert hostile.status_code == 200 and "hf_secret_value_never_shown" not in hostile.text
    assert load_yaml(hostile.text)["training"]["dataset"] == HOSTILE_VALUE  # data, not markup
    disposition = hostile.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="') and disposition.count('"') == 2
    assert "<" not in disposition and " " not in disposition.removeprefix("attachment; ")


def test_downloads_follow_the_run_page_rules(parts: tuple[TestClient, Any, Any], tmp_path: Path) -> None:
    client, factory, seeded = parts
    bobs = add_run(factory, "bobs-run", "RUNNING", owner="bob")
    sign_in(client, factory, "carol")  # a user: sees only their own runs
    for path in ("metrics.csv", "config.yaml"):
        assert client.get(f"/runs/{bobs}/{path}").status_code == 404  # as if it did not exist
        assert client.get(f"/runs/999999/{path}").status_code == 404
    client.cookies.clear()
    signed_out = client.get(f"/runs/{seeded.chart_run}/metrics.csv", follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")
