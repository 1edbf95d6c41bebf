"""``pyrecover logs``: a run's attempt logs through the REST API, from any directory or host."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from controller.cli.client import fail
from controller.cli.run_cmds import RunArg, TokenOpt, UrlOpt
from controller.client import Client, PyrecoverError
from shared.states import TERMINAL_RUN_STATES


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    @app.command(
        "logs",
        epilog="Examples:\n\n  pyrecover logs my-run                 # every attempt's training log\n\n"
        "  pyrecover logs my-run --attempt 3 --tail 50\n\n"
        "  pyrecover logs my-run --follow        # live, attempt after attempt, until the run ends",
    )
    def logs(
        run: RunArg,
        attempt: Annotated[
            int | None, typer.Option(metavar="N", help="Only this attempt (default: all of them).")
        ] = None,
        stderr: Annotated[
            bool, typer.Option("--stderr/--stdout", help="The training log (stderr) or stdout.")
        ] = True,
        tail: Annotated[
            int | None, typer.Option(metavar="LINES", help="Only the last lines of each.")
        ] = None,
        follow: Annotated[
            bool,
            typer.Option("--follow", "-f", help="Stream new lines, across attempts, until the run ends."),
        ] = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Print a run's attempt logs, as the controller holds them."""
        stream = "stderr" if stderr else "stdout"
        try:
            with Client(url, token) as client:
                run_id = client.run_id(run)
                numbers = [a.number for a in client.jobs(run_id)]
                if attempt is not None:
                    if attempt not in numbers:
                        fail(f"run {run} has no attempt {attempt} (it has {len(numbers)})")
                    numbers = [attempt]
                if follow:
                    _follow(client, run_id, numbers[-1] if numbers else 1, stream, single=attempt is not None)
                    return
                if not numbers:
                    fail(f"run {run} has no attempt yet: `pyrecover show {run}` says where it stands")
                for number in numbers:
                    if len(numbers) > 1:
                        _write(f"==> attempt {number} <==\n")
                    _write(client.logs(run_id, number, stream=stream, tail=tail))
        except PyrecoverError as exc:
            fail(str(exc))


def _follow(client: Client, run_id: int, number: int, stream: str, *, single: bool) -> None:
    """Follow attempt ``number``, then each next one, until the run ends (or just one with ``single``)."""
    while True:
        if number in {a.number for a in client.jobs(run_id)}:
            _write(f"==> attempt {number} <==\n")
            for chunk in client.follow_logs(run_id, number, stream=stream):
                _write(chunk)
            number += 1
            if single:
                return
        if client.run(run_id).state in TERMINAL_RUN_STATES and number not in {
            a.number for a in client.jobs(run_id)
        }:
            return
        time.sleep(1.0)
