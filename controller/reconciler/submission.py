"""Submitting attempts without ever submitting one twice.

Every submission is three steps: (1) record the intent — an attempt row in state SUBMITTING with
its deterministic job name — and COMMIT; (2) call the scheduler; (3) record the job id (state
PENDING) and the run QUEUED. The database's one-live-attempt-per-run index makes step 1 fail for
a run that already has a live attempt. A controller that dies between (1) and (3) leaves a
SUBMITTING row; the next pass looks the job up by name (``find_by_name``) and adopts it, or
submits it then — the name was never used, so this is not a duplicate.

Several controllers may share one PostgreSQL database. Each of the three paths below (due
submission, pre-queued successor, recovery) runs under the run's lock (``runlock.run_claim``) from
its checks to the recorded job id, and re-checks the run inside it: so no controller can take
another's in-flight intent for an interrupted one, or act on a stale list of due runs.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run
from controller.reconciler import exclusions, store
from controller.reconciler.decide import Rollback, rollback_for
from controller.reconciler.ending import TickContext, end_attempt
from controller.reconciler.jobspec import build_job_spec
from controller.reconciler.runlock import run_claim
from controller.scheduler.base import JobStatus, SchedulerError, job_name_for
from controller.scheduler.registry import supports_dependencies
from shared.run_rules import RuleViolation
from shared.schemas import OnDivergence, PolicySpec
from shared.states import AttemptState, RunState, SchedulerJobState

log = logging.getLogger(__name__)


def submit_due(ctx: TickContext) -> None:
    """Submit the next attempt of every run that is waiting for one and whose backoff has passed."""
    with ctx.session_factory() as session:
        due = [run.id for run in store.runs_due(session, ctx.now())]
    for run_id in due:
        with run_claim(ctx.session_factory, run_id) as claimed:
            if not claimed:
                continue
            # The list above may be stale (another controller, or an earlier step of this pass).
            attempt_id = _record_intent(ctx, run_id, dependency=None, only_if_due=True)
            if attempt_id is not None:
                _submit(ctx, attempt_id)


def prequeue_successor(ctx: TickContext, run_id: int, stopping_attempt_id: int) -> None:
    """Queue attempt n+1 behind a stopping attempt n (``afterany`` dependency), where supported."""
    with run_claim(ctx.session_factory, run_id) as claimed:
        if claimed:
            _prequeue_successor(ctx, run_id, stopping_attempt_id)


def _prequeue_successor(ctx: TickContext, run_id: int, stopping_attempt_id: int) -> None:
    with ctx.session_factory() as session:
        run = store.find_run(session, run_id)
        stopping = store.find_attempt(session, stopping_attempt_id)
        if run is None or stopping is None or RunState(run.state).terminal or store.is_cancel_requested(run):
            return
        spec = store.run_spec(run)
        scheduler = ctx.scheduler(spec.resources.scheduler)
        if not spec.policy.prequeue_successor or not supports_dependencies(scheduler):
            return
        if store.successor_of(session, stopping) is not None or store.has_live_attempt(session, run_id):
            return
        if store.committed_step(session, run_id) >= spec.training.training_steps:
            return
        dependency = stopping.external_id
    attempt_id = _record_intent(ctx, run_id, dependency=dependency)
    if attempt_id is not None:
        _submit(ctx, attempt_id, dependency=dependency)


def recover_submitting(ctx: TickContext) -> None:
    """Settle intents left by a controller that died mid-submission: adopt the job or submit it now."""
    with ctx.session_factory() as session:
        pending = [
            (a.id, a.run_id, a.backend, a.job_name, a.dependency_job_id)
            for a in store.submitting_attempts(session)
        ]
    for attempt_id, run_id, backend, job_name, dependency in pending:
        # Under the run's lock the intent is either being submitted by its owner right now (the
        # lock is taken: skip) or was abandoned by a controller that died (its lock went with it).
        with run_claim(ctx.session_factory, run_id) as claimed:
            if claimed and _still_submitting(ctx, attempt_id):
                _recover(ctx, attempt_id, backend, job_name, dependency)


def _still_submitting(ctx: TickContext, attempt_id: int) -> bool:
    with ctx.session_factory() as session:
        attempt = store.find_attempt(session, attempt_id)
        return attempt is not None and attempt.state == AttemptState.SUBMITTING


def _recover(ctx: TickContext, attempt_id: int, backend: str, job_name: str, dependency: str | None) -> None:
    try:
        external_id = ctx.scheduler(backend).find_by_name(job_name)
    except SchedulerError as exc:
        log.warning("cannot look up job %s yet: %s", job_name, exc)
        return
    if external_id is None:
        log.info("attempt %s was never submitted (job %s unknown); submitting it now", attempt_id, job_name)
        _submit(ctx, attempt_id, dependency=dependency)
        return
    with ctx.session_factory() as session:
        attempt = store.find_attempt(session, attempt_id)
        run = store.find_run(session, attempt.run_id) if attempt is not None else None
        if attempt is None or run is None or attempt.state != AttemptState.SUBMITTING:
            return
        log.info("adopting job %s (%s) for attempt %s after a restart", external_id, job_name, attempt_id)
        store.record_submitted(session, run, attempt, external_id)
        session.commit()


def _record_intent(
    ctx: TickContext, run_id: int, *, dependency: str | None, only_if_due: bool = False
) -> int | None:
    """Step 1: the SUBMITTING row, committed. ``None`` if the run cannot take a new attempt now.

    ``only_if_due``: re-check, in this transaction, that the run still waits for an attempt (not
    cancelled, no attempt the scheduler owns, backoff over).
    """
    with ctx.session_factory() as session:
        run = store.find_run(session, run_id)
        if run is None or RunState(run.state).terminal:
            return None
        if only_if_due and not store.is_due(session, run_id, ctx.now()):
            return None
        try:
            spec = store.run_spec(run)
        except ValidationError as exc:
            # A stored run the rules refuse now (a row older than a rule, or written around the API)
            # never starts: it ends FAILED, saying which field.
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            store.finish_run(
                session, run, RunState.FAILED, f"{field}: {first['msg']}".replace("Value error, ", "")
            )
            session.commit()
            return None
        if only_if_due:
            _, plan = exclusions.next_attempt_nodes(
                session, run, spec, ctx.scheduler(spec.resources.scheduler), ctx.now()
            )
            if plan.nodes is None:
                exclusions.wait_for_nodes(session, run, plan, ctx.now())
                session.commit()
                return None
        number = store.last_attempt_number(session, run_id) + 1
        try:
            # add_attempt flushes: a conflict surfaces there, before the commit.
            attempt = store.add_attempt(
                session,
                run,
                number=number,
                backend=spec.resources.scheduler,
                job_name=job_name_for(run_id, number),
                step_at_start=store.committed_step(session, run_id),
                dependency=dependency,
                now=ctx.now(),
            )
            session.commit()
        except IntegrityError:
            # Another live attempt exists (or this number was taken): the DB said no, which is the point.
            session.rollback()
            log.info("run %s already has a live attempt; not submitting", run_id)
            return None
        return int(attempt.id)


def _submit(ctx: TickContext, attempt_id: int, *, dependency: str | None = None) -> None:
    """Steps 2 and 3: call the scheduler, then record its job id (or the failure)."""
    with ctx.session_factory() as session:
        attempt = store.find_attempt(session, attempt_id)
        if attempt is None or attempt.state != AttemptState.SUBMITTING:
            return
        run = store.find_run(session, attempt.run_id)
        assert run is not None
        backend = attempt.backend
        error: str | None = None
        shrunk = ""
        job = None
        try:
            spec = store.run_spec(run)
            # One token per attempt: a report is believed only for this attempt (or an earlier one).
            token = store.issue_token(session, run.id, attempt.number)
            session.commit()  # the token must exist before a worker can use it
            excluded, plan = exclusions.next_attempt_nodes(
                session, run, spec, ctx.scheduler(backend), ctx.now()
            )
            job = build_job_spec(
                settings=ctx.settings,
                run_id=run.id,
                run_name=run.name,
                attempt=attempt.number,
                training=spec.training,
                resources=spec.resources,
                token=token,
                dependency=dependency,
                exclude=excluded,
                nodes=plan.nodes,  # None (wait) cannot reach here but by a race: ask for them all
                rollback=_rollback(session, run, spec.policy),
                allow_restart_from_scratch=spec.policy.allow_restart_from_scratch,
            )
            if job.resources.nodes != spec.resources.nodes:
                shrunk = (
                    f"attempt {attempt.number} runs on {job.resources.nodes} of {spec.resources.nodes} "
                    f"nodes: the others are excluded ({', '.join(excluded)}) or unusable"
                )
        except RuleViolation as exc:
            # The stored run breaks the controller's rules as they are now (an allow-list narrowed,
            # a root removed): it does not start, and the user is told which field.
            error = f"{exc.field}: {exc}"
        except ValidationError as exc:
            error = f"the stored run no longer validates: {exc.errors()[0]['msg']}"
    external_id: str | None = None
    if job is not None:
        try:
            external_id = ctx.scheduler(backend).submit(job)
        except SchedulerError as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug or an OS error: same outcome, the attempt failed to start
            log.exception("submitting attempt %s failed", attempt_id)
            error = f"{type(exc).__name__}: {exc}"
    with ctx.session_factory() as session:
        attempt = store.find_attempt(session, attempt_id)
        run = store.find_run(session, attempt.run_id) if attempt is not None else None
        assert attempt is not None and run is not None
        if external_id is not None:
            store.record_submitted(session, run, attempt, external_id)
            if shrunk:
                store.record_event(session, run, exclusions.SHRUNK_EVENT, shrunk)
        else:
            _submission_failed(ctx, session, run, attempt, error or "submission failed")
        session.commit()


def _rollback(session: Session, run: Run, policy: PolicySpec) -> Rollback | None:
    """Under ``on_divergence: rollback``, the rollback the newest divergence since the last resume
    still asks for (``decide.rollback_for``): read off the stored events, so an attempt that
    crashed before committing past the window is followed by the same rollback, not by ``latest``."""
    if policy.on_divergence is not OnDivergence.ROLLBACK:
        return None
    divergence = store.last_divergence(session, run.id, run.resumed_after_attempt or 0)
    return rollback_for(divergence, store.committed_step(session, run.id))


def _submission_failed(ctx: TickContext, session: Session, run: Run, attempt: Attempt, error: str) -> None:
    """The scheduler refused: the attempt ends ``failed`` with its message; the run decides as usual."""
    status = JobStatus(job_id="", state=SchedulerJobState.FAILED, reason=f"submission refused: {error}")
    store.record_event(session, run, "submission_failed", f"attempt {attempt.number}: {error}")
    end_attempt(ctx, session, run, attempt, status, ctx.now())
