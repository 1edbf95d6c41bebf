"""The public client against the real app: typed replies, typed errors with the server's message."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controller.client import (
    AuthenticationError,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    PyrecoverError,
    load_run_file,
)
from shared.schemas import RunPublic
from shared.states import AttemptState, RunState
from tests.controller.api.conftest import run_body
from tests.controller.client.conftest import Live


def client_for(live: Live, token: str | None = None) -> Client:
    return Client(live.url, token=token or live.api.user, data_dir=Path("/nonexistent"))


def test_submit_list_show_cancel_resume_as_typed_models(live: Live) -> None:
    with client_for(live) as client:
        run = client.submit(run_body("typed"))
        assert isinstance(run, RunPublic) and run.state is RunState.PENDING and run.name == "typed"
        assert client.run("typed").id == run.id == client.run_id("typed")
        page = client.runs(state="pending")
        assert page.total == 1 and page.items[0].id == run.id
        assert client.cancel(run.id).state is RunState.CANCELLED
        assert client.resume("typed").state is RunState.PENDING
        kinds = [e.kind for e in client.events(run.id)]
        assert "cancel_requested" in kinds and kinds[0] == "created"
        assert client.jobs(run.id) == [] and client.checkpoints(run.id) == [] and client.metrics(run.id) == []


def test_errors_are_typed_and_carry_the_servers_message(live: Live) -> None:
    with client_for(live) as client:
        client.submit(run_body("dup"))
        with pytest.raises(Conflict, match="already exists"):
            client.submit(run_body("dup"))
        with pytest.raises(NotFound, match="no run named 'nope'"):
            client.run("nope")
        with pytest.raises(NotFound, match="run 999 does not exist") as missing:
            client.run(999)
        assert missing.value.status == 404
        with pytest.raises(Conflict, match="only a FAILED or CANCELLED run can be resumed"):
            client.resume("dup")
        with pytest.raises(InvalidRequest) as bad:
            client.submit(run_body("x", training_steps=0))
        assert bad.value.fields[0]["field"] == "training.training_steps"
        with pytest.raises(Conflict, match="needs a RUNNING run"):
            client.stop("dup")
    with client_for(live, token="pyr_u_not-a-token") as stranger, pytest.raises(AuthenticationError):
        stranger.runs()


def test_follow_yields_changes_until_the_run_ends(live: Live) -> None:
    with client_for(live) as client:
        run = client.submit(run_body("followed"))
        client.cancel(run.id)
        updates = list(client.follow(run.id, interval=0.01))
        assert [u.state for u in updates] == [RunState.CANCELLED]
        assert client.wait(run.id, interval=0.01).state is RunState.CANCELLED
        other = client.submit(run_body("stuck"))
        live.api.attempt(other.id, 1, AttemptState.RUNNING)
        with pytest.raises(TimeoutError, match="still PENDING"):
            list(client.follow(other.id, interval=0.01, timeout=0.05))


def test_a_controller_that_does_not_answer_says_where_the_url_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYRECOVER_URL", "http://127.0.0.1:9")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client(transport=httpx.MockTransport(refuse), data_dir=Path("/nonexistent"))
    with client, pytest.raises(ConnectionFailed) as err:
        client.runs()
    assert "http://127.0.0.1:9" in str(err.value) and "$PYRECOVER_URL" in str(err.value)
    assert "pyrecover serve" in str(err.value)


def test_run_files_name_the_line_of_a_parse_error(tmp_path: Path) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text("name: x\ntraining:\n  dataset: [unclosed\n")
    with pytest.raises(PyrecoverError, match=r"invalid YAML at line \d+, column \d+"):
        load_run_file(bad)
    js = tmp_path / "run.json"
    js.write_text('{"name": "x",\n "training": }')
    with pytest.raises(PyrecoverError, match="invalid JSON at line 2, column 14"):
        load_run_file(js)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(PyrecoverError, match="must hold a mapping"):
        load_run_file(listing)
