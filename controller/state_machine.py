"""The run and attempt state machines: the only functions that change state.

The tables themselves (``RUN_TRANSITIONS``, ``ATTEMPT_TRANSITIONS``) are contracts and live in
``shared.states``.

Every change goes through ``transition_run`` / ``transition_attempt``, which check the table
(raising ``InvalidTransition``), update the row and append an ``Event`` to the run's log in the
caller's transaction (the caller commits). Because the check and the write happen together, a
stale caller cannot move a run backwards without an error.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import Attempt, Event, Run
from controller.db.types import utcnow
from controller.notify import outbox
from shared.states import ATTEMPT_TRANSITIONS, RUN_TRANSITIONS, TERMINAL_RUN_STATES, AttemptState, RunState


class DomainError(Exception):
    """Base class of the domain errors; ``str(error)`` is the message shown to the user."""


class InvalidTransition(DomainError):
    """A state change the transition table does not allow (HTTP 409)."""


def record_run_event(
    session: Session, run: Run, *, kind: str, message: str, data: dict[str, Any] | None = None
) -> Event:
    """Append a user-visible event to the run's log (caller commits)."""
    event = Event(run_id=run.id, time=utcnow(), kind=kind, message=message, data=data)
    session.add(event)
    return event


def transition_run(
    session: Session, run: Run, new_state: RunState, *, reason: str, data: dict[str, Any] | None = None
) -> None:
    current = RunState(run.state)
    if new_state not in RUN_TRANSITIONS[current]:
        raise InvalidTransition(f"run {run.id} cannot go from {current} to {new_state}")
    run.state = new_state
    now = utcnow()
    run.updated_at = now
    if new_state in TERMINAL_RUN_STATES:
        run.finished_at = now
    elif current in TERMINAL_RUN_STATES:
        run.finished_at = None
    payload = {"from": current.value, "to": new_state.value, **(data or {})}
    record_run_event(session, run, kind="state", message=f"{current} → {new_state}: {reason}", data=payload)
    if (event := outbox.event_for_run_state(new_state)) is not None:
        outbox.record(session, run, event, reason)


def transition_attempt(
    session: Session,
    attempt: Attempt,
    new_state: AttemptState,
    *,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    current = AttemptState(attempt.state)
    if new_state not in ATTEMPT_TRANSITIONS[current]:
        raise InvalidTransition(
            f"attempt {attempt.number} of run {attempt.run_id} cannot go from {current} to {new_state}"
        )
    attempt.state = new_state
    if new_state is AttemptState.STOPPING and attempt.stopping_time is None:
        attempt.stopping_time = utcnow()
    text = f"attempt {attempt.number}: {current} → {new_state}" + (f" ({reason})" if reason else "")
    payload = {"attempt": attempt.number, "from": current.value, "to": new_state.value, **(data or {})}
    session.add(Event(run_id=attempt.run_id, time=utcnow(), kind="attempt", message=text, data=payload))
