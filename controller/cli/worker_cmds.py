"""``pyrecover train | data | checkpoint | export``: thin forwarders to the worker's own parsers.

The worker parses its flags with argparse (keeping the seed script's flag names), so these
commands pass every argument, ``--help`` included, straight through. Imports are lazy: torch is
loaded only when a worker command actually runs.
"""

from __future__ import annotations

import typer

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings=_PASSTHROUGH, add_help_option=False)
    def train(ctx: typer.Context) -> None:
        """Train a model (the worker; same as `python -m worker`). See `pyrecover train --help`."""
        from worker.cli import main as worker_main

        # fast_exit: once training ran, the process ends without CPython's slow finalization of
        # torch (see worker.shutdown); --help and usage errors return here normally.
        raise typer.Exit(worker_main(list(ctx.args), fast_exit=True))

    @app.command("data", context_settings=_PASSTHROUGH, add_help_option=False)
    def data(ctx: typer.Context) -> None:
        """Sample data (`data prepare`) and token stores (`data tokenize`). See `pyrecover data --help`."""
        from worker.data.prepare import main as data_main

        raise typer.Exit(data_main(list(ctx.args)))

    @app.command("checkpoint", context_settings=_PASSTHROUGH, add_help_option=False)
    def checkpoint(ctx: typer.Context) -> None:
        """List, verify and compare checkpoints. See `pyrecover checkpoint --help`."""
        from worker.checkpoint.cli import main as ckpt_main

        raise typer.Exit(ckpt_main(list(ctx.args)))

    @app.command("export", context_settings=_PASSTHROUGH, add_help_option=False)
    def export(ctx: typer.Context) -> None:
        """Export a checkpoint (`export hf`: Hugging Face Llama). See `pyrecover export --help`."""
        from worker.hf.cli import main as export_main

        raise typer.Exit(export_main(list(ctx.args)))
