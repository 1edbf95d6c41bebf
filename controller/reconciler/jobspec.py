"""What one attempt runs: the ``JobSpec`` handed to a scheduler backend.

The worker command is ``<worker_python> -m worker <training flags> --experiment-name <run name>
--resume-from-checkpoint latest`` with the run's checkpoint directory resolved to an absolute
path, so every attempt of a run resumes from the same place. The run-scoped worker token goes
into a 0600 file in the run's directory; the environment names that file, never the token.

Every path the worker sees is absolute: the worker runs in the run's directory, not in the
controller's working directory, so a relative data dir (the default ``var``), checkpoint root,
token file, dataset or tokenizer path would otherwise point somewhere else. Relative paths are
taken against the controller's working directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from controller.reconciler.decide import Rollback
from controller.scheduler.base import JobSpec, job_name_for
from controller.services.secrets import read_secrets
from controller.settings import Settings
from shared import envvars, run_rules
from shared.env_policy import is_secret
from shared.paths import TOKEN_FILE_NAME, absolute_local, attempt_log_paths, run_dir, step_dir_name
from shared.schemas import ResourcesSpec, TrainingSpec

__all__ = [
    "TOKEN_FILE_NAME",
    "absolute_inputs",
    "build_job_spec",
    "controller_url",
    "resolve_checkpoint_dir",
    "run_dir",
    "worker_argv",
    "write_token_file",
]


def controller_url(settings: Settings) -> str:
    """The URL workers report to (``Settings.public_url``, derived from the bind address if unset)."""
    return settings.public_url.rstrip("/")


def resolve_checkpoint_dir(settings: Settings, checkpoint_dir: str) -> Path:
    """Absolute checkpoint root for a run: relative paths are taken below ``settings.checkpoint_root``."""
    return settings.resolve_checkpoint_dir(checkpoint_dir)


def absolute_inputs(training: TrainingSpec) -> dict[str, str]:
    """Relative dataset, tokenizer and ``init_from_hf`` paths made absolute against the controller's cwd
    (workers run in the run's own directory).

    Relative means what ``shared.paths.looks_local`` says: a mistyped ``data/tokenizr`` becomes an
    absolute path the worker reports as missing, instead of a hub name it would try to download. A
    value that is not a local path here is left alone: a hub name (``meta-llama/Llama-3.1-8B``).
    """
    updates: dict[str, str] = {}
    for key in ("dataset", "tokenizer_name_or_path", "init_from_hf"):
        value = getattr(training, key)
        if value is None:
            continue
        if (absolute := absolute_local(str(value))) is not None:
            updates[key] = absolute
    return updates


def write_token_file(directory: Path, token: str) -> Path:
    """Write ``token`` to ``<directory>/worker.token`` with mode 0600, atomically."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / TOKEN_FILE_NAME
    tmp = directory / f".{TOKEN_FILE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # in case the file existed with wider permissions
    os.replace(tmp, path)
    return path


def worker_argv(
    settings: Settings,
    run_name: str,
    training: TrainingSpec,
    *,
    rollback: Rollback | None = None,
    allow_restart_from_scratch: bool = False,
) -> list[str]:
    """The attempt's command. Per attempt: ``--resume-from-checkpoint latest``, or after a
    divergence under ``on_divergence: rollback`` the diverged attempt's last committed checkpoint
    with ``--data-skip-to`` past the bad window; ``--allow-restart-from-scratch`` from the policy."""
    resolved = resolve_checkpoint_dir(settings, training.checkpoint_dir)
    # model_copy skips validation on purpose: the resolved paths are trusted, controller-made ones.
    updates = {"checkpoint_dir": str(resolved), **absolute_inputs(training)}
    args = training.model_copy(update=updates).to_worker_args()
    python = settings.worker_python or "python3"
    resume = ["--resume-from-checkpoint", "latest"]
    if rollback is not None:
        resume = [
            "--resume-from-checkpoint",
            step_dir_name(rollback.from_step),
            "--data-skip-to",
            str(rollback.skip_to),
        ]
    if allow_restart_from_scratch:
        resume.append("--allow-restart-from-scratch")
    return [python, "-m", "worker", *args, "--experiment-name", run_name, *resume]


def build_job_spec(
    *,
    settings: Settings,
    run_id: int,
    run_name: str,
    attempt: int,
    training: TrainingSpec,
    resources: ResourcesSpec,
    token: str,
    dependency: str | None = None,
    exclude: Sequence[str] = (),
    nodes: int | None = None,
    rollback: Rollback | None = None,
    allow_restart_from_scratch: bool = False,
) -> JobSpec:
    """The JobSpec for attempt ``attempt`` of a run; writes the run's token file as a side effect.

    ``exclude``: the run's exclusion list (``controller.reconciler.exclusions``). ``nodes``: the
    node count the exclusions leave it (``exclusions.plan_nodes``), when fewer than asked.

    The run's fields pass the controller's rules again first (``shared.run_rules``: a stored run
    meets today's allow-lists and roots, or it does not start; ``RuleViolation`` names the field).
    Secret environment values come from the run's 0600 file, never from the stored spec.
    """
    policy = settings.run_policy()
    run_rules.resources(resources, policy)
    run_rules.training_paths(training, policy)
    directory = run_dir(settings.data_dir.absolute(), run_id)
    token_file = write_token_file(directory, token)
    stdout, stderr = attempt_log_paths(directory, attempt)
    declared = list(resources.secret_env)
    public = {k: v for k, v in resources.env.items() if not is_secret(k, declared)}
    # A secret-named value still in the stored spec (a row older than the split) travels as a secret.
    secret = {k: v for k, v in resources.env.items() if k not in public}
    secret |= read_secrets(settings.data_dir, run_id, declared)
    # The backend sees the names only: no value of a secret travels in the spec it renders or logs.
    update: dict[str, object] = {"env": public, "secret_env": sorted({*declared, *secret})}
    if nodes is not None and nodes != resources.nodes:
        update["nodes"] = int(nodes)  # a shrink: the worker sees the world size it gets
    resources = resources.model_copy(update=update)
    env = {
        **public,
        envvars.PYTHON_UNBUFFERED: "1",
        envvars.CONTROLLER_URL: controller_url(settings),
        envvars.RUN_ID: str(run_id),
        envvars.ATTEMPT: str(attempt),
        envvars.TOKEN_FILE: str(token_file),
        # The walltime warning's lead: a SIGUSR1 then tightens the worker's deadline instead of
        # stopping it at once (worker.signals). A backend that sends it at another lead overrides this.
        envvars.SIGNAL_LEAD: str(resources.signal_lead_seconds),
    }
    return JobSpec(
        run_id=run_id,
        run_name=run_name,
        attempt=attempt,
        job_name=job_name_for(run_id, attempt),
        argv=worker_argv(
            settings,
            run_name,
            training,
            rollback=rollback,
            allow_restart_from_scratch=allow_restart_from_scratch,
        ),
        env=env,
        secret_env=secret,
        resources=resources,
        workdir=directory,
        stdout=stdout,
        stderr=stderr,
        dependency=dependency,
        exclude=tuple(exclude),
    )
