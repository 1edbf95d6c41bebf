"""``pyrecover token create|list|revoke|rotate`` and ``pyrecover user create|list|set|login-link``.

They act on the controller's database directly (whoever can run them owns the controller's data
dir, so they are the admin's tools); the same operations exist for admins over the API
(``/api/v1/tokens``, ``/api/v1/users``). Every token is printed once, when made: only its hash is
stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from controller.cli.client import fail, save_config
from controller.cli.direct import DataDirOpt, database, settings_or_fail
from shared.roles import Role

console = Console()
token_app = typer.Typer(help="Manage API tokens (direct database access; admins).", no_args_is_help=True)
user_app = typer.Typer(
    help="Manage users and their roles (direct database access; admins).", no_args_is_help=True
)

RoleOpt = Annotated[
    Role | None,
    typer.Option(
        "--role",
        metavar="ROLE",
        help="admin, user or viewer (default for a new user: user; the first user is an admin).",
    ),
]
ExpiresOpt = Annotated[
    str | None,
    typer.Option(
        "--expires-in",
        metavar="DURATION",
        help="Lifetime such as 90m, 12h, 30d or 2w (default: until revoked).",
    ),
]
TokenIdArg = Annotated[
    int,
    typer.Argument(min=1, max=2**31 - 1, metavar="TOKEN_ID", help="The token's id (`pyrecover token list`)."),
]


def _ttl(expires_in: str | None) -> int | None:
    from controller.services import parse_ttl

    if expires_in is None:
        return None
    try:
        return parse_ttl(expires_in)
    except ValueError as exc:
        fail(f"--expires-in: {exc}")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(user_app, name="user")


# ------------------------------------------------------------------ tokens
@token_app.command(
    "create",
    epilog=(
        "\b\n"
        "Examples:\n"
        "  pyrecover token create --name alice\n"
        "  pyrecover token create --name bob --role viewer --expires-in 30d --save\n"
    ),
)
def token_create(
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="The user the token is for (created if missing).")
    ],
    role: RoleOpt = None,
    save: Annotated[
        bool, typer.Option("--save", help="Also store URL + token in DATA_DIR/cli.json for this CLI.")
    ] = False,
    data_dir: DataDirOpt = None,
    expires_in: ExpiresOpt = None,
) -> None:
    """Create a token for user NAME (creating the user if needed) and print it once."""
    from controller.services.tokens import issue_user_token
    from controller.services.users import ensure_user

    ttl_s = _ttl(expires_in)
    with database(data_dir, "create the token") as session:
        made = ensure_user(session, name, role=role)
        token, _row = issue_user_token(session, made.user, ttl_s=ttl_s)
        user_role = made.user.role
    console.print(token, highlight=False, soft_wrap=True)
    if made.created:
        console.print(f"new user {name} (role {user_role})", style="dim")
    if expires_in is not None:
        console.print(f"expires in {expires_in}", style="dim")
    if save:
        settings = settings_or_fail(data_dir)
        path = save_config(Path(settings.data_dir), url=settings.public_url, token=token)
        console.print(f"saved to {path}", style="dim")


@token_app.command(
    "list", epilog="\b\nExamples:\n  pyrecover token list\n  pyrecover token list --user alice\n"
)
def token_list(
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only this user's tokens.")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """User tokens: id, user, role, label, prefix, state, created, expires (never the token)."""
    from controller.services.tokens import list_user_tokens, token_state
    from controller.services.users import get_user

    table = Table("id", "user", "role", "label", "prefix", "state", "created", "expires")
    with database(data_dir, "list the tokens") as session:
        owner = get_user(session, user) if user is not None else None
        for row, holder in list_user_tokens(session, user=owner):
            table.add_row(
                str(row.id),
                holder.name,
                str(holder.role),
                row.name,
                row.prefix + "…",
                token_state(row),
                f"{row.created_at:%Y-%m-%d %H:%M}",
                f"{row.expires_at:%Y-%m-%d %H:%M}" if row.expires_at else "never",
            )
    console.print(table)


@token_app.command("revoke", epilog="Example: pyrecover token revoke 3")
def token_revoke(token_id: TokenIdArg, data_dir: DataDirOpt = None) -> None:
    """Revoke a token at once (its dashboard sessions end too)."""
    from controller.services.tokens import get_user_token, revoke_token

    with database(data_dir, "revoke the token") as session:
        row, user = get_user_token(session, token_id)
        revoke_token(session, row.id)
    console.print(f"token {token_id} of {user.name} revoked")


@token_app.command("rotate", epilog="Example: pyrecover token rotate 3 --expires-in 90d")
def token_rotate(token_id: TokenIdArg, expires_in: ExpiresOpt = None, data_dir: DataDirOpt = None) -> None:
    """Replace a token by a new one for the same user (printed once) and revoke the old one."""
    from controller.services.tokens import rotate_token

    ttl_s = _ttl(expires_in)
    with database(data_dir, "rotate the token") as session:
        token, row, user = rotate_token(session, token_id, ttl_s=ttl_s)
        new_id = row.id
    console.print(token, highlight=False, soft_wrap=True)
    console.print(f"token {new_id} for {user.name} replaces token {token_id} (revoked)", style="dim")


# ------------------------------------------------------------------ users
@user_app.command(
    "create",
    epilog=(
        "\b\n"
        "Examples:\n"
        "  pyrecover user create carol --role viewer\n"
        "  pyrecover user create dave --active-run-limit 4\n"
    ),
)
def user_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Letters, digits, . _ @ -")],
    role: RoleOpt = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--active-run-limit", min=0, max=100_000, metavar="N", help="Active runs allowed at once."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a user (no token: `pyrecover token create --name NAME` gives them one)."""
    from controller.services.users import create_user

    with database(data_dir, "create the user") as session:
        user = create_user(session, name, role=role or Role.USER, active_run_limit=limit)
        made_role = user.role
    console.print(f"user {name} created (role {made_role})")


