"""``pyrecover exclusions RUN [--clear]``: the hosts a run's next attempts keep off, through the API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.cli.client import Api
from controller.cli.run_cmds import RunArg, TokenOpt, UrlOpt, with_api

console = Console()


def exclusions_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("host", "reason", "attempt", "since", "expires", title="excluded nodes")
    for row in rows:
        table.add_row(
            row["host"], row["reason"], str(row["attempt"]), str(row["created_at"]), str(row["expires_at"])
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command(
        "exclusions",
        epilog=(
            "Examples:\n\n  pyrecover exclusions my-run\n\n"
            "  pyrecover exclusions my-run --clear   # admins only"
        ),
    )
    def exclusions(
        run: RunArg,
        clear: Annotated[
            bool, typer.Option("--clear", help="Empty the list (admins only: the hosts were repaired).")
        ] = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """List the hosts the run's next attempts exclude (after a node failure, a hang naming the
        host or a device fault) and when each entry expires."""

        def go() -> None:
            api = Api.resolve(url, token)
            run_id = api.run_id(run)
            if clear:
                api.request("DELETE", f"/runs/{run_id}/exclusions")
                console.print(f"run {run}: exclusion list cleared")
                return
            rows = api.get(f"/runs/{run_id}/exclusions") or []
            if not rows:
                console.print(f"run {run}: no node is excluded")
                return
            console.print(exclusions_table(rows))

        with_api(go)
