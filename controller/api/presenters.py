"""Rows → public schemas. Derived figures come from their one owner, at read time: goodput from
``controller.services.goodput``, the failure budget spent from ``controller.reconciler.decide``
(one query for the attempts of a whole page of runs)."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run, User
from controller.reconciler.decide import AttemptOutcome, attempts_without_progress
from controller.services import goodput
from controller.services.secrets import redacted_spec
from shared.schemas import AttemptPublic, GoodputPublic, RunCreate, RunPublic
from shared.states import AttemptState


def runs_public(session: Session, runs: Sequence[Run], *, now: datetime) -> list[RunPublic]:
    if not runs:
        return []
    by_run: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in session.scalars(select(Attempt).where(Attempt.run_id.in_([r.id for r in runs]))):
        by_run[attempt.run_id].append(attempt)
    owners: dict[int, str] = dict(
        (int(i), str(n))
        for i, n in session.execute(select(User.id, User.name).where(User.id.in_({r.owner_id for r in runs})))
    )
    out = []
    for run in runs:
        attempts = sorted(by_run.get(run.id, []), key=lambda a: a.number)
        total = goodput.run_goodput(goodput.of_attempt(a, now) for a in attempts)
        ended = [AttemptOutcome.of(a) for a in attempts if a.state == AttemptState.ENDED]
        ledger = goodput.run_ledger(
            created=run.created_at, finished=run.finished_at, attempts=attempts, now=now
        )
        detail = GoodputPublic(
            goodput=total.goodput,
            allocated_s=total.allocated_s,
            productive_committed_s=total.productive_committed_s,
            lost_work_s=total.lost_work_s,
            queue_wait_s=total.queue_wait_s,
            checkpoint_stall_s=total.checkpoint_stall_s,
            wall_s=sum(ledger.values()),
            ledger=ledger,
        )
        spec = public_spec(run.spec)
        columns = {c: getattr(run, c) for c in RunPublic.model_fields if c != "spec" and hasattr(run, c)}
        public = RunPublic.model_validate(columns | {"spec": spec})
        out.append(
            public.model_copy(
                update={
                    "owner": owners.get(run.owner_id, ""),
                    "attempts_count": len(attempts),
                    "failures_without_progress": attempts_without_progress(ended, run.resumed_after_attempt),
                    "goodput": total.goodput,
                    "goodput_detail": detail,
                }
            )
        )
    return out


def public_spec(stored: dict[str, Any]) -> RunCreate:
    """A stored spec as the API shows it: secret values redacted, and, for a row today's rules
    refuse (written before a rule existed, or around the API; such a run never starts), the
    refused optional fields left out, so that reading a run never fails on it."""
    data = redacted_spec(stored)
    for _ in range(_MAX_REPAIRS):
        try:
            return RunCreate.model_validate(data)
        except ValidationError as exc:
            data = copy.deepcopy(data)
            if not any(_drop(data, tuple(err["loc"])) for err in exc.errors()):
                raise
    return RunCreate.model_validate(data)


_MAX_REPAIRS = 4
_RESETTABLE = frozenset(
    {"mem", "partition", "account", "qos", "constraint", "profile_dir"}
    | {"env", "secret_env", "extra_sbatch_args"}
)
"""Fields with a default: a refused value is left out (whole: a field validator names no entry)."""


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Leave out the optional field ``loc`` names (``("resources", "env")``)."""
    if len(loc) != 2 or loc[1] not in _RESETTABLE:
        return False
    section = data.get(loc[0]) if isinstance(data, dict) else None
    if not isinstance(section, dict) or loc[1] not in section:
        return False
    del section[loc[1]]
    return True


def attempt_public(attempt: Attempt, *, now: datetime) -> AttemptPublic:
    return AttemptPublic.model_validate(attempt).model_copy(update=asdict(goodput.of_attempt(attempt, now)))


def downsample_indices(n: int, max_points: int) -> list[int]:
    """At most ``max_points`` indices of ``range(n)``, evenly spaced, always keeping the first and last."""
    if n <= max_points:
        return list(range(n))
    if max_points == 1:
        return [n - 1]
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)})
