"""The real app over a fresh, migrated SQLite DB (reconciler off), seeded with realistic runs.

Shared by the page-route tests and the browser test. Rows are written through the models, as the
reconciler and the report handler would leave them: a run in every state, a running run with
three attempts (two ended by a deadline stop), checkpoints, events and a few thousand metric
points so that charts are downsampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Checkpoint, Event, Metric, Run
from controller.services import create_user_token, ensure_user, first_admin
from controller.services.sessions import issue_login_code, open_session
from controller.settings import Settings
from controller.web.security import SESSION_COOKIE
from shared.roles import Role
from shared.schemas import RunCreate
from shared.states import AttemptState, EndReason, RunState

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CHART_STEPS = 3000  # steps reported so far by the running run
TOTAL_STEPS = 4000
ATTEMPT_STARTS = (0, 1100, 2200)  # each attempt resumed from the previous one's final checkpoint


def make_app(tmp: Path, *, port: int = 8000, **overrides: Any) -> tuple[Any, sessionmaker[Session], Settings]:
    """``create_app`` (the real app: API + dashboard) over a fresh, migrated DB in ``tmp``; auth is
    on as by default (``sign_in`` opens a session for a browser)."""
    from controller.api import create_app

    settings = Settings(data_dir=tmp, run_reconciler=False, host="127.0.0.1", port=port, **overrides)
    upgrade_database(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    return create_app(settings, session_factory=factory), factory, settings


def spec(name: str, steps: int = TOTAL_STEPS) -> dict[str, Any]:
    body = {
        "name": name,
        "training": {
            "dataset": "data/text.parquet",
            "tokenizer_name_or_path": "data/tokenizer",
            "training_steps": steps,
        },
        "resources": {"scheduler": "slurm", "time_limit": "01:00:00", "partition": "gpu"},
    }
    return RunCreate.model_validate(body).model_dump(mode="json")


def add_run(
    factory: sessionmaker[Session],
    name: str,
    state: str,
    *,
    owner: str | None = None,
    stored_spec: dict[str, Any] | None = None,
    **fields: Any,
) -> int:
    """A run row as the reconciler leaves it, owned by ``owner`` (default: the first admin);
    ``stored_spec`` replaces the validated spec (a row written around the API)."""
    with factory.begin() as session:
        owner_id = (ensure_user(session, owner).user if owner else first_admin(session)).id
        run = Run(
            name=name,
            owner_id=owner_id,
            state=RunState(state),
            spec=stored_spec
            if stored_spec is not None
            else spec(name, fields.get("training_steps", TOTAL_STEPS)),
            scheduler="slurm",
            **({"training_steps": TOTAL_STEPS} | fields),
        )
        session.add(run)
        session.flush()
        return run.id


def _attempt(run_id: int, number: int, state: AttemptState, start: datetime, **fields: Any) -> Attempt:
    return Attempt(
        run_id=run_id,
        number=number,
        backend="slurm",
        job_name=f"pyrecover-{run_id}-{number}",
        external_id=str(4000 + 10 * run_id + number),
        state=state,
        submit_time=start,
        **fields,
    )


def add_metrics(
    session: Session, run_id: int, attempt: int, steps: range, start: datetime, *, mfu: bool = True
) -> int:
    rows = [
        {
            "run_id": run_id,
            "attempt": attempt,
            "step": s,
            "time": start + timedelta(seconds=0.5 * (s - steps.start)),
            # a decaying loss with a little noise, a warm-up/cosine lr, steady throughput
            "loss": 9.0 * math.exp(-s / 700) + 2.0 + 0.05 * math.sin(s * 0.37),
            "lr": 3e-4 * min(1.0, s / 100) * (0.5 * (1 + math.cos(math.pi * s / TOTAL_STEPS))),
            "tokens_per_s": 41_000 + 900 * math.sin(s / 50),
            "step_time": 0.5,
            "mfu": 0.41 + 0.01 * math.sin(s / 80) if mfu else None,  # none without a known peak (CPU)
            "tokens_seen": s * 8 * 128,
        }
        for s in steps
    ]
    session.execute(Metric.__table__.insert(), rows)
    return len(rows)


HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'
HOSTILE_VALUE = "</td><script>window.__pwned=2</script>"
DELETED_STEPS = (500, 1100, 1600)
"""Checkpoints of the running run that retention deleted (2200 and 2500 stay on disk)."""


@dataclass
class Seeded:
    run_ids: dict[str, int]
    chart_run: int
    cancel_run: int
    metric_points: int
    cpu_run: int = 0
    """A COMPLETED run on CPU: metrics without MFU."""


def seed_dashboard(factory: sessionmaker[Session]) -> Seeded:
    ids = {
        "PENDING": add_run(factory, "pending-run", "PENDING"),
        "QUEUED": add_run(factory, "queued-run", "QUEUED", attempts_count=1),
        "COMPLETED": add_run(
            factory, "completed-run", "COMPLETED", current_step=TOTAL_STEPS, attempts_count=2
        ),
        "FAILED": add_run(
            factory,
            "failed-run",
            "FAILED",
            current_step=420,
            attempts_count=3,
            last_error="3 attempts in a row committed no new checkpoint (last: CUDA illegal memory access)",
        ),
        "CANCELLED": add_run(factory, "cancelled-run", "CANCELLED", current_step=800, attempts_count=1),
        "RUNNING": add_run(
            factory,
            "llama-1b-main",
            "RUNNING",
            current_step=CHART_STEPS - 1,
            tokens_seen=(CHART_STEPS - 1) * 8 * 128,
            attempts_count=3,
            latest_checkpoint_step=2500,
        ),
    }
    points = 0
    with factory.begin() as session:
        session.add(_attempt(ids["QUEUED"], 1, AttemptState.PENDING, T0))
        for n in (1, 2):
            session.add(
                _attempt(
                    ids["COMPLETED"],
                    n,
                    AttemptState.ENDED,
                    T0 + timedelta(hours=n - 1),
                    start_time=T0 + timedelta(hours=n - 1, minutes=1),
                    # goodput is derived from these: ~93% of each hour ended in a checkpoint
                    training_started_at=T0 + timedelta(hours=n - 1, minutes=2),
                    last_commit_at=T0 + timedelta(hours=n, minutes=-2),
                    end_time=T0 + timedelta(hours=n),
                    end_reason=EndReason.DEADLINE_STOP if n == 1 else EndReason.FINISHED,
                )
            )
        for n in (1, 2, 3):
            session.add(
                _attempt(
                    ids["FAILED"],
                    n,
                    AttemptState.ENDED,
                    T0 + timedelta(minutes=10 * n),
                    start_time=T0 + timedelta(minutes=10 * n + 1),
                    end_time=T0 + timedelta(minutes=10 * n + 3),
                    end_reason=EndReason.FAILED,
                    error="CUDA error: an illegal memory access was encountered",
                )
            )
        session.add(
            _attempt(
                ids["CANCELLED"],
                1,
                AttemptState.ENDED,
                T0,
                start_time=T0 + timedelta(minutes=2),
                training_started_at=T0 + timedelta(minutes=3),
                last_commit_at=T0 + timedelta(minutes=25),
                end_time=T0 + timedelta(minutes=30),
                end_reason=EndReason.CANCELLED,
            )
        )
        run_id = ids["RUNNING"]
        for n, first in enumerate(ATTEMPT_STARTS, start=1):
            submit = T0 + timedelta(minutes=12 * (n - 1))
            start = submit + timedelta(minutes=1 + n)
            last = ATTEMPT_STARTS[n] if n < len(ATTEMPT_STARTS) else CHART_STEPS
            ended = n < len(ATTEMPT_STARTS)
            session.add(
                _attempt(
                    run_id,
                    n,
                    AttemptState.ENDED if ended else AttemptState.RUNNING,
                    submit,
                    start_time=start,
                    training_started_at=start + timedelta(seconds=20),
                    last_commit_at=start + timedelta(minutes=9),
                    stopping_time=start + timedelta(minutes=9) if ended else None,
                    end_time=start + timedelta(minutes=9, seconds=40) if ended else None,
                    end_reason=EndReason.DEADLINE_STOP if ended else None,
                    step_at_start=first,
                    step_at_end=last if ended else None,
                )
            )
            points += add_metrics(session, run_id, n, range(first, last), start)
            if ended:
                session.add(
                    Checkpoint(
                        run_id=run_id,
                        attempt=n,
                        step=last,
                        path=f"/ckpt/llama-1b-main/step-{last}",
                        format="dcp",
                        size_bytes=14_500_000_000,
                        save_seconds=38.2,
                        final=True,
                    )
                )
        for step in (500, 1600, 2500):
            session.add(
                Checkpoint(
                    run_id=run_id,
                    attempt=1 + sum(step >= s for s in ATTEMPT_STARTS[1:]),
                    step=step,
                    path=f"/ckpt/llama-1b-main/step-{step}",
                    format="dcp",
                    size_bytes=14_500_000_000,
                    save_seconds=4.1,
                    stall_seconds=0.8,
                    async_save=True,
                )
            )
        for kind, message in (
            ("state", "PENDING → QUEUED: attempt 1 submitted (job 4061)"),
            ("attempt_ended", "attempt 1 ended: deadline_stop at step 1100 (final checkpoint committed)"),
            ("attempt_ended", "attempt 2 ended: deadline_stop at step 2200 (final checkpoint committed)"),
            ("state", "QUEUED → RUNNING: attempt 3 started, resumed from step-2200"),
        ):
            session.add(Event(run_id=run_id, kind=kind, message=message))
        session.flush()
        for ckpt in session.scalars(
            select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step.in_(DELETED_STEPS))
        ):
            ckpt.deleted_at = T0 + timedelta(minutes=30)
    cpu_run = add_run(
        factory,
        "cpu-tiny",
        "COMPLETED",
        current_step=60,
        training_steps=60,
        attempts_count=1,
        tokens_seen=61_440,
    )
    with factory.begin() as session:
        session.add(
            _attempt(
                cpu_run,
                1,
                AttemptState.ENDED,
                T0,
                start_time=T0 + timedelta(seconds=5),
                training_started_at=T0 + timedelta(seconds=10),
                last_commit_at=T0 + timedelta(seconds=40),
                end_time=T0 + timedelta(seconds=45),
                end_reason=EndReason.FINISHED,
            )
        )
        add_metrics(session, cpu_run, 1, range(1, 61), T0 + timedelta(seconds=10), mfu=False)
    return Seeded(
        run_ids=ids | {"CPU": cpu_run},
        chart_run=ids["RUNNING"],
        cancel_run=ids["PENDING"],
        metric_points=points,
        cpu_run=cpu_run,
    )


def add_hostile_run(factory: sessionmaker[Session]) -> int:
    """A FAILED run written around the API: HTML and script in its name, its spec, its error and its
    events, and a secret value in its env (a row from before secrets were split)."""
    hostile = spec("hostile-run")
    hostile["name"] = HOSTILE_NAME
    hostile["training"]["dataset"] = HOSTILE_VALUE
    hostile["resources"]["env"] = {"NOTE": HOSTILE_VALUE, "HF_TOKEN": "hf_secret_value_never_shown"}
    run_id = add_run(factory, HOSTILE_NAME, "FAILED", stored_spec=hostile, last_error=HOSTILE_VALUE)
    with factory.begin() as session:
        session.add(Event(run_id=run_id, kind=HOSTILE_VALUE, message=HOSTILE_NAME))
    return run_id


def make_token(factory: sessionmaker[Session], name: str, role: Role | None = None) -> str:
    """A token for user ``name`` (created if missing), as ``pyrecover token create`` makes one."""
    with factory.begin() as session:
        return create_user_token(session, name, role=role)


def sign_in(client: Any, factory: sessionmaker[Session], name: str = "ada", role: Role | None = None) -> str:
    """Give ``client`` (a TestClient) the session cookie of user ``name`` (created if missing; the
    first user is an admin), as signing in would; returns the session id."""
    with factory.begin() as session:
        secret = open_session(session, ensure_user(session, name, role=role).user)
    client.cookies.set(SESSION_COOKIE, secret)
    return secret


def login_code(factory: sessionmaker[Session], name: str = "ada") -> str:
    """A one-time sign-in code for user ``name`` (created if missing)."""
    with factory.begin() as session:
        return issue_login_code(session, ensure_user(session, name).user)
