"""Users (admins only): ``GET|POST /users``, ``PATCH /users/{name}`` (role, active-run limit)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from controller.api.deps import AdminDep, SessionDep
from controller.db.models import User
from controller.services.users import active_runs_by_user, create_user, get_user, list_users, update_user
from shared.roles import USER_NAME_PATTERN, Role
from shared.schemas import UserCreate, UserPublic, UserUpdate

router = APIRouter(prefix="/users", tags=["admin"])

UserName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=USER_NAME_PATTERN, description="A user's name.")
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "Not an admin"},
}


def user_public(user: User, active: int) -> UserPublic:
    return UserPublic(
        id=user.id,
        name=user.name,
        role=Role(user.role),
        active_run_limit=user.active_run_limit,
        active_runs=active,
        created_at=user.created_at,
    )


@router.get("", responses=ERRORS)
def get_users(session: SessionDep, _admin: AdminDep) -> list[UserPublic]:
    active = active_runs_by_user(session)
    return [user_public(u, active.get(u.id, 0)) for u in list_users(session)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={**ERRORS, 409: {"description": "Name taken"}}
)
def post_user(body: UserCreate, session: SessionDep, _admin: AdminDep) -> UserPublic:
    """Create a user (no token yet: ``POST /tokens`` makes one)."""
    user = create_user(session, body.name, role=body.role, active_run_limit=body.active_run_limit)
    session.commit()
    return user_public(user, 0)


@router.patch(
    "/{name}",
    responses={**ERRORS, 404: {"description": "No such user"}, 409: {"description": "The last admin"}},
)
def patch_user(name: UserName, body: UserUpdate, session: SessionDep, _admin: AdminDep) -> UserPublic:
    """Change a user's role or active-run limit; only the fields sent change."""
    user = get_user(session, name)
    update_user(
        session,
        user,
        role=body.role,
        limit=body.active_run_limit,
        set_limit="active_run_limit" in body.model_fields_set,
    )
    session.commit()
    return user_public(user, active_runs_by_user(session).get(user.id, 0))
