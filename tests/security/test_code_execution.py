"""A ``sitecustomize.py`` marker pushed through every denied variable and through ``--export`` never
runs: through a real ``pyrecover serve`` on the local backend, and on the real local SLURM.

The marker directory holds ``sitecustomize.py`` and ``usercustomize.py`` (Python imports them at
start-up from any directory on its path) and ``env.sh`` (bash runs it for ``BASH_ENV``/``ENV``); each
writes a file into ``marks/``. Positive controls show the marker does run when the variable
reaches a process (a plain subprocess here; a raw ``sbatch --export`` job on SLURM), so a test
that sees no mark proves something. Then, through the controller:

1. every denied name (one per deny-list entry, under the most permissive allow-list an admin can
   set, ``env_allow=["*"]``), as a value and as a declared secret, and ``--export=...`` in
   ``extra_sbatch_args``: 422 naming the field, nothing stored;
2. the same variable in a run written straight into the database (around the API): the
   reconciler refuses to start it (``shared/run_rules.py`` again, in the job builder);
3. an allowed run really starts a job (so jobs run in this set-up), and still no mark appears.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from controller.db import make_engine
from controller.db.models import Run
from controller.services import first_admin
from shared.env_policy import DENIED_ENV

MARK = "import os, pathlib; pathlib.Path({marks!r}, 'ran-%d' % os.getpid()).write_text('ran')\n"
EXPORTS = [
    "--export=ALL,PYTHONPATH={m}",
    "--export=ALL,BASH_ENV={m}/env.sh",
    "--exp=ALL,LD_PRELOAD={m}/x.so",
    "--export-file={m}/env",
    "--export PYTHONPATH={m}",
]


def marker_dir(tmp: Path) -> tuple[Path, Path]:
    m, marks = tmp / "m", tmp / "marks"
    m.mkdir()
    marks.mkdir()
    for name in ("sitecustomize.py", "usercustomize.py"):
        (m / name).write_text(MARK.format(marks=str(marks)))
    (m / "env.sh").write_text(f"touch {marks}/ran-bash-$$\n")
    (m / "env").write_text(f"PYTHONPATH={m}\n")
    return m, marks


def denied_examples() -> list[str]:
    names = {p.replace("*", "X").replace("?", "4") for p, _ in DENIED_ENV}
    return sorted(names | {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "LD_PRELOAD", "BASH_ENV", "ENV"})


def value_for(name: str, m: Path) -> str:
    return f"{m}/env.sh" if name in ("BASH_ENV", "ENV") else str(m)


def test_the_marker_runs_when_a_variable_reaches_a_process(tmp_path: Path) -> None:
    """Positive control: without pyrecover in the way, these variables do run the marker."""
    m, marks = marker_dir(tmp_path)
    subprocess.run([sys.executable, "-c", "pass"], env={"PYTHONPATH": str(m)}, check=True)
    subprocess.run(
        ["bash", "-c", "true"], env={"BASH_ENV": f"{m}/env.sh", "PATH": "/usr/bin:/bin"}, check=True
    )
    assert len(list(marks.iterdir())) == 2


def _body(name: str, scheduler: str, **resources: Any) -> dict[str, Any]:
    return {
        "name": name,
        "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
        "resources": {"scheduler": scheduler, "time_limit": "1m"} | resources,
        "policy": {"max_failures_without_progress": 1, "backoff_seconds": 0},
    }


def _store_around_the_api(database_url: str, name: str, body: dict[str, Any]) -> int:
    """A run row as a bypassing writer (or an older version) could leave it."""
    engine = make_engine(database_url)
    with Session(engine) as s:
        owner = first_admin(s)
        run = Run(
            name=name,
            owner_id=owner.id,
            spec=body,
            scheduler=body["resources"]["scheduler"],
            training_steps=10,
        )
        s.add(run)
        s.commit()
        run_id = int(run.id)
    engine.dispose()
    return run_id


def push_everything(ctl: Any, m: Path, scheduler: str) -> int:
    """Phase 1: every denied name and every --export form through the API; returns the count."""
    refused = 0
    headers = {"Authorization": f"Bearer {ctl.token}"}

    def refuse(body: dict[str, Any], field: str) -> None:
        nonlocal refused
        r = httpx.post(f"{ctl.url}/api/v1/runs", json=body, headers=headers, timeout=30)
        assert r.status_code == 422, (body["resources"], r.text)
        assert any(d["field"].startswith(field) for d in r.json()["detail"]), r.text
        refused += 1

    for i, name in enumerate(denied_examples()):
        refuse(_body(f"env-{i}", scheduler, env={name: value_for(name, m)}), "resources.env")
        refuse(_body(f"sec-{i}", scheduler, secret_env=[name]), "resources.secret_env")
    for i, arg in enumerate(EXPORTS):
        refuse(
            _body(f"exp-{i}", scheduler, extra_sbatch_args=[arg.format(m=m)]), "resources.extra_sbatch_args"
        )
    assert ctl.items("/runs") == [], "a refused run was stored"
    return refused


def bypass_and_allowed(ctl: Any, m: Path, scheduler: str, probe_out: Path) -> None:
    """Phases 2 and 3."""
    stored = [
        _store_around_the_api(ctl.db_url, "around-pythonpath", _body("around-pythonpath", scheduler,
                                                                    env={"PYTHONPATH": str(m)})),
        _store_around_the_api(ctl.db_url, "around-export", _body("around-export", scheduler,
                                                                extra_sbatch_args=[f"--export=ALL,PYTHONPATH={m}"])),
    ]  # fmt: skip
    allowed = ctl.api("POST", "/runs", json=_body("allowed", scheduler, env={"OMP_NUM_THREADS": "1"}))["id"]
    for run_id in stored:
        run = ctl.wait_terminal(run_id, 120)
        assert run["state"] == "FAILED" and ctl.items(f"/runs/{run_id}/jobs") == [], run
        assert "resources." in (run["last_error"] or ""), run
    deadline = time.monotonic() + 240
    while not list(probe_out.glob("argv.*")):
        assert time.monotonic() < deadline, "the allowed run's job never ran"
        time.sleep(1)
    ctl.wait_terminal(allowed, 240)


PROBE = """#!/bin/bash
# Stands in for the worker's python: records that the job ran and what it received.
printf '%s\\0' "$@" > {out}/argv.$$
env -0 > {out}/env.$$
"""


def _controller(tmp_path: Path, probe_out: Path) -> Any:
    from tests.integration.local_harness import Controller

    probe_out.mkdir()
    probe = tmp_path / "probe-python"
    probe.write_text(PROBE.format(out=probe_out))
    probe.chmod(probe.stat().st_mode | stat.S_IXUSR)
    ctl = Controller(tmp_path / "ctl")
    ctl.data_dir.mkdir()
    ctl.env["PYRECOVER_WORKER_PYTHON"] = str(probe)
    ctl.env["PYRECOVER_AUTH_REQUIRED"] = "true"
    ctl.env["PYRECOVER_ENV_ALLOW"] = json.dumps(["*"])  # the most an admin can allow
    ctl.env["PYRECOVER_SBATCH_ALLOW"] = json.dumps(["exclusive", "gres", "comment"])
    ctl.env["PYRECOVER_INPUTS_VISIBLE"] = "[]"  # the probe worker reads no data: none is made
    ctl.db_url = f"sqlite:///{ctl.data_dir / 'pyrecover.db'}"
    return ctl


def _report(what: str, refused: int, marks: Path, probe_out: Path) -> None:
    assert list(marks.iterdir()) == [], f"the marker ran: {list(marks.iterdir())}"
    env = dict(
        item.split("=", 1)
        for p in probe_out.glob("env.*")
        for item in p.read_bytes().decode().split("\0")
        if "=" in item
    )
    assert "PYTHONPATH" not in env and "BASH_ENV" not in env
    print(f"\n{what}: {refused} hostile runs refused (422), 2 written around the API never started, "
          f"1 allowed job ran; the marker never ran")  # fmt: skip


@pytest.mark.slow
def test_the_marker_never_runs_on_the_local_backend(tmp_path: Path) -> None:
    m, marks = marker_dir(tmp_path)
    probe_out = tmp_path / "probe"
    ctl = _controller(tmp_path, probe_out)
    ctl.setup()
    ctl.start()
    try:
        refused = push_everything(ctl, m, "local")
        bypass_and_allowed(ctl, m, "local", probe_out)
    finally:
        ctl.stop()
    _report("local backend", refused, marks, probe_out)


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM CLI (sinfo/sbatch) not installed: run deploy/slurm-local/up.sh"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    if out.returncode != 0 or not set(out.stdout.split()) & {"idle", "mixed", "allocated", "completing"}:
        return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()!r})"
    return None


def _wait_for_files(directory: Path, limit: float) -> list[Path]:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        found = list(directory.iterdir())
        if found:
            return found
        time.sleep(1)
    return []


@pytest.mark.integration
@pytest.mark.slow
def test_the_marker_never_runs_on_slurm(tmp_path: Path) -> None:
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    m, marks = marker_dir(tmp_path)
    # Positive control on this cluster: a raw sbatch with --export=ALL,PYTHONPATH=<m> runs the marker.
    control = tmp_path / "control.sh"
    control.write_text(f"#!/bin/bash\n{sys.executable} -c pass\n")
    argv = ["sbatch", "--parsable", f"--export=ALL,PYTHONPATH={m}", f"--output={tmp_path}/control.out"]
    subprocess.run([*argv, str(control)], check=True, capture_output=True, text=True, timeout=30)
    assert _wait_for_files(marks, 120), "the raw sbatch control job never ran the marker"
    for mark in marks.iterdir():
        mark.unlink()
    # The victim of the '--out=/any/file --open=truncate'.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    probe_out = tmp_path / "probe"
    ctl = _controller(tmp_path, probe_out)
    ctl.setup()
    ctl.start()
    try:
        refused = push_everything(ctl, m, "slurm")
        headers = {"Authorization": f"Bearer {ctl.token}"}
        args = [f"--out={victim}", "--open=truncate"]
        r = httpx.post(f"{ctl.url}/api/v1/runs", json=_body("trunc", "slurm", extra_sbatch_args=args),
                       headers=headers, timeout=30)  # fmt: skip
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "resources.extra_sbatch_args"
        around = _store_around_the_api(
            ctl.db_url, "around-trunc", _body("around-trunc", "slurm", extra_sbatch_args=args)
        )
        bypass_and_allowed(ctl, m, "slurm", probe_out)
        run = ctl.wait_terminal(around, 120)
        assert run["state"] == "FAILED" and ctl.items(f"/runs/{around}/jobs") == []
    finally:
        ctl.stop()
    assert victim.read_text() == "precious\n", "the victim file was truncated"
    env = {
        item.split("=", 1)[0] for p in probe_out.glob("env.*") for item in p.read_bytes().decode().split("\0")
    }
    assert "SLURM_JOB_ID" in env, "the allowed job ran under SLURM"
    _report("real SLURM", refused + 1, marks, probe_out)
