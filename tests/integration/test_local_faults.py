"""Failure classes end to end on the local backend: a real controller process and the real worker.

* a dataset the controller sees missing is a 422 at submit, naming the field, and nothing is stored;
* where the controller is told it does not see the compute file system (``inputs_visible: []``),
  the same run is accepted, its worker exits 3 (config error) and the run FAILs after that one
  attempt, saying what to fix — not after the failure budget's three;
* a worker frozen whole (SIGSTOP: its own watchdog is frozen too) is found by the controller's
  heartbeat timeout, its job cancelled, the attempt ended ``hung``, and the run resumes from its
  last checkpoint and completes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from local_harness import Controller, kill_leftover_workers, wait_for

pytestmark = pytest.mark.slow
pytest.importorskip("worker.data.prepare", reason="the sample data preparation is not there yet")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from worker.data.prepare import ensure_sample_data

    return ensure_sample_data(tmp_path_factory.mktemp("sample") / "data")


@pytest.fixture
def tokenizer(sample: tuple[Path, Path]) -> Path:
    return sample[1]


def start(directory: Path, **env: str) -> Controller:
    ctl = Controller(directory)
    ctl.env |= env
    ctl.data_dir.mkdir()
    ctl.setup()
    ctl.start()
    return ctl


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[list[Controller]]:
    started: list[Controller] = []
    yield started
    for ctl in started:
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)


def body(tmp_path: Path, tokenizer: Path) -> dict[str, Any]:
    return {
        "name": "no-data",
        "training": {
            "dataset": str(tmp_path / "nowhere" / "corpus.parquet"),
            "tokenizer_name_or_path": str(tokenizer),
            "training_steps": 20,
            "model_preset": "tiny",
            "batch_size": 4,
            "sequence_length": 64,
            "checkpoint_dir": str(tmp_path / "ckpt"),
        },
        "resources": {"scheduler": "local", "time_limit": "2m"},
        "policy": {"max_failures_without_progress": 3, "backoff_seconds": 0},
    }


def test_a_missing_dataset_is_refused_at_submit(
    tmp_path: Path, tokenizer: Path, controllers: list[Controller]
) -> None:
    ctl = start(tmp_path / "controller")
    controllers.append(ctl)
    resp = httpx.post(
        f"{ctl.url}/api/v1/runs",
        json=body(tmp_path, tokenizer),
        headers={"Authorization": f"Bearer {ctl.token}"},
        timeout=30,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["field"] == "training.dataset"
    assert ctl.items("/runs") == []


def test_a_config_error_only_the_worker_finds_fails_the_run_after_one_attempt(
    tmp_path: Path, tokenizer: Path, controllers: list[Controller]
) -> None:
    ctl = start(tmp_path / "controller", PYRECOVER_INPUTS_VISIBLE=json.dumps([]))
    controllers.append(ctl)
    run = ctl.api("POST", "/runs", json=body(tmp_path, tokenizer))
    ended = ctl.wait_terminal(run["id"], 180)
    assert ended["state"] == "FAILED", ended
    jobs = ctl.items(f"/runs/{run['id']}/jobs")
    assert len(jobs) == 1, jobs
    assert jobs[0]["end_reason"] == "config_error" and jobs[0]["exit_code"] == 3, jobs[0]
    error = ended["last_error"] or ""
    assert "corpus.parquet" in error and "Not retried" in error and "fix the field" in error, error


def test_a_frozen_worker_is_cancelled_as_hung_and_the_run_completes(
    tmp_path: Path, sample: tuple[Path, Path], controllers: list[Controller]
) -> None:
    ctl = start(tmp_path / "controller")
    controllers.append(ctl)
    spec = body(tmp_path, sample[1])
    spec["name"] = "frozen"
    spec["training"] |= {
        "dataset": str(sample[0]),
        "training_steps": 400,
        "checkpoint_frequency": 40,
        "logging_frequency": 5,
    }
    spec["resources"]["time_limit"] = "10m"
    spec["policy"] |= {"heartbeat_timeout_seconds": 60}
    run = ctl.api("POST", "/runs", json=spec)
    wait_for(
        lambda: (ctl.api("GET", f"/runs/{run['id']}")["latest_checkpoint_step"] or 0) >= 40,
        240,
        "the first checkpoint",
    )
    [state] = list((ctl.data_dir / "local-jobs").glob("*.json"))
    pids = json.loads(state.read_text())["pids"]
    frozen_at = time.monotonic()
    for pid in pids:
        os.killpg(pid, signal.SIGSTOP)
    ended = ctl.wait_terminal(run["id"], 600)
    jobs = ctl.items(f"/runs/{run['id']}/jobs")
    hung = [j for j in jobs if j["end_reason"] == "hung"]
    assert ended["state"] == "COMPLETED", (ended, jobs)
    assert len(hung) == 1 and hung[0]["number"] == 1, jobs
    events = ctl.items(f"/runs/{run['id']}/events")
    [timeout] = [e for e in events if e["kind"] == "heartbeat_timeout"]
    assert "heartbeat timeout 60 s" in timeout["message"]
    print(f"frozen worker to run completed: {time.monotonic() - frozen_at:.0f} s; {timeout['message']}")
