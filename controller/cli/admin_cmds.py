"""``pyrecover serve | token create | db upgrade | demo``: commands that run the controller side here.

These work on the controller's own settings (``PYRECOVER_*`` environment, see ``Settings``) and
database directly, not through the REST API. Heavy imports happen inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from controller.cli.client import fail, save_config

if TYPE_CHECKING:
    from controller.settings import Settings

console = Console()
token_app = typer.Typer(help="Manage API tokens (direct database access).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


def _settings() -> Settings:
    from pydantic import ValidationError

    from controller.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        fail(
            "invalid settings: "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        )


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(db_app, name="db")

    @app.command("serve")
    def serve(
        host: Annotated[
            str | None, typer.Option(help="Bind address (default: PYRECOVER_HOST, 127.0.0.1).")
        ] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: PYRECOVER_PORT, 8000).")] = None,
    ) -> None:
        """Run the controller: REST API, dashboard and the reconciler that (re)submits attempts."""
        import uvicorn

        from controller.api import create_app

        settings = _settings()
        updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        if updates:
            settings = settings.model_copy(update=updates)
        try:
            settings.validate_for_serving()
        except ValueError as exc:
            fail(str(exc))
        app_ = create_app(settings)
        uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info")

    @token_app.command("create")
    def token_create(
        name: Annotated[str, typer.Option("--name", help="A label for the token (who or what uses it).")],
        save: Annotated[
            bool, typer.Option("--save", help="Also store URL + token in <data_dir>/cli.json for this CLI.")
        ] = False,
    ) -> None:
        """Create a user API token and print it once (only its hash is stored)."""
        from controller.db import make_engine, make_session_factory
        from controller.services import create_user_token

        settings = _settings()
        try:
            factory = make_session_factory(make_engine(settings.database_url))
            with factory() as session:
                token = create_user_token(session, name=name)
                session.commit()
        except Exception as exc:  # e.g. the database is not migrated: one line, not a traceback
            fail(f"could not create the token: {exc}")
        console.print(token, highlight=False, soft_wrap=True)
        if save:
            data_dir = Path(settings.data_dir)
            url = f"http://{settings.host}:{settings.port}"
            path = save_config(data_dir, url=url, token=str(token))
            console.print(f"saved to {path}", style="dim")

    @db_app.command("upgrade")
    def db_upgrade() -> None:
        """Create or migrate the database schema to the newest version (Alembic)."""
        from controller.db import upgrade_database

        settings = _settings()
        try:
            upgrade_database(settings.database_url)
        except Exception as exc:
            fail(f"database upgrade failed: {exc}")
        console.print(f"database at {settings.database_url} is up to date")

    @app.command("demo")
    def demo(
        keep_serving: Annotated[
            bool, typer.Option("--keep-serving", help="Keep the controller and dashboard up afterwards.")
        ] = False,
        directory: Annotated[
            Path, typer.Option("--dir", help="Demo folder: cached sample data + a fresh controller data dir.")
        ] = Path("pyrecover-demo"),
        window: Annotated[int, typer.Option(help="Walltime of each attempt in seconds.")] = 45,
    ) -> None:
        """Train a tiny model through ≥ 3 automatic walltime stops and resumptions (≈ 3-4 minutes)."""
        from controller.demo import run_demo

        raise typer.Exit(run_demo(base_dir=directory, keep_serving=keep_serving, window_s=window))
