"""Users: create, find, change role and limit, and the per-user limit on active runs. The caller commits.

The first user created on a database without users is an ``admin``, whatever role was asked for:
someone has to be able to manage the others (``pyrecover token create --name NAME`` on a fresh
database makes NAME that admin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import Run, User
from controller.services.errors import Conflict, QuotaExceeded, UserNotFound
from shared.roles import DEFAULT_ROLE, Role, validate_user_name
from shared.states import TERMINAL_RUN_STATES

FIRST_ADMIN_NAME = "admin"
"""The user that owns what nobody else can: runs created with auth off on a database without users."""


@dataclass(frozen=True)
class Created:
    user: User
    created: bool
    """False when the user existed already."""


def get_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(name)
    return user


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def create_user(
    session: Session, name: str, *, role: Role = DEFAULT_ROLE, active_run_limit: int | None = None
) -> User:
    """A new user (``Conflict`` if the name is taken); the first user of the database is an admin."""
    validate_user_name(name)
    if find_user(session, name) is not None:
        raise Conflict(f"a user named {name!r} already exists", field="name")
    first = session.scalar(select(User.id).limit(1)) is None
    user = User(name=name, role=Role.ADMIN if first else role, active_run_limit=active_run_limit)
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError as exc:  # created concurrently
        raise Conflict(f"a user named {name!r} already exists", field="name") from exc
    return user


def ensure_user(session: Session, name: str, *, role: Role | None = None) -> Created:
    """The user ``name``, created with ``role`` (default ``user``) if missing. An existing user keeps
    their role; asking for another one is a ``Conflict`` (roles change only on purpose)."""
    user = find_user(session, name)
    if user is None:
        return Created(create_user(session, name, role=role or DEFAULT_ROLE), created=True)
    if role is not None and user.role != role:
        raise Conflict(
            f"user {name} exists with role {user.role}; change it with "
            f"`pyrecover user set {name} --role {role}`",
            field="role",
        )
    return Created(user, created=False)


def first_admin(session: Session) -> User:
    """The oldest admin; on a database without users, a new user ``admin`` (the first is an admin)."""
    user = session.scalar(select(User).where(User.role == Role.ADMIN).order_by(User.id).limit(1))
    if user is not None:
        return user
    if session.scalar(select(User.id).limit(1)) is not None:
        # Users but no admin (a hand-edited database): never make one up silently.
        raise Conflict("no admin exists: make one with `pyrecover user set NAME --role admin`")
    return create_user(session, FIRST_ADMIN_NAME, role=Role.ADMIN)


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.id)).all()


def update_user(
    session: Session,
    user: User,
    *,
    role: Role | None = None,
    limit: int | None = None,
    set_limit: bool = False,
) -> User:
    """Change ``role`` (when given) and the active-run limit (when ``set_limit``; ``None`` lifts it).
    The last admin cannot stop being one: nobody could manage users any more."""
    if role is not None and role != user.role and user.role == Role.ADMIN:
        admins = session.scalar(select(func.count()).select_from(User).where(User.role == Role.ADMIN))
        if int(admins or 0) <= 1:
            raise Conflict(f"{user.name} is the only admin: make another admin first", field="role")
    if role is not None:
        user.role = role
    if set_limit:
        user.active_run_limit = limit
    return user


def active_runs(session: Session, user_id: int) -> int:
    """How many of the user's runs are not COMPLETED, FAILED or CANCELLED."""
    query = (
        select(func.count())
        .select_from(Run)
        .where(Run.owner_id == user_id, Run.state.not_in(TERMINAL_RUN_STATES))
    )
    return int(session.scalar(query) or 0)


def active_runs_by_user(session: Session) -> dict[int, int]:
    rows = session.execute(
        select(Run.owner_id, func.count()).where(Run.state.not_in(TERMINAL_RUN_STATES)).group_by(Run.owner_id)
    )
    return {int(owner): int(n) for owner, n in rows}


def check_quota(session: Session, user: User) -> None:
    """Raise ``QuotaExceeded`` if one more active run would pass the user's limit.

    The user's row is written first (a no-op update): that takes the row lock on PostgreSQL and the
    write lock on SQLite before counting, so two concurrent creations cannot both see room for one.
    """
    if user.active_run_limit is None:
        return
    session.execute(update(User).where(User.id == user.id).values(active_run_limit=User.active_run_limit))
    if active_runs(session, user.id) >= user.active_run_limit:
        raise QuotaExceeded(user.name, user.active_run_limit)
