"""``pyrecover submit | runs | show | cancel | resume | share | unshare | logs``: runs through the REST
API, as the user whose token the CLI sends (``controller/cli/client.py``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.cli.client import Api, CliError, fail, items
from controller.cli.views import attempts_table, run_panel, run_progress
from controller.client import load_run_file
from shared.paths import looks_local
from shared.schemas import RunCreate
from shared.states import TERMINAL_RUN_STATES

console = Console()
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", metavar="URL", help="Controller URL (env PYRECOVER_URL).", show_default=False),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", metavar="TOKEN", help="API token (env PYRECOVER_TOKEN).", show_default=False),
]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id or name.")]


def validation_lines(exc: ValidationError) -> str:
    """``field: message`` for each error, without pydantic's "Value error, " prefixes."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def load_body(path: Path) -> dict[str, Any]:
    return load_run_file(path)


def absolutize_paths(body: dict[str, Any]) -> None:
    """Dataset/tokenizer paths that exist relative to here are sent absolute (the worker runs elsewhere)."""
    training = body.get("training")
    if not isinstance(training, dict):
        return
    for key in ("dataset", "tokenizer_name_or_path"):
        value = training.get(key)
        if isinstance(value, str) and not value.startswith(("/", "~")) and looks_local(value):
            training[key] = str(Path(value).resolve())


def with_api(fn: Any) -> Any:
    """Run ``fn`` and turn a ``CliError`` into one red line and exit status 1."""
    try:
        return fn()
    except CliError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    @app.command(
        "submit",
        epilog=(
            "\b\n"
            "Examples:\n"
            "  pyrecover submit deploy/examples/run-local-tiny.yaml\n"
            "  pyrecover submit run.yaml --name try2 --steps 5000\n"
        ),
    )
    def submit(
        file: Annotated[
            Path | None,
            typer.Argument(
                metavar="RUN_FILE", help="Run spec as YAML or JSON (name, training, resources, policy)."
            ),
        ] = None,
        name: Annotated[
            str | None, typer.Option(metavar="NAME", help="Run name (letters, digits, . _ -).")
        ] = None,
        dataset: Annotated[
            str | None, typer.Option(metavar="PATH", help="Parquet file or directory with a 'text' column.")
        ] = None,
        tokenizer: Annotated[str | None, typer.Option(metavar="DIR", help="Tokenizer directory.")] = None,
        steps: Annotated[int | None, typer.Option(metavar="N", help="training_steps.")] = None,
        time_limit: Annotated[
            str | None,
            typer.Option(metavar="TIME", help="Walltime per attempt: 45s, 10 (minutes), 01:00:00."),
        ] = None,
        scheduler: Annotated[str | None, typer.Option(metavar="SCHEDULER", help="local or slurm.")] = None,
        preset: Annotated[
            str | None,
            typer.Option(metavar="PRESET", help="Model preset: tiny, small, llama3-1b, llama3-8b."),
        ] = None,
        ntasks: Annotated[int | None, typer.Option(metavar="N", help="Ranks per node.")] = None,
        checkpoint_frequency: Annotated[
            int | None, typer.Option(metavar="N", help="Steps between checkpoints.")
        ] = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Submit a run from a YAML/JSON file and/or flags (flags override the file); prints its id."""

        def go() -> None:
            body: dict[str, Any] = load_body(file) if file else {}
            training = body.setdefault("training", {})
            resources = body.setdefault("resources", {})
            for target, key, value in (
                (body, "name", name),
                (training, "dataset", dataset),
                (training, "tokenizer_name_or_path", tokenizer),
                (training, "training_steps", steps),
                (training, "model_preset", preset),
                (training, "checkpoint_frequency", checkpoint_frequency),
                (resources, "time_limit", time_limit),
                (resources, "scheduler", scheduler),
                (resources, "ntasks_per_node", ntasks),
            ):
                if value is not None:
                    target[key] = value
            absolutize_paths(body)
            try:
                spec = RunCreate.model_validate(body)
            except ValidationError as exc:
                raise CliError(f"invalid run spec: {validation_lines(exc)}") from exc
            run = Api.resolve(url, token).post("/runs", spec.model_dump(mode="json"))
            console.print(
                f"submitted run [bold]{run.get('name')}[/] (id {run.get('id')}), state {run.get('state')}"
            )

        with_api(go)

    @app.command(
        "runs", epilog="\b\nExamples:\n  pyrecover runs\n  pyrecover runs --state RUNNING --limit 20\n"
    )
    def runs(
        state: Annotated[
            str | None, typer.Option(metavar="STATE", help="Only runs in this state (e.g. RUNNING).")
        ] = None,
        limit: Annotated[int, typer.Option(metavar="N", help="At most this many rows.")] = 50,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """List runs, newest first, as a table."""

        def go() -> None:
            rows = items(
                Api.resolve(url, token).get("/runs", state=state.upper() if state else None, limit=limit)
            )
            table = Table("id", "name", "state", "progress", "attempts", "goodput", "updated")
            for run in rows:
                step, total = run_progress(run)
                goodput = run.get("goodput")
                table.add_row(
                    str(run.get("id")),
                    str(run.get("name")),
                    str(run.get("state")),
                    f"{step}/{total}",
                    str(run.get("attempts_count", "")),
                    f"{float(goodput):.0%}" if isinstance(goodput, int | float) else "",
                    str(run.get("updated_at", "")),
                )
            console.print(table)

        with_api(go)

    @app.command("show", epilog="\b\nExamples:\n  pyrecover show my-run\n  pyrecover show 12 --follow\n")
    def show(
        run: RunArg,
        follow: Annotated[
            bool, typer.Option("--follow", "-f", help="Live progress until the run ends.")
        ] = False,
        interval: Annotated[
            float, typer.Option(metavar="SECONDS", help="Seconds between refreshes with --follow.")
        ] = 2.0,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Show a run: state, progress, goodput, latest checkpoint and its attempts."""

        def go() -> None:
            api = Api.resolve(url, token)
            run_id = api.run_id(run)
            if follow:
                follow_run(api, run_id, interval)
            detail = api.get(f"/runs/{run_id}")
            console.print(run_panel(detail))
            console.print(attempts_table(items(api.get(f"/runs/{run_id}/jobs"))))
            if follow and detail.get("state") != "COMPLETED":
                raise typer.Exit(1)

        with_api(go)


def follow_run(api: Api, run_id: int, interval: float) -> None:
    """A live progress bar, and one line per attempt change, until the run is terminal."""
    seen: dict[int, tuple[Any, Any]] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("run", total=None, info="")
        while True:
            detail = api.get(f"/runs/{run_id}")
            step, total = run_progress(detail)
            for job in items(api.get(f"/runs/{run_id}/jobs")):
                key = int(job.get("number") or 0)
                now = (job.get("state"), job.get("end_reason"))
                if seen.get(key) != now:
                    seen[key] = now
                    reason = f" ({now[1]})" if now[1] else ""
                    progress.console.print(f"attempt {key}: {now[0]}{reason}")
            info = str(detail.get("state"))
            progress.update(
                task, description=str(detail.get("name")), completed=step, total=total or None, info=info
            )
            if detail.get("state") in TERMINAL_RUN_STATES:
                return
            time.sleep(interval)
