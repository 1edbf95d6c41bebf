"""Render the sbatch script of one attempt: a pure function of the job spec and admin settings.

``render_sbatch`` reads nothing but the Jinja2 template (``deploy/sbatch.sh.j2``) and returns the
script text; golden files in ``tests/controller/scheduler/golden/`` pin its output.

Defence in depth against shell injection and against run fields that change what runs. The run
was checked when it was created; here the same rules (``shared.run_rules``, the one validator)
are applied again with the controller's current policy, and then:

* values on ``#SBATCH`` lines (sbatch parses those itself, not the shell) must match a conservative
  ASCII alphabet without whitespace, quotes or ``%`` (sbatch expands ``%j`` and friends in file
  names), otherwise ``ValueError`` names the field; a constraint may also use SLURM's ``& | ( ) [ ] *``;
* extra sbatch options are written in the canonical form sbatch resolves them to
  (``--out=x`` would be ``--output=x``, and is refused), never as the user spelled them; a user's
  ``--exclude`` is merged with the run's exclusion list (``JobSpec.exclude``) into one line;
* the user's environment passes the deny-list and the allow-list again; every exported value,
  path and worker argument goes through ``shlex.quote``; secret values are not in the script at
  all: it sources a 0600 file the backend writes next to it (``env_file``).

Only the admin's prologue lines (controller settings, trusted) are copied verbatim.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import jinja2

from controller.scheduler.base import JobSpec
from shared import envvars, run_rules
from shared.env_policy import ENV_NAME_RE
from shared.run_rules import RunPolicy

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "sbatch.sh.j2"
"""The template shipped in the repository; admins may point the backend at a copy of their own."""

BACKSTOP_SIGNALS = frozenset({"USR1", "USR2", "TERM", "INT", "HUP"})
"""Signals the batch shell may forward to the ranks (``--signal=B:<sig>@<lead>``)."""

_SRUN_OPT_RE = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:=+@/-]+)?$", re.ASCII)
_SECRET_ENV = frozenset({"PYRECOVER_TOKEN"})
CONTROLLER_ENV = envvars.CONTROLLER_SET


def time_limit_minutes(seconds: int) -> int:
    """sbatch ``--time`` in whole minutes: rounded up (never less walltime than asked), at least 1."""
    return max(1, math.ceil(seconds / 60))


def _sbatch_value(what: str, value: object) -> str:
    try:
        return run_rules.sbatch_token(what, value)
    except run_rules.RuleViolation as exc:
        raise ValueError(f"{what} {exc}") from None


def _sbatch_lines(spec: JobSpec, signal: str, policy: RunPolicy) -> list[str]:
    res = spec.resources
    extra = run_rules.resources(res, policy)  # the run's own fields, by the API's rules
    lines = [
        f"--job-name={_sbatch_value('job name', spec.job_name)}",
        f"--nodes={int(res.nodes)}",
        f"--ntasks-per-node={int(res.ntasks_per_node)}",
    ]
    if res.gpus_per_node > 0:
        lines.append(f"--gpus-per-node={int(res.gpus_per_node)}")
    lines.append(f"--cpus-per-task={int(res.cpus_per_task)}")
    if res.mem is not None:
        lines.append(f"--mem={res.mem}")
    lines.append(f"--time={time_limit_minutes(res.time_limit_seconds)}")
    for field in ("partition", "account", "qos"):
        value = getattr(res, field)
        if value is not None:
            lines.append(f"--{field}={value}")
    if res.constraint is not None:
        lines.append(f"--constraint={res.constraint}")
    lines += [
        f"--chdir={_sbatch_value('workdir', spec.workdir)}",
        # One pair of files per attempt, appended to (an admin's requeue must not truncate them).
        f"--output={_sbatch_value('stdout path', spec.stdout)}",
        f"--error={_sbatch_value('stderr path', spec.stderr)}",
        "--open-mode=append",
    ]
    if res.signal_lead_seconds > 0:
        lines.append(f"--signal=B:{signal}@{int(res.signal_lead_seconds)}")
    # The controller owns resubmission: a requeue would rerun the script under the same job id,
    # behind the controller's back.
    lines.append("--no-requeue")
    if spec.dependency is not None:
        dep = str(spec.dependency)
        if not dep.isascii() or not dep.isdigit():
            raise ValueError(f"dependency must be a numeric SLURM job id, got {dep!r}")
        lines.append(f"--dependency=afterany:{dep}")
    lines += [option.render() for option in extra if option.name != "exclude"]
    # One --exclude: the user's own hosts (extra_sbatch_args) and the run's exclusion list together
    # (sbatch would keep only the last of two).
    excluded = [str(o.value) for o in extra if o.name == "exclude" and o.value]
    excluded += [_sbatch_value("excluded host", host) for host in spec.exclude]
    if excluded:
        lines.append(f"--exclude={','.join(dict.fromkeys(excluded))}")
    return lines


def _env_lines(spec: JobSpec, token_file: Path | None) -> list[tuple[str, str]]:
    merged = dict(spec.env)
    if token_file is not None:
        merged[envvars.TOKEN_FILE] = str(token_file)
    out: list[tuple[str, str]] = []
    for name in sorted(merged):
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} is not a valid identifier")
        if name in _SECRET_ENV:
            raise ValueError(
                f"{name} must not be exported into a job: pass the token by file ({envvars.TOKEN_FILE})"
            )
        value = merged[name]
        if "\x00" in value:
            raise ValueError(f"environment variable {name!r} contains a NUL byte")
        out.append((name, shlex.quote(value)))
    # Every other variable is the run's own, checked by run_rules.resources with the allow-list.
    foreign = sorted(set(merged) - CONTROLLER_ENV - set(spec.resources.env))
    if foreign:
        raise ValueError(f"environment variables {foreign} are neither the run's nor the controller's own")
    return out


def _srun_options(spec: JobSpec, srun_args: Sequence[str]) -> list[str]:
    res = spec.resources
    options = [
        f"--nodes={int(res.nodes)}",
        f"--ntasks-per-node={int(res.ntasks_per_node)}",
        # srun stopped inheriting --cpus-per-task from sbatch in Slurm 22.11: always pass it.
        f"--cpus-per-task={int(res.cpus_per_task)}",
        "--kill-on-bad-exit=1",
        "--export=ALL",
    ]
    for arg in srun_args:
        if not _SRUN_OPT_RE.fullmatch(arg):
            raise ValueError(f"srun argument {arg!r} must look like '--option' or '--option=value'")
        options.append(arg)
    return options


@lru_cache(maxsize=8)
def _template(path: Path) -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        # Shell, not HTML: the renderer quotes; autoescaping would corrupt the script.
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(path.name)


def render_sbatch(
    spec: JobSpec,
    *,
    prologue: Sequence[str] = (),
    srun_args: Sequence[str] = (),
    token_file: Path | None = None,
    env_file: Path | None = None,
    signal: str = "USR1",
    template: Path = DEFAULT_TEMPLATE,
    policy: RunPolicy | None = None,
) -> str:
    """The sbatch script for ``spec``.

    ``prologue``: admin lines (``module load ...``, ``source /opt/venv/bin/activate``) run before
    the worker, verbatim. ``srun_args``: extra ``--option[=value]`` flags for ``srun``.
    ``token_file``: exported as ``PYRECOVER_TOKEN_FILE`` (the spec's env may carry it instead).
    ``env_file``: a 0600 file of the secret variables (``shared.envfile``) the script sources.
    ``signal``: the backstop signal sent ``signal_lead_seconds`` before the time limit.
    ``policy``: the controller's allow-lists (``Settings.run_policy``); default: the documented ones.
    Raises ``ValueError`` (naming the field) for any value that cannot be rendered safely.
    """
    policy = policy or RunPolicy(check_roots=False)
    if signal not in BACKSTOP_SIGNALS:
        raise ValueError(f"signal must be one of {sorted(BACKSTOP_SIGNALS)}, got {signal!r}")
    if not spec.argv:
        raise ValueError("argv must not be empty")
    for line in prologue:
        if "\n" in line or "\r" in line:
            raise ValueError("each prologue entry must be a single line")
    lead = spec.resources.signal_lead_seconds
    try:
        sbatch_lines = _sbatch_lines(spec, signal, policy)
    except run_rules.RuleViolation as exc:
        raise ValueError(f"{exc.field}: {exc}") from None
    return _template(template).render(
        run_id=int(spec.run_id),
        run_name=_sbatch_value("run name", spec.run_name),
        attempt=int(spec.attempt),
        sbatch_lines=sbatch_lines,
        prologue=list(prologue),
        env=_env_lines(spec, token_file),
        env_file=shlex.quote(str(env_file)) if env_file is not None else None,
        signal=signal,
        signal_spec=f"B:{signal}@{lead}" if lead > 0 else "(none)",
        srun_options=_srun_options(spec, srun_args),
        argv=[shlex.quote(str(a)) for a in spec.argv],
    )
