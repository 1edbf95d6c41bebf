"""Experiment trackers (TensorBoard, W&B) that survive resubmission: one tracker run per pyrecover run.

- ``hub``: ``with_trackers`` wraps rank 0's reporter so progress events also go to the trackers,
  from a thread of their own (a failing tracker is a warning, never a crash or a stall);
- ``state``: the tracker run id and the high-water mark, persisted beside the checkpoints, so every
  attempt appends to one run with steps that only go up;
- ``backends``: TensorBoard event files and W&B runs; ``wandb_env``: what W&B may take from the
  environment.

See docs/architecture.md, "Trackers".
"""

from .hub import Trackers, TrackingReporter, with_trackers

__all__ = ["Trackers", "TrackingReporter", "with_trackers"]
