"""``pyrecover serve | db upgrade | demo``: commands that run the controller side here.

These work on the controller's own settings (``PYRECOVER_*`` environment, see ``Settings``) and
database directly, not through the REST API. Heavy imports happen inside each command. All of them
agree on the data dir (``--data-dir``, else ``$PYRECOVER_DATA_DIR``, else ``./var``), which is
also where ``pyrecover logs`` and the CLI's ``cli.json`` look. Tokens and users:
``controller/cli/account_cmds.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from controller.cli.client import default_data_dir, fail
from controller.cli.direct import DataDirOpt, settings_or_fail

console = Console()
err_console = Console(stderr=True)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")

    @app.command(
        "serve",
        epilog=(
            "\b\n"
            "Examples:\n"
            "  pyrecover serve\n"
            "  PYRECOVER_PUBLIC_URL=https://ctl.example pyrecover serve --host 0.0.0.0 --port 8000\n"
        ),
    )
    def serve(
        host: Annotated[
            str | None,
            typer.Option(metavar="HOST", help="Bind address (default: PYRECOVER_HOST, 127.0.0.1)."),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option(
                metavar="PORT",
                help="Port (default: PYRECOVER_PORT, 8000; 0: any free port).",
                min=0,
                max=65535,
            ),
        ] = None,
        data_dir: DataDirOpt = None,
        insecure_no_auth: Annotated[
            bool,
            typer.Option(
                "--insecure-no-auth",
                help="Serve without authentication: anyone who reaches the port acts as an admin. "
                "Loopback addresses only.",
            ),
        ] = False,
    ) -> None:
        """Run the controller: REST API, dashboard and the reconciler that (re)submits attempts.

        Authentication is on: create a token with `pyrecover token create --name NAME` (the first user
        is an admin). Every setting can also come from a PYRECOVER_* environment variable
        (PYRECOVER_DATA_DIR, PYRECOVER_DATABASE_URL for PostgreSQL, PYRECOVER_PUBLIC_URL behind a
        reverse proxy, ...); --host and --port are validated exactly like PYRECOVER_HOST and
        PYRECOVER_PORT.
        """
        import uvicorn

        from controller.api import create_app
        from controller.serving import bind, check_auth_choice, serve_settings, uvicorn_config

        kwargs = serve_settings(host=host, port=port, data_dir=data_dir, insecure_no_auth=insecure_no_auth)
        settings = settings_or_fail(**kwargs)
        try:
            check_auth_choice(settings, insecure_no_auth=insecure_no_auth)
        except ValueError as exc:
            fail(str(exc))
        try:
            sock = bind(settings.host, settings.port)
        except OSError as exc:
            fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        settings = settings_or_fail(**(kwargs | {"port": int(sock.getsockname()[1])}))
        if insecure_no_auth:
            err_console.print(
                "[bold yellow]warning:[/] authentication is OFF (--insecure-no-auth): anyone who can reach "
                f"{settings.host}:{settings.port} (every local user of this machine) acts as an admin",
                highlight=False,
                soft_wrap=True,
            )
        # Printed before serving starts, so a script (or a test) learns the port that --port 0 bound.
        console.print(
            f"pyrecover controller on http://{settings.host}:{settings.port}; workers report to "
            f"{settings.public_url}",
            highlight=False,
            soft_wrap=True,
        )
        server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
        server.run(sockets=[sock])

    @db_app.command(
        "upgrade",
        epilog=(
            "\b\n"
            "Examples:\n"
            "  pyrecover db upgrade\n"
            "  PYRECOVER_DATABASE_URL=postgresql+psycopg://u:p@db/pyrecover pyrecover db upgrade\n"
        ),
    )
    def db_upgrade(data_dir: DataDirOpt = None) -> None:
        """Create or migrate the database schema to the newest version (Alembic)."""
        from controller.db import upgrade_database

        settings = settings_or_fail(data_dir)
        try:
            upgrade_database(settings.database_url)
        except Exception as exc:
            fail(f"database upgrade failed: {exc}")
        console.print(f"database at {settings.database_url} is up to date")

    @app.command(
        "demo", epilog="\b\nExamples:\n  pyrecover demo\n  pyrecover demo --keep-serving --window 60\n"
    )
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
                metavar="DIR",
                help="Sample corpus + tokenizer, built there if missing (pyrecover data prepare).",
            ),
        ] = Path("data"),
        window: Annotated[
            int | None,
            typer.Option(
                "--window",
                metavar="SECONDS",
                min=20,
                max=3600,
                show_default=False,
                help="Walltime of each attempt in seconds (default: 45, longer if this machine needs "
                "more than ~15 s just to start a worker).",
            ),
        ] = None,
        port: Annotated[
            int,
            typer.Option(
                metavar="PORT", help="Controller port; 0: 8000 if free, else any free port.", min=0, max=65535
            ),
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
