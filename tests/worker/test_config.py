"""The worker's config: TrainingSpec round-trip, seed flag names, validation naming the field."""

from __future__ import annotations

import pytest

from shared.exit_codes import ExitCode
from shared.schemas.spec import TrainingSpec
from worker.cli import main
from worker.config import IMMUTABLE_KEYS, ConfigError, TrainConfig, build_parser, parse_config

BASE = ["--dataset", "d.parquet", "--tokenizer-name-or-path", "tok"]


def test_every_training_spec_field_round_trips_through_the_worker_parser() -> None:
    spec = TrainingSpec(
        dataset="data/x.parquet",
        tokenizer_name_or_path="tok/dir",
        training_steps=77,
        model_preset="small",
        sequence_length=64,
        batch_size=6,
        learning_rate=1.5e-3,
        lr_warmup_steps=7,
        lr_schedule="constant",
        grad_max_norm=0.5,
        model_dtype="fp64",
        seed=99,
        logging_frequency=3,
        checkpoint_dir="ck",
        checkpoint_frequency=-1,
        use_torch_distributed_ckpt=False,
        async_checkpoint=False,
        keep_last_k=5,
        timeaware_checkpointing=False,
        deadline_margin=42.5,
        compile=True,
        fused_optimizer=True,
        log_loss_to_csv=False,
        init_from_hf="models/llama-1b",
        trackers=["wandb", "tensorboard"],
    )
    config = parse_config(spec.to_worker_args())
    for name, value in spec.model_dump().items():
        assert getattr(config, name) == value, name
    # and the opposite booleans
    flipped = spec.model_copy(
        update={"use_torch_distributed_ckpt": True, "async_checkpoint": True, "log_loss_to_csv": True}
    )
    config = parse_config(flipped.to_worker_args())
    assert config.use_torch_distributed_ckpt and config.async_checkpoint and config.log_loss_to_csv


def test_the_training_fields_are_declared_once_and_the_worker_adds_only_per_attempt_ones() -> None:
    from shared.training import PER_ATTEMPT_FIELDS, TrainingFields

    shared_fields = set(TrainingFields.model_fields)
    assert set(TrainingSpec.model_fields) == shared_fields
    assert set(TrainConfig.model_fields) - shared_fields == {*PER_ATTEMPT_FIELDS, "experiment_name"}
    # The API requires training_steps; a run's checkpoint_dir defaults to the controller's root (".").
    for name in shared_fields - {"training_steps", "checkpoint_dir"}:
        assert TrainingSpec.model_fields[name].default == TrainConfig.model_fields[name].default, name


def test_seed_spellings_and_precision_switch() -> None:
    config = parse_config([*BASE, "--experiment_name", "exp1", "--pure-dtype", "--model-dtype", "bf16"])
    assert config.experiment_name == "exp1"
    assert config.mixed_precision is False
    assert parse_config(BASE).mixed_precision is True
    assert parse_config([*BASE, "--deadline", "1700000000.5"]).deadline == 1700000000.5


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in out
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest
    for flag in (
        "--stop-after-steps",
        "--deadline-margin",
        "--exit-allowance",
        "--keep-every-n",
        "--pure-dtype",
        "--profile-dir",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"checkpoint_frequency": 0}, "checkpoint_frequency"),
        ({"keep_last_k": 1}, "keep_last_k"),
        ({"experiment_name": "../evil"}, "experiment_name"),
        ({"stop_after_steps": 0}, "stop_after_steps"),
        ({"grad_max_norm": float("nan")}, "grad_max_norm"),
        ({"async_checkpoint": True, "use_torch_distributed_ckpt": False}, "async_checkpoint"),
        ({"profile": True, "profile_step_start": 5, "profile_step_end": 2}, "profile_step_end"),
        ({"deadline": -5.0}, "deadline"),
        ({"deadline_margin": -1.0}, "deadline_margin"),
        ({"exit_allowance": 0.0}, "exit_allowance"),
        ({"exit_allowance": float("inf")}, "exit_allowance"),
    ],
)
def test_validation_names_the_field(override: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        TrainConfig(dataset="d", tokenizer_name_or_path="t", **override)  # type: ignore[arg-type]


def test_training_spec_deadline_margin_defaults_to_the_workers_and_is_validated() -> None:
    from pydantic import ValidationError

    spec = TrainingSpec(dataset="d", tokenizer_name_or_path="t", training_steps=20)
    assert spec.deadline_margin == TrainConfig.model_fields["deadline_margin"].default
    argv = spec.to_worker_args()
    assert argv[argv.index("--deadline-margin") + 1] == "15.0"
    for bad in (-1.0, float("nan"), 1e9):
        with pytest.raises(ValidationError, match="deadline_margin"):
            TrainingSpec(dataset="d", tokenizer_name_or_path="t", training_steps=20, deadline_margin=bad)


def test_batch_must_divide_by_world_size() -> None:
    config = TrainConfig(dataset="d", tokenizer_name_or_path="t", batch_size=6)
    config.check_world_size(3)
    with pytest.raises(ConfigError, match="batch_size"):
        config.check_world_size(4)


def test_cli_errors_are_one_line_with_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--keep-last-k", "1"]) == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "keep_last_k" in err
    assert main([*BASE, "--no-such-flag"]) == ExitCode.USAGE
    assert main(["--model-preset", "huge", *BASE]) == ExitCode.USAGE


def test_resolved_config_and_immutable_keys() -> None:
    config = TrainConfig(dataset="d", tokenizer_name_or_path="t")
    resolved = config.resolved(world_size=4)
    assert resolved["world_size"] == 4 and resolved["dataset"] == "d"
    assert set(IMMUTABLE_KEYS) <= set(resolved)
    for mutable in ("training_steps", "learning_rate", "logging_frequency", "deadline", "world_size"):
        assert mutable not in IMMUTABLE_KEYS


def test_both_entry_points_print_the_help() -> None:
    import subprocess
    import sys

    from typer.testing import CliRunner

    from controller.cli import app

    out = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--resume-from-checkpoint" in out and "--deadline-margin" in out
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "--resume-from-checkpoint" in result.output and "--stop-after-steps" in result.output
