"""What a ``Principal`` may see and do with runs: the one place the ownership rules live.

The API (``controller/api/deps.py``) and the dashboard (``controller/web/routes.py``) both call
these; no route decides on its own.

* **Read** a run: its owner, a user it is shared with, an admin, or anyone whose principal
  ``reads_all`` (``Settings.users_read_all_runs``, open read-only mode).
* **Act** on it (cancel, resume, checkpoint, stop): its owner or a user it is shared with, if their
  role creates runs (not a viewer), and admins.
* **Share** it: its owner or an admin.
* A run the caller may not read is ``RunNotFound`` (404), exactly as a run that does not exist: ids
  never tell an outsider which runs exist. A run they may read but not act on is 403.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session

from controller.auth import AuthError, Principal
from controller.db.models import Run, RunShare
from controller.services.errors import RunNotFound


def visible_runs(principal: Principal) -> ColumnElement[bool] | None:
    """A filter on ``Run`` for the runs ``principal`` may read; ``None``: every run."""
    if principal.reads_all or principal.is_admin:
        return None
    if principal.user_id is None:
        return false()
    shared = select(RunShare.run_id).where(RunShare.user_id == principal.user_id)
    return or_(Run.owner_id == principal.user_id, Run.id.in_(shared))


def _shared_with(session: Session, run: Run, principal: Principal) -> bool:
    if principal.user_id is None:
        return False
    query = select(RunShare.id).where(RunShare.run_id == run.id, RunShare.user_id == principal.user_id)
    return session.scalar(query) is not None


def _member(session: Session, run: Run, principal: Principal) -> bool:
    """The owner, or a user the run is shared with."""
    return principal.user_id is not None and (
        run.owner_id == principal.user_id or _shared_with(session, run, principal)
    )


def can_read(session: Session, run: Run, principal: Principal) -> bool:
    if principal.kind == "worker":
        return False
    return principal.reads_all or principal.is_admin or _member(session, run, principal)


def readable_run(session: Session, principal: Principal, run_id: int) -> Run:
    """The run, if ``principal`` may read it; else ``RunNotFound`` (as if it did not exist)."""
    run = session.get(Run, run_id)
    if run is None or not can_read(session, run, principal):
        raise RunNotFound(run_id)
    return run


def actionable_run(session: Session, principal: Principal, run_id: int) -> Run:
    """The run, if ``principal`` may cancel, resume or signal it: ``RunNotFound`` if they may not
    even read it, ``AuthError(403)`` if they may only read it."""
    run = readable_run(session, principal, run_id)
    if principal.is_admin:
        return run
    if principal.read_only:
        raise AuthError(401, "a bearer token is required to act on runs")
    if not principal.may_create_runs or not _member(session, run, principal):
        raise AuthError(403, f"{principal.name} may read run {run_id} but not act on it")
    return run


def shareable_run(session: Session, principal: Principal, run_id: int) -> Run:
    """The run, if ``principal`` may share it (its owner or an admin); 404 / 403 as above."""
    run = readable_run(session, principal, run_id)
    if principal.read_only:
        raise AuthError(401, "a bearer token is required to share runs")
    if not principal.is_admin and run.owner_id != principal.user_id:
        raise AuthError(403, f"only the owner of run {run_id} or an admin may share it")
    return run


def require_creator(principal: Principal) -> Principal:
    """May create runs: users and admins, not viewers (and not open read-only callers)."""
    if principal.read_only:
        raise AuthError(401, "a bearer token is required to create runs")
    if not principal.may_create_runs:
        raise AuthError(403, f"{principal.name} is a {principal.role}: viewers cannot create runs")
    return principal
