"""The worker's training configuration: the shared training fields plus the per-attempt ones, its
command line, and its manifest form.

The run-level fields are declared once in ``shared.training.TrainingFields`` (the API's
``TrainingSpec`` extends the same class); ``TrainConfig`` adds what describes one attempt. Flag
names keep the seed script's spelling (``--tokenizer-name-or-path``, ``--experiment-name``, ...),
and every field is accepted exactly as ``TrainingFields.to_worker_args()`` renders it
(``--kebab-case value``, ``--flag`` / ``--no-flag``).
"""

from __future__ import annotations

import argparse
import math
import typing
from typing import Any, Literal

from pydantic import ValidationError, field_validator, model_validator

from shared.names import validate_run_name
from shared.training import IMMUTABLE_FIELDS, PER_ATTEMPT_FIELDS, TrainingFields
from worker.seed_flags import add_seed_flags, apply_seed_flags

IMMUTABLE_KEYS = IMMUTABLE_FIELDS
"""Fields a resume may not change (``shared.training.IMMUTABLE_FIELDS``); the checkpoint manager checks."""
PER_ATTEMPT_KEYS = PER_ATTEMPT_FIELDS
MAX_DATA_POSITION = 2**62
"""Largest ``--data-skip-to`` accepted (a sample count; fits every integer column on the way)."""


class ConfigError(ValueError):
    """A configuration value was rejected; the message names the field."""


def _message(exc: ValidationError) -> str:
    """``field: why (got value)`` for the first error; cross-field rules name their field themselves."""
    err = exc.errors()[0]
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    loc = ".".join(str(part) for part in err.get("loc", ()))
    if not loc:
        return msg
    got = err.get("input")
    return f"{loc}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})")


class TrainConfig(TrainingFields):
    """Everything one training attempt needs; validated at construction (``ConfigError`` names the field)."""

    experiment_name: str = "default-exp"
    """Run name: the checkpoint subfolder and loss-CSV location."""
    resume_from_checkpoint: str = "latest"
    """'latest' resumes from the newest committed checkpoint if one exists, else starts fresh; 'none'
    starts fresh (and refuses if committed checkpoints exist); anything else is a checkpoint path."""
    deadline: float | None = None
    """Deadline override in Unix seconds (else PYRECOVER_DEADLINE, SLURM_JOB_END_TIME, squeue)."""
    stop_after_steps: int | None = None
    """Stop gracefully (final checkpoint, exit 0) after N steps in this attempt."""
    allow_restart_from_scratch: bool = False
    """When no committed checkpoint verifies, start from step 0 even though the run directory holds
    the run's past (quarantined or unverifiable checkpoints, loss.csv rows); without it the worker
    refuses (exit code 7). Nothing of that past is deleted."""
    data_skip_to: int | None = None
    """After resuming, move the data stream forward to where CHUNKS samples have been consumed (the
    cursor's chunks_consumed in a 'diverged' report): the window before a divergence is skipped, not
    trained on. Needs a checkpoint to resume from, at or behind that position, and a whole number of
    global batches from it."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_message(exc)) from None

    @field_validator("experiment_name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        return validate_run_name(v)

    @field_validator("resume_from_checkpoint")
    @classmethod
    def _resume(cls, v: str) -> str:
        if not v:
            raise ValueError("use 'latest', 'none' or a checkpoint path")
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError("must be Unix seconds > 0")
        return v

    @field_validator("data_skip_to")
    @classmethod
    def _skip_to(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_DATA_POSITION:
            raise ValueError(f"must be a sample count in [0, {MAX_DATA_POSITION}]")
        return v

    @model_validator(mode="after")
    def _per_attempt(self) -> TrainConfig:
        if self.data_skip_to is not None and self.resume_from_checkpoint == "none":
            raise ValueError(
                "data_skip_to: needs a checkpoint to resume from (not --resume-from-checkpoint none)"
            )
        return self

    @field_validator("stop_after_steps")
    @classmethod
    def _stop_after(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0")
        return v

    def check_world_size(self, world_size: int) -> None:
        """The global batch must split evenly over the ranks, and each rank's share into micro-batches."""
        if self.batch_size % world_size:
            raise ConfigError(
                f"batch_size: the global batch ({self.batch_size}) must be divisible by the world size "
                f"({world_size})"
            )
        local = self.batch_size // world_size
        if local % self.gradient_accumulation_steps:
            raise ConfigError(
                f"gradient_accumulation_steps: each rank's {local} sequences (batch_size {self.batch_size} / "
                f"world size {world_size}) do not split into {self.gradient_accumulation_steps} equal "
                f"micro-batches; batch_size must be divisible by world size × gradient_accumulation_steps "
                f"({world_size * self.gradient_accumulation_steps})"
            )

    def resolved(self, **runtime: Any) -> dict[str, Any]:
        """The config as stored in the checkpoint manifest, plus runtime facts (world size, devices...).

        Per-attempt controls (deadline, stop-after, what to resume from) are left out: they describe
        one attempt, not the run, and would only clutter the resume notes.
        """
        out = {name: getattr(self, name) for name in type(self).model_fields if name not in PER_ATTEMPT_KEYS}
        out.update(runtime)
        return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_ALIASES: dict[str, tuple[str, ...]] = {"experiment_name": ("--experiment_name",)}
