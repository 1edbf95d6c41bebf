"""A run's past is never trained over by accident: quarantine is kept, a fresh start over history refused."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ckpt_helpers import make_state, manager, train

from shared.paths import COMMITTED_MARKER, QUARANTINE_PREFIX, TMP_PREFIX
from worker.checkpoint import CheckpointError, FreshStartRefused
from worker.checkpoint.restore import run_history


def _save_steps(root: Path, steps: list[int]) -> None:
    state = make_state()
    m = manager(root, keep_last_k=5)
    for step in steps:
        train(state, 1)
        m.save(step, state)


def _truncate_shard(step_dir: Path) -> None:
    shard = max((p for p in step_dir.iterdir() if p.suffix == ".distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:-10])


def _quarantined(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(QUARANTINE_PREFIX))


def test_corrupt_checkpoints_go_to_quarantine_and_survive_later_commits(tmp_path: Path) -> None:
    _save_steps(tmp_path, [10, 20])
    run = tmp_path / "run"
    _truncate_shard(run / "step-20")
    restored = manager(tmp_path).restore(make_state())
    assert restored is not None and restored.checkpoint.step == 10
    (hidden,) = _quarantined(run)
    assert hidden.startswith(f"{QUARANTINE_PREFIX}20-corrupt-") and "kept" in restored.warnings[0]
    # An hour later more checkpoints commit: stale temporaries go, the quarantine stays.
    old = time.time() - 3600
    os.utime(run / hidden, (old, old))
    stale = run / f"{TMP_PREFIX}30-0badf00d"
    stale.mkdir()
    os.utime(stale, (old, old))
    _save_steps(tmp_path, [30, 40, 50, 60, 70, 80])
    assert not stale.exists()
    assert _quarantined(run) == [hidden]


def test_a_step_dir_without_manifest_in_the_way_of_a_commit_is_quarantined_not_deleted(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    (run / "step-5").mkdir(parents=True)
    (run / "step-5" / "precious.bin").write_bytes(b"a hand-made copy")
    _save_steps(tmp_path, [5])
    (hidden,) = _quarantined(run)
    assert (run / hidden / "precious.bin").read_bytes() == b"a hand-made copy"
    assert (run / "step-5" / "manifest.json").is_file()


def test_all_corrupt_then_the_next_start_refuses_to_train_over_the_history(tmp_path: Path) -> None:
    _save_steps(tmp_path, [10, 20])
    run = tmp_path / "run"
    (run / "loss.csv").write_text("step,loss\n" + "".join(f"{s},1.0\n" for s in range(1, 21)))
    for step in (10, 20):
        _truncate_shard(run / f"step-{step}")
    with pytest.raises(CheckpointError, match="none verifies") as first:
        manager(tmp_path).restore(make_state())
    assert not isinstance(first.value, FreshStartRefused) and "quarantine" in str(first.value)
    before = sorted(p.name for p in run.iterdir())
    assert len(_quarantined(run)) == 2
    # The error carries what was found on the way, one warning per checkpoint (for the run's events).
    assert len(first.value.warnings) == 2
    for step, name in zip((20, 10), sorted(_quarantined(run), reverse=True), strict=True):
        (named,) = [w for w in first.value.warnings if f"step-{step} is corrupt" in w]
        assert name in named

    with pytest.raises(FreshStartRefused) as refused:
        manager(tmp_path).restore(make_state())
    message = str(refused.value)
    for name in _quarantined(run):
        assert name in message
    assert "loss.csv with 20 row(s)" in message
    assert "--resume-from-checkpoint none" in message and "--allow-restart-from-scratch" in message
    assert sorted(p.name for p in run.iterdir()) == before, "a refusal changes nothing"

    # The explicit choice starts fresh, and still deletes nothing.
    assert manager(tmp_path).restore(make_state(), allow_fresh=True) is None
    assert sorted(p.name for p in run.iterdir()) == before


def test_history_names_each_kind_of_past(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_history(run) == []  # no directory at all
    run.mkdir()
    (run / "loss.csv").write_text("step,loss\n")
    (run / f"{TMP_PREFIX}3-abcdef01").mkdir()  # a crashed write is not history
    assert run_history(run) == []
    (run / "step-7").mkdir()
    (run / f"{QUARANTINE_PREFIX}4-corrupt-00000000").mkdir()
    (run / "loss.csv").write_text("step,loss\n1,2.0\n")
    found = run_history(run)
    assert len(found) == 3
    assert found[0].startswith("quarantined checkpoint") and "step-7" in found[1] and "1 row(s)" in found[2]


def test_a_new_run_starts_fresh_and_a_failed_restore_creates_no_directory(tmp_path: Path) -> None:
    assert manager(tmp_path).restore(make_state()) is None
    assert not (tmp_path / "run").exists()
    with pytest.raises(CheckpointError):
        manager(tmp_path).restore(make_state(), tmp_path / "elsewhere" / "step-3")
    assert sorted(tmp_path.iterdir()) == []


def test_checkpoints_an_earlier_version_moved_aside_are_kept_and_count_as_history(tmp_path: Path) -> None:
    run = tmp_path / "run"
    legacy = run / f"{TMP_PREFIX}20-corrupt-1234abcd"
    legacy.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    with pytest.raises(FreshStartRefused, match="20-corrupt-1234abcd"):
        manager(tmp_path).restore(make_state())
    _save_steps(tmp_path, [30])  # a commit cleans temporaries, but not this one
    assert legacy.is_dir()


def test_loss_rows_of_a_first_attempt_that_never_committed_are_no_past(tmp_path: Path) -> None:
    """A first attempt killed before its first save (kill -9, preemption) leaves loss rows only:
    the next attempt starts fresh. Once a checkpoint was committed, the rows are the run's past."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss.csv").write_text("step,loss\n1,9.5\n2,9.4\n")
    assert run_history(run) == []
    assert manager(tmp_path).restore(make_state()) is None
    (run / COMMITTED_MARKER).write_text("10\n")  # a checkpoint was committed here once, now gone
    assert run_history(run) == [f"{run / 'loss.csv'} with 2 row(s)"]
    with pytest.raises(FreshStartRefused):
        manager(tmp_path).restore(make_state())


def test_the_first_commit_marks_the_run_as_having_a_past(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not (run / COMMITTED_MARKER).exists()
    _save_steps(tmp_path, [10, 20])
    assert (run / COMMITTED_MARKER).read_text() == "10\n"
