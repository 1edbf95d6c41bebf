"""Bodies and replies of the admin routes (users, tokens) and of run sharing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.roles import DEFAULT_ROLE, USER_NAME_PATTERN, Role

MAX_ACTIVE_RUN_LIMIT = 100_000
MAX_TOKEN_TTL_S = 10 * 366 * 86_400
"""Ten years: the longest lifetime a token may be given."""

UserName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=USER_NAME_PATTERN,
        description="Letters, digits, '.', '_', '@' or '-', starting with a letter or digit.",
    ),
]
RunLimit = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_ACTIVE_RUN_LIMIT,
        description="At most this many runs of the user may be active (not COMPLETED, FAILED or "
        "CANCELLED) at once; creating or resuming one more answers 429.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Body):
    name: UserName
    role: Role = DEFAULT_ROLE
    active_run_limit: RunLimit | None = None


class UserUpdate(_Body):
    """Only the fields sent change; ``"active_run_limit": null`` lifts the limit."""

    role: Role | None = None
    active_run_limit: RunLimit | None = None


class UserPublic(BaseModel):
    id: int
    name: str
    role: Role
    active_run_limit: int | None
    active_runs: int = Field(description="The user's runs that are not COMPLETED, FAILED or CANCELLED.")
    created_at: datetime


PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
"""Text without control characters (C0, DEL, C1): what a token label may hold."""


class TokenCreate(_Body):
    user: UserName = Field(description="Whose token it is (the user must exist).")
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=PRINTABLE_PATTERN,
        description="What uses it; default: the user's name.",
    )
    expires_in_s: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_TTL_S, description="Lifetime in seconds; default: until revoked."
    )


class TokenRotate(_Body):
    expires_in_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKEN_TTL_S,
        description="Lifetime of the new token; default: the old token's lifetime (or until revoked).",
    )


TokenState = Literal["active", "expired", "revoked"]


class TokenPublic(BaseModel):
    id: int
    user: str
    role: Role
    label: str
    prefix: str = Field(description="The token's first characters, to recognise it; never the token.")
    created_at: datetime
    expires_at: datetime | None
    state: TokenState


class TokenIssued(TokenPublic):
    token: str = Field(description="The token itself: shown this once, only its hash is stored.")


class ShareCreate(_Body):
    user: UserName = Field(description="The user who may now read (a viewer) or read and act (a user).")


class SharePublic(BaseModel):
    user: str
    role: Role
    shared_by: str | None
    created_at: datetime
