"""CLI surface without a controller: --help everywhere, local validation, error formatting, config."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.cli.client import Api, CliError, format_http_error, load_config, save_config

runner = CliRunner()
COMMANDS = [
    "serve",
    "demo",
    "submit",
    "runs",
    "show",
    "cancel",
    "resume",
    "logs",
    "stop",
    "checkpoint-now",
    "extend",
    "share",
    "unshare",
    "token create",
    "token list",
    "token revoke",
    "token rotate",
    "user create",
    "user list",
    "user set",
    "user login-link",
    "db upgrade",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def test_submit_rejects_bad_input_locally_field_by_field(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "submit",
            "--name",
            "bad name;rm",
            "--dataset",
            "d",
            "--tokenizer",
            "t",
            "--steps",
            "-3",
            "--time-limit",
            "45s",
            "--scheduler",
            "pbs",
            "--url",
            "http://127.0.0.1:9",
        ],
    )
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "error: invalid run spec" in out
    for field in ("name:", "training.training_steps:", "resources.scheduler:"):
        assert field in out


def test_submit_file_errors_are_one_line(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["submit", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    result = runner.invoke(app, ["submit", str(bad)])
    assert result.exit_code == 1 and "must hold a mapping" in result.output


def test_unreachable_controller_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach the controller at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_422_lists_every_field() -> None:
    resp = httpx.Response(
        422,
        json={
            "detail": [
                {"loc": ["body", "training", "training_steps"], "msg": "Input should be greater than 0"},
                {"loc": ["body", "name"], "msg": "must be 1-63 characters"},
            ]
        },
    )
    assert format_http_error(resp) == (
        "HTTP 422: training.training_steps: Input should be greater than 0; name: must be 1-63 characters"
    )
    assert (
        format_http_error(httpx.Response(409, json={"detail": "run 3 is COMPLETED"}))
        == "HTTP 409: run 3 is COMPLETED"
    )
    assert format_http_error(httpx.Response(502, text="bad gateway")) == "HTTP 502: bad gateway"


def test_api_maps_errors_and_resolves_names() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        if request.url.path == "/api/v1/runs":
            return httpx.Response(200, json={"items": [{"id": 5, "name": "alpha"}], "total": 1})
        return httpx.Response(404, json={"detail": "run 6 not found"})

    api = Api(url="http://ctl", token="tok", transport=httpx.MockTransport(handler))
    assert api.run_id("alpha") == 5 and api.run_id("12") == 12
    with pytest.raises(CliError, match="no run named 'beta'"):
        api.run_id("beta")
    with pytest.raises(CliError, match="HTTP 404: run 6 not found"):
        api.get("/runs/6")


def test_connection_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYRECOVER_URL", raising=False)
    monkeypatch.delenv("PYRECOVER_TOKEN", raising=False)
    path = save_config(tmp_path, url="http://saved:1", token="saved-token")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_config(tmp_path) == {"url": "http://saved:1", "token": "saved-token"}
    assert Api.resolve(None, None, tmp_path).url == "http://saved:1"
    monkeypatch.setenv("PYRECOVER_URL", "http://env:2")
    assert Api.resolve(None, None, tmp_path).url == "http://env:2"
    flagged = Api.resolve("http://flag:3/", "t", tmp_path)
    assert (flagged.url, flagged.token) == ("http://flag:3", "t")
    (tmp_path / "cli.json").write_text("{not json")
    with pytest.raises(CliError, match="cannot read"):
        load_config(tmp_path)
