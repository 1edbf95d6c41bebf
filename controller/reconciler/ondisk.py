"""Progress from the checkpoints themselves, where the controller can read them.

A worker's reports are how the controller usually learns what an attempt committed, but reports get
lost: a network partition, a controller outage spanning the job's end, a worker killed between its
commit and its report. Judged from reports alone, a run that kept committing on disk would look
stuck and be FAILED by its failure budget ("committed no new checkpoint"), and its attempts would
show the wrong steps.

So where the controller sees the backend's checkpoint file system (``Settings.verify_checkpoints``),
``record_unreported`` runs before an attempt's end is judged: it looks for the newest
``<checkpoint dir>/<run name>/step-<N>`` above every step the controller holds, verifies its
manifest and files (``shared.checkpoint_manifest.check_step``: the same test the worker's resume
applies) and records it for the ending attempt, as if its report had come. Only the newest verified
one is recorded: it alone decides progress and where the next attempt resumes; older unreported
ones cost a verification each and say nothing more. A directory that does not verify is left alone
(the worker's resume quarantines it) and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run
from controller.db.types import to_datetime
from controller.reconciler import store
from shared import checkpoint_manifest
from shared.paths import parse_step

FOUND_EVENT = "checkpoint_found"

MAX_TRIED = 4
"""Unreported step directories verified at most per attempt end, newest first: each costs reading
the checkpoint's files, and an older one only matters if every newer one is damaged."""


def candidates(directory: Path, above: int, upto: int) -> list[int]:
    """The steps of ``directory``'s ``step-<N>`` subdirectories with ``above < N <= upto``,
    newest first (an unreadable or missing directory has none)."""
    steps: list[int] = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            step = parse_step(entry.name)
            if step is not None and above < step <= upto and entry.is_dir():
                steps.append(step)
    return sorted(steps, reverse=True)


def newest_verified(directory: Path, above: int, upto: int) -> tuple[int, dict[str, Any]] | None:
    """The newest step in ``directory`` above ``above`` (at most ``upto``) whose checkpoint verifies,
    with its manifest; None if none of the ``MAX_TRIED`` newest does."""
    for step in candidates(directory, above, upto)[:MAX_TRIED]:
        path = directory / f"step-{step}"
        if checkpoint_manifest.check_step(path, step):
            continue
        try:
            return step, checkpoint_manifest.read_manifest(path)
        except checkpoint_manifest.ManifestError:
            continue  # replaced between the check and the read: the next older one
    return None


def _attempt_times(attempt: Attempt, claimed: Any, now: float) -> None:
    """The lost ``started`` report's time and the commit's, from the manifest's ``attempt`` (the
    worker writes them there, ``worker.checkpoint.manager.CheckpointManager.attempt``), so the goodput
    ledger can tell start-up from training. The worker's word: used only when it names this attempt
    and its times lie between the attempt's start and now; a report that did arrive wins."""
    if not isinstance(claimed, dict) or str(claimed.get("number")) != str(attempt.number):
        return
    low = attempt.start_time.timestamp() if attempt.start_time is not None else None

    def plausible(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value) if (low is None or value >= low) and value <= now else None

    started, committed = plausible(claimed.get("training_started_at")), plausible(claimed.get("committed_at"))
    if attempt.training_started_at is None and started is not None:
        attempt.training_started_at = to_datetime(started)
    last = attempt.last_commit_at.timestamp() if attempt.last_commit_at is not None else None
    if committed is not None and (last is None or committed > last):
        attempt.last_commit_at = to_datetime(committed)


def record_unreported(
    session: Session, run: Run, attempt: Attempt, directory: Path, training_steps: int, now: float
) -> int | None:
    """Record for ``attempt`` the newest verified checkpoint in ``directory`` (the run's checkpoint
    directory) newer than every one the controller holds; its step, or None if there is none."""
    held = store.committed_step(session, run.id)
    found = newest_verified(directory, held, training_steps)
    if found is None:
        return None
    step, manifest = found
    path = directory / f"step-{step}"
    store.record_found_checkpoint(
        session, run, attempt, step, str(path), manifest, now, final=step == training_steps
    )
    _attempt_times(attempt, manifest.get("attempt"), now)
    store.record_event(
        session,
        run,
        FOUND_EVENT,
        f"verified the checkpoint of step {step} on disk, which attempt {attempt.number} never "
        f"reported: {path}",
        data={"attempt": attempt.number, "step": step},
    )
    return step
