"""The files under ``deploy/`` and ``.ci/run``: valid, consistent with the contracts they document."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.memory_plan import check_run
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


def test_slurm_local_common_library_parses() -> None:
    # Sourced by up.sh and down.sh, never run: no shebang, no exec bit needed.
    subprocess.run(["bash", "-n", str(DEPLOY / "slurm-local" / "common.sh")], check=True)


@pytest.mark.parametrize(
    "args",
    [["--nodes", "0"], ["--nodes", "17"], ["--nodes=x"], ["--nodes", "2;id"], ["--nodes"], ["--bogus"]],
    ids=str,
)
def test_slurm_up_refuses_bad_arguments_before_doing_anything(args: list[str]) -> None:
    out = subprocess.run(
        [str(DEPLOY / "slurm-local" / "up.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert out.stdout == "", "nothing may be installed, written or started for a bad argument"
    [line] = out.stderr.splitlines()
    assert line.startswith("[slurm-local] ERROR: ")
    assert "--nodes" in line or "unknown argument '--bogus'" in line


def test_llama3_8b_example_is_a_valid_run_on_4_gpus_per_node() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-llama3-8b.yaml").read_text()))
    assert run.training.model_preset == "llama3-8b"
    assert run.training.model_dtype == "bf16"
    assert run.resources.scheduler == "slurm"
    assert run.resources.gpus_per_node == 4 == run.resources.ntasks_per_node
    assert run.training.batch_size % run.resources.world_size == 0


def test_llama3_8b_example_fits_the_gpus_it_names() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-llama3-8b.yaml").read_text()))
    verdict = check_run(run)
    assert verdict is not None, "the example names no GPU, so nothing checks that it fits"
    assert verdict.fits, verdict.refusal()
    # As the seed had it (DDP, every activation kept) it does not: the example is not trivially small.
    seed = run.model_copy(
        update={
            "training": run.training.model_copy(
                update={"parallelism": "ddp", "activation_checkpointing": False}
            )
        }
    )
    seed_verdict = check_run(seed)
    assert seed_verdict is not None and not seed_verdict.fits


def test_demo_slurm_example_fits_the_local_cluster() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-demo-slurm.yaml").read_text()))
    assert run.resources.scheduler == "slurm"
    assert run.resources.partition == "debug"
    assert run.resources.gpus_per_node == 0
    assert run.resources.time_limit_seconds == 60


def test_local_tiny_example_runs_on_the_embedded_scheduler_in_a_few_windows() -> None:
    run = RunCreate.model_validate(yaml.safe_load((DEPLOY / "examples" / "run-local-tiny.yaml").read_text()))
    assert run.resources.scheduler == "local" and run.resources.gpus_per_node == 0
    assert run.resources.time_limit_seconds < 60 and run.training.training_steps <= 200
    assert run.training.dataset == "data/sample.parquet"  # what `pyrecover data prepare` makes


def test_systemd_unit_runs_pyrecover_serve_with_an_environment_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "pyrecover-controller.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("pyrecover serve")
    assert service["EnvironmentFile"] == "/etc/pyrecover/controller.env"
    assert service["User"] != "root"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_controller_env_example_is_key_value_with_postgres_public_url_and_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
    # Every value is one the settings accept, and the example is a safe deployment.
    from controller.settings import Settings

    for key, value in pairs.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (
        settings.auth_required and settings.host == "127.0.0.1" and settings.trusted_proxies == ["127.0.0.1"]
    )
    settings.validate_for_serving()


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
    # N slurmd on one host (multiple-slurmd): a port per node, files kept apart by node name (%n),
    # and nodes that together declare more CPUs than the host has are not drained.
    assert "NodeName=@NODES@" in node and "Port=@PORTS@" in node and "NodeHostname=@HOSTNAME@" in node
    for key in ("SlurmdPidFile", "SlurmdSpoolDir", "SlurmdLogFile"):
        assert "%n" in conf[key], key
    assert conf["SlurmdParameters"] == "config_overrides"
    partitions = {
        fields["PartitionName"]: fields
        for fields in (
            dict(word.split("=", 1) for word in line.split())
            for line in text.splitlines()
            if line.startswith("PartitionName=")
        )
    }
    assert partitions["debug"]["Default"] == "YES"
    # A job in `high` preempts jobs in `debug`: cancelled after a grace (pyrecover resubmits
    # itself, its jobs are --no-requeue), never requeued or suspended; `high` is never preempted.
    assert conf["PreemptType"] == "preempt/partition_prio"
    assert conf["PreemptMode"] == partitions["debug"]["PreemptMode"] == "CANCEL"
    assert int(partitions["high"]["PriorityTier"]) > int(partitions["debug"]["PriorityTier"])
    assert partitions["high"]["PreemptMode"] == "OFF"
    assert int(partitions["debug"]["GraceTime"]) > 0
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
    assert text.index("deploy/slurm-local/up.sh --nodes 3") < text.index("make test PYTEST_ARGS")
    assert text.index("deploy/postgres-local/up.sh") < text.index("make test PYTEST_ARGS")
    assert "export PYRECOVER_TEST_POSTGRES_URL" in text
    assert "export PYRECOVER_STRICT_INTEGRATION=1" in text
    # The test command runs the suite's two phases; nothing collected in both fails it (tests/suite.py).
    assert "tests/suite.py $(PYTEST_ARGS)" in (ROOT / "Makefile").read_text()


def test_the_suite_runner_combines_markers_and_fails_an_empty_run() -> None:
    import suite  # tests/ is on sys.path (rootdir)

    assert suite.split_marker(["-m", "not slow", "-x", "-mfoo"]) == ("foo", ["-x"])
    calls: list[list[str]] = []

    def fake(codes: list[int]) -> Any:
        def run(args: list[str], junit: Path) -> tuple[int, dict[str, int]]:
            calls.append(args)
            return codes.pop(0), {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

        return run

    assert suite.main(["-m", "not slow", "tests/x"], fake([5, 5])) == 1  # nothing anywhere
    assert calls[0][:2] == ["-m", "(not slow) and not slurm_wait"] and calls[0][-1] == "tests/x"
    assert calls[1][:2] == ["-m", "(not slow) and slurm_wait"] and "-n" in calls[1]
    assert suite.main([], fake([0, 5])) == 0  # one phase empty is fine
    assert suite.main([], fake([0, 1])) == 1 and suite.main([], fake([2, 0])) == 2
