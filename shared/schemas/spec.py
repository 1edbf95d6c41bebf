"""What a user submits: a run = training config + resources + policy (``POST /api/v1/runs``).

Everything here may end up in an sbatch script or on a worker command line, so every field is
validated at construction with a message that names the field; the renderers still shell-quote
every value (defence in depth).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.gpus import gpu_memory_gib
from shared.names import validate_run_name
from shared.schemas.notify import NotifyTarget
from shared.training import TrainingFields, TrainingSteps
from shared.unknown_fields import refuse_unknown

# Paths may contain ordinary file-name characters only: no shell metacharacters, no newlines.
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_./+@:=,-]+$")
_SAFE_GLOB_RE = re.compile(r"^[A-Za-z0-9_./+@:=,*?\[\]-]+$")
"""A dataset may be a glob (``data/*.parquet``); it reaches scripts shell-quoted, never expanded there."""
_SAFE_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.,:=+@/-]+$")  # partition, account, qos, mem ...
# SLURM feature expressions: AND '&', OR '|', matching OR '[a|b]', counts 'a*2', grouping '(...)'.
# They only ever go on an '#SBATCH --constraint=' line, which sbatch parses itself (no shell), and
# the alphabet still excludes whitespace, quotes, '$', '`', ';', '%' and newlines.
_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,:=+@/&|()\[\]*-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_SBATCH_OPT_RE = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:=+@/%-]+)?$")
_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")
_UNIT_RE = re.compile(r"^(?P<n>\d+)(?P<u>[smhd])$")
_RESERVED_ENV_PREFIXES = ("PYRECOVER_", "SLURM_")


_MAX_PATH_CHARS = 4096  # PATH_MAX; an argument past 128 KiB cannot even be exec'd (MAX_ARG_STRLEN)
_MAX_ENV_VARS = 256
_MAX_ENV_VALUE_CHARS = 32 * 1024
_MAX_EXTRA_ARGS = 64


def _check_safe_path(value: str, what: str = "path", *, glob: bool = False) -> str:
    if len(value) > _MAX_PATH_CHARS:
        raise ValueError(f"{what} must be at most {_MAX_PATH_CHARS} characters")
    pattern, extra = (_SAFE_GLOB_RE, " * ? [ ]") if glob else (_SAFE_PATH_RE, "")
    if not value or not pattern.fullmatch(value):
        raise ValueError(
            f"{what} may contain only letters, digits and _ . / + @ : = , -{extra} (got {value!r})"
        )
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"{what} must not contain '..' components")
    return value


def parse_time_limit(value: str | int) -> int:
    """Parse a time limit into seconds.

    Accepts SLURM's forms (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``; a bare integer is
    minutes, as in ``sbatch --time``) and the short forms ``45s``, ``2m``, ``1h``, ``1d``.
    """
    if isinstance(value, bool):
        raise ValueError("time_limit must be a duration such as '45s', '10' (minutes) or '01:00:00'")
    if isinstance(value, int):
        seconds = value * 60
    else:
        text = value.strip()
        if text.isdigit():
            seconds = int(text) * 60
        elif m := _UNIT_RE.fullmatch(text):
            seconds = int(m["n"]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m["u"]]
        elif m := _TIME_RE.fullmatch(text):
            d, h = int(m["d"] or 0), int(m["h"] or 0)
            seconds = ((d * 24 + h) * 60 + int(m["m"])) * 60 + int(m["s"])
        else:
            raise ValueError("time_limit must be a duration such as '45s', '10' (minutes) or '01:00:00'")
    if seconds <= 0:
        raise ValueError("time_limit must be positive")
    if seconds > 366 * 86400:
        raise ValueError("time_limit must be at most 366 days")
    return seconds


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return refuse_unknown(cls, data)


class TrainingSpec(TrainingFields):
    """The ``training`` part of a run: every field of ``shared.training.TrainingFields``.

    Stricter than the worker's own command line where values reach a scheduler: paths may use
    only ordinary file-name characters, ``training_steps`` must be given, and warm-up may not
    outlast the run.
    """

    model_config = ConfigDict(frozen=True)

    training_steps: TrainingSteps
    """Total optimizer steps of the run (required in a run; absolute across resumptions)."""

    @field_validator("tokenizer_name_or_path", "checkpoint_dir", "profile_dir", "init_from_hf")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else _check_safe_path(v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check_safe_path(v, glob=True)

    @model_validator(mode="after")
    def _warmup(self) -> TrainingSpec:
        if self.lr_warmup_steps > self.training_steps:
            raise ValueError("lr_warmup_steps must not exceed training_steps")
        return self


class ResourcesSpec(_Spec):
    """Where and how long each attempt runs."""

    scheduler: Literal["local", "slurm", "pyslurm"]
    time_limit: str | int = Field(
        description="Walltime of each attempt: '45s', '10' (minutes), '01:00:00', '1-00:00:00'."
    )
    nodes: Annotated[int, Field(ge=1, le=4096)] = 1
    ntasks_per_node: Annotated[
        int, Field(ge=1, le=64, description="Worker ranks per node (one per GPU).")
    ] = 1
    gpus_per_node: Annotated[int, Field(ge=0, le=64)] = 0
    cpus_per_task: Annotated[int, Field(ge=1, le=1024)] = 1
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the worker."
    )
    extra_sbatch_args: list[str] = Field(
        default_factory=list, description="Extra '--option=value' sbatch flags."
    )
    signal_lead_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    gpu_type: str | None = Field(
        default=None,
        description="The GPU each rank gets, for the memory plan (a name from shared/gpus.py, e.g. "
        "'h100-80gb'); only checked, never passed to the scheduler.",
    )
    gpu_memory: Annotated[float, Field(gt=0, le=4096, allow_inf_nan=False)] | None = Field(
        default=None, description="Memory of each GPU in GiB, for the memory plan; overrides gpu_type's."
    )

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, v: str | int) -> str | int:
        parse_time_limit(v)
        return v

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, v: str | None) -> str | None:
        if v is None:
            return None
        gpu_memory_gib(v)  # unknown names are refused, naming the known ones
        return v.strip().lower()

    @model_validator(mode="after")
    def _gpus_named(self) -> ResourcesSpec:
        if (self.gpu_type is not None or self.gpu_memory is not None) and self.gpus_per_node == 0:
            field = "gpu_type" if self.gpu_type is not None else "gpu_memory"
            raise ValueError(f"{field}: names a GPU but gpus_per_node is 0")
        return self

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not _MEM_RE.fullmatch(v):
            raise ValueError("mem must look like '16G', '512M' or '4000'")
        return v

    @field_validator("partition", "account", "qos")
    @classmethod
    def _tokens(cls, v: str | None) -> str | None:
        if v is not None and not _SAFE_TOKEN_RE.fullmatch(v):
            raise ValueError("may contain only letters, digits and _ . , : = + @ / -")
        return v

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 1024 or not _CONSTRAINT_RE.fullmatch(v)):
            raise ValueError(
                "must be a SLURM feature expression (e.g. 'a100&ib' or '[rack1|rack2]') of at most 1024 "
                "characters: letters, digits and _ . , : = + @ / - & | ( ) [ ] *"
            )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > _MAX_ENV_VARS:
            raise ValueError(f"at most {_MAX_ENV_VARS} environment variables")
        for key, value in v.items():
            if len(key) > 256 or len(value) > _MAX_ENV_VALUE_CHARS:
                raise ValueError(
                    f"environment variable names are at most 256 characters, values at most "
                    f"{_MAX_ENV_VALUE_CHARS} ({key[:40]!r} is longer)"
                )
            if not _ENV_NAME_RE.fullmatch(key):
                raise ValueError(f"environment variable name {key!r} is not a valid identifier")
            if key.startswith(_RESERVED_ENV_PREFIXES):
                raise ValueError(
                    f"environment variable {key!r} is reserved (PYRECOVER_* and SLURM_* are set by pyrecover)"
                )
            if "\n" in value or "\x00" in value:
                raise ValueError(f"environment variable {key!r} must not contain newlines or NUL bytes")
        return v

    @field_validator("extra_sbatch_args")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        if len(v) > _MAX_EXTRA_ARGS:
            raise ValueError(f"at most {_MAX_EXTRA_ARGS} extra sbatch arguments")
        for arg in v:
            if len(arg) > 1024:
                raise ValueError("each extra sbatch argument must be at most 1024 characters")
            if not _SBATCH_OPT_RE.fullmatch(arg):
                raise ValueError(
                    f"extra sbatch argument {arg!r} must look like '--option' or '--option=value'"
                )
        return v

    @property
    def time_limit_seconds(self) -> int:
        return parse_time_limit(self.time_limit)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


class PolicySpec(_Spec):
    """How hard the controller tries."""

    max_attempts: Annotated[int, Field(ge=1, le=10_000)] = 100
    max_failures_without_progress: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="Consecutive attempts that commit no new checkpoint before the run is FAILED.",
        ),
    ] = 3
    backoff_seconds: Annotated[
        float,
        Field(
            ge=0, le=3600, description="Base delay before resubmitting after a failure; doubles each time."
        ),
    ] = 5.0
    prequeue_successor: bool = Field(
        default=True,
        description=(
            "Queue the next attempt with --dependency=afterany as soon as the worker announces its stop."
        ),
    )
    notify: Annotated[list[NotifyTarget], Field(max_length=16)] = Field(
        default_factory=list,
        description="Webhooks told about this run: [{url, events}] (events default to all of them).",
    )


class RunCreate(_Spec):
    """Body of ``POST /api/v1/runs``."""

    name: str
    training: TrainingSpec
    resources: ResourcesSpec
    policy: PolicySpec = Field(default_factory=PolicySpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_run_name(v)

    @model_validator(mode="after")
    def _batch_divides(self) -> RunCreate:
        training, world = self.training, self.resources.world_size
        if training.batch_size % world:
            raise ValueError(
                f"training.batch_size ({training.batch_size}) must be divisible by the number of ranks "
                f"(nodes × ntasks_per_node = {world})"
            )
        accumulation = training.gradient_accumulation_steps
        if training.batch_size % (world * accumulation):
            raise ValueError(
                f"training.gradient_accumulation_steps ({accumulation}) must divide each rank's share of "
                f"the batch (training.batch_size {training.batch_size} / {world} ranks = "
                f"{training.batch_size // world} sequences)"
            )
        return self
