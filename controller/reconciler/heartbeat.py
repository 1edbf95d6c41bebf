"""The controller's layer of hang detection: a RUNNING attempt that stopped reporting is cancelled.

The worker's watchdog (``worker.watchdog``) is the first layer; this one catches what it cannot
report: a frozen or SIGSTOPped reporting rank, a watchdog that itself hangs, a node that stopped
answering without the scheduler noticing. Each pass, every RUNNING attempt whose last sign of life
(its newest report, else the time it started; and where the controller sees the checkpoint file
system, ``Settings.verify_checkpoints``, the last write of the run's ``loss.csv`` or the last commit
into its checkpoint directory, so a report outage alone never looks like a hang) is older than
``decide.heartbeat_timeout`` gets its job cancelled, then a ``heartbeat_timeout`` run event for it.
When the scheduler reports the job ended, ``store.reported`` finds that event and
``decide.end_reason`` ends the attempt ``hung``: retried like a crash, counted against the failure
budget. The attempt ends only once the scheduler says the job is gone, so the next attempt never
overlaps a job still holding the nodes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from controller.db.models import Attempt
from controller.reconciler import store
from controller.reconciler.decide import heartbeat_timeout
from controller.reconciler.ending import TickContext
from controller.reconciler.runlock import lock_run_for_transaction
from controller.scheduler.base import SchedulerError
from shared.paths import LOSS_CSV_NAME
from shared.states import AttemptState

log = logging.getLogger(__name__)


def check_heartbeats(ctx: TickContext) -> None:
    """Cancel every RUNNING attempt that sent no report for its heartbeat timeout."""
    with ctx.session_factory() as session:
        ids = [a.id for a in store.running_attempts(session)]
    for attempt_id in ids:
        try:
            _check(ctx, attempt_id)
        except Exception:
            log.exception("the heartbeat check of attempt %s failed", attempt_id)


def last_sign_of_life(attempt: Attempt, written: Sequence[Path] = ()) -> float | None:
    """Unix time of the attempt's newest report, or of its start when it has not reported yet; or
    of the last change of a path in ``written`` when that is newer and the attempt has started:
    ``loss.csv`` (rank 0 appends a row every ``logging_frequency`` steps) and the run's checkpoint
    directory (each commit renames a ``step-<N>`` into it)."""
    times = [
        t.timestamp() for t in (attempt.last_report_at, attempt.training_started_at, attempt.start_time) if t
    ]
    if not times:
        return None
    for path in written:
        # Not there yet (a fresh start), or not readable here: the reports decide.
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


def _check(ctx: TickContext, attempt_id: int) -> None:
    with ctx.session_factory() as session:
        attempt = store.find_attempt(session, attempt_id)
        if attempt is None or not lock_run_for_transaction(session, attempt.run_id):
            return
        session.refresh(attempt)
        if attempt.state != AttemptState.RUNNING or not attempt.external_id:
            return
        if store.heartbeat_timeout_message(session, attempt) is not None:
            return  # already cancelled: waiting for the scheduler to say the job is gone
        run = store.find_run(session, attempt.run_id)
        if run is None:
            return
        spec = store.run_spec(run)
        written: list[Path] = []
        if spec.resources.scheduler in ctx.settings.verify_checkpoints:
            directory = ctx.settings.resolve_checkpoint_dir(spec.training.checkpoint_dir) / run.name
            written = [directory / LOSS_CSV_NAME, directory]
        last = last_sign_of_life(attempt, written)
        if last is None:
            return
        limit = heartbeat_timeout(
            spec.policy,
            spec.training,
            # Before training started the start-up limit applies: a step time of an earlier attempt
            # says nothing about this one's start-up (its load, its compilation).
            step_seconds=store.recent_step_seconds(session, attempt) if attempt.training_started_at else None,
            save_seconds=store.longest_save_seconds(session, run.id),
            load_seconds=float(attempt.checkpoint_load_s or 0.0),
        )
        silent = ctx.now() - last
        if silent < limit:
            return
        try:
            ctx.scheduler(attempt.backend).cancel(attempt.external_id)
        except SchedulerError as exc:
            # Not recorded: the next pass tries again.
            log.warning("cancel of hung %s job %s failed: %s", attempt.backend, attempt.external_id, exc)
            return
        store.record_event(
            session,
            run,
            store.HEARTBEAT_TIMEOUT_EVENT,
            f"attempt {attempt.number} sent no report for {silent:.0f} s (heartbeat timeout "
            f"{limit:.0f} s): its job was cancelled and the attempt ends hung",
            data={"attempt": attempt.number, "silent_seconds": round(silent, 1), "limit_seconds": limit},
        )
        session.commit()
