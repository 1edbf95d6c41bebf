"""The ``pyrecover`` command line.

Each command group lives in its own module and registers itself on the shared Typer app. Worker
commands (``train``, ``data``, ``checkpoint``) are forwarded to the worker's own argparse parsers
and imported lazily, so ``pyrecover --help`` and every controller command start without torch.
"""

from __future__ import annotations

import typer
import typer.core

from controller.cli import (
    account_cmds,
    action_cmds,
    admin_cmds,
    exclusion_cmds,
    log_cmds,
    plan_cmd,
    run_cmds,
    worker_cmds,
)
from controller.permissions import set_private_umask


# Typer prints the Python type beside every argument's name in --help ("RUN <str>"); the metavar
# already says what goes there, and options show only their metavar. One help style: no type noise.
def _no_type(self: typer.core.TyperArgument, ctx: object) -> None:
    return None


typer.core.TyperArgument.display_type_rich = _no_type  # type: ignore[method-assign,assignment]


app = typer.Typer(
    name="pyrecover",
    help="Fault-tolerant LLM training on SLURM: a controller that resubmits runs until they finish, "
    "and the worker that trains them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"pyrecover {version('pyrecover')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("pyrecover (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Fault-tolerant LLM training on SLURM: a controller that resubmits runs until they finish, and
    the worker that trains them."""


admin_cmds.register(app)
account_cmds.register(app)
run_cmds.register(app)
plan_cmd.register(app)
action_cmds.register(app)
log_cmds.register(app)
exclusion_cmds.register(app)
worker_cmds.register(app)


def main() -> None:
    # Before anything is created: the database, logs, scripts and token files are the controller's
    # alone, and so is what the jobs it starts write (controller/permissions.py).
    set_private_umask()
    app()
