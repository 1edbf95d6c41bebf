"""Multi-rank checkpoints (gloo, spawned processes): DDP keys, resharding 2 → 1 and 1 → 2, per-rank RNG."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from ckpt_helpers import (
    assert_same_training_state,
    make_state,
    manager,
    plain_params,
    rng_draws,
    run_ranks,
    snapshot,
    train,
)

from worker.checkpoint import TrainState, cli


def _seed_rank(rank: int) -> None:
    # Different generator states per rank, so a mix-up of ranks' RNG would show.
    import random

    import numpy as np

    random.seed(100 + rank)
    np.random.seed(100 + rank)
    torch.manual_seed(100 + rank)


def _dump_expected(state: TrainState, path: Path) -> None:
    torch.save(snapshot(state), path)


def _two_rank_save(rank: int, world: int, root: Path) -> None:
    """DDP-wrapped training on 2 ranks; save DCP (sync + async + final) and vanilla; check per-rank RNG."""
    state = make_state(wrap="ddp")
    _seed_rank(rank)
    train(state, 3)  # DDP averages gradients, so both ranks hold identical weights and moments
    for fmt in ("dcp", "vanilla"):
        m = manager(root / fmt, format=fmt, rank=rank, world_size=world)
        result = m.save(3, state)
        assert result is not None and result.size_bytes > 0
        draws = rng_draws()
        fresh = make_state(seed=50, wrap="ddp")
        restored = manager(root / fmt, format=fmt, rank=rank, world_size=world).restore(fresh)
        assert restored is not None and restored.warnings == []
        assert rng_draws() == draws, f"rank {rank}: RNG not restored from its own state ({fmt})"
        assert_same_training_state(state, fresh)
    if rank == 0:
        _dump_expected(state, root / "expected-3.pt")

    # Async save, then the final synchronous save; both commit.
    m = manager(root / "dcp", format="dcp", async_save=True, rank=rank, world_size=world)
    train(state, 1)
    assert m.save(4, state) is None
    train(state, 1)
    final = m.save(5, state, final=True)
    assert final is not None and final.final
    assert [r.step for r in m.completed()] == [4]
    m.close()
    dist.barrier()
    assert [c.step for c in m.committed()] == [3, 4, 5]
    if rank == 0:
        _dump_expected(state, root / "expected-5.pt")


def _two_rank_load(rank: int, world: int, root: Path) -> None:
    """Restore 1-rank checkpoints into a DDP-wrapped model on 2 ranks."""
    expected = torch.load(root / "expected.pt")
    for fmt in ("dcp", "vanilla"):
        state = make_state(seed=77, wrap="ddp")
        restored = manager(root / fmt, format=fmt, rank=rank, world_size=world).restore(state)
        assert restored is not None and restored.checkpoint.step == 3
        assert any("RNG state not restored" in w for w in restored.warnings)
        assert_same_training_state(expected, state)
        # Training continues in lock-step on both ranks.
        train(state, 1)
        params = [p.detach().clone() for p in state.model.parameters()]
        gathered: list[list[torch.Tensor] | None] = [None] * world
        dist.all_gather_object(gathered, params)
        assert all(torch.equal(a, b) for a, b in zip(gathered[0] or [], gathered[1] or [], strict=True))


def test_two_rank_ddp_checkpoints_load_in_one_process(tmp_path: Path) -> None:
    run_ranks(_two_rank_save, 2, tmp_path)
    for step, formats in ((3, ["dcp", "vanilla"]), (5, ["dcp"])):
        expected = torch.load(tmp_path / f"expected-{step}.pt")
        for fmt in formats:
            state = make_state(seed=9)
            restored = manager(tmp_path / fmt, format=fmt).restore(state, f"step-{step}")
            assert restored is not None and restored.checkpoint.manifest["world_size"] == 2
            assert any("RNG state not restored" in w for w in restored.warnings)
            assert_same_training_state(expected, state)
            for k, v in plain_params(state).items():
                assert torch.equal(v, expected["params"][k])
    # The CLI compares a 2-rank DDP DCP checkpoint with the vanilla one, no process group needed.
    step3 = [str(tmp_path / fmt / "run" / "step-3") for fmt in ("dcp", "vanilla")]
    assert cli.main(["compare", "--optimizer", *step3]) == 0


def test_one_rank_checkpoints_load_on_two_ranks(tmp_path: Path) -> None:
    state = make_state()
    train(state, 3)
    for fmt in ("dcp", "vanilla"):
        manager(tmp_path / fmt, format=fmt).save(3, state)
    torch.save(snapshot(state), tmp_path / "expected.pt")
    run_ranks(_two_rank_load, 2, tmp_path)
