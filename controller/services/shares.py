"""Sharing a run with another user: who may then read it (a viewer) or read and act on it (a user or
an admin). Who may share is decided by ``controller/access.py``; every change is an event on the
run. The caller commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, aliased

from controller.db.models import Run, RunShare, User
from controller.services.errors import Conflict, NotShared
from controller.services.users import get_user
from controller.state_machine import record_run_event


def share_run(session: Session, run: Run, name: str, *, by: str, by_id: int | None) -> RunShare:
    """Share ``run`` with user ``name`` (idempotent: sharing twice keeps the first share)."""
    user = get_user(session, name)
    if user.id == run.owner_id:
        raise Conflict(f"{name} owns run {run.id} already", field="user")
    existing = session.scalar(select(RunShare).where(RunShare.run_id == run.id, RunShare.user_id == user.id))
    if existing is not None:
        return existing
    share = RunShare(run_id=run.id, user_id=user.id, shared_by_id=by_id)
    session.add(share)
    session.flush()
    record_run_event(
        session, run, kind="shared", message=f"shared with {name} by {by}", data={"user": name, "by": by}
    )
    return share


def unshare_run(session: Session, run: Run, name: str, *, by: str) -> None:
    """Take ``name``'s access to ``run`` away (``NotShared`` if it was not shared with them)."""
    user = get_user(session, name)
    result = session.execute(delete(RunShare).where(RunShare.run_id == run.id, RunShare.user_id == user.id))
    if not getattr(result, "rowcount", 0):
        raise NotShared(f"run {run.id} is not shared with {name}")
    record_run_event(
        session,
        run,
        kind="unshared",
        message=f"no longer shared with {name} (by {by})",
        data={"user": name, "by": by},
    )


def list_shares(session: Session, run: Run) -> Sequence[tuple[RunShare, User, str | None]]:
    """(share, user it is shared with, name of who shared it), oldest first."""
    sharer = aliased(User)
    rows = session.execute(
        select(RunShare, User, sharer.name)
        .join(User, RunShare.user_id == User.id)
        .outerjoin(sharer, RunShare.shared_by_id == sharer.id)
        .where(RunShare.run_id == run.id)
        .order_by(RunShare.id)
    )
    return [(share, user, by) for share, user, by in rows]
