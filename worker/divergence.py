"""Divergence: non-finite updates never reach the optimizer, and a run that keeps diverging stops.

Three rules (docs/architecture.md, "Divergence"):

* **Skip.** Before the optimizer step every rank checks the loss and the gradient norm; if either
  is NaN/inf on any rank (one all-reduce of a flag) every rank skips the update, so the weights
  and the AdamW moments stay finite and identical. The step still counts (its data is consumed,
  the LR schedule advances): the skip is reported (``skipped_steps`` in progress events).
* **Stop.** ``max_skipped_steps`` skips in a row, or a loss above ``loss_spike_factor`` x the
  running median of the last ``loss_spike_window`` losses, end the attempt: the worker commits
  nothing more, reports ``diverged`` with the data window since the last commit and exits with
  ``ExitCode.DIVERGED``.
* **Never commit non-finite state.** Every rank checks its weights and optimizer state before a
  checkpoint is written (``worker.checkpoint.state.TrainState.is_finite``, called by
  ``worker.checkpoint.manager.CheckpointManager.save``); one NaN anywhere and the save is refused
  with ``NonFiniteState``, which the loop turns into a ``diverged`` stop.

With a loss scaler (fp16 mixed precision) an overflow is the scaler's normal business: it skips
that update itself and lowers its scale. Those skips are counted like any other, so a scaler that
never stops overflowing ends the attempt after ``max_skipped_steps`` halvings of its scale.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shared.events import DivergenceReason, EventType
from shared.schemas import DataCursor
from worker.distributed import DistInfo, all_reduce_sum

log = logging.getLogger("pyrecover.worker")

_MIN_SPIKE_SAMPLES = 2


@dataclass(frozen=True)
class Verdict:
    """Why the attempt must stop as diverged, at which step."""

    reason: DivergenceReason
    step: int
    message: str
    loss: float | None = None
    median: float | None = None
    skipped_in_a_row: int = 0


class Diverged(Exception):
    """Raised inside the loop when a ``Verdict`` ends the attempt."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class DivergenceGuard:
    """Per-attempt state of the three rules above; one per rank, fed identical global values."""

    def __init__(
        self, *, max_skipped_steps: int, spike_factor: float, spike_window: int, info: DistInfo
    ) -> None:
        if max_skipped_steps < 1:
            raise ValueError(f"max_skipped_steps must be >= 1, got {max_skipped_steps}")
        self.max_skipped = max_skipped_steps
        self.spike_factor = spike_factor
        self.spike_window = spike_window
        self.info = info
        self.skipped_total = 0
        self.skipped_in_a_row = 0
        self._skipped_now = False
        self._losses: deque[float] = deque(maxlen=spike_window)

    def allow_update(self, local_loss: torch.Tensor | float, grad_norm: torch.Tensor | float) -> bool:
        """Collective: True when every rank's loss and the gradient norm are finite.

        ``grad_norm`` is already global (computed from the synchronised gradients); the local loss is
        not, so one flag is summed over the ranks: they all take the same branch.
        """
        values = [v.detach() if isinstance(v, torch.Tensor) else v for v in (local_loss, grad_norm)]
        bad = not all(math.isfinite(float(v)) for v in values)
        (bad_ranks,) = all_reduce_sum([float(bad)], self.info)
        self._skipped_now = bad_ranks > 0
        if self._skipped_now:
            self.skipped_total += 1
            self.skipped_in_a_row += 1
        else:
            self.skipped_in_a_row = 0
        return not self._skipped_now

    def observe(self, step: int, loss: float) -> Verdict | None:
        """After the step boundary (``loss`` is the global mean): a verdict when the run must stop."""
        skipped, self._skipped_now = self._skipped_now, False
        if skipped:
            log.warning(
                "step %d: update skipped (loss %s, non-finite loss or gradient norm); %d in a row, %d in all",
                step,
                loss,
                self.skipped_in_a_row,
                self.skipped_total,
            )
            if self.skipped_in_a_row >= self.max_skipped:
                return Verdict(
                    reason=DivergenceReason.NON_FINITE,
                    step=step,
                    message=(
                        f"diverged at step {step}: {self.skipped_in_a_row} updates in a row had a non-finite "
                        f"loss or gradient norm (max_skipped_steps {self.max_skipped})"
                    ),
                    loss=loss if math.isfinite(loss) else None,
                    skipped_in_a_row=self.skipped_in_a_row,
                )
            return None
        if not math.isfinite(loss):  # cannot happen after an applied update; kept as a safety net
            return None
        verdict = self._spike(step, loss)
        self._losses.append(loss)
        return verdict

    def _spike(self, step: int, loss: float) -> Verdict | None:
        if self.spike_factor <= 0 or len(self._losses) < max(self.spike_window // 2, _MIN_SPIKE_SAMPLES):
            return None
        median = statistics.median(self._losses)
        if median <= 0 or loss <= self.spike_factor * median:
            return None
        return Verdict(
            reason=DivergenceReason.LOSS_SPIKE,
            step=step,
            message=(
                f"diverged at step {step}: loss {loss:.4g} is {loss / median:.1f}x the running median "
                f"{median:.4g} of the last {len(self._losses)} steps "
                f"(loss_spike_factor {self.spike_factor:g})"
            ),
            loss=loss,
            median=median,
        )


def wire_cursor(cursor: dict[str, Any]) -> dict[str, int]:
    """The fields of a dataset cursor that a ``diverged`` event carries (``shared.schemas.DataCursor``)."""
    return {k: int(v) for k, v in cursor.items() if k in DataCursor.model_fields and isinstance(v, int)}


def report_divergence(
    reporter: Any,
    verdict: Verdict,
    *,
    committed_step: int | None,
    committed_cursor: dict[str, Any] | None,
    cursor: dict[str, Any],
) -> str:
    """Log and report ``diverged`` (then ``failed``) with the suspect data window; returns the message.

    The window runs from the cursor of the last committed checkpoint (the start of the run when
    none) to the cursor after the diverged step's batch: a rollback resumes from ``committed_step``
    and skips to ``cursor.chunks_consumed``.
    """
    now = wire_cursor(cursor)
    start = wire_cursor(committed_cursor) if committed_cursor is not None else None
    first = start["chunks_consumed"] if start else 0
    end = now.get("chunks_consumed")
    if committed_step is None:
        where = f"no checkpoint was committed; the data window since the start is samples 0..{end}"
    else:
        where = (
            f"nothing after step {committed_step} was committed; the data window since then is samples "
            f"{first}..{end} (to skip it: --resume-from-checkpoint step-{committed_step} "
            f"--data-skip-to {end})"
        )
    message = f"{verdict.message}; {where}"
    log.error("%s", message)
    reporter.emit(
        EventType.DIVERGED,
        step=verdict.step,
        reason=verdict.reason,
        message=message[:2000],
        loss=verdict.loss if verdict.loss is not None and math.isfinite(verdict.loss) else None,
        loss_median=verdict.median,
        skipped_steps=verdict.skipped_in_a_row,
        committed_step=committed_step,
        committed_cursor=start,
        cursor=now,
    )
    reporter.emit(EventType.FAILED, step=verdict.step, error=message[:8000])
    return message


# --- rollback: resume before the divergence and skip its data window ---------------------------


class DataSkipError(ValueError):
    """``--data-skip-to`` cannot be honoured; the message says why."""


def skip_data_window(
    dataset: Any, to: int, *, global_batch: int, max_chunks: int, progress: Callable[[], None] | None = None
) -> tuple[int, int]:
    """Move ``dataset`` (just restored from a checkpoint) forward to ``chunks_consumed == to``.

    The batches in between are read and dropped, exactly as training would have drawn them, so
    the stream after the window is the one an uninterrupted run would have seen there. Returns
    (from, to) in samples. ``to`` is untrusted (a flag): it may not lie behind the cursor, must be
    a whole number of global batches ahead, and at most ``max_chunks`` ahead (the whole run).
    ``progress`` is called after every batch read (the watchdog: a long window is not a hang).
    """
    start = int(dataset.state_dict()["chunks_consumed"])
    if to < start:
        raise DataSkipError(
            f"data_skip_to: {to} is behind the checkpoint's data cursor ({start} samples consumed); "
            "a skip only moves forward"
        )
    if (to - start) % global_batch:
        raise DataSkipError(
            f"data_skip_to: {to} is {to - start} samples past the checkpoint's cursor ({start}), not a whole "
            f"number of global batches of {global_batch}"
        )
    if to - start > max_chunks:
        raise DataSkipError(
            f"data_skip_to: {to} would skip {to - start} samples, more than the whole run trains on "
            f"({max_chunks})"
        )
    batches = iter(dataset)
    for _ in range((to - start) // global_batch):
        next(batches)
        if progress is not None:
            progress()
    reached = int(dataset.state_dict()["chunks_consumed"])
    if reached != to:  # the dataset counts chunks per global batch: cannot happen, but never guess
        raise DataSkipError(f"data_skip_to: the stream reached {reached} samples, not {to}")
    return start, to
