"""The files under ``deploy/`` and ``.ci/run``: valid, consistent with the contracts they document."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.schemas.spec import RunCreate

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCRIPTS = [
    DEPLOY / "slurm-local" / "up.sh",
    DEPLOY / "slurm-local" / "down.sh",
    DEPLOY / "postgres-local" / "up.sh",
    DEPLOY / "postgres-local" / "down.sh",
    ROOT / ".ci" / "run",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_are_executable(script: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


def test_llama3_8b_example_is_a_valid_run_on_4_gpus_per_node() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-llama3-8b.yaml").read_text()))
    assert run.training.model_preset == "llama3-8b"
    assert run.training.model_dtype == "bf16"
    assert run.resources.scheduler == "slurm"
    assert run.resources.gpus_per_node == 4 == run.resources.ntasks_per_node
    assert run.training.batch_size % run.resources.world_size == 0


def test_demo_slurm_example_fits_the_local_cluster() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-demo-slurm.yaml").read_text()))
    assert run.resources.scheduler == "slurm"
    assert run.resources.partition == "debug"
    assert run.resources.gpus_per_node == 0
    assert run.resources.time_limit_seconds == 60


def test_systemd_unit_runs_pyrecover_serve_with_an_environment_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "pyrecover-controller.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("pyrecover serve")
    assert service["EnvironmentFile"] == "/etc/pyrecover/controller.env"
    assert service["User"] != "root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_controller_env_example_is_key_value_with_postgres_public_url_and_auth() -> None:
    pairs = {}
    for line in (DEPLOY / "examples" / "controller.env").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"PYRECOVER_[A-Z0-9_]+", key), line
        pairs[key] = value
    assert pairs["PYRECOVER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert pairs["PYRECOVER_PUBLIC_URL"].startswith("https://")
    assert "PYRECOVER_SLURM_CLI_TIMEOUT_S" in pairs


def test_the_example_runs_pass_the_example_controllers_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 8B run's paths, variables and options lie within what controller.env allows."""
    from controller.settings import Settings
    from shared.run_rules import check_run

    for line in (DEPLOY / "examples" / "controller.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.endswith(("_ROOTS", "_ALLOW", "VERIFY_CHECKPOINTS", "CHECKPOINT_ROOT")):
            monkeypatch.setenv(key, value)
    settings = Settings(data_dir="/srv/pyrecover/data")
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-llama3-8b.yaml").read_text()))
    check_run(run, settings.run_policy())
    assert "slurm" in settings.verify_checkpoints


def test_slurm_conf_template_has_the_measured_settings() -> None:
    text = (DEPLOY / "slurm-local" / "slurm.conf.template").read_text()
    conf = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#") and "=" in line
    )
    assert conf["ProctrackType"] == "proctrack/linuxproc"
    assert conf["TaskPlugin"] == "task/none"
    assert conf["SelectType"] == "select/cons_tres"
    assert conf["SelectTypeParameters"] == "CR_Core"
    assert conf["AccountingStorageType"] == "accounting_storage/none"
    assert int(conf["MinJobAge"]) >= 300
    # Without it a dependency-released successor waits for the next 3-second batch pass.
    assert "batch_sched_delay=0" in conf["SchedulerParameters"]
    node = next(line for line in text.splitlines() if line.startswith("NodeName="))
    assert "NodeAddr=127.0.0.1" in node and "CPUs=@CPUS@" in node
    partition = next(line for line in text.splitlines() if line.startswith("PartitionName="))
    assert "PartitionName=debug" in partition and "Default=YES" in partition
    # Every placeholder the template uses is one up.sh fills in.
    up = (DEPLOY / "slurm-local" / "up.sh").read_text()
    settings = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for placeholder in set(re.findall(r"@[A-Z_]+@", settings)):
        assert f"s/{placeholder}/" in up, f"up.sh does not render {placeholder}"


def test_ci_run_brings_up_slurm_and_postgres_strictly() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert text.index("apt-get update") < text.index("apt-get install")
    for needed in ("slurm-wlm", "munge", "postgresql", "chromium"):
        assert needed in text
    assert text.index("deploy/slurm-local/up.sh") < text.index("make test PYTEST_ARGS")
    assert text.index("deploy/postgres-local/up.sh") < text.index("make test PYTEST_ARGS")
    assert "export PYRECOVER_TEST_POSTGRES_URL" in text
    assert "export PYRECOVER_STRICT_INTEGRATION=1" in text
    # pytest's exit 5 (nothing collected) fails the test command itself, so CI fails on it too.
    assert "$$rc -eq 5" in (ROOT / "Makefile").read_text()
