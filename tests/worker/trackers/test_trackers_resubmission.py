"""Three attempts of one run give one tracker run: one TensorBoard series with each step once, one W&B id.

The second attempt resumes from a checkpoint older than its predecessor's last logged step (the
newest checkpoint is removed, as if the first attempt had died after logging steps 3 and 4 but
before committing them): those steps are trained again and not logged again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from tracker_helpers import tensorboard_scalars

from shared.exit_codes import ExitCode
from worker.cli import main
from worker.loss_log import read_losses
from worker.trackers.hub import ATTEMPT_METRIC

STEPS = 12


def _args(sample_data: tuple[Path, Path], ckpt: Path, *extra: str) -> list[str]:
    parquet, tokenizer = sample_data
    return [
        "--dataset", str(parquet), "--tokenizer-name-or-path", str(tokenizer), "--model-preset", "tiny",
        "--sequence-length", "16", "--batch-size", "2", "--model-dtype", "fp32", "--seed", "11",
        "--training-steps", str(STEPS), "--logging-frequency", "1", "--checkpoint-frequency", "2",
        "--checkpoint-dir", str(ckpt), "--experiment-name", "run", "--trackers", "tensorboard,wandb", *extra,
    ]  # fmt: skip


def test_three_attempts_append_to_one_tracker_run(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    run_dir = ckpt / "run"
    os.environ["WANDB_MODE"] = "offline"
    os.environ["PYRECOVER_ATTEMPT"] = "1"
    assert main(_args(sample_data, ckpt, "--stop-after-steps", "4")) == ExitCode.OK
    shutil.rmtree(run_dir / "step-4")  # died after logging 3 and 4, last committed checkpoint: step 2
    os.environ["PYRECOVER_ATTEMPT"] = "2"
    assert main(_args(sample_data, ckpt, "--stop-after-steps", "6")) == ExitCode.OK  # steps 3..8
    os.environ["PYRECOVER_ATTEMPT"] = "3"
    assert main(_args(sample_data, ckpt)) == ExitCode.OK  # steps 9..12

    trackers = run_dir / "trackers"
    state = json.loads((trackers / "state.json").read_text())
    assert state["logged_through"] == STEPS

    series = tensorboard_scalars(trackers / "tensorboard")
    assert [step for step, _ in series] == list(range(1, STEPS + 1))
    assert len(list((trackers / "tensorboard").glob("events.out.tfevents.*"))) == 3
    # Steps 3 and 4 keep the values the first attempt logged; resume is bit-exact, so they are the
    # losses the second attempt trained again (loss.csv holds the committed history).
    losses = read_losses(run_dir / "loss.csv")
    assert [s for s, _ in series] == sorted(losses)
    assert all(value == pytest.approx(losses[step], rel=1e-6) for step, value in series)
    attempts = dict(tensorboard_scalars(trackers / "tensorboard", ATTEMPT_METRIC))
    assert attempts == {s: 1.0 if s <= 4 else 2.0 if s <= 8 else 3.0 for s in range(1, STEPS + 1)}

    offline = sorted((trackers / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 3
    # wandb appends "-1" to a directory whose start second another attempt already took.
    assert all(re.fullmatch(rf"offline-run-\d+_\d+-{state['run_id']}(-\d+)?", run.name) for run in offline)
    assert all((run / f"run-{state['run_id']}.wandb").is_file() for run in offline)
