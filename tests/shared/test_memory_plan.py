"""The memory plan (``shared/memory_plan.py``): its parameter count, how each setting moves it, the
verdict against a GPU, and the estimate against the peak measured around the worker's real step."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from shared import model_shapes, training
from shared.gpus import GPU_MEMORY_GIB, gpu_memory_gib
from shared.memory_plan import GIB, PlanInputs, check_run, plan_memory
from shared.schemas.spec import RunCreate
from tests.worker.conftest import sample_data  # noqa: F401  (the fixture, for the measured tests)


def inputs(preset: str = "llama3-8b", **changes: Any) -> PlanInputs:
    shape = model_shapes.model_args(preset, vocab_size=model_shapes.PRESETS[preset].vocab_size, seq_len=4096)
    base = PlanInputs(
        shape=shape,
        micro_batch=4,
        world_size=8,
        accumulation=1,
        parallelism="ddp",
        activation_checkpointing=False,
        model_dtype="bf16",
        mixed_precision=True,
    )
    return dataclasses.replace(base, **changes)


def test_the_presets_are_declared_once() -> None:
    assert tuple(model_shapes.PRESETS) == training.PRESETS


@pytest.mark.parametrize("preset", sorted(model_shapes.PRESETS))
def test_parameter_count_from_the_shape_equals_the_built_model(preset: str) -> None:
    from worker.metrics import num_params
    from worker.model import Transformer

    args = model_shapes.model_args(preset, vocab_size=1000, seq_len=64)
    with torch.device("meta"):  # no memory: the 8B model is only counted
        model = Transformer(args)
    assert args.num_parameters == num_params(model)


def test_ddp_states_are_16_bytes_per_parameter_and_fsdp_divides_them_by_the_world() -> None:
    ddp = plan_memory(inputs())
    n = ddp.inputs.shape.num_parameters
    assert (ddp.parameters, ddp.gradients, ddp.optimizer) == (4 * n, 4 * n, 8 * n)  # 128 GB for the 8B
    fsdp = plan_memory(inputs(parallelism="fsdp"))
    assert fsdp.parameters + fsdp.optimizer == pytest.approx((ddp.parameters + ddp.optimizer) / 8, rel=1e-6)
    assert fsdp.phases["optimizer step"] < ddp.phases["optimizer step"] / 5
    on_cpu = plan_memory(inputs(on_gpu=False)), plan_memory(inputs(parallelism="fsdp", on_gpu=False))
    assert on_cpu[0].activations == on_cpu[1].activations  # same fp32 activations, sharded states


def test_checkpointing_and_micro_batches_shrink_the_activations() -> None:
    full = plan_memory(inputs())
    ckpt = plan_memory(inputs(activation_checkpointing=True))
    assert ckpt.activations < full.activations / 5
    assert (ckpt.activations_checkpointed, ckpt.activations_full) == (
        full.activations_checkpointed,
        full.activations,
    )
    half = plan_memory(inputs(micro_batch=2, accumulation=2))
    assert half.activations == pytest.approx(full.activations / 2, rel=0.01)


def test_fsdp_accumulation_keeps_the_whole_models_unsharded_gradients() -> None:
    one = plan_memory(inputs(parallelism="fsdp"))
    two = plan_memory(inputs(parallelism="fsdp", micro_batch=2, accumulation=2))
    assert two.buffers - one.buffers == 4 * one.inputs.shape.num_parameters  # fp32 reduce dtype


def test_cpu_policy_is_fp32() -> None:
    gpu, cpu = plan_memory(inputs("small")), plan_memory(inputs("small", on_gpu=False))
    assert cpu.activations > gpu.activations  # fp32 activations instead of bf16
    assert cpu.parameters == gpu.parameters  # fp32 masters either way


def _run(**overrides: Any) -> RunCreate:
    body: dict[str, Any] = {
        "name": "big",
        "training": {
            "dataset": "/d/x.parquet",
            "tokenizer_name_or_path": "/t",
            "training_steps": 10,
            "model_preset": "llama3-8b",
            "sequence_length": 4096,
            "batch_size": 32,
        },
        "resources": {
            "scheduler": "slurm",
            "time_limit": "1h",
            "nodes": 2,
            "ntasks_per_node": 4,
            "gpus_per_node": 4,
            "gpu_type": "h100-80gb",
        },
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        body[section][key] = value
    return RunCreate.model_validate(body)


def test_the_seed_8b_run_does_not_fit_and_the_refusal_says_what_to_change() -> None:
    verdict = check_run(_run())
    assert verdict is not None and not verdict.fits
    message = verdict.refusal()
    assert "h100-80gb" in message and "per micro-batch of 4" in message
    assert "training.parallelism: fsdp + activation_checkpointing: true" in message
    changed = _run(training__parallelism="fsdp", training__activation_checkpointing=True)
    fixed = check_run(changed)
    assert fixed is not None and fixed.fits and fixed.needed == verdict.suggestions[0][1]


def test_runs_naming_no_gpu_are_not_checked_and_gpu_memory_overrides_the_table() -> None:
    assert check_run(_run(resources__gpu_type=None)) is None
    big = check_run(_run(resources__gpu_memory=4096))
    assert big is not None and big.fits and big.gpu_bytes == 4096 * GIB


def test_two_ranks_sharing_a_gpu_need_twice_the_memory() -> None:
    one = check_run(_run(training__parallelism="fsdp", training__activation_checkpointing=True))
    two = check_run(
        _run(
            training__parallelism="fsdp", training__activation_checkpointing=True, resources__gpus_per_node=2
        )
    )
    assert one is not None and two is not None
    assert two.needed == 2 * two.plan.peak and not two.fits


def test_gpu_names_are_checked() -> None:
    assert gpu_memory_gib("H100-80GB") == GPU_MEMORY_GIB["h100-80gb"]
    with pytest.raises(ValueError, match="unknown GPU 'h1000'; known: v100-16gb"):
        gpu_memory_gib("h1000")


# ---------------------------------------------------------------- against a measurement


def measured_peak(data: tuple[Path, Path], tmp_path: Path, **fields: Any) -> tuple[int, Any]:
    """(peak tensor bytes, the config) of one training step after a warm-up step, measured with
    torch's MemTracker (a dispatch mode that sees every tensor storage allocated and freed)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from worker.components import build_components
    from worker.config import TrainConfig
    from worker.distributed import DistInfo
    from worker.loop import TrainingLoop
    from worker.reporting import NullReporter

    parquet, tokenizer = data
    config = TrainConfig(
        dataset=str(parquet),
        tokenizer_name_or_path=str(tokenizer),
        model_dtype="fp32",
        timeaware_checkpointing=False,
        checkpoint_dir=str(tmp_path),
        **fields,
    )
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    comp = build_components(config, info)
    state = SimpleNamespace(progress={"step": 0, "tokens_seen": 0})
    loop = TrainingLoop(
        config=config,
        info=info,
        comp=comp,
        manager=None,
        state=state,
        reporter=NullReporter(),
        clock=time.time,
    )
    batches = iter(comp.dataset)
    loop._train_step(*next(batches))  # AdamW's moments exist from here on
    tracker = MemTracker()
    tracker.track_external(comp.model, comp.optimizer)
    forward = loop._forward_loss

    def fresh_module_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tracker.reset_mod_stats()  # MemTracker refuses a second forward of the root otherwise
        return forward(x, y)

    loop._forward_loss = fresh_module_stats  # type: ignore[method-assign]
    batch = next(batches)
    with tracker:
        loop._train_step(*batch)
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return int(peak), config


@pytest.mark.parametrize(
    "fields",
    [
        {"sequence_length": 256, "batch_size": 8},
        {"sequence_length": 256, "batch_size": 8, "activation_checkpointing": True},
        {"sequence_length": 256, "batch_size": 8, "gradient_accumulation_steps": 4},
    ],
    ids=["plain", "checkpointing", "accumulation"],
)
def test_the_plan_is_within_20_percent_of_the_measured_peak_of_tiny(
    sample_data: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    fields: dict[str, Any],
) -> None:
    from worker.data import load_tokenizer

    peak, config = measured_peak(sample_data, tmp_path, model_preset="tiny", **fields)
    vocab = len(load_tokenizer(str(sample_data[1])))
    plan = plan_memory(PlanInputs.from_training(config, world_size=1, on_gpu=False, vocab_size=vocab))
    assert plan.peak == pytest.approx(peak, rel=0.2), (plan.phases, peak)
