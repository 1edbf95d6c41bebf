"""Secret environment values of a run: out of the database, out of every reply, into 0600 files.

A value is secret when its name is in ``resources.secret_env`` or ends like a credential
(``shared.env_policy.is_secret``). When a run is created (``controller/services/runs.py:create_run``)

* the stored spec keeps the secret *names* (``secret_env``, completed with every secret name
  the env held) and drops their values (``stored_spec``);
* the values go to ``<run dir>/secret.env`` (0600, ``shared.envfile``), written once; every
  attempt reads them from there (``controller/reconciler/jobspec.py:build_job_spec``) and the
  backend hands them to the job without putting them in the script (SLURM: a 0600 file next to
  the script that it sources; local: the process environment).

``redacted_spec`` is what an API reply or the dashboard shows of a stored spec: the same drop,
applied again so that a row written before secrets were split (or by a bypassing caller) never
shows a secret-looking value either.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shared import envfile
from shared.env_policy import is_secret
from shared.paths import SECRET_ENV_FILE_NAME, run_dir
from shared.schemas import RunCreate


def split(body: RunCreate) -> tuple[dict[str, Any], dict[str, str]]:
    """(the spec to store, the secret values) for a new run."""
    resources = body.resources
    declared = list(resources.secret_env)
    secrets = {k: v for k, v in resources.env.items() if is_secret(k, declared)}
    spec = body.model_dump(mode="json")
    spec["resources"]["env"] = {k: v for k, v in resources.env.items() if k not in secrets}
    spec["resources"]["secret_env"] = sorted(set(declared) | set(secrets))
    return spec, secrets


def secret_file(data_dir: Path, run_id: int) -> Path:
    return run_dir(Path(data_dir).absolute(), run_id) / SECRET_ENV_FILE_NAME


def write_secrets(data_dir: Path, run_id: int, values: dict[str, str]) -> Path:
    """Write the run's secret values (always, even none: a file left by a rolled-back create of the
    same id must not survive into this run)."""
    return envfile.write(secret_file(data_dir, run_id), values)


def read_secrets(data_dir: Path, run_id: int, names: list[str]) -> dict[str, str]:
    """The run's secret values for ``names`` (those the stored spec lists); none if there is no file."""
    path = secret_file(data_dir, run_id)
    if not names or not path.exists():
        return {}
    values = envfile.read(path)
    return {k: v for k, v in values.items() if k in names}


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as users may see it: no value of a secret variable."""
    resources = spec.get("resources")
    if not isinstance(resources, dict) or not isinstance(resources.get("env"), dict):
        return spec
    declared = list(resources.get("secret_env") or [])
    env = resources["env"]
    hidden = {k for k in env if is_secret(k, declared)}
    if not hidden:
        return spec
    out = copy.deepcopy(spec)
    out["resources"]["env"] = {k: v for k, v in env.items() if k not in hidden}
    out["resources"]["secret_env"] = sorted(set(declared) | hidden)
    return out
