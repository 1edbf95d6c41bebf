"""``pyrecover serve | token create | db upgrade | demo``: commands that run the controller side here.

These work on the controller's own settings (``PYRECOVER_*`` environment, see ``Settings``) and
database directly, not through the REST API. Heavy imports happen inside each command. All of them
agree on the data dir (``--data-dir``, else ``$PYRECOVER_DATA_DIR``, else ``./var``), which is
also where ``pyrecover logs`` and the CLI's ``cli.json`` look.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from controller.cli.client import default_data_dir, fail, save_config

if TYPE_CHECKING:
    from controller.settings import Settings

console = Console()
token_app = typer.Typer(help="Manage API tokens (direct database access).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Controller data dir: SQLite DB, run folders, logs, checkpoints "
        "(default: $PYRECOVER_DATA_DIR, else ./var).",
        show_default=False,
    ),
]


def _settings(data_dir: Path | None = None) -> Settings:
    from pydantic import ValidationError

    from controller.settings import Settings

    try:
        return Settings() if data_dir is None else Settings(data_dir=data_dir)
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
        data_dir: DataDirOpt = None,
    ) -> None:
        """Run the controller: REST API, dashboard and the reconciler that (re)submits attempts.

        Every setting can also come from a PYRECOVER_* environment variable (PYRECOVER_DATA_DIR,
        PYRECOVER_DATABASE_URL for PostgreSQL, PYRECOVER_AUTH_REQUIRED, ...).
        """
        import uvicorn

        from controller.api import create_app

        settings = _settings(data_dir)
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
        data_dir: DataDirOpt = None,
        expires_in: Annotated[
            str | None,
            typer.Option(
                "--expires-in", help="Lifetime such as 90m, 12h, 30d or 2w (default: until revoked)."
            ),
        ] = None,
    ) -> None:
        """Create a user API token and print it once (only its hash is stored)."""
        from controller.db import make_engine, make_session_factory
        from controller.services import create_user_token, parse_ttl

        ttl_s: int | None = None
        if expires_in is not None:
            try:
                ttl_s = parse_ttl(expires_in)
            except ValueError as exc:
                fail(f"--expires-in: {exc}")
        settings = _settings(data_dir)
        try:
            factory = make_session_factory(make_engine(settings.database_url))
            with factory() as session:
                token = create_user_token(session, name=name, ttl_s=ttl_s)
                session.commit()
        except Exception as exc:  # e.g. the database is not migrated: one line, not a traceback
            fail(f"could not create the token: {exc}")
        console.print(token, highlight=False, soft_wrap=True)
        if expires_in is not None:
            console.print(f"expires in {expires_in}", style="dim")
        if save:
            data_dir = Path(settings.data_dir)
            url = f"http://{settings.host}:{settings.port}"
            path = save_config(data_dir, url=url, token=str(token))
            console.print(f"saved to {path}", style="dim")

    @db_app.command("upgrade")
    def db_upgrade(data_dir: DataDirOpt = None) -> None:
        """Create or migrate the database schema to the newest version (Alembic)."""
        from controller.db import upgrade_database

        settings = _settings(data_dir)
        try:
            upgrade_database(settings.database_url)
        except Exception as exc:
            fail(f"database upgrade failed: {exc}")
        console.print(f"database at {settings.database_url} is up to date")

    @app.command("demo")
    def demo(
        keep_serving: Annotated[
            bool,
            typer.Option(
                "--keep-serving",
                help="Keep the controller and dashboard up after the summary (Ctrl-C stops).",
            ),
        ] = False,
        data_dir: DataDirOpt = None,
        sample_dir: Annotated[
            Path,
            typer.Option(
                "--sample-dir",
                help="Sample corpus + tokenizer, built there if missing (pyrecover data prepare).",
            ),
        ] = Path("data"),
        window: Annotated[
            int | None,
            typer.Option(
                "--window",
                min=20,
                max=3600,
                show_default=False,
                help="Walltime of each attempt in seconds (default: 45, longer if this machine needs "
                "more than ~15 s just to start a worker).",
            ),
        ] = None,
        port: Annotated[
            int,
            typer.Option(help="Controller port; 0: 8000 if free, else any free port.", min=0, max=65535),
        ] = 0,
    ) -> None:
        """Train a tiny model through ≥ 3 walltime limits, resumed automatically (≈ 3-4 minutes).

        Prepares the sample data if missing, measures this machine's step time, starts the controller
        (SQLite, local scheduler, dashboard) and submits a run sized to need at least three walltime
        windows. Shows live progress and every automatic resumption, then a summary: attempts and
        their end reasons, goodput, final loss, dashboard URL. Exit status 0 if the run COMPLETED.
        Ctrl-C cancels the run and stops everything cleanly.
        """
        from controller.demo import DemoOptions, run_demo

        options = DemoOptions(
            data_dir=data_dir if data_dir is not None else default_data_dir(),
            sample_dir=sample_dir,
            window_s=window,
            port=port or None,
            keep_serving=keep_serving,
        )
        raise typer.Exit(run_demo(options))
