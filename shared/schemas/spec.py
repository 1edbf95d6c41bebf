"""What a user submits: a run = training config + resources + policy (``POST /api/v1/runs``).

Everything here may end up in an sbatch script or on a worker command line, so every field is
validated at construction with a message that names the field, by the rules of
``shared.run_rules`` (the one validator the API, the job builder and the renderer share); the
admin's rules (allow-lists, path roots) are applied by ``shared.run_rules.check_run``. Every
string has a length limit, and every pattern a field must match is stated in its JSON schema.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import run_rules
from shared.gpus import gpu_memory_gib
from shared.json_numbers import no_bool_numbers
from shared.names import RUN_NAME_MAX_CHARS, RUN_NAME_PATTERN, validate_run_name
from shared.patterns import GLOB_PATTERN, MAX_TIME_LIMIT_S, PATH_PATTERN, TIME_LIMIT_PATTERN
from shared.run_rules import MAX_CONSTRAINT_CHARS, MAX_PATH_CHARS, MAX_TOKEN_CHARS
from shared.schemas.notify import NotifyTarget
from shared.training import TrainingFields, TrainingSteps
from shared.unknown_fields import refuse_unknown

_TIME_RE = re.compile(TIME_LIMIT_PATTERN, re.ASCII)
_CLOCK_RE = re.compile(r"^(?:(?P<d>[0-9]+)-)?(?:(?P<h>[0-9]+):)?(?P<m>[0-9]+):(?P<s>[0-9]+)$", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_TIME_LIMIT_MINUTES = MAX_TIME_LIMIT_S // 60
TIME_LIMIT_HELP = "a duration such as '45s', '10' (minutes), '01:00:00' or '1-00:00:00', at most 366 days"


def parse_time_limit(value: str | int) -> int:
    """A time limit in seconds (``ValueError`` for anything else).

    Accepts SLURM's forms (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``; a bare integer is
    minutes, as in ``sbatch --time``) and the short forms ``45s``, ``2m``, ``1h``, ``1d``; positive
    and at most 366 days. The text forms are exactly ``shared.patterns.TIME_LIMIT_PATTERN``.
    """
    if isinstance(value, bool):
        raise ValueError(f"time_limit must be {TIME_LIMIT_HELP}")
    if isinstance(value, int):
        if not 1 <= value <= _MAX_TIME_LIMIT_MINUTES:
            raise ValueError(f"time_limit must be between 1 and {_MAX_TIME_LIMIT_MINUTES} minutes")
        return value * 60
    if not _TIME_RE.fullmatch(value):
        raise ValueError(f"time_limit must be {TIME_LIMIT_HELP}")
    if value.isdigit():
        return int(value) * 60
    if value[-1] in _UNIT_SECONDS:
        return int(value[:-1]) * _UNIT_SECONDS[value[-1]]
    m = _CLOCK_RE.fullmatch(value)
    assert m is not None  # the pattern admits nothing else
    d, h = int(m["d"] or 0), int(m["h"] or 0)
    return ((d * 24 + h) * 60 + int(m["m"])) * 60 + int(m["s"])


def _rule(check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a ``shared.run_rules`` check inside a validator: its message, without its field name
    (pydantic adds the field's location itself)."""
    try:
        return check(*args, **kwargs)
    except run_rules.RuleViolation as exc:
        raise ValueError(str(exc)) from None


def _path_field(description: str, *, glob: bool = False) -> Any:
    return Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description=description,
        json_schema_extra={"pattern": GLOB_PATTERN if glob else PATH_PATTERN},
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return refuse_unknown(cls, data)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(no_bool_numbers))


