"""One reconcile pass: recover, cancel, heartbeats, poll, decide, submit — each step in short
transactions.

Order matters: interrupted submissions are settled first (so nothing is submitted twice), then
cancellations, then the heartbeat check (a silent RUNNING attempt's job is cancelled,
``controller.reconciler.heartbeat``), then one batched poll per backend over every attempt the
scheduler still owns, and last the submissions that became due (including those decided a moment
ago in the same pass).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from controller.reconciler import store
from controller.reconciler.ending import TickContext, end_attempt
from controller.reconciler.heartbeat import check_heartbeats
from controller.reconciler.runlock import lock_run_for_transaction
from controller.reconciler.submission import prequeue_successor, recover_submitting, submit_due
from controller.scheduler.base import JobStatus, SchedulerError
from shared.states import AttemptState, RunState, SchedulerJobState

log = logging.getLogger(__name__)


def reconcile_once(ctx: TickContext) -> None:
    recover_submitting(ctx)
    cancel_requested(ctx)
    check_heartbeats(ctx)
    poll_attempts(ctx)
    submit_due(ctx)


def cancel_requested(ctx: TickContext) -> None:
    """Runs whose cancel was requested: stop their jobs; a run without a job ends CANCELLED now."""
    with ctx.session_factory() as session:
        targets = [
            (run.id, [(a.backend, a.external_id) for a in store.active_attempts(session, run.id)])
            for run in store.runs_to_cancel(session)
        ]
    for run_id, jobs in targets:
        for backend, external_id in jobs:
            if external_id:
                try:
                    ctx.scheduler(backend).cancel(external_id)
                except SchedulerError as exc:
                    log.warning("cancel of %s job %s failed: %s", backend, external_id, exc)
        if not jobs:
            with ctx.session_factory() as session:
                if not lock_run_for_transaction(session, run_id):
                    continue
                run = store.find_run(session, run_id)
                if run is not None and not RunState(run.state).terminal:
                    store.finish_run(session, run, RunState.CANCELLED, "cancelled by the user")
                    session.commit()


def poll_attempts(ctx: TickContext) -> None:
    """One batched ``poll`` per backend; apply what changed, attempt by attempt."""
    with ctx.session_factory() as session:
        by_backend: dict[str, list[str]] = defaultdict(list)
        for attempt in store.attempts_to_poll(session):
            if attempt.external_id:
                by_backend[attempt.backend].append(attempt.external_id)
    for backend, job_ids in by_backend.items():
        try:
            statuses = ctx.scheduler(backend).poll(job_ids)
        except SchedulerError as exc:
            # Not knowing is not "lost": try again next pass rather than resubmit a live job.
            log.warning("poll of %d %s jobs failed: %s", len(job_ids), backend, exc)
            continue
        for job_id, status in statuses.items():
            try:
                apply_status(ctx, backend, job_id, status)
            except Exception:
                log.exception("applying the status of %s job %s failed", backend, job_id)


def apply_status(ctx: TickContext, backend: str, job_id: str, status: JobStatus) -> None:
    with ctx.session_factory() as session:
        attempt = store.attempt_by_job(session, backend, job_id)
        # Another controller on the same database may be applying the same news: one does it, and
        # the other reads the attempt as the lock's previous holder left it.
        if attempt is None or not lock_run_for_transaction(session, attempt.run_id):
            return
        session.refresh(attempt)
        if attempt.state == AttemptState.ENDED:
            return
        run = store.find_run(session, attempt.run_id)
        assert run is not None
        now = ctx.now()
        if not status.state.finished:
            if status.state is SchedulerJobState.RUNNING:
                store.mark_running(session, run, attempt, status, now)
            if store.stop_announced(session, attempt) and attempt.state == AttemptState.RUNNING:
                store.set_attempt_state(session, attempt, AttemptState.STOPPING)
            session.commit()
            if attempt.state == AttemptState.STOPPING:
                prequeue_successor(ctx, run.id, attempt.id)
            return
        end_attempt(ctx, session, run, attempt, status, now)
        session.commit()
