"""The trackers' hub: steps only go up across attempts, and a failing tracker never reaches training."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tracker_helpers import tensorboard_scalars

from shared.events import EventType
from worker.reporting import NullReporter
from worker.trackers import Trackers, TrackingReporter
from worker.trackers.backends import TensorBoardBackend
from worker.trackers.hub import ATTEMPT_METRIC, progress_metrics
from worker.trackers.wandb_env import prepare_wandb_env


def _attempt(directory: Path, steps: range, loss: float, **kw: Any) -> Trackers:
    trackers = Trackers(("tensorboard",), directory=directory, run_name="r", run_config={}, **kw)
    for step in steps:
        trackers.log(step, {"train/loss": loss + step})
    assert trackers.close(timeout=60)
    return trackers


def test_a_replayed_step_keeps_its_first_value_and_steps_only_go_up(tmp_path: Path) -> None:
    first = _attempt(tmp_path, range(1, 6), loss=100.0)
    # The next attempt resumed from a checkpoint at step 2: steps 3..5 are trained (and logged) again.
    second = _attempt(tmp_path, range(3, 9), loss=200.0)
    assert second.skipped == 3
    assert second.state is not None and second.state.run_id == first.state.run_id  # type: ignore[union-attr]
    assert second.state.logged_through == 8
    series = tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in series] == list(range(1, 9))
    assert [v for _, v in series] == [101, 102, 103, 104, 105, 206, 207, 208]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_nothing_is_created_before_the_first_step(tmp_path: Path) -> None:
    trackers = Trackers(("tensorboard",), directory=tmp_path / "t", run_name="r", run_config={})
    assert trackers.close(timeout=10)
    assert not (tmp_path / "t").exists()


def test_progress_events_become_scalars_and_everything_else_passes_through(tmp_path: Path) -> None:
    seen: list[tuple[EventType, int]] = []

    class Inner(NullReporter):
        def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
            seen.append((type, step))

    trackers = Trackers(("tensorboard",), directory=tmp_path, run_name="r", run_config={})
    reporter = TrackingReporter(Inner(), trackers, attempt=3)
    reporter.emit(EventType.PROGRESS, step=1, loss=2.5, lr=1e-3, tokens_seen=64, grad_norm=None, mfu=None)
    reporter.emit(EventType.CHECKPOINT_COMMITTED, step=1, path="p")
    reporter.close(timeout=30)
    assert seen == [(EventType.PROGRESS, 1), (EventType.CHECKPOINT_COMMITTED, 1)]
    assert tensorboard_scalars(tmp_path / "tensorboard", ATTEMPT_METRIC) == [(1, 3.0)]
    assert progress_metrics({"loss": float("nan"), "grad_norm": None, "flag": True}, None).keys() == {
        "train/loss"
    }


def _warnings() -> tuple[list[str], Any]:
    messages: list[str] = []
    return messages, lambda step, message: messages.append(message)


def test_a_tracker_that_is_not_installed_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    messages, notify = _warnings()
    env = prepare_wandb_env({}, state_dir=tmp_path / "wandb-env")
    trackers = Trackers(
        ("wandb", "tensorboard"),
        directory=tmp_path,
        run_name="r",
        run_config={},
        notify=notify,
        wandb_env=env,
    )
    for step in range(1, 4):
        trackers.log(step, {"train/loss": float(step)})
    assert trackers.close(timeout=60)
    assert len(messages) == 1 and messages[0].startswith(
        "tracker wandb: not installed (pip install 'pyrecover[wandb]')"
    )
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tensorboard")] == [1, 2, 3]


def test_a_disk_error_stops_that_tracker_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_log = TensorBoardBackend.log

    def failing(self: TensorBoardBackend, step: int, metrics: Any) -> None:
        if step >= 3:
            raise OSError(28, "No space left on device")
        real_log(self, step, metrics)

    monkeypatch.setattr(TensorBoardBackend, "log", failing)
    messages, notify = _warnings()
    trackers = Trackers(("tensorboard",), directory=tmp_path, run_name="r", run_config={}, notify=notify)
    for step in range(1, 10):
        trackers.log(step, {"train/loss": float(step)})
    assert trackers.close(timeout=60)
    assert messages == ["tracker tensorboard: stopped logging at step 3: [Errno 28] No space left on device"]
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tensorboard")] == [1, 2]


def test_an_unwritable_mark_stops_the_trackers_rather_than_log_twice(tmp_path: Path) -> None:
    messages, notify = _warnings()
    trackers = Trackers(("tensorboard",), directory=tmp_path, run_name="r", run_config={}, notify=notify)
    trackers.log(1, {"train/loss": 1.0})
    deadline = time.monotonic() + 60
    while not (tmp_path / "state.json").exists() or not trackers.backends:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "state.json").unlink()
    (tmp_path / "state.json").mkdir()  # os.replace onto a directory fails
    trackers.log(2, {"train/loss": 2.0})
    assert trackers.close(timeout=60)
    assert len(messages) == 1 and messages[0].startswith("trackers stopped: cannot record step 2")


def test_a_stalled_tracker_never_blocks_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(TensorBoardBackend, "log", lambda self, step, metrics: release.wait())
    messages, notify = _warnings()
    trackers = Trackers(
        ("tensorboard",), directory=tmp_path, run_name="r", run_config={}, notify=notify, queue_size=8
    )
    # The "training thread": 2000 steps while the backend hangs. A blocking hand-over would never end.
    training = threading.Thread(target=lambda: [trackers.log(s, {"train/loss": 1.0}) for s in range(1, 2001)])
    training.start()
    training.join(timeout=60)
    assert not training.is_alive()
    assert trackers.close(timeout=0.5) is False  # bounded: the stuck thread is left behind
    assert messages[0] == "trackers are 8 steps behind; dropping steps"
    release.set()


def test_only_rank_0_and_only_a_run_with_trackers_gets_them(tmp_path: Path) -> None:
    from worker.config import TrainConfig
    from worker.trackers import with_trackers

    base = {"dataset": "d", "tokenizer_name_or_path": "t", "checkpoint_dir": str(tmp_path)}
    reporter = NullReporter()
    with_tb = TrainConfig(**base, trackers=("tensorboard",))
    assert with_trackers(reporter, with_tb, is_main=False) is reporter
    assert with_trackers(reporter, TrainConfig(**base), is_main=True) is reporter
    wrapped = with_trackers(reporter, with_tb, is_main=True, environ={"PYRECOVER_ATTEMPT": "2"})
    assert isinstance(wrapped, TrackingReporter) and wrapped.inner is reporter
    assert wrapped.trackers.directory == tmp_path / "default-exp" / "trackers"
    wrapped.close(timeout=10)
    assert not (tmp_path / "default-exp").exists()  # nothing logged, nothing written