class TrainingSpec(TrainingFields):
    """The ``training`` part of a run: every field of ``shared.training.TrainingFields``.

    Stricter than the worker's own command line where values reach a scheduler: paths may use
    only ordinary file-name characters and must lie under the controller's roots
    (``shared.run_rules.training_paths``), ``training_steps`` must be given, and warm-up may not
    outlast the run.
    """

    model_config = ConfigDict(frozen=True)

    training_steps: TrainingSteps
    """Total optimizer steps of the run (required in a run; absolute across resumptions)."""
    dataset: Annotated[
        str,
        _path_field(
            "Parquet file, directory or glob of Parquet files with a 'text' column, or a token store "
            "directory; under the controller's data roots.",
            glob=True,
        ),
    ]
    tokenizer_name_or_path: Annotated[
        str,
        _path_field(
            "Local Hugging Face tokenizer directory (under the controller's data roots), or a hub name."
        ),
    ]
    checkpoint_dir: Annotated[
        str,
        _path_field(
            "Root folder; checkpoints go to <checkpoint_dir>/<run name>/step-<N>/. Relative: below the "
            "controller's checkpoint_root (the default '.': the root itself, <checkpoint_root>/<run "
            "name>/); absolute: under its checkpoint roots."
        ),
    ] = "."
    profile_dir: (
        Annotated[
            str, _path_field("Where traces go (absolute: under the checkpoint roots); default <run>/profile.")
        ]
        | None
    ) = None

    init_from_hf: (
        Annotated[
            str,
            _path_field(
                "A Hugging Face Llama checkpoint directory (config.json + safetensors, under the "
                "controller's data roots) whose weights start a fresh run."
            ),
        ]
        | None
    ) = None

    @field_validator("tokenizer_name_or_path", "checkpoint_dir", "profile_dir", "init_from_hf")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else _rule(run_rules.safe_path, "path", v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return str(_rule(run_rules.safe_path, "dataset", v, glob=True))

    @model_validator(mode="after")
    def _warmup(self) -> TrainingSpec:
        if self.lr_warmup_steps > self.training_steps:
            raise ValueError("lr_warmup_steps must not exceed training_steps")
        return self


_Token = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TOKEN_CHARS,
        json_schema_extra={"pattern": run_rules.SBATCH_TOKEN_RE.pattern},
    ),
]


class ResourcesSpec(_Spec):
    """Where and how long each attempt runs."""

    scheduler: Literal["local", "slurm", "pyslurm"]
    time_limit: (
        Annotated[int, Field(ge=1, le=_MAX_TIME_LIMIT_MINUTES)]
        | Annotated[str, Field(max_length=32, json_schema_extra={"pattern": TIME_LIMIT_PATTERN})]
    ) = Field(description="Walltime of each attempt: '45s', '10' (minutes), '01:00:00', '1-00:00:00'.")
    nodes: Annotated[int, Field(ge=1, le=4096)] = 1
    ntasks_per_node: Annotated[
        int, Field(ge=1, le=64, description="Worker ranks per node (one per GPU).")
    ] = 1
    gpus_per_node: Annotated[int, Field(ge=0, le=64)] = 0
    cpus_per_task: Annotated[int, Field(ge=1, le=1024)] = 1
    mem: (
        Annotated[str, Field(max_length=13, json_schema_extra={"pattern": run_rules.MEM_RE.pattern})] | None
    ) = None
    partition: _Token | None = None
    account: _Token | None = None
    qos: _Token | None = None
    constraint: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_CONSTRAINT_CHARS,
                json_schema_extra={"pattern": run_rules.CONSTRAINT_RE.pattern},
            ),
        ]
        | None
    ) = None
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=run_rules.MAX_ENV_VARS,
        description=(
            "Extra environment variables for the worker: names on the controller's allow-list, never one "
            "of the hard deny-list (loader, interpreter, shell, compiler and SLURM variables)."
        ),
    )
    secret_env: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=run_rules.MAX_ENV_VARS,
        description=(
            "Names in env whose values are secret (names ending in _KEY, _TOKEN, _SECRET, _PASSWORD, "
            "_PASSWD or _CREDENTIALS are secret anyway): never stored in the database, never shown, "
            "handed to the job through a 0600 file."
        ),
    )
    extra_sbatch_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=run_rules.MAX_EXTRA_ARGS,
        description=(
            "Extra sbatch options, one per item as on an #SBATCH line ('--gres=gpu:1', '--gres gpu:1', "
            "'-w node1'), each on the controller's allow-list."
        ),
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
        return None if v is None else str(_rule(run_rules.mem, "mem", v))

    @field_validator("partition", "account", "qos")
    @classmethod
    def _tokens(cls, v: str | None) -> str | None:
        return None if v is None else _rule(run_rules.sbatch_token, "value", v, max_chars=MAX_TOKEN_CHARS)

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, v: str | None) -> str | None:
        return None if v is None else str(_rule(run_rules.constraint, "constraint", v))

    @field_validator("extra_sbatch_args")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        _rule(run_rules.extra_sbatch_args, v, allow=None)
        return v

    # The hard deny-list here; the admin's allow-list in run_rules.check_run (it needs settings).
    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        _rule(run_rules.env, v, (), allow=None)
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: list[str]) -> list[str]:
        _rule(run_rules.env, {}, v, allow=None)
        return v

    @property
    def time_limit_seconds(self) -> int:
        return parse_time_limit(self.time_limit)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


