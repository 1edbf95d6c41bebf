"""Changing a run after it was created: more steps, another learning rate, a new policy.

``update_run`` applies a ``RunPatch`` to the stored spec, validates the result as a new run would
be, and records what changed and who changed it. The running worker keeps its own settings; the
next attempt starts with the new ones (the learning-rate schedule stretches to a new
``training_steps``, see worker/lr.py). A COMPLETED run given more steps goes back to PENDING and
continues from its final checkpoint, with a fresh failure budget.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Run, User
from controller.services.errors import InvalidField, InvalidTransition
from controller.services.users import check_quota
from controller.state_machine import record_run_event, transition_run
from shared.schemas import RunCreate
from shared.schemas.patch import RunPatch
from shared.states import RunState


def _changes(old: dict[str, Any], new: dict[str, Any], part: str) -> list[str]:
    return [f"{part}.{k} {old.get(k)!r} → {v!r}" for k, v in new.items() if old.get(k) != v]


def update_run(session: Session, run: Run, patch: RunPatch, *, by: str) -> Run:
    """Apply ``patch`` (caller commits). ``InvalidField`` names a rejected field (422)."""
    spec = run.spec
    merged = {
        **spec,
        "training": {**spec["training"], **patch.training},
        "policy": {**spec.get("policy", {}), **patch.policy},
    }
    try:
        body = RunCreate.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise InvalidField(
            str(err.get("msg", "invalid")).removeprefix("Value error, "), field=field
        ) from None
    changes = _changes(spec["training"], patch.training, "training") + _changes(
        spec.get("policy", {}), patch.policy, "policy"
    )
    if not changes:
        return run
    steps = body.training.training_steps
    committed = int(session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.run_id == run.id)) or 0)
    if steps != run.training_steps and steps <= committed:
        raise InvalidField(
            f"must be above the newest committed step ({committed}); the run is already there",
            field="training.training_steps",
        )
    state = RunState(run.state)
    if state is RunState.COMPLETED and steps <= run.training_steps:
        raise InvalidTransition(
            f"run {run.id} is COMPLETED; only more training_steps (above {run.training_steps}) can extend it"
        )
    run.spec = body.model_dump(mode="json")
    run.training_steps = steps
    message = f"changed by {by}: " + ", ".join(changes)
    record_run_event(session, run, kind="updated", message=message, data={"by": by, "changes": changes})
    if state is RunState.COMPLETED:
        owner = session.get(User, run.owner_id)
        if owner is not None:
            check_quota(session, owner)  # the run becomes active again
        run.resumed_after_attempt = int(
            session.scalar(select(func.max(Attempt.number)).where(Attempt.run_id == run.id)) or 0
        )
        run.cancel_requested = False
        run.next_submit_at = None
        transition_run(
            session, run, RunState.PENDING, reason=f"extended to {steps} steps by {by}", data={"by": by}
        )
    return run
