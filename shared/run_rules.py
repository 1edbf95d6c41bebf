"""The one validator of what a run may ask for: every rule a run field must pass, as functions the
API, the job builder and the sbatch renderer all call.

Two kinds of rule:

* hard rules, true on every controller: alphabets of values that reach an ``#SBATCH`` line, the
  environment deny-list (``shared.env_policy``), sbatch options read as sbatch reads them and the
  options never allowed (``shared.sbatch_options``), no ``..`` in paths. ``ResourcesSpec`` and
  ``TrainingSpec`` apply these while parsing (``policy=None``), so a body that breaks one is a
  422 naming the field before anything else runs;
* the admin's rules (``RunPolicy``, built from the controller settings): the environment and
  sbatch allow-lists, and the roots that dataset, tokenizer, checkpoint and profile paths must lie
  under. ``check_run`` applies both kinds; the API calls it on every new run
  (``controller/services/runs.py:create_run``), ``controller/reconciler/jobspec.py:build_job_spec``
  and ``controller/scheduler/slurm_render.py:render_sbatch`` call the same functions again on what
  they are about to start, so a rule tightened after a run was stored still holds.

Every failure is a ``RuleViolation`` (a ``ValueError``) whose ``field`` names the value the way
request validation does (``resources.extra_sbatch_args[1]``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from shared import env_policy, sbatch_options
from shared.env_policy import DEFAULT_ENV_ALLOW
from shared.patterns import GLOB_PATTERN, PATH_PATTERN
from shared.sbatch_options import DEFAULT_SBATCH_ALLOW, SbatchOption

if TYPE_CHECKING:
    from shared.schemas.spec import ResourcesSpec, RunCreate, TrainingSpec

MAX_ENV_VARS = 256
MAX_ENV_VALUE_CHARS = 32 * 1024
MAX_EXTRA_ARGS = 64
MAX_PATH_CHARS = 4096  # PATH_MAX; an argument past 128 KiB cannot even be exec'd (MAX_ARG_STRLEN)
MAX_TOKEN_CHARS = 256
MAX_CONSTRAINT_CHARS = 1024

# re.ASCII everywhere: Python's \d and \w match other scripts' digits and letters ('١٢G').
SBATCH_TOKEN_RE = re.compile(r"^[A-Za-z0-9_./+@:=,-]+$", re.ASCII)
"""A value on an ``#SBATCH`` line (partition, account, qos, mem, job name, paths): sbatch reads
those lines itself; no whitespace, quotes, ``$``, `````, ``;``, ``%`` (sbatch expands ``%j``) or newlines."""
# SLURM feature expressions: AND '&', OR '|', matching OR '[a|b]', counts 'a*2', grouping '(...)'.
# They only go on an '#SBATCH --constraint=' line, which sbatch parses itself (no shell).
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,:=+@/&|()\[\]*-]+$", re.ASCII)
MEM_RE = re.compile(r"^[0-9]{1,12}[KMGT]?$", re.ASCII)
SAFE_PATH_RE = re.compile(PATH_PATTERN, re.ASCII)
"""Ordinary file-name characters, no '..' component (``shared.patterns.PATH_PATTERN``)."""
SAFE_GLOB_RE = re.compile(GLOB_PATTERN, re.ASCII)
_PATH_ALPHABET = re.compile(r"^[A-Za-z0-9_./+@:=,*?\[\]-]*$", re.ASCII)


class RuleViolation(ValueError):
    """A run field breaks a rule; ``field`` names it (``resources.env``, ``training.dataset``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, kw_only=True)
class RunPolicy:
    """The admin's rules (``controller.settings.Settings.run_policy`` builds it)."""

    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    sbatch_allow: tuple[str, ...] = DEFAULT_SBATCH_ALLOW
    data_roots: tuple[Path, ...] = ()
    """Dataset and tokenizer paths must lie under one of these (absolute)."""
    checkpoint_roots: tuple[Path, ...] = ()
    """Checkpoint and profile directories must lie under one of these (absolute)."""
    input_base: Path = Path("/")
    """What relative dataset and tokenizer paths are taken against (the controller's directory)."""
    checkpoint_base: Path = Path("/")
    """What a relative ``checkpoint_dir`` is taken against (``Settings.checkpoint_root``)."""
    check_roots: bool = True
    """False only where no roots apply (rendering a script in a unit test)."""


# ------------------------------------------------------------------------------ values
def sbatch_token(field: str, value: object, *, max_chars: int = MAX_PATH_CHARS) -> str:
    """``value`` if it may stand on an ``#SBATCH`` line as one word, else ``RuleViolation``."""
    text = str(value)
    if len(text) > max_chars:
        raise RuleViolation(field, f"must be at most {max_chars} characters")
    if not SBATCH_TOKEN_RE.fullmatch(text):
        raise RuleViolation(
            field, f"{text[:80]!r} may contain only ASCII letters, digits and _ . / + @ : = , -"
        )
    return text


def constraint(field: str, value: str) -> str:
    if len(value) > MAX_CONSTRAINT_CHARS or not CONSTRAINT_RE.fullmatch(value):
        raise RuleViolation(
            field,
            f"must be a SLURM feature expression (e.g. 'a100&ib' or '[rack1|rack2]') of at most "
            f"{MAX_CONSTRAINT_CHARS} characters: ASCII letters, digits and _ . , : = + @ / - & | ( ) [ ] *",
        )
    return value


def mem(field: str, value: str) -> str:
    if not MEM_RE.fullmatch(value):
        raise RuleViolation(field, "must look like '16G', '512M' or '4000' (ASCII digits, then K, M, G or T)")
    return value


def safe_path(field: str, value: str, *, glob: bool = False) -> str:
    """A path that may reach a script and a command line: bounded, ordinary characters, no ``..``."""
    if len(value) > MAX_PATH_CHARS:
        raise RuleViolation(field, f"must be at most {MAX_PATH_CHARS} characters")
    pattern, extra = (SAFE_GLOB_RE, " * ? [ ]") if glob else (SAFE_PATH_RE, "")
    if pattern.fullmatch(value) and value:
        return value
    if ".." in value.split("/") and _PATH_ALPHABET.fullmatch(value):
        raise RuleViolation(field, "must not contain '..' components")
    raise RuleViolation(
        field, f"may contain only ASCII letters, digits and _ . / + @ : = , -{extra} (got {value[:80]!r})"
    )


# ------------------------------------------------------------------------------ env
def env(values: Mapping[str, str], secret_env: Iterable[str] = (), *, allow: Iterable[str] | None) -> None:
    """The run's environment: names (deny-list, then ``allow`` unless ``None``) and values."""
    field = "resources.env"
    if len(values) > MAX_ENV_VARS:
        raise RuleViolation(field, f"at most {MAX_ENV_VARS} environment variables")
    allow = None if allow is None else tuple(allow)
    for name, value in values.items():
        try:
            env_policy.check_env_name(name, allow)
        except ValueError as exc:
            raise RuleViolation(field, str(exc)) from None
        if len(value) > MAX_ENV_VALUE_CHARS:
            raise RuleViolation(field, f"the value of {name!r} is over {MAX_ENV_VALUE_CHARS} characters")
        if any(c in value for c in "\n\r\x00"):
            raise RuleViolation(field, f"the value of {name!r} must not contain newlines or NUL bytes")
    declared = list(secret_env)
    if len(declared) > MAX_ENV_VARS:
        raise RuleViolation("resources.secret_env", f"at most {MAX_ENV_VARS} names")
    for name in declared:
        try:
            env_policy.check_env_name(name, allow)
        except ValueError as exc:
            raise RuleViolation("resources.secret_env", str(exc)) from None


# ------------------------------------------------------------------------------ sbatch options
def extra_sbatch_args(args: Sequence[str], *, allow: Iterable[str] | None) -> list[SbatchOption]:
    """The options sbatch would read from ``args``, each never-forbidden and (``allow``) allowed."""
    field = "resources.extra_sbatch_args"
    if len(args) > MAX_EXTRA_ARGS:
        raise RuleViolation(field, f"at most {MAX_EXTRA_ARGS} extra sbatch arguments")
    try:
        options = sbatch_options.parse(args)
        sbatch_options.check(options, allow)
    except ValueError as exc:
        raise RuleViolation(field, str(exc)) from None
    return options


# ------------------------------------------------------------------------------ paths
def _under(path: Path, roots: Sequence[Path]) -> bool:
    """Lexically under a root, and, where the path exists, with its symlinks resolved too."""
    text = os.path.normpath(path)
    if not any(text == str(r) or text.startswith(str(r).rstrip("/") + "/") for r in roots):
        return False
    if not os.path.lexists(text):
        return True
    real = os.path.realpath(text)
    return any(
        real == os.path.realpath(r) or real.startswith(os.path.realpath(r).rstrip("/") + "/") for r in roots
    )


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured)"


def input_path(field: str, value: str, policy: RunPolicy) -> None:
    """A dataset or tokenizer path under ``policy.data_roots``.

    A relative path is taken against ``policy.input_base`` where it exists there (the job builder
    makes it absolute the same way); one that does not exist there resolves inside the run's own
    directory on the nodes, or is a Hugging Face hub name: neither leaves the run.
    """
    path = Path(value)
    if not path.is_absolute():
        candidate = policy.input_base / path
        if not os.path.lexists(candidate):
            return
        path = candidate
    if not _under(path, policy.data_roots):
        raise RuleViolation(
            field,
            f"{value[:200]!r} is not under the controller's data roots ({_roots_text(policy.data_roots)})",
        )


def output_dir(field: str, value: str, policy: RunPolicy, *, relative_base: Path | None) -> None:
    """A checkpoint or profile directory under ``policy.checkpoint_roots`` (relative: below
    ``relative_base``; ``None``: relative to the run's own directory, which is always fine)."""
    path = Path(value)
    if not path.is_absolute():
        if relative_base is None:
            return
        path = relative_base / path
    if not _under(path, policy.checkpoint_roots):
        raise RuleViolation(
            field,
            f"{value[:200]!r} is not under the controller's checkpoint roots "
            f"({_roots_text(policy.checkpoint_roots)})",
        )


def training_paths(training: TrainingSpec, policy: RunPolicy) -> None:
    if not policy.check_roots:
        return
    input_path("training.dataset", training.dataset, policy)
    input_path("training.tokenizer_name_or_path", training.tokenizer_name_or_path, policy)
    if training.init_from_hf is not None:  # the worker reads its config.json and safetensors
        input_path("training.init_from_hf", training.init_from_hf, policy)
    base = policy.checkpoint_base
    output_dir("training.checkpoint_dir", training.checkpoint_dir, policy, relative_base=base)
    if training.profile_dir is not None:
        output_dir("training.profile_dir", training.profile_dir, policy, relative_base=None)


# ------------------------------------------------------------------------------ whole specs
def resources(spec: ResourcesSpec, policy: RunPolicy) -> list[SbatchOption]:
    """Every rule on ``resources`` with the admin's lists; returns the parsed extra sbatch options."""
    for name in ("partition", "account", "qos"):
        value = getattr(spec, name)
        if value is not None:
            sbatch_token(f"resources.{name}", value, max_chars=MAX_TOKEN_CHARS)
    if spec.mem is not None:
        mem("resources.mem", spec.mem)
    if spec.constraint is not None:
        constraint("resources.constraint", spec.constraint)
    env(spec.env, spec.secret_env, allow=policy.env_allow)
    return extra_sbatch_args(spec.extra_sbatch_args, allow=policy.sbatch_allow)


def check_run(run: RunCreate, policy: RunPolicy) -> None:
    """Every rule, hard and the admin's, on a whole run (``RuleViolation`` for the first broken one)."""
    # The model re-checks its own hard rules: a spec built with model_copy skipped them.
    try:
        type(run).model_validate(run.model_dump(mode="json"))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RuleViolation(
            ".".join(str(part) for part in first["loc"]), str(first["msg"]).removeprefix("Value error, ")
        ) from None
    resources(run.resources, policy)
    training_paths(run.training, policy)