class OnDivergence(StrEnum):
    """``policy.on_divergence``: what follows an attempt that ended ``diverged``."""

    FAIL = "fail"
    """The run FAILs with the worker's message."""
    ROLLBACK = "rollback"
    """The next attempt resumes from the diverged attempt's last committed checkpoint and skips the
    data window between that checkpoint's cursor and the divergence (``--data-skip-to``)."""


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
    exclude_node_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=30 * 24 * 3600,
            description=(
                "How long a host stays on the run's exclusion list after a node failure, a hang naming it "
                "or a device fault (0: never exclude)."
            ),
        ),
    ] = 6 * 3600
    min_nodes: (
        Annotated[
            int,
            Field(
                ge=1,
                le=4096,
                description=(
                    "Fewest nodes an attempt may shrink to when exclusions leave fewer than resources.nodes "
                    "(unset: wait for the nodes instead)."
                ),
            ),
        ]
        | None
    ) = None
    heartbeat_timeout_seconds: Annotated[float, Field(ge=60, le=7 * 86_400, allow_inf_nan=False)] | None = (
        Field(
            default=None,
            description=(
                "Cancel a RUNNING attempt (ending it `hung`) after this long without a report; "
                "unset: derived from the reported step time and the longest save."
            ),
        )
    )
    on_divergence: OnDivergence = Field(
        default=OnDivergence.FAIL,
        description=(
            "What a `diverged` attempt leads to: `fail` the run, or `rollback` to its last committed "
            "checkpoint and skip the data window that preceded the divergence."
        ),
    )
    max_rollbacks: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="Rollbacks after a divergence (since the last resume) before the run FAILs."
    )
    allow_restart_from_scratch: bool = Field(
        default=False,
        description=(
            "Let the worker start from step 0 when no committed checkpoint verifies although the run "
            "directory holds its past (quarantined checkpoints, loss rows); nothing is deleted."
        ),
    )


class RunCreate(_Spec):
    """Body of ``POST /api/v1/runs``."""

    name: str = Field(
        min_length=1, max_length=RUN_NAME_MAX_CHARS, json_schema_extra={"pattern": RUN_NAME_PATTERN}
    )
    training: TrainingSpec
    resources: ResourcesSpec
    policy: PolicySpec = Field(default_factory=PolicySpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_run_name(v)

    @model_validator(mode="after")
    def _min_nodes_fit(self) -> RunCreate:
        if self.policy.min_nodes is not None and self.policy.min_nodes > self.resources.nodes:
            raise ValueError(
                f"policy.min_nodes ({self.policy.min_nodes}) must not exceed resources.nodes "
                f"({self.resources.nodes})"
            )
        return self

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
