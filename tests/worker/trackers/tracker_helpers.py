"""Reading what the trackers wrote, as TensorBoard itself reads it."""

from __future__ import annotations

from pathlib import Path


def tensorboard_scalars(directory: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """Every (step, value) of ``tag`` in the event files of ``directory`` (one TensorBoard run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]
