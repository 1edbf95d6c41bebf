"""The training loop end to end: 2-rank DDP, exit codes, graceful stops, optimizer state, elastic resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from train_launch import load_checkpoint, run_worker, tiny_args

import worker.train
from shared.exit_codes import ExitCode
from worker.checkpoint.state import unpack
from worker.cli import main
from worker.components import build_components
from worker.config import parse_config
from worker.distributed import DistInfo
from worker.loss_log import read_losses
from worker.reporting import NullReporter
from worker.train import build_checkpointing, restore


def test_two_rank_ddp_training_loss_falls(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    args = tiny_args(sample_data, tmp_path, "ddp", steps=30, fmt="dcp")
    result = run_worker([*args, "--logging-frequency", "5"], world_size=2)
    assert result.ok, result.explain()
    losses = read_losses(tmp_path / "ddp" / "loss.csv")
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(26, 31)) / 5
    assert last < first - 0.3, (first, last)
    log = result.stderr[0]
    assert "world size 2" in log and "tok/s" in log and "grad norm" in log and "lr " in log
    assert "finished 30 steps" in log
    assert (tmp_path / "ddp" / "step-30" / "manifest.json").is_file()


def test_deadline_already_past_stops_gracefully_with_exit_0(
    sample_data: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = tiny_args(sample_data, tmp_path, "late", steps=20, fmt="vanilla")
    with caplog.at_level(logging.INFO, logger="pyrecover.worker"):
        rc = main([*args, "--deadline", str(time.time() - 5)])
    assert rc == ExitCode.OK
    assert "stopped at step 0 (deadline): checkpoint committed at" in caplog.text
    assert "resume with --resume-from-checkpoint latest" in caplog.text
    assert (tmp_path / "late" / "step-0" / "manifest.json").is_file()


def test_missing_dataset_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--dataset", str(tmp_path / "nope.parquet"), "--tokenizer-name-or-path", str(tmp_path)])
    assert rc == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pyrecover train: error: dataset:")


def test_optimizer_moments_after_resume_equal_the_saved_ones(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(sample_data, tmp_path, "mom", steps=40, fmt="dcp")
    assert main([*args, "--stop-after-steps", "7"]) == ExitCode.OK
    saved = load_checkpoint(tmp_path / "mom" / "step-7")["optim"]
    assert isinstance(saved, dict)
    moments = {k: v for k, v in saved.items() if k.endswith(("exp_avg", "exp_avg_sq"))}
    assert moments and all(v.abs().sum() > 0 for v in moments.values())

    config = parse_config(args)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    comp = build_components(config, info)
    manager, state = build_checkpointing(config, info, comp)
    result = restore(config, comp, manager, state, NullReporter())
    manager.close()
    assert result is not None and result.checkpoint.step == 7 and state.progress["step"] == 7
    live = {}
    names = {id(p): n for n, p in comp.model.named_parameters()}
    for p, st in comp.optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            live[f"state.{names[id(p)]}.{key}"] = st[key]
    assert live.keys() == moments.keys()
    assert all(torch.equal(live[k], moments[k]) for k in moments)


def test_resume_none_refuses_to_start_over_existing_checkpoints(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(sample_data, tmp_path, "again", steps=5, fmt="vanilla")
    assert main([*args, "--stop-after-steps", "2"]) == ExitCode.OK
    assert main([*args, "--resume-from-checkpoint", "none"]) == ExitCode.CONFIG_ERROR
    assert "resume_from_checkpoint" in capsys.readouterr().err


def _cursor(path: Path) -> object:
    return unpack(load_checkpoint(path)["meta"])["progress"]["data_cursor"]


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second"), [(2, 1), (1, 2)])
def test_elastic_dcp_resume_continues_the_same_global_sample_sequence(
    sample_data: tuple[Path, Path], tmp_path: Path, first: int, second: int
) -> None:
    ref = run_worker(tiny_args(sample_data, tmp_path, "ref", steps=20, fmt="dcp"), world_size=1)
    assert ref.ok, ref.explain()
    args = tiny_args(sample_data, tmp_path, "elastic", steps=20, fmt="dcp")
    r1 = run_worker([*args, "--stop-after-steps", "10"], world_size=first)
    assert r1.ok, r1.explain()
    r2 = run_worker(args, world_size=second)
    assert r2.ok, r2.explain()
    assert "resumed from" in r2.stderr[0] and "step-10" in r2.stderr[0]
    # The cursor is global: after the same number of steps it is the same for any world size.
    for step in (10, 20):
        assert _cursor(tmp_path / "ref" / f"step-{step}") == _cursor(tmp_path / "elastic" / f"step-{step}")
    # Same samples in the same order: the losses match step by step (only the reduction order differs).
    ref_losses = read_losses(tmp_path / "ref" / "loss.csv")
    got = read_losses(tmp_path / "elastic" / "loss.csv")
    assert sorted(got) == list(range(1, 21))
    for step in range(1, 21):
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-4, abs=1e-5), step


def test_profiling_writes_a_trace_for_the_requested_steps(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    args = tiny_args(sample_data, tmp_path, "prof", steps=4, fmt="vanilla")
    prof_dir = tmp_path / "traces"
    rc = main(
        [
            *args,
            "--profile",
            "--profile-step-start",
            "2",
            "--profile-step-end",
            "3",
            "--profile-dir",
            str(prof_dir),
        ]
    )
    assert rc == ExitCode.OK
    (trace,) = prof_dir.iterdir()
    assert trace.name == "trace-rank0-steps2-3.json" and trace.stat().st_size > 1000


def _corrupt_every_checkpoint(run: Path) -> None:
    for step_dir in run.glob("step-*"):
        shard = max(step_dir.glob("*.distcp"), key=lambda p: p.stat().st_size)
        shard.write_bytes(shard.read_bytes()[:-16])


class _Events:
    """A reporter that keeps what the worker emits (``make_reporter``'s stand-in)."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def emit(self, type: str, *, step: int, **fields: object) -> None:
        self.events.append({"type": str(type), "step": step, **fields})

    def requested_action(self) -> str:
        return "none"

    def close(self, timeout: float = 10.0) -> None:
        pass


def test_a_run_whose_checkpoints_all_fail_verification_is_never_restarted_over(
    sample_data: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = [*tiny_args(sample_data, tmp_path, "past", steps=10, fmt="dcp"), "--checkpoint-frequency", "5"]
    assert main(args) == ExitCode.OK
    run = tmp_path / "past"
    _corrupt_every_checkpoint(run)
    capsys.readouterr()
    reported = _Events()
    monkeypatch.setattr(worker.train, "make_reporter", lambda *, rank: reported)
    assert main(args) == ExitCode.CHECKPOINT_ERROR  # this attempt finds the damage
    monkeypatch.undo()
    assert "none verifies" in capsys.readouterr().err
    quarantined = sorted(p.name for p in run.glob(".quarantine-step-*"))
    assert len(quarantined) == 2
    # The run's events name each damaged checkpoint and its quarantine, before the failure itself.
    kinds = [(e["type"], e.get("kind")) for e in reported.events]
    assert kinds == [("warning", "checkpoint"), ("warning", "checkpoint"), ("failed", None)], kinds
    for name in quarantined:
        assert any(name in str(e["message"]) for e in reported.events[:2]), (name, reported.events)
    losses = (run / "loss.csv").read_text()
    assert len(losses.splitlines()) == 11

    assert main(args) == ExitCode.FRESH_START_REFUSED  # the next one must not train over the past
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert "refusing to start from scratch" in line and all(name in line for name in quarantined)
    assert "loss.csv with 10 row(s)" in line and "--allow-restart-from-scratch" in line
    assert sorted(p.name for p in run.glob(".quarantine-step-*")) == quarantined
    assert (run / "loss.csv").read_text() == losses

    assert main([*args, "--allow-restart-from-scratch"]) == ExitCode.OK  # the explicit choice
    assert sorted(p.name for p in run.glob(".quarantine-step-*")) == quarantined  # still kept
    (aside,) = run.glob("loss.csv.before-restart-*")
    assert aside.read_text() == losses
    assert sorted(read_losses(run / "loss.csv")) == list(range(1, 11))


def test_a_failed_resume_leaves_no_new_directory_behind(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(sample_data, tmp_path / "ckpt", "fresh", steps=3, fmt="dcp")
    assert main([*args, "--resume-from-checkpoint", str(tmp_path / "elsewhere" / "step-3")]) == (
        ExitCode.CHECKPOINT_ERROR
    )
    assert "cannot resume from" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / "fresh").exists() and not (tmp_path / "elsewhere").exists()
