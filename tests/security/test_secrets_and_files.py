"""Secrets and files: secret env values are never in a reply, the dashboard, the database or a
script, only in 0600 files; what the controller writes is readable by its own account alone.

The issue's cases: any user could read another run's env values (an API key); the database,
logs and sbatch scripts were 0644 in 0755 folders; env secrets sat in the database and its WAL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.db.models import Run
from controller.reconciler.jobspec import build_job_spec
from controller.scheduler.local import LocalScheduler
from controller.scheduler.slurm import SlurmScheduler
from controller.services.secrets import secret_file
from shared import envfile
from shared.env_policy import DEFAULT_ENV_ALLOW
from tests.controller.api.conftest import Api, make_api, run_body

SECRETS = {"HF_TOKEN": "hf_SECRET_value_1", "LAB_PASSPHRASE": "pass-SECRET-2", "WANDB_API_KEY": "wk-SECRET-3"}
ALLOW = [*DEFAULT_ENV_ALLOW, "LAB_PASSPHRASE", "WANDB_API_KEY"]


def _body(name: str = "secret-run") -> dict[str, Any]:
    body = run_body(name)
    body["resources"] = {
        "scheduler": "slurm",
        "time_limit": "10",
        "env": {"OMP_NUM_THREADS": "2", **SECRETS},
        "secret_env": ["LAB_PASSPHRASE"],  # its name does not say so: declared secret
    }
    return body


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, env_allow=ALLOW, auth_required=False)


def _assert_no_secret(text: str, where: str) -> None:
    for value in SECRETS.values():
        assert value not in text, f"{where} shows a secret value"


def test_secret_values_are_in_no_reply_and_not_on_the_dashboard(api: Api) -> None:
    created = api.client.post("/api/v1/runs", json=_body(), headers=api.h())
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    _assert_no_secret(created.text, "POST /runs")
    env = created.json()["spec"]["resources"]
    assert env["env"] == {"OMP_NUM_THREADS": "2"}
    assert env["secret_env"] == sorted(SECRETS), "the names are shown, redacted"
    for path in (
        "/api/v1/runs",
        f"/api/v1/runs/{run_id}",
        f"/api/v1/runs/{run_id}/events",
        "/",
        f"/runs/{run_id}",
    ):
        r = api.client.get(path, headers=api.h())
        assert r.status_code == 200, (path, r.text[:300])
        _assert_no_secret(r.text, path)
    page = api.client.get(f"/runs/{run_id}").text
    assert "HF_TOKEN" in page and "OMP_NUM_THREADS" in page


def test_a_row_that_still_holds_a_secret_value_is_redacted_too(api: Api) -> None:
    """A spec stored before secrets were split (or by a caller that bypassed the service)."""
    run_id = api.create("legacy")["id"]
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        spec = json.loads(json.dumps(run.spec))
        spec["resources"]["env"] = {"HF_TOKEN": SECRETS["HF_TOKEN"]}
        run.spec = spec
        s.commit()
    for path in (f"/api/v1/runs/{run_id}", "/api/v1/runs", f"/runs/{run_id}"):
        _assert_no_secret(api.client.get(path, headers=api.h()).text, path)


def test_secret_values_never_reach_the_database_or_its_wal(api: Api) -> None:
    r = api.client.post("/api/v1/runs", json=_body(), headers=api.h())
    assert r.status_code == 201
    db = Path(api.settings.database_url.removeprefix("sqlite:///"))
    files = [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    assert files
    for path in files:
        data = path.read_bytes()
        for value in SECRETS.values():
            assert value.encode() not in data, f"{path.name} holds a secret value in clear"
    # ... they are in the run's own 0600 file, written once.
    path = secret_file(api.settings.data_dir, r.json()["id"])
    assert envfile.read(path) == SECRETS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_next_attempt_gets_them_from_the_file_and_the_script_never_holds_them(api: Api) -> None:
    run_id = api.client.post("/api/v1/runs", json=_body(), headers=api.h()).json()["id"]
    with api.factory() as s:
        row = s.get(Run, run_id)
        assert row is not None
        spec = row.spec_model()
    for attempt in (1, 2):
        job = build_job_spec(
            settings=api.settings,
            run_id=run_id,
            run_name=spec.name,
            attempt=attempt,
            training=spec.training,
            resources=spec.resources,
            token="pyr_w_t",
        )
        assert dict(job.secret_env) == SECRETS
        scheduler = SlurmScheduler(api.settings)
        script = scheduler.write_script(job)
        _assert_no_secret(script.read_text(), "the sbatch script")
        env_file = scheduler.env_file_path(job)
        assert envfile.read(env_file) == SECRETS
        for path in (script, env_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_local_backend_hands_them_to_the_process_and_keeps_its_logs_private(
    api: Api, tmp_path: Path
) -> None:
    run_id = api.client.post("/api/v1/runs", json=_body("local-secret"), headers=api.h()).json()["id"]
    with api.factory() as s:
        row = s.get(Run, run_id)
        assert row is not None
        spec = row.spec_model()
    dump = tmp_path / "env.json"
    job = build_job_spec(
        settings=api.settings,
        run_id=run_id,
        run_name=spec.name,
        attempt=1,
        training=spec.training,
        resources=spec.resources.model_copy(update={"scheduler": "local"}),
        token="pyr_w_t",
    )
    code = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w')); print('logged')"
    job = dataclasses.replace(job, argv=[sys.executable, "-c", code])
    sched = LocalScheduler(tmp_path / "local-jobs", kill_wait_s=1)
    job_id = sched.submit(job)
    for _ in range(200):
        if sched.poll([job_id])[job_id].state.finished:
            break
        time.sleep(0.1)
    env = json.loads(dump.read_text())
    for name, value in SECRETS.items():
        assert env[name] == value
    for log in (job.stdout, job.stderr):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    assert "logged" in job.stdout.read_text()


@pytest.mark.slow
def test_a_served_controller_keeps_every_file_to_its_own_account(tmp_path: Path) -> None:
    """``pyrecover serve`` (umask 0077 at start-up) and the job it starts, on the local backend."""
    from tests.integration.local_harness import Controller, wait_for

    probe = tmp_path / "probe-python"
    probe.write_text(
        f"#!{sys.executable}\nimport os, json\njson.dump(dict(os.environ), open('env.json', 'w'))\n"
    )
    probe.chmod(0o755)
    data = tmp_path / "ctl"
    data.mkdir(mode=0o755)  # as an older version left it
    ctl = Controller(data)
    ctl.env["PYRECOVER_WORKER_PYTHON"] = str(probe)
    ctl.env["PYRECOVER_ENV_ALLOW"] = json.dumps(ALLOW)
    ctl.env["PYRECOVER_INPUTS_VISIBLE"] = "[]"  # the probe worker reads no data: none is made
    ctl.setup()
    ctl.start()
    try:
        body = _body("served")
        body["resources"]["scheduler"] = "local"
        run_id = ctl.api("POST", "/runs", json=body)["id"]
        env_json = data / "runs" / str(run_id) / "env.json"
        wait_for(env_json.exists, 60, "the job to run")
        worker_env = json.loads(wait_for(lambda: env_json.read_text() or None, 10, "env.json"))
        assert all(worker_env[k] == v for k, v in SECRETS.items()), "the job got its secrets"
        ctl.api("POST", f"/runs/{run_id}/cancel")
    finally:
        ctl.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    loose = []
    for root, dirs, files in os.walk(data):
        for name in dirs + files:
            path = Path(root) / name
            if path.name.startswith("controller-") and path.suffix == ".log":
                continue  # the test harness's own capture of the controller's output
            if stat.S_IMODE(path.lstat().st_mode) & 0o077:
                loose.append(f"{path.relative_to(data)} {stat.S_IMODE(path.lstat().st_mode):o}")
    assert not loose, loose
    checked = sum(len(f) + len(d) for _, d, f in os.walk(data))
    print(f"\nserved controller: {checked} files and folders under the data dir, none readable by others")
