"""The transition tables: every allowed transition works and leaves an event; others raise."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Event, Run
from controller.services import first_admin
from controller.state_machine import InvalidTransition, transition_attempt, transition_run
from shared.states import ATTEMPT_TRANSITIONS, RUN_TRANSITIONS, AttemptState, RunState

ALLOWED_RUN = [(a, b) for a, targets in RUN_TRANSITIONS.items() for b in sorted(targets)]
FORBIDDEN_RUN = [(a, b) for a, b in itertools.product(RunState, RunState) if b not in RUN_TRANSITIONS[a]]
ALLOWED_ATTEMPT = [(a, b) for a, targets in ATTEMPT_TRANSITIONS.items() for b in sorted(targets)]
FORBIDDEN_ATTEMPT = [
    (a, b) for a, b in itertools.product(AttemptState, AttemptState) if b not in ATTEMPT_TRANSITIONS[a]
]


def test_table_shape() -> None:
    assert set(RUN_TRANSITIONS) == set(RunState) and set(ATTEMPT_TRANSITIONS) == set(AttemptState)
    # A completed run goes back to PENDING only when its training is extended (services/extend.py).
    assert RUN_TRANSITIONS[RunState.COMPLETED] == {RunState.PENDING}
    assert RUN_TRANSITIONS[RunState.FAILED] == {RunState.PENDING} == RUN_TRANSITIONS[RunState.CANCELLED]
    assert RunState.QUEUED in RUN_TRANSITIONS[RunState.RUNNING]  # between attempts
    assert ATTEMPT_TRANSITIONS[AttemptState.ENDED] == frozenset()
    assert len(FORBIDDEN_RUN) > 20 and (RunState.COMPLETED, RunState.RUNNING) in FORBIDDEN_RUN


@pytest.fixture
def factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'sm.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _run(session: Session, state: RunState) -> Run:
    return Run(
        name="r", owner_id=first_admin(session).id, state=state, spec={}, scheduler="local", training_steps=10
    )


@pytest.mark.parametrize(("old", "new"), ALLOWED_RUN)
def test_allowed_run_transitions_record_an_event(factory, old: RunState, new: RunState) -> None:  # type: ignore[no-untyped-def]
    with factory() as s:
        run = _run(s, old)
        s.add(run)
        s.flush()
        transition_run(s, run, new, reason="test", data={"k": 1})
        s.commit()
        assert run.state == new
        assert (run.finished_at is not None) == new.terminal
        [event] = s.scalars(select(Event)).all()
        assert event.kind == "state" and event.data == {"from": old.value, "to": new.value, "k": 1}
        assert "test" in event.message


@pytest.mark.parametrize(("old", "new"), FORBIDDEN_RUN)
def test_forbidden_run_transitions_raise_and_change_nothing(factory, old: RunState, new: RunState) -> None:  # type: ignore[no-untyped-def]
    with factory() as s:
        run = _run(s, old)
        s.add(run)
        s.flush()
        with pytest.raises(InvalidTransition, match=f"from {old} to {new}"):
            transition_run(s, run, new, reason="test")
        assert run.state == old and s.scalars(select(Event)).all() == []


@pytest.mark.parametrize(("old", "new"), ALLOWED_ATTEMPT + FORBIDDEN_ATTEMPT)
def test_attempt_transitions(factory, old: AttemptState, new: AttemptState) -> None:  # type: ignore[no-untyped-def]
    with factory() as s:
        run = _run(s, RunState.RUNNING)
        s.add(run)
        s.flush()
        attempt = Attempt(run_id=run.id, number=1, backend="local", job_name="j", state=old)
        s.add(attempt)
        s.flush()
        if new in ATTEMPT_TRANSITIONS[old]:
            transition_attempt(s, attempt, new, reason="why")
            s.commit()
            assert attempt.state == new
            assert (attempt.stopping_time is not None) == (new is AttemptState.STOPPING)
            [event] = s.scalars(select(Event)).all()
            assert event.kind == "attempt" and event.data is not None and event.data["to"] == new.value
        else:
            with pytest.raises(InvalidTransition):
                transition_attempt(s, attempt, new)
            assert attempt.state == old
