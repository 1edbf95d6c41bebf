"""Which run and attempt ends make which webhook event: every event has a cause, planned stops none."""

from __future__ import annotations

from controller.notify.outbox import event_for_end_reason, event_for_run_state
from shared.schemas.notify import NotifyEvent
from shared.states import CLEAN_END_REASONS, EndReason, RunState


def test_hangs_and_divergences_are_their_own_events() -> None:
    assert event_for_end_reason(EndReason.HUNG) is NotifyEvent.HUNG
    assert event_for_end_reason(EndReason.DIVERGED) is NotifyEvent.DIVERGED
    assert event_for_end_reason(EndReason.NODE_FAIL) is NotifyEvent.ATTEMPT_FAILED


def test_planned_stops_notify_nobody_and_every_event_has_a_cause() -> None:
    for reason in CLEAN_END_REASONS:
        assert event_for_end_reason(EndReason(reason)) is None, reason
    made = {event_for_end_reason(r) for r in EndReason} | {event_for_run_state(s) for s in RunState}
    assert set(NotifyEvent) <= made
