"""What the loop reports to the controller, and how it obeys the controller's requested actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from train_launch import tiny_args

import worker.train
from shared.exit_codes import ExitCode
from shared.schemas.reports import ReportBatch
from worker.cli import main


class RecordingReporter:
    """A Reporter that records events and hands out scripted actions at given steps."""

    def __init__(self, actions: dict[int, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._actions = actions
        self.closed = False

    def emit(self, type: str, *, step: int, **fields: Any) -> None:
        self.events.append({"type": type, "step": step, **fields})

    def requested_action(self) -> str:
        last_step = max((e["step"] for e in self.events if e["type"] == "progress"), default=0)
        return self._actions.pop(last_step, "none")

    def close(self, timeout: float = 10.0) -> None:
        self.closed = True

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def run(
    monkeypatch: pytest.MonkeyPatch, args: list[str], actions: dict[int, str]
) -> tuple[int, RecordingReporter]:
    reporter = RecordingReporter(actions)
    monkeypatch.setattr(worker.train, "make_reporter", lambda *, rank: reporter)
    return main(args), reporter


def test_events_validate_against_the_wire_schema_and_actions_are_obeyed(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tiny_args(sample_data, tmp_path, "rep", steps=40, fmt="dcp")
    args += ["--logging-frequency", "2", "--checkpoint-frequency", "-1"]
    # The controller's reply to the progress of step 4 asks for a checkpoint, the one to step 8 for a stop;
    # the loop reads them at the next step boundary (after steps 5 and 9).
    rc, rep = run(monkeypatch, args, {4: "checkpoint", 8: "stop"})
    assert rc == ExitCode.OK and rep.closed
    kinds = [e["type"] for e in rep.events]
    assert kinds[0] == "started" and kinds[-1] == "checkpoint_committed"
    started = rep.of("started")[0]
    assert started["world_size"] == 1 and started["resumed_from"] is None and started["training_steps"] == 40
    commits = rep.of("checkpoint_committed")
    assert [(c["step"], c["final"]) for c in commits] == [(5, False), (9, True)]
    assert rep.of("stopping") == [
        {"type": "stopping", "step": 9, "reason": "controller_request", "deadline": None}
    ]
    assert not rep.of("finished")
    progress = rep.of("progress")
    assert [p["step"] for p in progress] == [1, 2, 4, 6, 8]
    assert all(
        p["loss"] > 0 and p["lr"] > 0 and p["tokens_per_s"] > 0 and p["grad_norm"] > 0 for p in progress
    )
    assert progress[-1]["tokens_seen"] == 8 * 4 * 32
    # every event is a valid wire event once the reporter stamps seq and time
    ReportBatch.model_validate(
        {"attempt": 1, "events": [{**e, "seq": i, "time": 1.0} for i, e in enumerate(rep.events)]}
    )

    rc, rep = run(monkeypatch, [*args, "--training-steps", "10"], {})
    assert rc == ExitCode.OK
    started = rep.of("started")[0]
    assert started["resume_step"] == 9 and started["resumed_from"].endswith("step-9")
    assert started["checkpoint_load_seconds"] > 0
    assert rep.events[-1] == {"type": "finished", "step": 10}
    assert rep.of("checkpoint_committed")[-1]["final"] is True


def test_a_failure_is_reported_with_its_error(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tiny_args(sample_data, tmp_path, "bad", steps=5, fmt="vanilla")
    rc, rep = run(monkeypatch, [*args, "--tokenizer-name-or-path", str(tmp_path / "no-tokenizer")], {})
    assert rc == ExitCode.CONFIG_ERROR
    (failed,) = rep.of("failed")
    assert "tokenizer" in failed["error"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rank_zero_reports_what_retention_deleted_after_the_commit_that_made_it_surplus(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    args = tiny_args(sample_data, tmp_path, f"keep-{mode}", steps=8, fmt="dcp")
    args += ["--checkpoint-frequency", "2", "--keep-last-k", "2"]
    if mode == "async":
        args.append("--async-checkpoint")
    rc, rep = run(monkeypatch, args, {})
    assert rc == ExitCode.OK
    assert [c["step"] for c in rep.of("checkpoint_committed")] == [2, 4, 6, 8]
    deleted = rep.of("checkpoints_deleted")
    assert [(d["step"], d["steps"]) for d in deleted] == [(6, [2]), (8, [4])]
    on_disk = sorted(p.name for p in (tmp_path / f"keep-{mode}").glob("step-*"))
    assert on_disk == ["step-6", "step-8"]  # what was reported deleted is gone, the rest is there
    # each deletion follows the commit of its step, so the controller has the rows it marks
    kinds = [(e["type"], e["step"]) for e in rep.events if e["type"].startswith("checkpoint")]
    assert kinds.index(("checkpoints_deleted", 6)) == kinds.index(("checkpoint_committed", 6)) + 1
    ReportBatch.model_validate(
        {"attempt": 1, "events": [{**e, "seq": i, "time": 1.0} for i, e in enumerate(rep.events)]}
    )


@pytest.mark.parametrize(
    ("error", "pinned"),
    [("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error", True), ("shapes differ", False)],
)
def test_a_device_fault_names_the_host_and_a_program_error_does_not(
    sample_data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: str,
    pinned: bool,
) -> None:
    def broken(self: object, **kwargs: object) -> int:
        raise RuntimeError(error)

    monkeypatch.setenv("SLURMD_NODENAME", "vm-2")
    monkeypatch.setattr(worker.train.TrainingLoop, "run", broken)
    rc, rep = run(monkeypatch, tiny_args(sample_data, tmp_path, "pin", steps=4, fmt="dcp"), {})
    [failed] = rep.of("failed")
    assert rc == ExitCode.FAILURE and error in failed["error"]
    assert failed.get("host") == ("vm-2" if pinned else None)
