"""Which of a run's checkpoints are still on disk: the worker's retention reports, applied to the rows.

The worker keeps only the newest ``keep_last_k`` committed checkpoints (plus every ``keep_every_n``-th
and the one it resumed from) and deletes the rest after each commit
(``worker/checkpoint/commit.py:retain``); rank 0 reports the deleted steps in a
``checkpoints_deleted`` event. A row is never removed (it is the run's history: when, how big, how
long the save took), only marked: ``deleted_at``. A step committed again later (a run that rolled
back and re-trained it) is on disk again.

A deleted checkpoint is never the run's latest: retention always keeps the newest, so this only
happens on a false report, and then the latest falls back to the newest step still on disk.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from controller.db.models import Checkpoint, Run


def mark_deleted(
    session: Session, run: Run, steps: list[int], at: datetime, *, move_latest: bool = True
) -> list[int]:
    """Mark the run's checkpoints at ``steps`` deleted (once: the first report's time is kept).

    Steps the controller has no row for are ignored. Returns the steps marked now. With
    ``move_latest`` false (a run that is over: its progress stays as it is) the run's latest
    checkpoint is left alone."""
    rows = session.scalars(
        select(Checkpoint).where(
            Checkpoint.run_id == run.id, Checkpoint.step.in_(set(steps)), Checkpoint.deleted_at.is_(None)
        )
    ).all()
    for row in rows:
        row.deleted_at = at
    marked = sorted(row.step for row in rows)
    if move_latest and run.latest_checkpoint_step is not None and run.latest_checkpoint_step in marked:
        session.flush()
        run.latest_checkpoint_step = session.scalar(
            select(func.max(Checkpoint.step)).where(
                Checkpoint.run_id == run.id, Checkpoint.deleted_at.is_(None)
            )
        )
    return marked


def mark_on_disk(session: Session, run_id: int, step: int) -> None:
    """A step committed again (its row exists): it is on disk again, whatever happened before."""
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.run_id == run_id, Checkpoint.step == step, Checkpoint.deleted_at.is_not(None))
        .values(deleted_at=None)
    )
