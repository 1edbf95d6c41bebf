"""The CLI against a real served controller: acting on runs and reading their logs through the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.db.models import Checkpoint, Run
from controller.state_machine import transition_run
from shared.paths import attempt_log_paths, run_dir
from shared.states import AttemptState, RunState
from tests.controller.api.conftest import run_body
from tests.controller.client.conftest import Live, live

__all__ = ["live"]
runner = CliRunner()


def cli(live: Live, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--url", live.url, "--token", live.api.user])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(autouse=True)
def _no_saved_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path / "elsewhere"))  # logs never come from disk here


def test_stop_checkpoint_now_cancel_and_extend(live: Live) -> None:
    run_id = live.api.create("acted")["id"]
    code, out = cli(live, "stop", "acted")
    assert code == 1 and "needs a RUNNING run" in out
    live.api.attempt(run_id, 1, AttemptState.RUNNING)
    with live.api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        transition_run(s, run, RunState.QUEUED, reason="t")
        transition_run(s, run, RunState.RUNNING, reason="t")
        s.commit()
    code, out = cli(live, "checkpoint-now", "acted")
    assert (code, out) == (
        0,
        f"run acted (id {run_id}): checkpoint requested "
        "(delivered with the worker's next report); now RUNNING",
    )
    code, out = cli(live, "stop", "acted")
    assert code == 0 and "stop requested" in out
    code, out = cli(live, "extend", "acted", "--training-steps", "300", "--learning-rate", "1e-3")
    assert code == 0 and "300 steps; now RUNNING (the next attempt uses the new settings)" in out
    code, out = cli(live, "extend", "acted")
    assert code == 1 and "nothing to change" in out
    code, out = cli(live, "extend", "acted", "--training-steps", "0")
    assert code == 1 and "training.training_steps" in out
    code, out = cli(live, "cancel", "acted")
    assert code == 0 and "cancel requested" in out


def test_extend_makes_a_completed_run_go_on(live: Live) -> None:
    run_id = live.api.create("done")["id"]
    with live.api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        s.add(Checkpoint(run_id=run_id, attempt=1, step=100, path="/c/step-100", format="dcp"))
        transition_run(s, run, RunState.QUEUED, reason="t")
        transition_run(s, run, RunState.COMPLETED, reason="trained")
        s.commit()
    code, out = cli(live, "extend", "done", "--training-steps", "200")
    assert code == 0 and "200 steps; now PENDING" in out


def test_logs_come_through_the_api_from_any_directory(live: Live) -> None:
    body = run_body("logged")
    run_id = live.api.client.post("/api/v1/runs", json=body, headers=live.api.h()).json()["id"]
    code, out = cli(live, "logs", "logged")
    assert code == 1 and "has no attempt yet" in out
    for n in (1, 2):
        live.api.attempt(run_id, n, AttemptState.ENDED if n == 1 else AttemptState.RUNNING)
        out_path, err_path = attempt_log_paths(run_dir(live.api.settings.data_dir, run_id), n)
        err_path.parent.mkdir(parents=True, exist_ok=True)
        err_path.write_text("".join(f"attempt {n} line {i}\n" for i in range(5)))
        out_path.write_text(f"stdout of {n}\n")
    code, out = cli(live, "logs", "logged")
    assert code == 0 and "==> attempt 1 <==" in out and "attempt 2 line 4" in out
    code, out = cli(live, "logs", str(run_id), "--attempt", "2", "--tail", "2")
    assert code == 0 and out == "attempt 2 line 3 attempt 2 line 4"
    assert cli(live, "logs", "logged", "--attempt", "1", "--stdout") == (0, "stdout of 1")
    code, out = cli(live, "logs", "logged", "--attempt", "1", "--follow")  # ended: prints, then returns
    assert code == 0 and out.startswith("==> attempt 1 <== attempt 1 line 0") and out.endswith("line 4")
    code, out = cli(live, "logs", "logged", "--attempt", "9")
    assert code == 1 and "has no attempt 9 (it has 2)" in out
