"""``pyrecover plan RUN_FILE``: the memory plan of a run file, torch-free, exit 1 when it does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from controller.cli import app

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "examples" / "run-llama3-8b.yaml"
runner = CliRunner()


def test_the_8b_example_fits_its_gpu() -> None:
    result = runner.invoke(app, ["plan", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "8.03 B parameters" in out and "fsdp" in out
    for row in ("parameters", "gradients", "optimizer states", "activations / micro-batch", "peak"):
        assert row in out
    assert "fits a gh200-96gb" in out


def test_a_run_that_does_not_fit_exits_1_and_says_what_to_change(tmp_path: Path) -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["training"] |= {"parallelism": "ddp", "activation_checkpointing": False}
    spec = tmp_path / "run.json"
    spec.write_text(json.dumps(body))
    result = runner.invoke(app, ["plan", str(spec)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "does not fit" in out and "training.parallelism: fsdp" in out


def test_json_output_and_overrides(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plan", str(EXAMPLE), "--json", "--gpu-memory", "24", "--vocab-size", "32000"]
    )
    assert result.exit_code == 1  # 24 GiB is too small
    plan = json.loads(result.output)
    assert plan["gpu"]["bytes"] == 24 * 1024**3 and plan["fits"] is False
    assert plan["peak"] == max(plan["phases"].values())
    assert plan["parameters_count"] < 8.03e9  # the smaller vocabulary was used


def test_no_gpu_named_prints_the_plan_without_a_verdict(tmp_path: Path) -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    del body["resources"]["gpu_type"]
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(body))
    result = runner.invoke(app, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    assert "no GPU named" in result.output


def test_bad_run_files_are_one_line_errors(tmp_path: Path) -> None:
    spec = tmp_path / "run.yaml"
    spec.write_text(
        "name: x\ntraining: {dataset: d, tokenizer_name_or_path: t, training_steps: 1}\n"
        "resources: {scheduler: slurm, time_limit: 1h, gpus_per_node: 1, gpu_type: tpu}\n"
    )
    result = runner.invoke(app, ["plan", str(spec)])
    assert result.exit_code == 1
    assert "resources.gpu_type" in " ".join(result.output.split())


def test_plan_imports_no_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from controller.cli import app; "
        f"r = CliRunner().invoke(app, ['plan', {str(EXAMPLE)!r}]); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr
