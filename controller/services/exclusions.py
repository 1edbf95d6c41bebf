"""Reading and clearing a run's exclusion list (``NodeExclusion``); the reconciler writes it
(``controller.reconciler.exclusions``). Keyword arguments, a session from the caller, never a commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.db.models import NodeExclusion, Run
from controller.state_machine import record_run_event

CLEARED_EVENT = "exclusions_cleared"


def active_exclusions(session: Session, run_id: int, *, now: datetime) -> Sequence[NodeExclusion]:
    """The run's entries that have not expired at ``now``, by host."""
    query = select(NodeExclusion).where(NodeExclusion.run_id == run_id, NodeExclusion.expires_at > now)
    return session.scalars(query.order_by(NodeExclusion.host)).all()


def clear_exclusions(session: Session, run: Run, *, by: str) -> int:
    """Remove every entry of the run, expired or not, with an event naming who; returns how many."""
    hosts = list(session.scalars(select(NodeExclusion.host).where(NodeExclusion.run_id == run.id)))
    session.execute(delete(NodeExclusion).where(NodeExclusion.run_id == run.id))
    if hosts:
        record_run_event(
            session,
            run,
            kind=CLEARED_EVENT,
            message=f"exclusion list cleared by {by}: {', '.join(sorted(hosts))}",
            data={"by": by, "hosts": sorted(hosts)},
        )
    return len(hosts)
