"""The training fields of a run, declared once (torch-free): what the API accepts under ``training``
and what the worker's command line parses.

``TrainingFields`` holds every run-level setting with its type, bounds, default and docstring.
Two models extend it:

* ``shared.schemas.spec.TrainingSpec``: the API body (frozen, paths restricted to what may reach
  an sbatch script, ``training_steps`` required);
* ``worker.config.TrainConfig``: the worker's config, which adds the per-attempt fields
  (``PER_ATTEMPT_FIELDS``) and builds ``pyrecover train``'s flags from these declarations.

A field added here is accepted by the API, rendered by ``to_worker_args`` and parsed by the worker
without any other change. See docs/architecture.md, "Contracts".
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.json_numbers import no_bool_numbers

PRESETS = ("tiny", "small", "llama3-1b", "llama3-8b")
Preset = Literal["tiny", "small", "llama3-1b", "llama3-8b"]
Dtype = Literal["fp32", "bf16", "fp16", "fp64"]

EXIT_ALLOWANCE_S = 5.0
"""Default seconds the worker keeps for its exit after the final save (reporter flush, barrier,
process-group teardown). The controller's planning (the demo) budgets the same figure."""

TrainingSteps = Annotated[int, Field(gt=0, le=10_000_000)]
"""Total optimizer steps of a run (absolute: a resumed run continues up to this number)."""

IMMUTABLE_FIELDS: tuple[str, ...] = (
    "model_preset",
    "sequence_length",
    "dataset",
    "tokenizer_name_or_path",
    "seed",
    "model_dtype",
    "mixed_precision",
    "batch_size",
    "experiment_name",
)
"""Changing any of these between an attempt and the checkpoint it resumes from would silently train
a different model or on a different token stream: the worker's checkpoint manager refuses such a
resume. Everything else (steps, learning rate, cadence, world size, ...) may change between attempts."""

PER_ATTEMPT_FIELDS: tuple[str, ...] = ("deadline", "stop_after_steps", "resume_from_checkpoint")
"""Worker fields that describe one attempt, not the run (left out of the checkpoint's config)."""

_FINITE = {"allow_inf_nan": False}


class TrainingFields(BaseModel):
    """Every run-level training setting. Field names match the worker's flags (``--learning-rate``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)

    dataset: Annotated[str, Field(min_length=1)]
    """Parquet file, directory or glob of Parquet files with a 'text' column, or a token store directory."""
    tokenizer_name_or_path: Annotated[str, Field(min_length=1)]
    """Local Hugging Face tokenizer directory (or a hub name on a networked cluster)."""
    training_steps: TrainingSteps = 1000
    """Total optimizer steps of the run (absolute: a resumed run continues up to this number)."""
    model_preset: Preset = "tiny"
    """Model size preset (worker.model.PRESETS)."""
    sequence_length: Annotated[int, Field(ge=2, le=131_072)] = 128
    """Tokens per training sequence (also the model's RoPE table length)."""
    batch_size: Annotated[int, Field(gt=0, le=65_536)] = 8
    """GLOBAL batch size in sequences per optimizer step; must be divisible by the world size."""
    learning_rate: Annotated[float, Field(gt=0, le=10, **_FINITE)] = 3e-4
    """Peak AdamW learning rate."""
    lr_warmup_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 10
    """Linear warm-up steps: the factor is (s+1)/(warmup+1) for s < warmup."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """After warm-up: keep the peak (constant) or decay with a cosine to 10% of it at the last step."""
    grad_max_norm: Annotated[float, Field(ge=0, **_FINITE)] = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    model_dtype: Dtype = "bf16"
    """Compute dtype. With mixed precision: autocast dtype over fp32 master weights (GPU only; on a CPU
    the model trains in plain fp32)."""
    mixed_precision: bool = True
    """True: fp32 weights + autocast to model_dtype on GPU, plain fp32 on CPU. False: the seed's
    pure-dtype mode (weights, grads and optimizer state all in model_dtype)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    fused_optimizer: bool = False
    """Use the fused AdamW kernel where the device supports it."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 1234
    """Seed of python, numpy and torch RNGs (model init and anything random in training)."""
    logging_frequency: Annotated[int, Field(gt=0, le=10_000_000)] = 5
    """Log metrics at the first step of an attempt and every N steps."""
    checkpoint_dir: Annotated[str, Field(min_length=1)] = "checkpoints"
    """Root folder; checkpoints go to <checkpoint_dir>/<experiment_name>/step-<N>/."""
    checkpoint_frequency: Annotated[int, Field(ge=-1, le=10_000_000)] = 50
    """Save every N steps; -1 disables periodic saves (final saves still happen)."""
    use_torch_distributed_ckpt: bool = True
    """DCP (sharded, every rank writes) instead of vanilla torch.save by rank 0."""
    async_checkpoint: bool = False
    """Periodic DCP saves in the background; the final save is always synchronous."""
    keep_last_k: Annotated[int, Field(ge=2, le=10_000)] = 3
    """Retention: keep the newest k committed checkpoints (k >= 2: the newest and the one resumed from)."""
    keep_every_n: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    """Retention: additionally keep every checkpoint whose step is a multiple of n; 0 disables."""
    timeaware_checkpointing: bool = True
    """Stop with a final checkpoint before the deadline (walltime)."""
    deadline_margin: Annotated[float, Field(ge=0, le=3600, **_FINITE)] = 15.0
    """Seconds of slack kept between the end of the final save (and the exit) and the deadline."""
    exit_allowance: Annotated[float, Field(gt=0, le=600, **_FINITE)] = EXIT_ALLOWANCE_S
    """Seconds reserved after the final save for the exit (reporter flush, rank barrier, process-group
    teardown); the time-aware stop budgets them, and a teardown step that overruns them is cut off."""
    deadline_refresh_seconds: Annotated[float, Field(ge=0, le=86_400, **_FINITE)] = 60.0
    """How often the deadline sources are re-read (an admin may change the time limit)."""
    log_loss_to_csv: bool = True
    """Rank 0 writes step,loss for every step to <checkpoint_dir>/<experiment_name>/loss.csv."""
    profile: bool = False
    """Profile steps [profile_step_start, profile_step_end] with torch.profiler (and nsys ranges on GPU)."""
    profile_step_start: Annotated[int, Field(gt=0, le=10_000_000)] = 10
    """First profiled step."""
    profile_step_end: Annotated[int, Field(gt=0, le=10_000_000)] = 12
    """Last profiled step."""
    profile_dir: Annotated[str, Field(min_length=1)] | None = None
    """Where traces go; default <checkpoint_dir>/<experiment_name>/profile."""

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(no_bool_numbers))

    @model_validator(mode="after")
    def _combinations(self) -> Any:
        if self.checkpoint_frequency == 0:
            raise ValueError("checkpoint_frequency: must be > 0, or -1 to disable periodic checkpoints")
        if self.async_checkpoint and not self.use_torch_distributed_ckpt:
            raise ValueError(
                "async_checkpoint: needs use_torch_distributed_ckpt (vanilla saves are synchronous)"
            )
        if self.profile and self.profile_step_start > self.profile_step_end:
            raise ValueError(f"profile_step_end: must be >= profile_step_start ({self.profile_step_start})")
        return self

    def to_worker_args(self) -> list[str]:
        """The worker command line for these fields (``--kebab-case value``, ``--flag``/``--no-flag``).

        ``None`` values are left out (the worker's default applies).
        """
        args: list[str] = []
        for name, value in self.model_dump().items():
            flag = "--" + name.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + name.replace("_", "-"))
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: must be finite")
            else:
                args += [flag, str(value)]
        return args
