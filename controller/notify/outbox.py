"""Recording what webhooks should hear, in the caller's transaction (the outbox).

A notification is a row written together with the state change it reports: the run's end
(``controller.state_machine.transition_run``) or an attempt that ended badly
(``controller.reconciler.ending.end_attempt``). It is therefore never lost (a crash before the
commit also undoes the change) and never sent for a change that was rolled back. Delivery is
``controller.notify.deliver.Notifier``'s job, in its own thread.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.db.models import Notification, Run
from shared.schemas.notify import NotifyEvent
from shared.states import FATAL_END_REASONS, EndReason, RunState

_RUN_END = {
    RunState.COMPLETED: NotifyEvent.COMPLETED,
    RunState.FAILED: NotifyEvent.FAILED,
    RunState.CANCELLED: NotifyEvent.CANCELLED,
}
_ATTEMPT_END = {
    EndReason.FAILED: NotifyEvent.ATTEMPT_FAILED,
    EndReason.LOST: NotifyEvent.ATTEMPT_FAILED,
    EndReason.NODE_FAIL: NotifyEvent.ATTEMPT_FAILED,
    EndReason.TIMEOUT_KILLED: NotifyEvent.ATTEMPT_FAILED,
    EndReason.HUNG: NotifyEvent.HUNG,  # the attempt was ended for making no progress
    EndReason.DIVERGED: NotifyEvent.DIVERGED,
    **dict.fromkeys(FATAL_END_REASONS, NotifyEvent.ATTEMPT_FAILED),
}


def event_for_run_state(state: RunState) -> NotifyEvent | None:
    """The event a run entering ``state`` makes (only its ends)."""
    return _RUN_END.get(state)


def event_for_end_reason(reason: EndReason) -> NotifyEvent | None:
    """The event an attempt ending with ``reason`` makes (planned stops and successes make none)."""
    return _ATTEMPT_END.get(reason)


def record(session: Session, run: Run, event: NotifyEvent, message: str) -> None:
    """Queue ``event`` for the run's webhooks (caller commits, with the change it reports)."""
    session.add(Notification(run_id=run.id, event=event.value, state=str(run.state), message=message[:2000]))
