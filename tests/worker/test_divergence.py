"""Divergence: non-finite updates are skipped, a diverging run stops without committing, a rollback
skips exactly the suspect data window."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from train_launch import load_checkpoint, run_worker, tiny_args

import worker.train
from shared.exit_codes import ExitCode
from shared.schemas.reports import ReportBatch
from worker.checkpoint.state import unpack
from worker.cli import main
from worker.components import build_components
from worker.config import ConfigError, parse_config
from worker.distributed import DistInfo
from worker.divergence import DivergenceGuard
from worker.reporting import NullReporter
from worker.train import build_checkpointing, restore

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, type: str, *, step: int, **fields: Any) -> None:
        self.events.append({"type": str(type), "step": step, **fields})

    def requested_action(self) -> str:
        return "none"

    def close(self, timeout: float = 10.0) -> None:
        pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def validate(self) -> None:
        """Every event is a valid wire event once the reporter stamps seq and time."""
        ReportBatch.model_validate(
            {"attempt": 1, "events": [{**e, "seq": i, "time": 1.0} for i, e in enumerate(self.events)]}
        )


def run(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[int, Recorder]:
    rec = Recorder()
    monkeypatch.setattr(worker.train, "make_reporter", lambda *, rank: rec)
    return main(args), rec


def _guard(**kw: Any) -> DivergenceGuard:
    return DivergenceGuard(
        **{"max_skipped_steps": 3, "spike_factor": 5.0, "spike_window": 10, "info": CPU, **kw}
    )


def test_non_finite_updates_are_skipped_and_counted() -> None:
    g = _guard()
    assert g.allow_update(torch.tensor(2.0), torch.tensor(1.0))
    assert g.observe(1, 2.0) is None
    assert not g.allow_update(torch.tensor(float("nan")), 1.0)
    assert g.observe(2, math.nan) is None
    assert not g.allow_update(2.0, torch.tensor(float("inf")))
    assert g.observe(3, 2.0) is None
    assert g.skipped_in_a_row == 2 and g.skipped_total == 2
    assert g.allow_update(2.0, 1.0)  # a finite update resets the run of skips, not the total
    assert g.observe(4, 2.0) is None
    assert (g.skipped_in_a_row, g.skipped_total) == (0, 2)
    for step in (5, 6, 7):
        assert not g.allow_update(math.nan, math.nan)
        verdict = g.observe(step, math.nan)
    assert verdict is not None and verdict.step == 7 and verdict.reason == "non_finite"
    assert verdict.skipped_in_a_row == 3 and "3 updates in a row" in verdict.message


def test_a_loss_spike_past_the_running_median_diverges_once_the_window_is_half_full() -> None:
    g = _guard()
    for step in range(1, 5):  # 4 < window/2 samples: no verdict yet, whatever the loss
        assert g.allow_update(1.0, 1.0) and g.observe(step, 2.0 if step < 4 else 50.0) is None
    for step in range(5, 11):
        assert g.allow_update(1.0, 1.0) and g.observe(step, 2.0) is None
    assert g.allow_update(1.0, 1.0) and g.observe(11, 9.9) is None  # below 5 x the median 2.0
    assert g.allow_update(1.0, 1.0)
    verdict = g.observe(12, 10.5)
    assert verdict is not None and verdict.reason == "loss_spike" and verdict.median == 2.0
    off = _guard(spike_factor=0.0)
    for step in range(1, 20):
        assert off.allow_update(1.0, 1.0) and off.observe(step, 2.0 if step < 19 else 1e6) is None


def _finite(path: Path) -> bool:
    content = load_checkpoint(path)
    tensors = [t for part in ("model", "optim") for t in content[part].values()]  # type: ignore[attr-defined]
    return all(
        torch.isfinite(t).all() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def test_fp16_pure_dtype_ends_diverged_with_no_nan_checkpoint(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tiny_args(sample_data, tmp_path, "fp16", steps=30, fmt="dcp")
    args += [
        "--model-dtype",
        "fp16",
        "--pure-dtype",
        "--checkpoint-frequency",
        "2",
        "--max-skipped-steps",
        "4",
    ]
    rc, rec = run(monkeypatch, args)
    assert rc == ExitCode.DIVERGED
    (diverged,) = rec.of("diverged")
    assert diverged["reason"] in ("non_finite", "non_finite_state")
    assert rec.events[-1]["type"] == "failed" and "diverged" in rec.events[-1]["error"]
    assert not rec.of("finished") and not any(c["final"] for c in rec.of("checkpoint_committed"))
    committed = sorted((tmp_path / "fp16").glob("step-*"))
    assert all(_finite(p) for p in committed), "a checkpoint with NaN/inf was committed"
    assert [f"step-{c['step']}" for c in rec.of("checkpoint_committed")] == [p.name for p in committed]
    rec.validate()


def test_one_nan_batch_is_skipped_and_training_goes_on(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRECOVER_TEST_NAN_BATCHES", "3")
    args = tiny_args(sample_data, tmp_path, "nan1", steps=6, fmt="vanilla")
    args += ["--checkpoint-frequency", "1", "--keep-last-k", "10", "--logging-frequency", "1"]
    rc, rec = run(monkeypatch, args)
    assert rc == ExitCode.OK and rec.of("finished")
    skipped = {p["step"]: p["skipped_steps"] for p in rec.of("progress")}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}
    step2, step3, step4 = (load_checkpoint(tmp_path / "nan1" / f"step-{s}") for s in (2, 3, 4))
    # The NaN step changed neither the weights nor AdamW's moments; the next step did.
    assert all(torch.equal(step2["model"][k], step3["model"][k]) for k in step2["model"])  # type: ignore[index]
    assert not all(torch.equal(step3["model"][k], step4["model"][k]) for k in step3["model"])  # type: ignore[index]
    assert all(_finite(tmp_path / "nan1" / f"step-{s}") for s in range(1, 7))
    rec.validate()


def _cursor(path: Path) -> dict[str, int]:
    return unpack(load_checkpoint(path)["meta"])["progress"]["data_cursor"]  # type: ignore[no-any-return]


@pytest.mark.slow  # two 2-rank runs: ~40 s on the development machine
def test_two_ranks_agree_to_diverge_and_a_rollback_skips_the_window(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    args = tiny_args(sample_data, tmp_path, "roll", steps=12, fmt="dcp")
    args += ["--checkpoint-frequency", "5", "--max-skipped-steps", "3"]
    # Only rank 0 sees NaN (batches 7-9): both ranks must skip, then stop after the same step.
    bad = run_worker(args, world_size=2, env={"PYRECOVER_TEST_NAN_BATCHES": "7-9"})
    assert bad.returncodes == [ExitCode.DIVERGED] * 2, bad.explain()
    assert "diverged at step 9: 3 updates in a row" in bad.stderr[0]
    assert "--resume-from-checkpoint step-5 --data-skip-to 36" in bad.stderr[0]
    assert sorted(p.name for p in (tmp_path / "roll").glob("step-*")) == ["step-5"]

    again = run_worker(
        [*args, "--resume-from-checkpoint", "step-5", "--data-skip-to", "36"],
        world_size=2,
        env={"PYRECOVER_TEST_NAN_BATCHES": "7-9"},  # still armed: the skipped batches never come back
    )
    assert again.ok, again.explain()
    assert "skipped the data window of samples 20..36 (4 global batches)" in again.stderr[0]
    assert "update skipped" not in again.stderr[0] and "finished 12 steps" in again.stderr[0]
    # Steps 6..12 trained on batches 10..16: the cursor sits 16 global batches into the stream.
    assert _cursor(tmp_path / "roll" / "step-12")["chunks_consumed"] == 16 * 4
    assert _cursor(tmp_path / "roll" / "step-10")["chunks_consumed"] == 14 * 4


@pytest.mark.parametrize("source", ["parquet", "token-store"])
def test_after_a_skip_the_stream_is_exactly_the_data_after_the_window(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    args = tiny_args(sample_data, tmp_path, "skip", steps=20, fmt="vanilla")
    if source == "token-store":
        from worker.data.store_build import build_store

        build_store(str(sample_data[0]), str(sample_data[1]), tmp_path / "store")
        args += ["--dataset", str(tmp_path / "store")]
    assert main([*args, "--stop-after-steps", "5"]) == ExitCode.OK
    reference = iter(build_components(parse_config(args), CPU).dataset)
    batches = [next(reference) for _ in range(11)]

    config = parse_config([*args, "--resume-from-checkpoint", "step-5", "--data-skip-to", str(9 * 4)])
    comp = build_components(config, CPU)
    manager, state = build_checkpointing(config, CPU, comp)
    assert restore(config, comp, manager, state, NullReporter()) is not None
    assert state.progress["step"] == 5  # the steps are not skipped, only the data
    stream = iter(comp.dataset)
    for expected in batches[9:11]:  # batch 10 follows the window of batches 6..9
        inputs, labels = next(stream)
        assert torch.equal(inputs, expected[0]) and torch.equal(labels, expected[1])

    for bad, why in [
        (19, "behind the checkpoint's data cursor (20"),
        (22, "not a whole number of global batches of 4"),
        (20 + 20 * 4 + 4, "more than the whole run trains on"),
    ]:
        config = parse_config([*args, "--resume-from-checkpoint", "step-5", "--data-skip-to", str(bad)])
        comp = build_components(config, CPU)
        manager, state = build_checkpointing(config, CPU, comp)
        with pytest.raises(ConfigError, match="data_skip_to") as err:
            restore(config, comp, manager, state, NullReporter())
        assert why in str(err.value)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--data-skip-to", "-4"], "data_skip_to"),
        (["--data-skip-to", str(2**63)], "data_skip_to"),
        (["--data-skip-to", "8", "--resume-from-checkpoint", "none"], "needs a checkpoint to resume from"),
    ],
)
def test_data_skip_to_is_validated(
    sample_data: tuple[Path, Path], tmp_path: Path, extra: list[str], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_config([*tiny_args(sample_data, tmp_path, "v", steps=5, fmt="dcp"), *extra])


def test_data_skip_without_a_checkpoint_is_a_config_error(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(sample_data, tmp_path, "none-yet", steps=5, fmt="dcp")
    assert main([*args, "--data-skip-to", "8"]) == ExitCode.CONFIG_ERROR
    assert "data_skip_to: needs a checkpoint to resume from" in capsys.readouterr().err
    assert not (tmp_path / "none-yet").exists()
