"""PATCH /runs/{id}: settings that may change between attempts; more steps for a finished run."""

from __future__ import annotations

from sqlalchemy import select

from controller.db.models import Checkpoint, Event, Run
from controller.state_machine import transition_run
from shared.states import RunState
from tests.controller.api.conftest import Api


def _complete(api: Api, run_id: int, step: int) -> None:
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        s.add(Checkpoint(run_id=run_id, attempt=1, step=step, path=f"/c/step-{step}", format="dcp"))
        transition_run(s, run, RunState.QUEUED, reason="t")
        transition_run(s, run, RunState.COMPLETED, reason="trained")
        s.commit()


def test_a_completed_run_given_more_steps_continues(api: Api) -> None:
    run_id = api.create()["id"]
    _complete(api, run_id, 100)
    body = {"training": {"training_steps": 250, "learning_rate": 1e-3}}
    reply = api.client.patch(f"/api/v1/runs/{run_id}", json=body, headers=api.h())
    assert reply.status_code == 200, reply.text
    run = reply.json()
    assert run["state"] == "PENDING" and run["training_steps"] == 250
    assert run["spec"]["training"]["learning_rate"] == 1e-3
    with api.factory() as s:
        events = [e.message for e in s.scalars(select(Event).where(Event.run_id == run_id))]
    assert any("training.training_steps 100 → 250" in m and "by tester" in m for m in events)
    assert any("extended to 250 steps by tester" in m for m in events)


def test_what_may_not_change_is_refused_naming_the_field_and_nothing_changes(api: Api) -> None:
    run_id = api.create()["id"]
    _complete(api, run_id, 100)
    cases = [
        ({"training": {"sequence_length": 256}}, "training", "sequence_length may not change"),
        ({"training": {"checkpoint_dir": "elsewhere"}}, "training", "checkpoint_dir may not change"),
        ({"training": {"trainng_steps": 300}}, "training", "did you mean 'training_steps'"),
        ({"training": {"training_steps": 80}}, "training.training_steps", "newest committed step (100)"),
        ({"training": {"training_steps": 0}}, "training.training_steps", "greater than 0"),
        ({"resources": {"time_limit": "2h"}}, "resources", "unknown field 'resources'"),
    ]
    for body, field, message in cases:
        reply = api.client.patch(f"/api/v1/runs/{run_id}", json=body, headers=api.h())
        assert reply.status_code == 422, (body, reply.text)
        assert reply.json()["detail"][0]["field"] == field, reply.text
        assert message in reply.text, reply.text
    done = api.client.patch(
        f"/api/v1/runs/{run_id}", json={"policy": {"backoff_seconds": 1}}, headers=api.h()
    )
    assert done.status_code == 409 and "only more training_steps" in done.text
    run = api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()
    assert run["state"] == "COMPLETED" and run["training_steps"] == 100


def test_a_pending_run_takes_new_settings_for_its_next_attempt(api: Api) -> None:
    run_id = api.create()["id"]
    reply = api.client.patch(f"/api/v1/runs/{run_id}", json={"policy": {"max_attempts": 7}}, headers=api.h())
    assert reply.status_code == 200 and reply.json()["state"] == "PENDING"
    assert reply.json()["spec"]["policy"]["max_attempts"] == 7
    same = api.client.patch(f"/api/v1/runs/{run_id}", json={"policy": {"max_attempts": 7}}, headers=api.h())
    assert same.status_code == 200  # nothing changed: no event, no error
