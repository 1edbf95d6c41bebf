"""What the controller checks before it believes a worker's report (docs/architecture.md, "Worker claims").

A worker is trusted only for its own run's live attempt, and only for what the controller can
check. In the order ``POST /runs/{id}/reports`` applies them:

1. **Who** (``authorize_reporter``, ``authorize_attempt``): only a worker token posts reports,
   for its own run, and for the attempt it was issued for or an earlier one (a successor
   delivers its predecessor's spool; ``controller/services/tokens.py:issue_worker_token`` issues
   one token per attempt). A user token, another run's token or a later attempt is 403.
2. **What** (``check_events``): no step beyond the run's ``training_steps`` (422 naming the
   field), and every checkpoint path (committed or resumed from) is the run's own
   ``<checkpoint dir>/<run name>/step-<N>`` for that event's step. A path elsewhere is refused
   (``ClaimRefused``, 422) and recorded on the run as a security event (``record_refusal``).
3. **When** (``scope``): a report for an attempt that has ended, or of a run that is over, is
   legitimate (a spool replayed late, a controller outage) and is recorded for its attempt —
   events, metrics, checkpoints, the attempt's own figures — but it never changes a state, and
   the progress of a run that is over stays as it is.

Nothing here makes a run COMPLETED: that takes a committed checkpoint at ``training_steps`` the
controller holds (and verified, where it sees the file system), decided in
``controller/reconciler/decide.py:is_complete``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from controller.db.models import ApiToken, Attempt, Run
from controller.services.errors import InvalidReport, ReportForbidden
from controller.state_machine import record_run_event
from shared.paths import same_path, step_dir_name
from shared.schemas import CheckpointCommittedEvent, ReportBatch, StartedEvent
from shared.states import AttemptState, RunState

if TYPE_CHECKING:  # controller.auth imports the services package: only the type is needed here
    from controller.auth import Principal

SECURITY_EVENT = "security"
"""``Event.kind`` of a refused claim the run's owner and the admin should see."""


class ClaimRefused(InvalidReport):
    """A report claims something the controller knows to be false about where the run's files are
    (HTTP 422); the refusal is recorded on the run as a security event."""


@dataclass(frozen=True)
class Scope:
    """What a stored report may change."""

    live: bool
    """The attempt is live and the run is not over: states may move, actions are delivered."""
    progress: bool
    """The run is not over: its progress (step, tokens, latest checkpoint) may move forward."""


def authorize_reporter(principal: Principal, run_id: int) -> None:
    """``ReportForbidden`` (403) unless ``principal`` is a worker token of ``run_id`` (checked before the
    body is read: a user token is refused whatever it sends)."""
    if principal.kind != "worker":
        raise ReportForbidden("only the run's worker token may post reports")
    if principal.run_id != run_id:
        raise ReportForbidden(f"this worker token belongs to run {principal.run_id}, not run {run_id}")


def authorize_attempt(session: Session, principal: Principal, run_id: int, batch_attempt: int) -> None:
    """``ReportForbidden`` (403) unless the worker token may report for ``batch_attempt``: the attempt it
    was issued for or an earlier one (tokens older than migration 0007 name none: any)."""
    authorize_reporter(principal, run_id)
    row = session.get(ApiToken, principal.token_id) if principal.token_id is not None else None
    issued_for = row.attempt if row is not None else None
    if issued_for is not None and batch_attempt > issued_for:
        raise ReportForbidden(
            f"this worker token belongs to attempt {issued_for} of run {run_id}, not attempt {batch_attempt}",
        )


def scope(run: Run, attempt: Attempt) -> Scope:
    over = RunState(run.state).terminal
    return Scope(live=not over and attempt.state != AttemptState.ENDED, progress=not over)


def check_events(batch: ReportBatch, *, training_steps: int, checkpoint_dir: Path | None) -> None:
    """``InvalidReport`` for a step beyond ``training_steps``; ``ClaimRefused`` for a checkpoint path
    that is not ``checkpoint_dir/step-<N>`` of its event's step (``None``: paths not checked)."""
    for index, event in enumerate(batch.events):
        at = f"events[{index}]"
        beyond = f"must be at most the run's training_steps ({training_steps})"
        if event.step > training_steps:
            raise InvalidReport(beyond, field=f"{at}.step")
        if isinstance(event, StartedEvent):
            if event.resume_step > training_steps:
                raise InvalidReport(beyond, field=f"{at}.resume_step")
            if event.resumed_from is not None and checkpoint_dir is not None:
                expected = checkpoint_dir / step_dir_name(event.resume_step)
                if not same_path(event.resumed_from, expected):
                    raise ClaimRefused(
                        f"{event.resumed_from[:300]!r} is not this run's checkpoint of step "
                        f"{event.resume_step} ({expected})",
                        field=f"{at}.resumed_from",
                    )
        elif isinstance(event, CheckpointCommittedEvent) and checkpoint_dir is not None:
            expected = checkpoint_dir / step_dir_name(event.step)
            if not same_path(event.path, expected):
                raise ClaimRefused(
                    f"{event.path[:300]!r} is not this run's checkpoint of step {event.step} ({expected})",
                    field=f"{at}.path",
                )


def record_refusal(session: Session, run: Run, batch_attempt: int, exc: ClaimRefused) -> None:
    """The refused claim as a security event on the run (caller commits, in its own transaction:
    the refused batch itself is rolled back)."""
    record_run_event(
        session,
        run,
        kind=SECURITY_EVENT,
        message=f"refused a report of attempt {batch_attempt}: {exc.field}: {exc}",
        data={"field": exc.field, "attempt": batch_attempt},
    )
