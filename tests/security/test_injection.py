"""Shell injection through every user-supplied field that reaches an sbatch script.

The fields are enumerated from ``RunCreate`` itself (a new string field fails
``test_every_string_field_is_attacked`` until it is added here). Each payload goes through the
real path: ``POST /api/v1/runs`` → stored spec → ``build_job_spec`` → the slurm backend's
``write_script``. The outcome must be a 422 naming the field, or a script that

* is valid bash (``bash -n``),
* carries every ``#SBATCH`` value as one whitespace- and quote-free word (sbatch parses those), and
* when *executed* by bash (with ``srun`` and ``scontrol`` replaced by recorders) passes every user
  value to the worker byte for byte and creates no marker file.

``tests/controller/scheduler/test_slurm_render.py`` attacks ``render_sbatch`` directly; this module
attacks the product from the API inwards. The integration test submits the accepted payloads to
the real local SLURM cluster through a running controller and checks the job's real environment.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from controller.db.models import Run
from controller.reconciler.jobspec import build_job_spec
from controller.scheduler.slurm import SlurmScheduler
from shared.schemas import RunCreate
from tests.controller.api.conftest import make_api
from tests.security.conftest import Api, run_body

BASH = shutil.which("bash")
MARK = "{m}"
PAYLOADS = [
    f"; touch {MARK}",
    f"$(touch {MARK})",
    f"`touch {MARK}`",
    f"' ; touch {MARK} ; '",
    f'" ; touch {MARK} ; "',
    f"x\ntouch {MARK}",
    f"x\rtouch {MARK}",
    f"&& touch {MARK}",
    f"|| touch {MARK}",
    f"| tee {MARK}",
    f"& touch {MARK} &",
    f"> {MARK}",
    f"${{IFS}}touch${{IFS}}{MARK}",
    f'\\"; touch {MARK}; #',
    f"$'\\x3b' touch {MARK}",
    f"a&touch&{MARK}",  # only characters a constraint may hold: accepted there, inert on #SBATCH
    f"a|tee|{MARK}",
]
# Where each string-accepting field of RunCreate gets the payload. "env.<key>" puts it in a key.
FIELDS = [
    "name",
    "training.dataset",
    "training.dataset_mode",
    "training.tokenizer_name_or_path",
    "training.checkpoint_dir",
    "training.profile_dir",
    "training.init_from_hf",
    "training.model_preset",
    "training.lr_schedule",
    "training.model_dtype",
    "training.parallelism",
    "resources.scheduler",
    "resources.time_limit",
    "resources.mem",
    "resources.partition",
    "resources.account",
    "resources.qos",
    "resources.constraint",
    "resources.gpu_type",
    "resources.env.<key>",
    "resources.env.<value>",
    "resources.secret_env[]",
    "resources.extra_sbatch_args[]",
]
# The payload variables are on this controller's allow-list, so their values reach a real script.
ENV_ALLOW = ["SAFE_KEY", "USER_VALUE", "ATTACK_*"]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, env_allow=ENV_ALLOW)


SBATCH_LINE = re.compile(r"^#SBATCH --[a-z][a-z-]*(=[^\s'\"`$;\\]+)?$")


def _string_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of the fields that accept text, the way FIELDS names them."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= _string_fields(annotation, path + ".")
            continue
        origin = get_origin(annotation)
        # Annotated[str, Field(...)] inside a list or a union is still a string.
        args = tuple(get_args(a)[0] if get_origin(a) is typing.Annotated else a for a in get_args(annotation))
        if origin is dict:
            out |= {f"{path}.<key>", f"{path}.<value>"}
        elif origin is list and str in args:
            out.add(f"{path}[]")
        elif (
            annotation is str
            or (origin in (typing.Union, types.UnionType) and str in args)
            or (origin is Literal and all(isinstance(a, str) for a in args))
        ):
            out.add(path)
    return out


def test_every_string_field_is_attacked() -> None:
    assert _string_fields(RunCreate) == set(FIELDS)


def _body(field: str, payload: str, name: str) -> dict[str, Any]:
    body = run_body(name)
    body["resources"] = {"scheduler": "slurm", "time_limit": "1", "partition": "debug"}
    section, _, key = field.partition(".")
    if field == "name":
        body["name"] = payload
    elif key.startswith("env."):
        env = {"SAFE_KEY": "x"} if "<value>" in key else {}
        if key.endswith("<key>"):
            env[payload] = "1"
        else:
            env["USER_VALUE"] = payload
        body["resources"]["env"] = env
    elif key.endswith("[]"):
        body[section][key[:-2]] = [payload]
    else:
        body[section][key] = payload
    return body


def _write_script(api: Api, run_id: int) -> tuple[Path, Any]:
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        spec = run.spec_model()
    job = build_job_spec(
        settings=api.settings,
        run_id=run_id,
        run_name=spec.name,
        attempt=1,
        training=spec.training,
        resources=spec.resources,
        token="pyr_w_not-a-real-token",
    )
    return SlurmScheduler(api.settings).write_script(job), job


STUB_SRUN = """#!/bin/bash
# Records what the batch script passed: argv and environment, NUL-separated.
printf '%s\\0' "$@" > "$RECORD_DIR/argv"
env -0 > "$RECORD_DIR/env"
"""
STUB_SCONTROL = "#!/bin/bash\necho node1\n"


def _execute(script: Path, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """Run the batch script with bash as SLURM would, srun/scontrol replaced by recorders."""
    bin_dir, record = tmp / "stub-bin", tmp / "record"
    bin_dir.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    for name, body in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RECORD_DIR": str(record),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node1",
        "HOME": str(tmp),
    }
    assert BASH is not None
    subprocess.run([BASH, str(script)], env=env, cwd=tmp, check=True, timeout=60, capture_output=True)
    argv = (record / "argv").read_bytes().decode().split("\0")[:-1]
    recorded = dict(
        item.split("=", 1) for item in (record / "env").read_bytes().decode().split("\0") if "=" in item
    )
    return argv, recorded


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_every_field_rejects_or_renders_every_payload_inert(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "INJECTED"
    counts = {"rejected": 0, "inert": 0}
    for i, field in enumerate(FIELDS):
        for j, template in enumerate(PAYLOADS):
            payload = template.replace(MARK, str(marker))
            name = f"inj-{i}-{j}"
            r = api.client.post("/api/v1/runs", json=_body(field, payload, name), headers=api.h())
            if r.status_code == 422:
                counts["rejected"] += 1
                wanted = field.replace(".<key>", "").replace(".<value>", "").replace("[]", "")
                assert any(d["field"].startswith(wanted) for d in r.json()["detail"]), (field, r.json())
                continue
            assert r.status_code == 201, (field, payload, r.text)
            assert field in ("resources.env.<value>", "resources.constraint"), f"{field} accepted {payload!r}"
            counts["inert"] += 1
            script, job = _write_script(api, r.json()["id"])
            assert BASH is not None
            subprocess.run([BASH, "-n", str(script)], check=True)
            text = script.read_text()
            for line in text.splitlines():
                if line.startswith("#SBATCH"):
                    assert SBATCH_LINE.fullmatch(line) or line.startswith("#SBATCH --constraint="), line
                    assert " " not in line.removeprefix("#SBATCH ") and "\t" not in line, line
            if field == "resources.constraint":
                assert f"#SBATCH --constraint={payload}\n" in text
            argv, env = _execute(script, tmp_path)
            assert argv[-len(job.argv) :] == list(job.argv), "the worker's argv arrives byte for byte"
            if field == "resources.env.<value>":
                assert env["USER_VALUE"] == payload, "the env value arrives byte for byte"
            assert not marker.exists(), f"{field} = {payload!r} executed"
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == counts["inert"], "a 422 stored a run"
    assert counts["rejected"] + counts["inert"] == len(FIELDS) * len(PAYLOADS)
    print(f"\ninjection: {counts['rejected']} rejected with 422, {counts['inert']} accepted and inert")


@pytest.mark.parametrize(
    "constraint", ["a100&ib", "a100|h100", "[rack1|rack2]", "(a100&ib)|h100", "gpu*2", "a100,ib"]
)
def test_slurm_feature_expressions_are_accepted(api: Api, constraint: str) -> None:
    body = _body("resources.constraint", constraint, f"c-{abs(hash(constraint)) % 10**6}")
    r = api.client.post("/api/v1/runs", json=body, headers=api.h())
    assert r.status_code == 201, r.text
    script, _ = _write_script(api, r.json()["id"])
    assert f"#SBATCH --constraint={constraint}\n" in script.read_text()


# ---------------------------------------------------------------------------- real SLURM


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM CLI (sinfo/sbatch) not installed: run deploy/slurm-local/up.sh"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    if out.returncode != 0 or not set(out.stdout.split()) & {"idle", "mixed", "allocated", "completing"}:
        return f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()!r})"
    return None


PROBE = """#!/bin/bash
# Stands in for the worker's python: records what the job really received, then exits.
printf '%s\\0' "$@" > {record}/argv.$SLURM_JOB_ID
env -0 > {record}/env.$SLURM_JOB_ID
"""


@pytest.mark.integration
@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_injection_through_the_api_into_real_slurm_has_no_side_effect(tmp_path: Path) -> None:
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    from tests.integration.local_harness import Controller, wait_for

    marker = tmp_path / "INJECTED"
    record = tmp_path / "record"
    record.mkdir()
    probe = tmp_path / "probe-python"
    probe.write_text(PROBE.format(record=record))
    probe.chmod(probe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    values = {f"ATTACK_{j}": t.replace(MARK, str(marker)) for j, t in enumerate(PAYLOADS) if "\n" not in t}
    values = {k: v for k, v in values.items() if "\r" not in v}
    ctl = Controller(tmp_path / "controller")
    ctl.data_dir.mkdir()
    ctl.env["PYRECOVER_WORKER_PYTHON"] = str(probe)
    ctl.env["PYRECOVER_AUTH_REQUIRED"] = "true"
    ctl.env["PYRECOVER_ENV_ALLOW"] = json.dumps(ENV_ALLOW)
    ctl.setup()
    ctl.start()
    try:
        headers = {"Authorization": f"Bearer {ctl.token}"}
        refused = 0
        for i, field in enumerate(FIELDS):
            if field in ("resources.env.<value>", "resources.constraint"):
                continue
            for template in PAYLOADS:
                body = _body(field, template.replace(MARK, str(marker)), f"refused-{i}")
                r = httpx.post(f"{ctl.url}/api/v1/runs", json=body, headers=headers, timeout=30)
                assert r.status_code == 422, (field, template, r.text)
                refused += 1
        body = _body("resources.env.<value>", "x", "inert-env")
        body["resources"]["env"] = values
        body["training"]["dataset"] = str(tmp_path / "data")
        run = httpx.post(f"{ctl.url}/api/v1/runs", json=body, headers=headers, timeout=30)
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        argv_file = wait_for(lambda: next(iter(record.glob("argv.*")), None), 240, "the SLURM job to run")
        time.sleep(0.5)  # the probe writes argv, then env
        ctl.api("POST", f"/runs/{run_id}/cancel")
        job_id = argv_file.name.split(".", 1)[1]
        env = dict(
            item.split("=", 1)
            for item in (record / f"env.{job_id}").read_bytes().decode().split("\0")
            if "=" in item
        )
        for key, value in values.items():
            assert env.get(key) == value, f"{key} arrived as {env.get(key)!r}, sent {value!r}"
        argv = argv_file.read_bytes().decode().split("\0")[:-1]
        assert str(tmp_path / "data") in argv and "--experiment-name" in argv
        assert env.get("SLURM_JOB_ID") == job_id, "it ran under SLURM"
        assert not marker.exists(), "an injection attempt executed inside the SLURM job"
        print(f"\nreal SLURM job {job_id}: {len(values)} hostile env values arrived literally")
        print(f"real SLURM: {refused} hostile field values refused with 422")
    finally:
        ctl.stop()
    assert not marker.exists()


@pytest.mark.integration
def test_feature_expressions_reach_sbatch_intact(api: Api, tmp_path: Path) -> None:
    """sbatch --test-only parses the rendered #SBATCH lines: a feature expression is read as one
    constraint (this node has no features, so "Invalid feature specification" is the right answer)."""
    problem = _cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    marker = tmp_path / "INJECTED"
    for k, constraint in enumerate(["a100&ib", "[rack1|rack2]", f"a&touch&{marker}"]):
        body = _body("resources.constraint", constraint, f"sb-{k}")
        r = api.client.post("/api/v1/runs", json=body, headers=api.h())
        assert r.status_code == 201, r.text
        script, _ = _write_script(api, r.json()["id"])
        out = subprocess.run(
            ["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=30, check=False
        )
        said = out.stdout + out.stderr
        assert out.returncode != 0 and "Invalid feature specification" in said, said
    assert not marker.exists()
