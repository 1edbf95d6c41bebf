"""The ``pyrecover`` command line.

Each command group lives in its own module and registers itself on the shared Typer app. Worker
commands (``train``, ``data``, ``checkpoint``) are forwarded to the worker's own argparse parsers
and imported lazily, so ``pyrecover --help`` and every controller command start without torch.
"""

from __future__ import annotations

import typer

from controller.cli import admin_cmds, plan_cmd, run_cmds, worker_cmds

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
plan_cmd.register(app)
worker_cmds.register(app)


def main() -> None:
    app()
