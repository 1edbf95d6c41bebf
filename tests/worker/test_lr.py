"""The learning-rate schedule: the seed's warm-up, then constant or cosine to 10%."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from worker.lr import MIN_LR_RATIO, apply_peak_lr, build_lr_scheduler, lr_factor


def test_warmup_matches_the_seed_formula() -> None:
    f = lr_factor("constant", warmup_steps=4, training_steps=20)
    assert [f(s) for s in range(6)] == [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0, 1.0]


def test_cosine_decays_monotonically_to_ten_percent_at_the_last_step() -> None:
    f = lr_factor("cosine", warmup_steps=2, training_steps=12)
    values = [f(s) for s in range(2, 12)]
    assert values[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(values))
    assert math.isclose(values[-1], MIN_LR_RATIO)
    assert f(50) == pytest.approx(MIN_LR_RATIO)


def test_scheduler_drives_the_optimizer_and_survives_a_state_dict_round_trip() -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        return opt, build_lr_scheduler(opt, schedule="cosine", warmup_steps=3, training_steps=10)

    opt, sched = make()
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [0.25, 0.5, 0.75]
    saved_s, saved_o = sched.state_dict(), opt.state_dict()
    opt2, sched2 = make()
    opt2.load_state_dict(saved_o)
    sched2.load_state_dict(saved_s)
    apply_peak_lr(sched2, 1.0)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # bit-exact
    apply_peak_lr(sched2, 0.5)  # a changed learning rate is adopted at the restored step
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"] / 2)


def test_unknown_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("linear", warmup_steps=1, training_steps=5)
