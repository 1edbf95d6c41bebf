"""The new-run page: defaults, clone, the form's and the YAML editor's errors where they belong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from controller.db.models import Run
from tests.controller.web.web_seed import add_hostile_run, add_run, make_app, seed_dashboard, sign_in

CSRF_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
EVIL = '<script>alert("x")</script>'


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[TestClient, Any, str]]:
    app, factory, _settings = make_app(tmp_path)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        sign_in(client, factory, "ada")
        match = CSRF_RE.search(client.get("/runs/new").text)
        assert match is not None
        yield client, factory, match.group(1)


def _field(page: str, name: str) -> str:
    return page.split(f'data-field="{name}"', 1)[1].split('data-field="', 1)[0]


def _yaml(name: str = "yaml-run", extra: str = "") -> str:
    return (
        f"name: {name}\n"
        "training:\n"
        "  dataset: data/text.parquet\n"
        "  tokenizer_name_or_path: data/tokenizer\n"
        "  training_steps: 100\n"
        f"{extra}"
        "resources:\n"
        "  scheduler: local\n"
        "  time_limit: 10\n"
    )


def test_the_empty_form_is_at_the_cli_defaults(parts: tuple[TestClient, Any, str]) -> None:
    client, _factory, _token = parts
    page = client.get("/runs/new").text
    assert '<option value="bf16" selected>' in _field(page, "training.model_dtype")
    assert "checked" in _field(page, "training.mixed_precision")
    assert 'name="training.compile"' in page and 'name="training.grad_max_norm" value="1.0"' in page
    assert "training_steps: null" in page  # the YAML template: required fields empty


def test_clone_fills_both_editors_under_a_free_name(parts: tuple[TestClient, Any, str]) -> None:
    client, factory, _token = parts
    seeded = seed_dashboard(factory)
    page = client.get(f"/runs/new?clone={seeded.chart_run}").text
    assert 'id="clone-of">a copy of llama-1b-main' in page
    assert 'name="name" value="llama-1b-main-2"' in page
    assert 'value="gpu"' in _field(page, "resources.partition")
    assert "name: llama-1b-main-2" in page and "partition: gpu" in page
    hostile_run = add_hostile_run(factory)
    hostile = client.get(f"/runs/new?clone={hostile_run}").text
    assert "hf_secret_value_never_shown" not in hostile and "<img src=x" not in hostile
    assert "&lt;script&gt;window.__pwned=2&lt;/script&gt;" in hostile
    notice = hostile.split('id="clone-secrets"', 1)[1].split("</div>", 1)[0]
    assert "HF_TOKEN" in notice  # the secret's name is kept, and the user told to enter it again
    assert 'id="clone-secrets"' not in page  # a run without secrets: nothing to say


def test_clone_of_a_run_the_viewer_cannot_read_is_a_404(parts: tuple[TestClient, Any, str]) -> None:
    client, factory, _token = parts
    bobs = add_run(factory, "bobs-run", "RUNNING", owner="bob")
    sign_in(client, factory, "carol")
    assert client.get(f"/runs/new?clone={bobs}").status_code == 404
    assert client.get("/runs/new?clone=999999").status_code == 404
    assert client.get("/runs/new?clone=0").status_code == 422


def test_form_errors_sit_beside_their_fields_and_nothing_is_created(
    parts: tuple[TestClient, Any, str],
) -> None:
    client, factory, token = parts
    form = {
        "csrf_token": token,
        "mode": "form",
        "name": EVIL,
        "training.dataset": "data/text.parquet",
        "training.tokenizer_name_or_path": "data/tokenizer",
        "training.training_steps": "100",
        "training.grad_max_norm": "lots",
        "resources.scheduler": "local",
        "resources.time_limit": "10",
        "resources.env": "OK=1\nno equals sign",
    }
    resp = client.post("/runs/new", data=form)
    assert resp.status_code == 422
    assert "line 2: expected NAME=value" in _field(resp.text, "resources.env")
    assert EVIL not in resp.text and str(escape(EVIL)) in _field(resp.text, "name")
    assert "OK=1\nno equals sign" in resp.text  # what was typed is kept
    with factory() as session:
        assert session.query(Run).count() == 0
    del form["resources.env"]
    resp = client.post("/runs/new", data=form)
    assert "valid number" in _field(resp.text, "training.grad_max_norm")
    assert "must be 1-63 characters" in _field(resp.text, "name")


def test_the_yaml_editor_creates_a_run_or_names_the_line(parts: tuple[TestClient, Any, str]) -> None:
    client, factory, token = parts
    bad = client.post(
        "/runs/new", data={"csrf_token": token, "mode": "yaml", "yaml": _yaml(extra="  trainng_steps: 5\n")}
    )
    assert bad.status_code == 422 and 'id="yaml-editor" open' in bad.text
    errors = bad.text.split('id="yaml-errors"', 1)[1].split("</div>\n</div>", 1)[0]
    assert 'data-line="6"' in errors and "trainng_steps" in errors and "training_steps" in errors
    broken = client.post("/runs/new", data={"csrf_token": token, "mode": "yaml", "yaml": "name: [unclosed\n"})
    assert broken.status_code == 422 and "invalid YAML at line 2" in broken.text
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    refused = client.post("/runs/new", data={"csrf_token": token, "mode": "yaml", "yaml": laughs})
    assert refused.status_code == 422 and "aliases" in refused.text
    good = client.post(
        "/runs/new", data={"csrf_token": token, "mode": "yaml", "yaml": _yaml()}, follow_redirects=False
    )
    assert good.status_code == 303
    taken = client.post("/runs/new", data={"csrf_token": token, "mode": "yaml", "yaml": _yaml()})
    assert taken.status_code == 409 and 'data-line="1"' in taken.text and "already exists" in taken.text
    with factory() as session:
        assert [r.name for r in session.query(Run)] == ["yaml-run"]
