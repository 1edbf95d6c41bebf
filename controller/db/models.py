"""SQLAlchemy 2 models: users, runs and their shares, attempts, checkpoints, metrics, worker events,
the event log, tokens, dashboard sessions, one-time login codes, webhook notifications and the
nodes a run keeps off.

The schema only changes through a migration in ``migrations/versions``. Invariants the database
itself guards (on SQLite and PostgreSQL alike):

* one attempt number per run: ``UNIQUE(run_id, number)``;
* at most one *live* attempt (SUBMITTING, PENDING or RUNNING) per run: a partial unique index;
* a worker event is stored at most once: ``UNIQUE(run_id, attempt, seq)`` — the idempotency key;
* one checkpoint per step: ``UNIQUE(run_id, step)``;
* every run has an owner (``runs.owner_id NOT NULL``), a user name is taken once, a run is shared
  with a user at most once.

Counters that outgrow 32 bits in real training (tokens seen, checkpoint bytes) are ``BIGINT``:
PostgreSQL's ``INTEGER`` stops at 2**31 - 1, about 2 billion tokens.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from controller.db.types import UTCDateTime, str_enum, utcnow
from shared.events import WorkerAction
from shared.roles import Role
from shared.schemas import RunCreate
from shared.states import LIVE_ATTEMPT_STATES, AttemptState, EndReason, RunState


def _state_in(states: frozenset[AttemptState]) -> str:
    """``state IN ('A', 'B')`` for a partial index, in the enum's declaration order (stable SQL)."""
    return "state IN ({})".format(", ".join(f"'{s.value}'" for s in AttemptState if s in states))


LIVE_STATES_SQL = _state_in(LIVE_ATTEMPT_STATES)
"""The one-live-attempt index's condition, generated from ``shared.states.LIVE_ATTEMPT_STATES``."""


class Base(DeclarativeBase):
    pass


