"""Round trips in one process: everything a checkpoint holds comes back, in both formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckpt_helpers import assert_same_training_state, make_state, manager, moments, rng_draws, train

from worker.checkpoint import CheckpointConfig, CheckpointError, CheckpointManager


@pytest.mark.parametrize("fmt", ["dcp", "vanilla"])
def test_round_trip_restores_model_optimizer_scheduler_progress_and_rng(tmp_path: Path, fmt: str) -> None:
    state = make_state()
    train(state, 5)
    result = manager(tmp_path, format=fmt).save(5, state)
    assert result is not None and result.step == 5 and result.format == fmt and result.size_bytes > 0
    assert result.path == tmp_path / "run" / "step-5" and result.tokens_seen == 160
    expected_draws = rng_draws()

    fresh = make_state(seed=123)  # different weights, empty optimizer state, scheduler at 0
    assert not fresh.optimizer.state
    restored = manager(tmp_path, format=fmt).restore(fresh)
    assert restored is not None and restored.checkpoint.step == 5 and restored.warnings == []
    assert rng_draws() == expected_draws
    assert_same_training_state(state, fresh)

    # Training on from the restored state matches training on from the original.
    train(state, 3)
    train(fresh, 3)
    assert_same_training_state(state, fresh)


def test_fresh_start_returns_none(tmp_path: Path) -> None:
    assert manager(tmp_path).restore(make_state()) is None
    assert manager(tmp_path).latest() is None


# Importing torch.compile's machinery the first time imports torch.utils.mkldnn, which uses the
# deprecated torch.jit.script_method at import time (a torch-internal warning, not our code).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["dcp", "vanilla"])
def test_compile_wrapper_does_not_change_keys(tmp_path: Path, fmt: str) -> None:
    wrapped = make_state(wrap="compile")
    train(wrapped, 4)
    manager(tmp_path, format=fmt).save(4, wrapped)
    plain = make_state(seed=7)
    manager(tmp_path, format=fmt).restore(plain)
    assert_same_training_state(wrapped, plain)

    # And the other way round: a plain checkpoint loads into a wrapped model.
    manager(tmp_path / "other", format=fmt).save(4, plain)
    wrapped_again = make_state(seed=8, wrap="compile")
    manager(tmp_path / "other", format=fmt).restore(wrapped_again)
    assert_same_training_state(plain, wrapped_again)


def test_saving_a_committed_step_again_returns_the_existing_one(tmp_path: Path) -> None:
    state = make_state()
    train(state, 2)
    m = manager(tmp_path)
    first = m.save(2, state)
    train(state, 1)  # different weights, same step number
    again = m.save(2, state)
    assert first is not None and again is not None
    assert again.path == first.path and again.size_bytes == first.size_bytes and again.save_seconds == 0.0
    fresh = make_state(seed=5)
    manager(tmp_path).restore(fresh)
    assert fresh.progress["step"] == 2  # the first save's content, not overwritten


def test_async_save_then_final_sync_save_both_commit(tmp_path: Path) -> None:
    state = make_state()
    m = manager(tmp_path, async_save=True)
    train(state, 2)
    assert m.save(2, state) is None  # async: the result arrives through completed()/wait()
    train(state, 2)
    snapshot = make_state(seed=3)
    snapshot.model.load_state_dict(state.model.state_dict())
    final = m.save(4, state, final=True)  # waits for the async save first, then saves synchronously
    assert final is not None and final.final and not final.async_save
    done = m.completed()
    assert [r.step for r in done] == [2] and done[0].async_save and done[0].size_bytes > 0
    assert done[0].stall_seconds <= done[0].save_seconds
    assert [c.step for c in m.committed()] == [2, 4]
    m.close()

    fresh = make_state(seed=9)
    manager(tmp_path).restore(fresh, "step-2")
    assert fresh.progress["step"] == 2 and fresh.progress["tokens_seen"] == 64
    restored = make_state(seed=9)
    manager(tmp_path).restore(restored)
    assert_same_training_state(state, restored)


def test_async_saves_capture_the_state_at_save_time(tmp_path: Path) -> None:
    state = make_state()
    m = manager(tmp_path, async_save=True)
    expected = {}
    for step in (1, 2, 3):
        train(state, 1)
        expected[step] = {k: v.clone() for k, v in state.model.state_dict().items()}
        m.save(step, state)
        train(state, 1)  # mutate weights and progress while the save may still be writing
        state.progress["step"] -= 1
    results = m.wait()
    results += m.wait()  # nothing left
    assert sorted(r.step for r in results) == [1, 2, 3]
    for step in (1, 2, 3):
        fresh = make_state(seed=11)
        manager(tmp_path).restore(fresh, f"step-{step}")
        assert fresh.progress["step"] == step
        for k, v in fresh.model.state_dict().items():
            assert torch.equal(v, expected[step][k])
    m.close()


def test_optimizer_moments_are_non_zero_after_restore(tmp_path: Path) -> None:
    state = make_state()
    train(state, 3)
    manager(tmp_path).save(3, state)
    fresh = make_state(seed=1)
    manager(tmp_path).restore(fresh)
    assert all(avg.abs().sum() > 0 and sq.abs().sum() > 0 and step == 3 for avg, sq, step in moments(fresh))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="keep_last_k"):
        CheckpointConfig(root=Path("x"), run_name="r", keep_last_k=1)
    with pytest.raises(ValueError, match="async_save"):
        CheckpointConfig(root=Path("x"), run_name="r", format="vanilla", async_save=True)
    with pytest.raises(ValueError, match="format"):
        CheckpointConfig(root=Path("x"), run_name="r", format="zip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run_name"):
        CheckpointConfig(root=Path("x"), run_name="a/b")


def test_vanilla_manager_refuses_async(tmp_path: Path) -> None:
    state = make_state()
    with pytest.raises(CheckpointError, match="dcp"):
        manager(tmp_path, format="vanilla").save(1, state, blocking=False)


def test_failed_async_save_is_reported_once_and_training_can_save_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = make_state()
    m = manager(tmp_path, async_save=True)
    real = CheckpointManager._await_write

    def disk_full(self: CheckpointManager, write: object, tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointManager, "_await_write", disk_full)
    train(state, 1)
    m.save(1, state)
    monkeypatch.setattr(CheckpointManager, "_await_write", real)
    train(state, 1)
    # The next save waits for the failed one but does not raise (on rank 0 alone that would
    # strand the other ranks in a collective); the failure surfaces from completed()/wait().
    final = m.save(2, state, final=True)
    assert final is not None and final.step == 2
    with pytest.raises(CheckpointError, match="No space left"):
        m.completed()
    assert m.completed() == []
    assert [c.step for c in m.committed()] == [2]
    m.close()
