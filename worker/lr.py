"""Learning-rate schedule: the seed's linear warm-up, then constant or a cosine decay to 10%.

Step ``s`` is 0-based (the optimizer step about to run): ``factor(0)`` applies to the first step.
The factor is a closure, not an object, so ``LambdaLR.state_dict()`` stores only the step count and
a resumed run may change ``training_steps`` (the cosine then stretches to the new end).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

MIN_LR_RATIO = 0.1


def lr_factor(schedule: str, *, warmup_steps: int, training_steps: int) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at 0-based step ``s``."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    decay_steps = max(1, training_steps - 1 - warmup_steps)

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup_steps) / decay_steps)
        return MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup_steps: int, training_steps: int
) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(schedule, warmup_steps=warmup_steps, training_steps=training_steps))


def apply_peak_lr(scheduler: LambdaLR, peak_lr: float) -> None:
    """After a restore: adopt this attempt's peak LR (it may have changed) at the restored step.

    Uses LambdaLR's own formula ``base_lr * factor(last_epoch)``, so an unchanged LR gives bit-for-bit
    the value the uninterrupted run would have.
    """
    scheduler.base_lrs = [peak_lr for _ in scheduler.base_lrs]
    for group, lmbda in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = peak_lr
        group["lr"] = peak_lr * lmbda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
