"""The worker's training configuration: one typed dataclass, its command line, and its manifest form.

Flag names keep the seed script's spelling (``--tokenizer-name-or-path``, ``--experiment-name``, ...),
and every field of ``shared.schemas.spec.TrainingSpec`` is accepted exactly as
``TrainingSpec.to_worker_args()`` renders it (``--kebab-case value``, ``--flag`` / ``--no-flag``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal

from shared.names import validate_run_name

PRESET_CHOICES = ("tiny", "small", "llama3-1b", "llama3-8b")
DTYPE_CHOICES = ("fp32", "bf16", "fp16", "fp64")
Dtype = Literal["fp32", "bf16", "fp16", "fp64"]

# Changing any of these between an attempt and the checkpoint it resumes from would silently train a
# different model or on a different token stream, so the checkpoint manager refuses the resume.
IMMUTABLE_KEYS: tuple[str, ...] = (
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
PER_ATTEMPT_KEYS: tuple[str, ...] = ("deadline", "stop_after_steps", "resume_from_checkpoint")
# Everything else (training_steps, learning_rate, logging, checkpoint cadence, deadline, world size...)
# may change on resume; the checkpoint manager notes what changed.


class ConfigError(ValueError):
    """A configuration value was rejected; the message names the field."""


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one training attempt needs; validated at construction."""

    dataset: str
    """Parquet file, directory or glob of Parquet files with a 'text' column."""
    tokenizer_name_or_path: str
    """Local Hugging Face tokenizer directory (or a hub name on a networked cluster)."""
    sequence_length: int = 128
    """Tokens per training sequence (also the model's RoPE table length)."""
    batch_size: int = 8
    """GLOBAL batch size in sequences per optimizer step; must be divisible by the world size."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate."""
    lr_warmup_steps: int = 10
    """Linear warm-up steps: the factor is (s+1)/(warmup+1) for s < warmup."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """After warm-up: keep the peak (constant) or decay with a cosine to 10% of it at the last step."""
    training_steps: int = 1000
    """Total optimizer steps of the run (absolute: a resumed run continues up to this number)."""
    logging_frequency: int = 5
    """Log metrics at step 1 and every N steps."""
    grad_max_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    model_dtype: Dtype = "bf16"
    """Compute dtype. With mixed precision: autocast dtype over fp32 master weights (GPU only)."""
    mixed_precision: bool = True
    """True: fp32 weights + autocast to model_dtype on GPU, plain fp32 on CPU. False: the seed's
    pure-dtype mode (weights, grads and optimizer state all in model_dtype)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    fused_optimizer: bool = False
    """Use the fused AdamW kernel where the device supports it."""
    seed: int = 1234
    """Seed of python, numpy and torch RNGs (model init and anything random in training)."""
    model_preset: Literal["tiny", "small", "llama3-1b", "llama3-8b"] = "tiny"
    """Model size preset from worker.model.PRESETS."""
    checkpoint_dir: str = "checkpoints"
    """Root folder; checkpoints go to <checkpoint_dir>/<experiment_name>/step-<N>/."""
    checkpoint_frequency: int = 50
    """Save every N steps; -1 disables periodic saves (final saves still happen)."""
    resume_from_checkpoint: str = "latest"
    """'latest' resumes from the newest committed checkpoint if one exists, else starts fresh; 'none'
    starts fresh (and refuses if committed checkpoints exist); anything else is a checkpoint path."""
    experiment_name: str = "default-exp"
    """Run name: the checkpoint subfolder and loss-CSV location."""
    use_torch_distributed_ckpt: bool = True
    """DCP (sharded, every rank writes) instead of vanilla torch.save by rank 0."""
    async_checkpoint: bool = False
    """Periodic DCP saves in the background; the final save is always synchronous."""
    keep_last_k: int = 3
    """Retention: keep the newest k committed checkpoints (k >= 2)."""
    keep_every_n: int = 0
    """Retention: additionally keep every checkpoint whose step is a multiple of n; 0 disables."""
    timeaware_checkpointing: bool = True
    """Stop with a final checkpoint before the deadline (walltime)."""
    deadline: float | None = None
    """Deadline override in Unix seconds (else PYRECOVER_DEADLINE, SLURM_JOB_END_TIME, squeue)."""
    deadline_margin: float = 15.0
    """Seconds of slack kept between the end of the final save and the deadline."""
    exit_allowance: float = 5.0
    """Seconds reserved after the final save for the exit (reporter flush, rank barrier, process-group
    teardown); the time-aware stop budgets them, and a teardown step that overruns them is cut off."""
    deadline_refresh_seconds: float = 60.0
    """How often the deadline sources are re-read (an admin may change the time limit)."""
    stop_after_steps: int | None = None
    """Stop gracefully (final checkpoint, exit 0) after N steps in this attempt."""
    log_loss_to_csv: bool = False
    """Rank 0 writes step,loss for every step to <checkpoint_dir>/<experiment_name>/loss.csv."""
    profile: bool = False
    """Profile steps [profile_step_start, profile_step_end] with torch.profiler (and nsys ranges on GPU)."""
    profile_step_start: int = 10
    """First profiled step."""
    profile_step_end: int = 12
    """Last profiled step."""
    profile_dir: str | None = None
    """Where traces go; default <checkpoint_dir>/<experiment_name>/profile."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")

        for name in ("dataset", "tokenizer_name_or_path", "checkpoint_dir"):
            if not getattr(self, name):
                raise bad(name, "must not be empty")
        positive = ("sequence_length", "batch_size", "training_steps", "logging_frequency", "keep_last_k")
        for name in positive:
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if self.sequence_length < 2:
            raise bad("sequence_length", "must be >= 2")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise bad("learning_rate", "must be a finite number > 0")
        if self.lr_warmup_steps < 0:
            raise bad("lr_warmup_steps", "must be >= 0")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "must be 'constant' or 'cosine'")
        if not (math.isfinite(self.grad_max_norm) and self.grad_max_norm >= 0):
            raise bad("grad_max_norm", "must be >= 0 (0 disables clipping)")
        if self.model_dtype not in DTYPE_CHOICES:
            raise bad("model_dtype", f"must be one of {', '.join(DTYPE_CHOICES)}")
        if self.model_preset not in PRESET_CHOICES:
            raise bad("model_preset", f"must be one of {', '.join(PRESET_CHOICES)}")
        if not 0 <= self.seed < 2**32:
            raise bad("seed", "must be in [0, 2**32)")
        if self.checkpoint_frequency == 0 or self.checkpoint_frequency < -1:
            raise bad("checkpoint_frequency", "must be > 0, or -1 to disable periodic checkpoints")
        if self.keep_last_k < 2:
            raise bad("keep_last_k", "must be >= 2 (the newest and the one resumed from)")
        if self.keep_every_n < 0:
            raise bad("keep_every_n", "must be >= 0 (0 disables)")
        if not self.resume_from_checkpoint:
            raise bad("resume_from_checkpoint", "use 'latest', 'none' or a checkpoint path")
        try:
            validate_run_name(self.experiment_name)
        except ValueError as exc:
            raise bad("experiment_name", str(exc)) from None
        if self.deadline is not None and not (math.isfinite(self.deadline) and self.deadline > 0):
            raise bad("deadline", "must be Unix seconds > 0")
        if not (math.isfinite(self.deadline_margin) and self.deadline_margin >= 0):
            raise bad("deadline_margin", "must be >= 0 seconds")
        if not (math.isfinite(self.exit_allowance) and 0 < self.exit_allowance <= 600):
            raise bad("exit_allowance", "must be in (0, 600] seconds")
        if not (math.isfinite(self.deadline_refresh_seconds) and self.deadline_refresh_seconds >= 0):
            raise bad("deadline_refresh_seconds", "must be >= 0 seconds")
        if self.stop_after_steps is not None and self.stop_after_steps <= 0:
            raise bad("stop_after_steps", "must be > 0")
        if self.async_checkpoint and not self.use_torch_distributed_ckpt:
            raise bad("async_checkpoint", "needs --use-torch-distributed-ckpt (vanilla is synchronous)")
        if self.profile and not 0 < self.profile_step_start <= self.profile_step_end:
            raise bad("profile_step_end", f"must be >= profile_step_start ({self.profile_step_start}) > 0")

    def check_world_size(self, world_size: int) -> None:
        """The global batch must split evenly over the ranks."""
        if self.batch_size % world_size:
            raise ConfigError(
                f"batch_size: the global batch ({self.batch_size}) must be divisible by the world size "
                f"({world_size})"
            )

    def resolved(self, **runtime: Any) -> dict[str, Any]:
        """The config as stored in the checkpoint manifest, plus runtime facts (world size, devices...).

        Per-attempt controls (deadline, stop-after, what to resume from) are left out: they describe
        one attempt, not the run, and would only clutter the resume notes.
        """
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in PER_ATTEMPT_KEYS}
        out.update(runtime)
        return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_CHOICES: dict[str, tuple[str, ...]] = {
    "lr_schedule": ("constant", "cosine"),
    "model_dtype": DTYPE_CHOICES,
    "model_preset": PRESET_CHOICES,
}
_ALIASES: dict[str, tuple[str, ...]] = {"experiment_name": ("--experiment_name",)}
_METAVARS: dict[str, str] = {
    "deadline": "UNIX_SECONDS",
    "deadline_margin": "SECONDS",
    "exit_allowance": "SECONDS",
}


def _field_type(f: dataclasses.Field[Any]) -> type:
    """The scalar type argparse converts to: ``int | None`` → int, ``Literal[...]`` → str."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if typing.get_origin(hint) is Literal:
        return str
    candidates = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return candidates[0] if candidates[0] in (int, float, str, bool) else str


