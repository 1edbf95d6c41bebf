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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from shared.json_numbers import no_bool_numbers
from shared.unknown_fields import refuse_unknown

PRESETS = ("tiny", "small", "llama3-1b", "llama3-8b")
"""The keys of ``shared.model_shapes.PRESETS`` (a test keeps the two equal)."""
Preset = Literal["tiny", "small", "llama3-1b", "llama3-8b"]
Parallelism = Literal["ddp", "fsdp"]
Dtype = Literal["fp32", "bf16", "fp16", "fp64"]
Tracker = Literal["tensorboard", "wandb"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")
"""Experiment trackers the worker can log to (``worker.trackers``); each is an optional extra."""

EXIT_ALLOWANCE_S = 5.0
"""Default seconds the worker keeps for its exit after the final save (reporter flush, barrier,
process-group teardown). The controller's planning (the demo) budgets the same figure."""

TrainingSteps = Annotated[int, Field(gt=0, le=10_000_000)]
"""Total optimizer steps of a run (absolute: a resumed run continues up to this number)."""

PRESET_LEARNING_RATES: dict[str, float] = {"tiny": 3e-3, "small": 1e-3, "llama3-1b": 3e-4, "llama3-8b": 3e-4}
"""The peak learning rate of a run that names none. Small models tolerate, and need, a higher rate
to learn visibly within a short run: at 3e-4 the tiny preset went from 9.48 to 9.43 in 60 steps,
above ln(vocab)."""


def preset_learning_rate(preset: object) -> float | None:
    """The default peak learning rate of ``preset`` (``None``: not a preset)."""
    return PRESET_LEARNING_RATES.get(preset) if isinstance(preset, str) else None


IMMUTABLE_FIELDS: tuple[str, ...] = (
    "model_preset",
    "sequence_length",
    "dataset",
    "dataset_mode",
    "tokenizer_name_or_path",
    "seed",
    "model_dtype",
    "mixed_precision",
    "batch_size",
    "experiment_name",
    "init_from_hf",
)
"""Changing any of these between an attempt and the checkpoint it resumes from would silently train
a different model or on a different token stream: the worker's checkpoint manager refuses such a
resume. Everything else (steps, learning rate, cadence, world size, parallelism, gradient accumulation,
activation checkpointing, ...) may change between attempts: none of those changes which update a step
makes beyond the order of float additions."""

FROZEN_FIELDS: tuple[str, ...] = (*IMMUTABLE_FIELDS, "checkpoint_dir")
"""What ``PATCH /runs/{id}`` (``pyrecover extend``) refuses: the immutable fields, and the checkpoint
root (a run's past lives there: a new root would start it over)."""

PER_ATTEMPT_FIELDS: tuple[str, ...] = (
    "deadline",
    "stop_after_steps",
    "resume_from_checkpoint",
    "data_skip_to",
    "allow_restart_from_scratch",
)
"""Worker fields that describe one attempt, not the run (left out of the checkpoint's config)."""

_FINITE = {"allow_inf_nan": False}


def _comma_list(value: Any) -> Any:
    """``"tensorboard,wandb"`` (the worker's flag) → a tuple; lists and tuples pass unchanged."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class TrainingFields(BaseModel):
    """Every run-level training setting. Field names match the worker's flags (``--learning-rate``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)

    dataset: Annotated[str, Field(min_length=1)]
    """Parquet file, directory or glob of Parquet files with a 'text' column, or a token store directory."""
    dataset_mode: Literal["packed", "padded"] = "packed"
    """'packed': documents are concatenated and cut into sequences, no token is padding (Parquet or
    a token store). 'padded': the seed's map-style ParquetDataset, one document per sample padded or
    truncated to sequence_length + 1 tokens, wrapping around after training_steps × batch_size
    samples, batched by CollatorForCLM (padding is never a target); one Parquet file."""
    tokenizer_name_or_path: Annotated[str, Field(min_length=1)]
    """Local Hugging Face tokenizer directory (or a hub name on a networked cluster)."""
    training_steps: TrainingSteps = 1000
    """Total optimizer steps of the run (absolute: a resumed run continues up to this number)."""
    model_preset: Preset = "tiny"
    """Model size preset (shared.model_shapes.PRESETS)."""
    sequence_length: Annotated[int, Field(ge=2, le=131_072)] = 128
    """Tokens per training sequence (also the model's RoPE table length)."""
    batch_size: Annotated[int, Field(gt=0, le=65_536)] = 8
    """GLOBAL batch size in sequences per optimizer step; must be divisible by the world size times
    gradient_accumulation_steps."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=65_536)] = 1
    """Micro-batches per optimizer step: each rank splits its share of the global batch
    (batch_size / world size sequences) into this many micro-batches and runs forward/backward on one
    at a time, synchronising gradients only after the last. The update is the one-big-batch update
    (the loss is normalised by the token count of the whole global batch); memory for activations
    shrinks with the micro-batch."""
    parallelism: Parallelism = "ddp"
    """'ddp': every rank holds the whole model, gradients are all-reduced (DistributedDataParallel).
    'fsdp': parameters, gradients and optimizer state are sharded over the ranks (FSDP2 fully_shard
    on each transformer block and on the root), which divides their memory by the world size. A run
    may switch between the two, or change its world size, at a resume."""
    activation_checkpointing: bool = False
    """Keep only each transformer block's input during the forward pass and recompute the block in
    the backward pass: far less activation memory for about one more forward pass of compute."""
    learning_rate: Annotated[float, Field(gt=0, le=10, **_FINITE)] | None = None
    """Peak AdamW learning rate; unset: the preset's (tiny 3e-3, small 1e-3, llama3-1b and
    llama3-8b 3e-4: ``PRESET_LEARNING_RATES``), filled in when the fields are validated, so a
    stored run and a checkpoint always name the rate they trained with."""
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
    hang_detection: bool = True
    """Watch every rank for progress (worker.watchdog): a phase that runs past its limit dumps every
    thread's stack into the log, reports ``hung`` naming the stalled rank, and exits with code 5."""
    hang_factor: Annotated[float, Field(ge=1.5, le=1000, **_FINITE)] = 3.0
    """A step or save may take this many times its expected duration (the p99 of this attempt's steps,
    the longest measured save) before it counts as hung."""
    hang_floor_seconds: Annotated[float, Field(ge=1, le=86_400, **_FINITE)] = 60.0
    """No limit is shorter than this: a phase is hung after max(hang_factor x expected, this)."""
    hang_startup_seconds: Annotated[float, Field(ge=1, le=86_400, **_FINITE)] = 900.0
    """The limit where nothing was measured yet: start-up, the checkpoint load, the first steps
    (compilation, warm-up) and the first save."""
    max_skipped_steps: Annotated[int, Field(ge=1, le=100_000)] = 10
    """Updates with a non-finite loss or gradient norm are skipped; this many in a row end the attempt
    as diverged (exit code 6), without committing the state."""
    loss_spike_factor: Annotated[float, Field(ge=0, le=1e6, **_FINITE)] = 5.0
    """End the attempt as diverged when a step's loss exceeds this multiple of the running median of
    the last loss_spike_window losses (once half the window is filled); 0 disables it."""
    loss_spike_window: Annotated[int, Field(ge=4, le=100_000)] = 100
    """Steps in the running median that loss spikes are measured against."""
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
    init_from_hf: Annotated[str, Field(min_length=1)] | None = None
    """Local Hugging Face checkpoint of a Llama model (a directory with config.json and .safetensors
    weights) to start from. The model's shape then comes from its config.json (model_preset is not
    used); a fresh start loads its weights, a resume continues from the run's own checkpoints. The
    directory must stay readable for the whole run (every attempt reads its config.json)."""
    trackers: Annotated[
        tuple[Tracker, ...],
        BeforeValidator(_comma_list),
        Field(max_length=2, json_schema_extra={"maxItems": 2, "uniqueItems": True}),
    ] = ()
    """Experiment trackers rank 0 logs the progress metrics to: tensorboard, wandb (W&B offline unless
    WANDB_MODE=online). Every attempt appends to the same tracker run, kept in
    <checkpoint_dir>/<experiment_name>/trackers/. On the command line: a comma-separated list."""

    @field_validator("trackers")
    @classmethod
    def _distinct_trackers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if v.count(name) > 1:
                raise ValueError(f"{name!r} is listed twice")
        return v

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return refuse_unknown(cls, data)

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate`` as validated: always set (an unset one became the preset's)."""
        if self.learning_rate is None:  # only a model built without validation
            raise ValueError("learning_rate: not set")
        return self.learning_rate

    @model_validator(mode="before")
    @classmethod
    def _preset_learning_rate(cls, data: Any) -> Any:
        """An unset learning rate becomes the preset's (an unknown preset is its own field's error)."""
        if isinstance(data, dict) and data.get("learning_rate") is None:
            rate = preset_learning_rate(data.get("model_preset", cls.model_fields["model_preset"].default))
            if rate is not None:
                return {**data, "learning_rate": rate}
        return data

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(no_bool_numbers))

    @model_validator(mode="after")
    def _combinations(self) -> Any:
        if self.checkpoint_frequency == 0:
            raise ValueError("checkpoint_frequency: must be > 0, or -1 to disable periodic checkpoints")
        if self.async_checkpoint and not self.use_torch_distributed_ckpt:
            raise ValueError(
                "async_checkpoint: needs use_torch_distributed_ckpt (vanilla saves are synchronous)"
            )
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps: the global batch ({self.batch_size}) must split into "
                f"{self.gradient_accumulation_steps} equal micro-batches on every rank"
            )
        if self.parallelism == "fsdp" and self.mixed_precision and self.model_dtype == "fp16":
            raise ValueError(
                "model_dtype: fp16 mixed precision needs a loss scaler, which is not supported with "
                "parallelism 'fsdp'; use bf16 (or --no-mixed-precision for pure fp16)"
            )
        if self.profile and self.profile_step_start > self.profile_step_end:
            raise ValueError(f"profile_step_end: must be >= profile_step_start ({self.profile_step_start})")
        return self

    def to_worker_args(self) -> list[str]:
        """The worker command line for these fields (``--kebab-case value``, ``--flag``/``--no-flag``).

        ``None`` values and empty lists are left out (the worker's default applies); lists are
        rendered comma-separated (``--trackers tensorboard,wandb``).
        """
        args: list[str] = []
        for name, value in self.model_dump().items():
            flag = "--" + name.replace("_", "-")
            if value is None or value == ():
                continue
            if isinstance(value, tuple | list):
                args += [flag, ",".join(str(v) for v in value)]
                continue
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + name.replace("_", "-"))
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: must be finite")
            else:
                args += [flag, str(value)]
        return args
