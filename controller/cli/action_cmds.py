"""``pyrecover cancel | resume | stop | checkpoint-now | extend | share | unshare``: acting on a run.

Every command goes through the REST API as the token's user (``controller.client``), so the
controller records who acted; each prints one line saying what happens next.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from controller.cli.client import Api, fail
from controller.cli.run_cmds import RunArg, TokenOpt, UrlOpt, with_api
from controller.client import Client, PyrecoverError

console = Console()


def _client(url: str | None, token: str | None) -> Client:
    return Client(url, token)


def _act(url: str | None, token: str | None, what: str, call: str, run: str) -> None:
    try:
        with _client(url, token) as client:
            result = getattr(client, call)(run)
    except PyrecoverError as exc:
        fail(str(exc))
    console.print(f"run {result.name} (id {result.id}): {what}; now {result.state}")


def register(app: typer.Typer) -> None:
    @app.command("cancel", epilog="Example: pyrecover cancel my-run")
    def cancel(run: RunArg, url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Cancel a run: its live attempt is stopped (it saves first) and the run ends CANCELLED."""
        _act(url, token, "cancel requested", "cancel", run)

    @app.command("resume", epilog="Example: pyrecover resume my-run")
    def resume(run: RunArg, url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Restart a FAILED or CANCELLED run from its latest committed checkpoint."""
        _act(url, token, "resumed from its latest committed checkpoint", "resume", run)

    @app.command("stop", epilog="Example: pyrecover stop my-run   # later: pyrecover resume my-run")
    def stop(run: RunArg, url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Stop gracefully: the worker saves a final checkpoint at its next step and exits; the run
        then continues in a new attempt (cancel it to end it)."""
        _act(url, token, "stop requested (delivered with the worker's next report)", "stop", run)

    @app.command("checkpoint-now", epilog="Example: pyrecover checkpoint-now my-run")
    def checkpoint_now(run: RunArg, url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Ask the running worker to save a checkpoint at its next step, then go on training."""
        _act(
            url,
            token,
            "checkpoint requested (delivered with the worker's next report)",
            "checkpoint_now",
            run,
        )

    @app.command(
        "extend",
        epilog="Examples:\n\n  pyrecover extend my-run --training-steps 20000\n\n"
        "  pyrecover extend my-run --training-steps 20000 --learning-rate 1e-4",
    )
    def extend(
        run: RunArg,
        training_steps: Annotated[
            int | None, typer.Option("--training-steps", metavar="N", help="Train up to this step.")
        ] = None,
        learning_rate: Annotated[
            float | None, typer.Option("--learning-rate", metavar="LR", help="A new peak learning rate.")
        ] = None,
        max_attempts: Annotated[
            int | None, typer.Option("--max-attempts", metavar="N", help="A new cap on attempts.")
        ] = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Change what may change between attempts: more steps (a COMPLETED run continues from its
        final checkpoint), another learning rate, another attempt cap. The next attempt uses them."""
        training = {
            k: v
            for k, v in (("training_steps", training_steps), ("learning_rate", learning_rate))
            if v is not None
        }
        policy = {"max_attempts": max_attempts} if max_attempts is not None else {}
        if not training and not policy:
            fail("nothing to change: give --training-steps, --learning-rate or --max-attempts")
        try:
            with _client(url, token) as client:
                result = client.update(run, training=training, policy=policy)
        except PyrecoverError as exc:
            fail(str(exc))
        console.print(
            f"run {result.name} (id {result.id}): {result.training_steps} steps; now {result.state}"
            + ("" if result.state == "PENDING" else " (the next attempt uses the new settings)")
        )

    @app.command("share", epilog="Examples:\n\n  pyrecover share my-run vera\n\n  pyrecover share my-run")
    def share(
        run: RunArg,
        user: Annotated[
            str | None, typer.Argument(help="Who may now read it (a viewer) or act on it.", metavar="USER")
        ] = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Share a run with a user (its owner or an admin); without USER, list whom it is shared with."""

        def go() -> None:
            api = Api.resolve(url, token)
            run_id = api.run_id(run)
            if user is not None:
                api.post(f"/runs/{run_id}/shares", {"user": user})
                console.print(f"run {run} shared with {user}")
            table = Table("user", "role", "shared by", "since")
            for row in api.get(f"/runs/{run_id}/shares") or []:
                table.add_row(
                    row["user"], row["role"], str(row.get("shared_by") or ""), str(row["created_at"])
                )
            console.print(table)

        with_api(go)

    @app.command("unshare", epilog="Example: pyrecover unshare my-run vera")
    def unshare(
        run: RunArg,
        user: Annotated[str, typer.Argument(help="Whose access to take away.", metavar="USER")],
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Stop sharing a run with a user."""

        def go() -> None:
            api = Api.resolve(url, token)
            api.request("DELETE", f"/runs/{api.run_id(run)}/shares/{user}")
            console.print(f"run {run} is no longer shared with {user}")

        with_api(go)
