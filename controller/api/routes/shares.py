"""Sharing a run: ``GET|POST /runs/{id}/shares``, ``DELETE /runs/{id}/shares/{user}``. The run's owner
or an admin (``controller/access.py:shareable_run``); anyone else gets 404 or 403 like any run route."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from controller.api.deps import SessionDep, ShareableRun, UserDep
from controller.services.shares import list_shares, share_run, unshare_run
from shared.roles import USER_NAME_PATTERN, Role
from shared.schemas import ShareCreate, SharePublic

router = APIRouter(prefix="/runs", tags=["runs"])

UserName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=USER_NAME_PATTERN, description="A user's name.")
]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "Not the run's owner nor an admin"},
    404: {"description": "No such run (or one the caller may not read), or no such user"},
}


@router.get("/{run_id}/shares", responses=ERRORS)
def get_shares(run: ShareableRun, session: SessionDep) -> list[SharePublic]:
    """Who else may read (viewers) or read and act on (users) this run."""
    return [
        SharePublic(user=user.name, role=Role(user.role), shared_by=by, created_at=share.created_at)
        for share, user, by in list_shares(session, run)
    ]


@router.post(
    "/{run_id}/shares",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 409: {"description": "The user owns the run"}},
)
def post_share(body: ShareCreate, run: ShareableRun, session: SessionDep, principal: UserDep) -> SharePublic:
    """Share the run with a user (idempotent)."""
    share_run(session, run, body.user, by=principal.actor, by_id=principal.user_id)
    session.commit()
    return next(
        SharePublic(user=user.name, role=Role(user.role), shared_by=by, created_at=share.created_at)
        for share, user, by in list_shares(session, run)
        if user.name == body.user
    )


@router.delete("/{run_id}/shares/{user}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_share(user: UserName, run: ShareableRun, session: SessionDep, principal: UserDep) -> Response:
    """Take the user's access away (their own runs are not affected)."""
    unshare_run(session, run, user, by=principal.actor)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
