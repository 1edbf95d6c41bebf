"""A checkpoint with non-finite weights or optimizer state is never committed, on any rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckpt_helpers import make_state, manager, run_ranks, train

from shared.paths import COMMITTED_MARKER
from worker.checkpoint import NonFiniteState


@pytest.mark.parametrize("where", ["weights", "moments"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_state_is_refused_before_anything_is_written(
    tmp_path: Path, where: str, bad: float
) -> None:
    state = make_state()
    train(state, 2)
    m = manager(tmp_path)
    m.save(2, state)
    with torch.no_grad():
        if where == "weights":
            next(iter(state.model.parameters()))[0, 0] = bad
        else:
            next(iter(state.optimizer.state.values()))["exp_avg_sq"].view(-1)[3] = bad
    with pytest.raises(NonFiniteState, match="refusing to save step 3"):
        m.save(3, state)
    # not even a temporary (the hidden file is the mark of step 2's commit)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [COMMITTED_MARKER, "step-2"]


def _one_rank_poisoned(rank: int, world: int, root: Path) -> None:
    state = make_state(wrap="ddp")
    train(state, 1)
    m = manager(root, rank=rank, world_size=world)
    m.save(1, state)
    param = next(iter(state.model.parameters()))
    good = param.detach().view(-1)[0].item()
    if rank == 1:
        with torch.no_grad():
            param.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteState, match=r"\(rank 1\)"):
        m.save(2, state)  # every rank learns the verdict: none waits in a collective the other skipped
    with torch.no_grad():
        param.view(-1)[0] = good
    m.save(3, state)  # and the group is still usable afterwards


def test_ranks_agree_when_one_rank_holds_nan(tmp_path: Path) -> None:
    run_ranks(_one_rank_poisoned, 2, tmp_path)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [COMMITTED_MARKER, "step-1", "step-3"]