@user_app.command("list", epilog="Example: pyrecover user list")
def user_list(data_dir: DataDirOpt = None) -> None:
    """Users with their role, active runs and limit."""
    from controller.services.users import active_runs_by_user, list_users

    table = Table("id", "name", "role", "active runs", "limit", "created")
    with database(data_dir, "list the users") as session:
        active = active_runs_by_user(session)
        for user in list_users(session):
            limit = "none" if user.active_run_limit is None else str(user.active_run_limit)
            table.add_row(
                str(user.id),
                user.name,
                str(user.role),
                str(active.get(user.id, 0)),
                limit,
                f"{user.created_at:%Y-%m-%d}",
            )
    console.print(table)


@user_app.command(
    "set",
    epilog="\b\nExamples:\n  pyrecover user set dave --role admin\n  pyrecover user set dave --no-limit\n",
)
def user_set(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user.")],
    role: Annotated[
        Role | None, typer.Option("--role", metavar="ROLE", help="admin, user or viewer.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--active-run-limit", min=0, max=100_000, metavar="N", help="Active runs allowed at once."
        ),
    ] = None,
    no_limit: Annotated[bool, typer.Option("--no-limit", help="Lift the active-run limit.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Change a user's role or active-run limit."""
    from controller.services.users import get_user, update_user

    if limit is not None and no_limit:
        fail("--active-run-limit and --no-limit contradict each other")
    with database(data_dir, "change the user") as session:
        user = get_user(session, name)
        update_user(session, user, role=role, limit=limit, set_limit=limit is not None or no_limit)
        limit_text = "none" if user.active_run_limit is None else str(user.active_run_limit)
        shown = f"role {user.role}, active-run limit {limit_text}"
    console.print(f"user {name}: {shown}")


@user_app.command("login-link", epilog="Example: pyrecover user login-link alice")
def user_login_link(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user to sign in as.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Print a one-time dashboard sign-in link for a user (valid 15 minutes, usable once)."""
    from controller.services.sessions import issue_login_code
    from controller.services.users import get_user

    settings = settings_or_fail(data_dir)
    with database(data_dir, "make the link") as session:
        code = issue_login_code(session, get_user(session, name))
    console.print(login_url(settings.public_url, code), highlight=False, soft_wrap=True)


def login_url(public_url: str, code: str, next_path: str = "/") -> str:
    from urllib.parse import urlencode

    query = {"code": code} | ({"next": next_path} if next_path != "/" else {})
    return f"{public_url.rstrip('/')}/login/link?{urlencode(query)}"
