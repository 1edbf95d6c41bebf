"""``pyrecover plan RUN_FILE``: the run's per-GPU memory plan, and whether it fits its GPU.

Torch-free: the plan is computed from the model preset's shape (``shared.memory_plan``), the same
computation ``POST /runs`` checks a run against when it names its GPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from controller.cli.client import CliError, fail
from controller.cli.run_cmds import load_body, validation_lines
from shared.gpus import USABLE_FRACTION
from shared.memory_plan import GIB, MemoryPlan, PlanInputs, Verdict, check_run, gib, plan_memory
from shared.schemas import RunCreate

console = Console()


def _describe(p: PlanInputs) -> str:
    a = p.shape
    policy = f"{p.model_dtype} {'mixed precision' if p.mixed_precision else 'pure dtype'}"
    return (
        f"{a.num_parameters / 1e9:.2f} B parameters (vocab {a.vocab_size}), {p.world_size} rank(s), "
        f"{p.parallelism}, micro-batch {p.micro_batch} × {a.seq_len} tokens, {p.accumulation} "
        f"micro-batch(es) per step, {policy}, activation checkpointing "
        f"{'on' if p.activation_checkpointing else 'off'}"
    )


def _table(plan: MemoryPlan) -> Table:
    table = Table("per GPU", "this run", "with checkpointing", "without", title="memory plan")
    table.add_row("parameters", gib(plan.parameters), "", "")
    table.add_row("gradients", gib(plan.gradients), "", "")
    table.add_row("optimizer states", gib(plan.optimizer), "", "")
    table.add_row("buffers (parallelism)", gib(plan.buffers), "", "")
    table.add_row(
        "activations / micro-batch",
        gib(plan.activations),
        gib(plan.activations_checkpointed),
        gib(plan.activations_full),
    )
    table.add_row("transient at the peak", gib(plan.transient), "", "")
    for phase, nbytes in plan.phases.items():
        table.add_row(f"total at {phase}", gib(nbytes), "", "")
    with_ckpt = plan_memory(dataclasses.replace(plan.inputs, activation_checkpointing=True))
    without = plan_memory(dataclasses.replace(plan.inputs, activation_checkpointing=False))
    table.add_row(
        f"[bold]peak ({plan.peak_phase})[/]",
        f"[bold]{gib(plan.peak)}[/]",
        gib(with_ckpt.peak),
        gib(without.peak),
    )
    return table


def _as_json(plan: MemoryPlan, verdict: Verdict | None) -> dict[str, Any]:
    fields = ("parameters", "gradients", "optimizer", "buffers", "activations", "transient")
    out: dict[str, Any] = {
        "inputs": {k: v for k, v in dataclasses.asdict(plan.inputs).items() if k != "shape"},
        "parameters_count": plan.inputs.shape.num_parameters,
        "bytes": {name: getattr(plan, name) for name in fields},
        "activations_checkpointed": plan.activations_checkpointed,
        "activations_full": plan.activations_full,
        "phases": plan.phases,
        "peak": plan.peak,
        "peak_phase": plan.peak_phase,
    }
    if verdict is not None:
        out["gpu"] = {"name": verdict.gpu, "bytes": verdict.gpu_bytes, "usable_bytes": verdict.usable}
        out["ranks_per_gpu"] = verdict.ranks_per_gpu
        out["fits"] = verdict.fits
        out["suggestions"] = [{"change": c, "peak": p} for c, p in verdict.suggestions]
    return out


def register(app: typer.Typer) -> None:
    @app.command(
        "plan",
        epilog="Example: pyrecover plan deploy/examples/run-llama3-8b.yaml --gpu-type h100-80gb",
    )
    def plan(
        file: Annotated[
            Path,
            typer.Argument(metavar="RUN_FILE", help="Run spec as YAML or JSON (as for `pyrecover submit`)."),
        ],
        gpu_type: Annotated[
            str | None,
            typer.Option(metavar="GPU", help="Compare against this GPU (overrides resources.gpu_type)."),
        ] = None,
        gpu_memory: Annotated[
            float | None,
            typer.Option(metavar="GIB", help="Compare against a GPU of this many GiB (overrides both)."),
        ] = None,
        vocab_size: Annotated[
            int | None,
            typer.Option(metavar="N", help="The tokenizer's vocabulary size (default: the preset's).", min=1),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    ) -> None:
        """Estimate per-GPU memory (parameters, gradients, optimizer, activations per micro-batch, with and
        without activation checkpointing) and compare it with the GPU's. Exit status 1 if it does not fit."""
        try:
            body = load_body(file)
            resources = body.get("resources")
            if isinstance(resources, dict):
                if gpu_type is not None:
                    resources["gpu_type"] = gpu_type
                if gpu_memory is not None:
                    resources["gpu_memory"] = gpu_memory
            try:
                run = RunCreate.model_validate(body)
            except ValidationError as exc:
                raise CliError(f"invalid run spec: {validation_lines(exc)}") from exc
        except CliError as exc:
            fail(str(exc))
        verdict = check_run(run, vocab_size=vocab_size)
        memory = (
            verdict.plan
            if verdict is not None
            else plan_memory(
                PlanInputs.from_training(
                    run.training, world_size=run.resources.world_size, vocab_size=vocab_size
                )
            )
        )
        if as_json:
            print(json.dumps(_as_json(memory, verdict), indent=2))
        else:
            console.print(f"[bold]{run.name}[/]: {run.training.model_preset}, {_describe(memory.inputs)}")
            console.print(_table(memory))
            if verdict is None:
                console.print(
                    "no GPU named: set resources.gpu_type or resources.gpu_memory (or --gpu-type) to compare"
                )
            elif verdict.fits:
                console.print(
                    f"[green]fits[/] a {verdict.gpu}: {gib(verdict.needed)} of {gib(verdict.usable)} usable "
                    f"({USABLE_FRACTION:.0%} of {verdict.gpu_bytes / GIB:.1f} GiB)"
                )
            else:
                console.print(f"[bold red]does not fit:[/] {verdict.refusal()}", soft_wrap=True)
        if verdict is not None and not verdict.fits:
            raise typer.Exit(1)
