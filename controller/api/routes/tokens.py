"""User tokens (admins only): list, create, revoke, rotate. The plaintext of a token is in the reply
that creates it, once; only its hash is stored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status

from controller.api.deps import AdminDep, SessionDep, TokenId
from controller.db.models import ApiToken, User
from controller.services.errors import TokenNotFound
from controller.services.tokens import (
    get_user_token,
    issue_user_token,
    list_user_tokens,
    revoke_token,
    rotate_token,
    token_state,
)
from controller.services.users import find_user, get_user
from shared.roles import USER_NAME_PATTERN, Role
from shared.schemas import TokenCreate, TokenIssued, TokenPublic, TokenRotate

router = APIRouter(prefix="/tokens", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "Not an admin"},
}
TOKEN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 404: {"description": "No such user token"}}


def token_public(row: ApiToken, user: User) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        user=user.name,
        role=Role(user.role),
        label=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        state=token_state(row),
    )


def issued(token: str, row: ApiToken, user: User) -> TokenIssued:
    return TokenIssued(token=token, **token_public(row, user).model_dump())


@router.get("", responses=ERRORS)
def get_tokens(
    session: SessionDep,
    _admin: AdminDep,
    user: Annotated[
        str | None, Query(max_length=64, pattern=USER_NAME_PATTERN, description="Only this user's.")
    ] = None,
) -> list[TokenPublic]:
    """User tokens, oldest first (worker tokens live and die with their attempt and are not listed)."""
    owner = None
    if user is not None:
        owner = find_user(session, user)
        if owner is None:
            return []
    return [token_public(t, u) for t, u in list_user_tokens(session, user=owner)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={**ERRORS, 404: {"description": "No such user"}}
)
def post_token(body: TokenCreate, session: SessionDep, _admin: AdminDep) -> TokenIssued:
    """A new token for an existing user."""
    user = get_user(session, body.user)
    token, row = issue_user_token(session, user, label=body.label, ttl_s=body.expires_in_s)
    session.commit()
    return issued(token, row, user)


@router.post("/{token_id}/revoke", responses=TOKEN_ERRORS)
def post_revoke(token_id: TokenId, session: SessionDep, _admin: AdminDep) -> TokenPublic:
    """Revoke a token (idempotent); dashboard sessions opened with it end too."""
    row, user = get_user_token(session, token_id)
    if not revoke_token(session, row.id):
        raise TokenNotFound(token_id)
    session.commit()
    return token_public(row, user)


@router.post("/{token_id}/rotate", responses={**TOKEN_ERRORS, 409: {"description": "Revoked already"}})
def post_rotate(
    token_id: TokenId,
    session: SessionDep,
    _admin: AdminDep,
    body: Annotated[TokenRotate | None, Body()] = None,
) -> TokenIssued:
    """A new token for the same user and label; the old one is revoked in the same transaction."""
    token, row, user = rotate_token(session, token_id, ttl_s=body.expires_in_s if body else None)
    session.commit()
    return issued(token, row, user)
