"""The worker-event vocabulary: one declaration, and the report union agrees with it."""

from __future__ import annotations

import typing

from shared.events import (
    DROPPABLE_EVENT_TYPES,
    ENDING_EVENT_TYPES,
    NEVER_DROPPED_EVENT_TYPES,
    REQUESTABLE_ACTIONS,
    EventType,
    StopReason,
    WorkerAction,
)
from shared.schemas import ReportBatch, ReportReply, RunAction, StoppingEvent, WorkerEvent


def _union_tags() -> set[str]:
    union = typing.get_args(WorkerEvent)[0]
    return {cls.model_fields["type"].default for cls in typing.get_args(union)}


def test_every_event_type_has_exactly_one_schema_in_the_report_union() -> None:
    assert _union_tags() == {t.value for t in EventType}


def test_the_derived_sets_partition_and_stay_inside_the_vocabulary() -> None:
    assert set(EventType) == DROPPABLE_EVENT_TYPES | NEVER_DROPPED_EVENT_TYPES
    assert not DROPPABLE_EVENT_TYPES & NEVER_DROPPED_EVENT_TYPES
    assert ENDING_EVENT_TYPES <= NEVER_DROPPED_EVENT_TYPES  # the reconciler decides on them
    assert WorkerAction.NONE not in REQUESTABLE_ACTIONS and len(REQUESTABLE_ACTIONS) == 2


def test_the_wire_carries_plain_strings_and_reads_them_back_as_members() -> None:
    batch = ReportBatch.model_validate(
        {"attempt": 1, "events": [{"type": "stopping", "seq": 0, "time": 1.0, "step": 3, "reason": "signal"}]}
    )
    event = batch.events[0]
    assert isinstance(event, StoppingEvent) and event.reason is StopReason.SIGNAL
    assert batch.model_dump(mode="json")["events"][0]["type"] == "stopping"
    assert ReportReply(accepted=1, duplicates=0).model_dump(mode="json")["action"] == "none"
    assert RunAction.model_validate({"action": "stop"}).action is WorkerAction.STOP
