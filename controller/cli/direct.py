"""What the commands that work on this controller's own settings and database share (``serve``,
``db``, ``token``, ``user``, ``demo``): the ``--data-dir`` option, settings refused in one line,
and a database session that turns any failure into one line too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.client import fail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from controller.settings import Settings

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        help="Controller data dir: SQLite DB, run folders, logs, checkpoints "
        "(default: $PYRECOVER_DATA_DIR, else ./var).",
        show_default=False,
    ),
]


def settings_or_fail(data_dir: Path | None = None, **kwargs: Any) -> Settings:
    """``Settings`` from the environment plus ``kwargs``; invalid ones end the command in one line."""
    from pydantic import ValidationError

    from controller.settings import Settings

    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        fail(
            "invalid settings: "
            + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        )


@contextmanager
def database(data_dir: Path | None, what: str) -> Iterator[Session]:
    """A session on the controller's database, committed at the end; any failure (the database is
    not migrated, a name is taken ...) is one line naming ``what`` failed, never a traceback."""
    from controller.db import make_engine, make_session_factory
    from controller.services.errors import DomainError

    settings = settings_or_fail(data_dir)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            try:
                yield session
                session.commit()
            except typer.Exit:
                raise
            except DomainError as exc:
                fail(f"could not {what}: {exc}")
            except Exception as exc:
                fail(f"could not {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    finally:
        engine.dispose()