def build_parser(prog: str = "pyrecover train") -> argparse.ArgumentParser:
    """The worker's argument parser; every dataclass field becomes a flag whose help is its docstring."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a Llama-style model with DDP, checkpoints and a time-aware stop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    docs = _field_docs()
    for f in fields(TrainConfig):
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        help_text = docs.get(f.name, f.name)
        if f.name == "mixed_precision":
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                "--mixed-precision", dest="mixed_precision", action="store_true", default=True, help=help_text
            )
            group.add_argument(
                "--pure-dtype",
                dest="mixed_precision",
                action="store_false",
                help="The seed's pure-dtype mode: weights, gradients and AdamW state all in --model-dtype.",
            )
            continue
        names = (_flag(f.name), *_ALIASES.get(f.name, ()))
        if _field_type(f) is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        parser.add_argument(
            *names,
            dest=f.name,
            type=_field_type(f),
            default=default,
            required=required,
            choices=_CHOICES.get(f.name),
            metavar=_METAVARS.get(f.name),
            help=help_text,
        )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build (and validate) the config from parsed flags; raises ConfigError naming the field."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values)


def parse_config(argv: list[str]) -> TrainConfig:
    """Parse and validate a command line (argparse exits with code 2 on unknown flags)."""
    return config_from_args(build_parser().parse_args(argv))


def _field_docs() -> dict[str, str]:
    """Field docstrings (the string literal right after each field) from the class source."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split()).replace("%", "%%")
    return docs
