"""The ``pyrecover`` command line.

Each command group lives in its own module and registers itself on the shared Typer app. Worker
commands (``train``, ``data``, ``checkpoint``) are forwarded to the worker's own argparse parsers
and imported lazily, so ``pyrecover --help`` and every controller command start without torch.
"""

from __future__ import annotations

import typer

from controller.cli import admin_cmds, run_cmds, worker_cmds
from controller.permissions import set_private_umask

app = typer.Typer(
    name="pyrecover",
    help="Fault-tolerant LLM training on SLURM: a controller that resubmits runs until they finish, "
    "and the worker that trains them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

admin_cmds.register(app)
run_cmds.register(app)
worker_cmds.register(app)


def main() -> None:
    # Before anything is created: the database, logs, scripts and token files are the controller's
    # alone, and so is what the jobs it starts write (controller/permissions.py).
    set_private_umask()
    app()