class User(Base):
    """Someone who holds user tokens or signs in to the dashboard; ``role`` says what they may do
    (``shared.roles``). Users are never deleted: their runs and events keep naming them."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[Role] = mapped_column(str_enum(Role), default=Role.USER)
    active_run_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    """At most this many of the user's runs may be active at once (``None``: no limit)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_state_id", "state", "id"),
        Index("ix_runs_owner_id_id", "owner_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[RunState] = mapped_column(str_enum(RunState), default=RunState.PENDING)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``RunCreate.model_dump(mode="json")``: exactly what the user submitted, after validation."""
    scheduler: Mapped[str] = mapped_column(String(16))
    training_steps: Mapped[int] = mapped_column(Integer)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_checkpoint_step: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts_count: Mapped[int] = mapped_column(Integer, default=0)
    resumed_after_attempt: Mapped[int] = mapped_column(Integer, default=0)
    """The run's last attempt number when a user last resumed it (0: never). The failure budget and
    ``max_attempts`` count only later attempts (``controller.reconciler.decide.since_resume``)."""
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_submit_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    pending_action: Mapped[WorkerAction] = mapped_column(str_enum(WorkerAction), default=WorkerAction.NONE)
    """``none`` | ``checkpoint`` | ``stop``: delivered once in the reply to the next worker report."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by ``cancel_run``; the reconciler cancels the scheduler job and ends the run CANCELLED."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    def spec_model(self) -> RunCreate:
        return RunCreate.model_validate(self.spec)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "number", name="uq_attempts_run_number"),
        Index(
            "uq_attempts_one_live_per_run",
            "run_id",
            unique=True,
            sqlite_where=text(LIVE_STATES_SQL),
            postgresql_where=text(LIVE_STATES_SQL),
        ),
        Index("ix_attempts_state", "state"),
        Index("ix_attempts_backend_external_id", "backend", "external_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(String(16))
    job_name: Mapped[str] = mapped_column(String(128))
    external_id: Mapped[str | None] = mapped_column(String(64), default=None)
    state: Mapped[AttemptState] = mapped_column(str_enum(AttemptState), default=AttemptState.SUBMITTING)
    scheduler_state: Mapped[str | None] = mapped_column(String(32), default=None)
    submit_time: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    stopping_time: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    step_at_start: Mapped[int | None] = mapped_column(Integer, default=None)
    step_at_end: Mapped[int | None] = mapped_column(Integer, default=None)
    resumed_from: Mapped[str | None] = mapped_column(Text, default=None)
    end_reason: Mapped[EndReason | None] = mapped_column(str_enum(EndReason), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    dependency_job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    last_report_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Goodput inputs reported by the worker; the figures themselves are derived when read
    # (controller.services.goodput), never stored.
    training_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_commit_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    startup_s: Mapped[float] = mapped_column(Float, default=0.0)
    checkpoint_load_s: Mapped[float] = mapped_column(Float, default=0.0)
    checkpoint_stall_s: Mapped[float] = mapped_column(Float, default=0.0)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id", ondelete="SET NULL"))
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    """The attempt *number* that wrote it."""
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    save_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    stall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    async_save: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    committed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """When the worker reported that retention deleted it from disk (``checkpoints_deleted``); the row
    stays, as the run's history, but the checkpoint can no longer be resumed from or exported."""

    @property
    def on_disk(self) -> bool:
        return self.deleted_at is None


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    lr: Mapped[float | None] = mapped_column(Float, default=None)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, default=None)
    step_time: Mapped[float | None] = mapped_column(Float, default=None)
    grad_norm: Mapped[float | None] = mapped_column(Float, default=None)
    mfu: Mapped[float | None] = mapped_column(Float, default=None)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerEventRecord(Base):
    __tablename__ = "worker_events"
    __table_args__ = (UniqueConstraint("run_id", "attempt", "seq", name="uq_worker_events_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """The user-visible event log of a run, including every state transition."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class RunShare(Base):
    """``user_id`` may read the run, and act on it if their role allows (``shared.roles``)."""

    __tablename__ = "run_shares"
    __table_args__ = (
        UniqueConstraint("run_id", "user_id", name="uq_run_shares_run_user"),
        Index("ix_run_shares_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    shared_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256; ``kind`` is ``user`` (held by ``user_id``) or ``worker``
    (scoped to ``run_id`` and to the ``attempt`` it was issued for). ``name`` is the token's label."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), default=None)
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    """A worker token's attempt number (``None``: a user token, or a worker token from before 0007)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class WebSession(Base):
    """A signed-in dashboard browser. The cookie holds a random id; only its SHA-256 is stored here,
    so a copy of the database signs nobody in. Logout deletes the row; so does revoking the token
    the browser signed in with (``token_id``)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginCode(Base):
    """A one-time code that signs a browser in (``pyrecover demo``'s link, ``pyrecover user
    login-link``): stored as its SHA-256, used at most once, short-lived."""

    __tablename__ = "login_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Notification(Base):
    """Something webhooks are told about, written in the transaction that made it happen (an outbox)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_fanned_out", "fanned_out"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    """The run's state when it happened."""
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False)
    """True once a delivery row exists for every target that wants the event."""


class NotificationDelivery(Base):
    """One POST of a notification to one webhook, retried with backoff until delivered or given up."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "url", name="uq_notification_deliveries_target"),
        Index("ix_notification_deliveries_due", "done", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    """An admin's webhook (settings): no check of the address it resolves to."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class NodeExclusion(Base):
    """A host the run's next attempts keep off (``sbatch --exclude``) until ``expires_at``.

    Written when an attempt ends ``node_fail`` (the job's nodes), ``hung`` naming suspects' hosts,
    or ``failed`` with a fault the worker pins on a host (``controller.reconciler.exclusions``).
    One row per host and run: a later fault on the same host moves its expiry and reason."""

    __tablename__ = "node_exclusions"
    __table_args__ = (UniqueConstraint("run_id", "host", name="uq_node_exclusions_run_host"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(32))
    """``shared.exclusions.ExclusionReason``: ``node_fail``, ``hung`` or ``worker_pinned``."""
    attempt: Mapped[int] = mapped_column(Integer)
    """The attempt number whose end put the host here."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