_METAVARS: dict[str, str] = {
    "deadline": "UNIX_SECONDS",
    "data_skip_to": "CHUNKS",
    "deadline_margin": "SECONDS",
    "exit_allowance": "SECONDS",
    "deadline_refresh_seconds": "SECONDS",
}


def _scalar(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    """What argparse converts a field to, and its choices: ``int | None`` → int, ``Literal[...]`` → str."""
    candidates = (
        [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
    )
    if typing.get_origin(hint) is Literal:
        return str, tuple(str(a) for a in typing.get_args(hint))
    first = candidates[0]
    if typing.get_origin(first) is Literal:
        return str, tuple(str(a) for a in typing.get_args(first))
    if typing.get_origin(first) is typing.Annotated:
        first = typing.get_args(first)[0]
    return (first if first in (int, float, str, bool) else str), None


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one (not "(default: None)"), and the examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str = "pyrecover train") -> argparse.ArgumentParser:
    """The worker's argument parser; every config field becomes a flag whose help is its docstring."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a Llama-style model with DDP, checkpoints and a time-aware stop.",
        formatter_class=_Help,
        epilog="examples:\n"
        "  pyrecover train --dataset data/sample.parquet --tokenizer-name-or-path data/tokenizer \\\n"
        "      --model-preset tiny --training-steps 200 --experiment-name try1\n"
        "  torchrun --nproc-per-node 4 -m worker --dataset /data/fineweb \\\n"
        "      --tokenizer-name-or-path /models/tok --model-preset llama3-1b --training-steps 100000\n\n"
        "Exit codes: 0 done, or stopped cleanly after a committed checkpoint; the others: "
        "docs/architecture.md (Exit codes).",
    )
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    for name, info in TrainConfig.model_fields.items():
        required = info.is_required()
        default = None if required else info.default
        help_text = " ".join((info.description or name).split()).replace("%", "%%")
        kind, choices = _scalar(hints[name])
        names = (_flag(name), *_ALIASES.get(name, ()))
        if kind is bool:
            parser.add_argument(
                *names, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            if name == "mixed_precision":
                parser.add_argument(
                    "--pure-dtype",
                    dest=name,
                    action="store_false",
                    default=argparse.SUPPRESS,
                    help="The seed's pure-dtype mode, same as --no-mixed-precision: weights, gradients and "
                    "AdamW state all in --model-dtype.",
                )
            continue
        parser.add_argument(
            *names,
            dest=name,
            type=kind,
            default=default,
            required=required,
            choices=choices,
            metavar=_METAVARS.get(name),
            help=help_text,
        )
    add_seed_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build (and validate) the config from parsed flags; raises ConfigError naming the field."""
    return TrainConfig(**{name: getattr(args, name) for name in TrainConfig.model_fields})


def parse_config(argv: list[str]) -> TrainConfig:
    """Parse and validate a command line (argparse exits with code 2 on unknown flags)."""
    args = build_parser().parse_args(argv)
    apply_seed_flags(args)
    return config_from_args(args)
