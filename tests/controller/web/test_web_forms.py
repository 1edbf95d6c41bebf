"""The new-run form: defaults from the schemas, form → API body, API 422 → field messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.web.forms import (
    FIELDS,
    YAML_ONLY,
    default_values,
    form_to_body,
    place_errors,
    values_from_spec,
)
from shared.schemas.spec import PolicySpec, ResourcesSpec, RunCreate, TrainingSpec
from shared.training import TrainingFields


def _valid_form() -> dict[str, str]:
    return {
        "name": "web-run",
        "training.dataset": "data/text.parquet",
        "training.tokenizer_name_or_path": "data/tokenizer",
        "training.training_steps": "200",
        "training.learning_rate": "1e-3",
        "training.use_torch_distributed_ckpt": "true",
        "resources.scheduler": "local",
        "resources.time_limit": "10",
        "resources.mem": "",
    }


def test_defaults_and_choices_come_from_the_schemas() -> None:
    assert FIELDS["training.batch_size"].default == 8 and FIELDS["training.batch_size"].kind == "int"
    assert FIELDS["training.model_preset"].choices == ("tiny", "small", "llama3-1b", "llama3-8b")
    assert FIELDS["resources.scheduler"].choices == ("local", "slurm", "pyslurm")
    assert FIELDS["training.async_checkpoint"].kind == "bool"
    assert FIELDS["resources.time_limit"].kind == "text"  # str | int: the API parses both


def test_form_to_body_builds_a_valid_run() -> None:
    body, unparsed = form_to_body(_valid_form())
    assert not unparsed
    assert body["training"]["training_steps"] == 200
    assert body["training"]["learning_rate"] == pytest.approx(1e-3)
    assert body["training"]["use_torch_distributed_ckpt"] is True
    assert body["training"]["async_checkpoint"] is False  # an unchecked box
    assert "mem" not in body["resources"]  # empty → the API's default
    run = RunCreate.model_validate(body)
    assert run.name == "web-run" and run.resources.time_limit_seconds == 600


def _detail(exc: ValidationError) -> list[dict[str, Any]]:
    # What FastAPI sends back for a body model: pydantic's errors with "body" in front of loc.
    return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def test_api_errors_land_next_to_their_fields() -> None:
    form = _valid_form() | {
        "training.training_steps": "-5",
        "training.batch_size": "many",
        "name": "bad name!",
    }
    body, _ = form_to_body(form)
    assert body["training"]["batch_size"] == "many"  # sent as typed: the API words the error
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(body)
    errors = place_errors(422, _detail(info.value))
    assert set(errors.fields) == {"training.training_steps", "training.batch_size", "name"}
    assert "greater than 0" in errors.fields["training.training_steps"][0]
    assert "valid integer" in errors.fields["training.batch_size"][0]
    assert not errors.form


def test_model_level_rules_go_to_the_section_or_the_form() -> None:
    form = _valid_form() | {"training.lr_warmup_steps": "500"}  # more warm-up than steps
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(form_to_body(form)[0])
    errors = place_errors(422, _detail(info.value))
    assert errors.sections["training"] == ["lr_warmup_steps must not exceed training_steps"]
    form = _valid_form() | {"training.batch_size": "3", "resources.ntasks_per_node": "2"}
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(form_to_body(form)[0])
    errors = place_errors(422, _detail(info.value))
    assert errors.form and "divisible" in errors.form[0]


def test_non_validation_errors_go_to_the_top() -> None:
    errors = place_errors(409, "a run named 'x' already exists")
    assert errors.form == ["HTTP 409: a run named 'x' already exists"]
    assert not place_errors(422, [])


def test_the_form_covers_the_whole_spec_with_the_cli_defaults() -> None:
    shown = set(FIELDS) | set(YAML_ONLY)
    for key, model in (("training", TrainingSpec), ("resources", ResourcesSpec), ("policy", PolicySpec)):
        assert {f"{key}.{n}" for n in model.model_fields} <= shown, key
    assert YAML_ONLY == ("policy.notify",)  # a list of objects: the YAML editor's
    for name, info in TrainingFields.model_fields.items():  # the CLI's defaults, declared once
        if not TrainingSpec.model_fields[name].is_required():  # a run must say its steps and data
            expected = info.get_default(call_default_factory=True)
            if name == "checkpoint_dir":  # a run's default is the controller's checkpoint root itself
                expected = TrainingSpec.model_fields[name].get_default()
            assert FIELDS[f"training.{name}"].default == expected, name
    values = default_values()
    assert values["training.model_dtype"] == "bf16" and values["training.mixed_precision"] is True
    for name in ("compile", "fused_optimizer", "grad_max_norm", "log_loss_to_csv", "profile"):
        assert f"training.{name}" in FIELDS, name
    assert FIELDS["resources.env"].kind == "env" and FIELDS["training.trackers"].kind == "multi"


def _posted(values: dict[str, Any]) -> dict[str, str]:
    """What a browser posts for the form filled with ``values`` (unchecked boxes are absent)."""
    form: dict[str, str] = {}
    for f in FIELDS.values():
        value = values[f.name]
        if f.kind == "bool":
            if value:
                form[f.name] = "true"
        elif f.kind == "multi":
            form |= {f.input_name(c): "true" for c in value}
        else:
            form[f.name] = value
    return form


def test_a_cloned_spec_round_trips_through_the_form() -> None:
    spec = RunCreate.model_validate(
        {
            "name": "clone-me",
            "training": {
                "dataset": "data/text.parquet",
                "tokenizer_name_or_path": "data/tokenizer",
                "training_steps": 120,
                "model_dtype": "fp32",
                "grad_max_norm": 0.5,
                "compile": True,
                "trackers": ["tensorboard"],
            },
            "resources": {
                "scheduler": "local",
                "time_limit": "10",  # the form's text; a YAML int 10 means the same 600 s
                "env": {"OMP_NUM_THREADS": "2", "NOTE": "a=b"},
                "extra_sbatch_args": ["--comment=x"],
            },
        }
    ).model_dump(mode="json")
    body, unparsed = form_to_body(_posted(values_from_spec(spec)))
    assert not unparsed
    again = RunCreate.model_validate(body).model_dump(mode="json")
    assert again == spec


def test_an_env_line_without_a_value_is_an_error_of_its_field() -> None:
    body, unparsed = form_to_body(_valid_form() | {"resources.env": "GOOD=1\nnot a pair\nGOOD=2"})
    assert unparsed == {"resources.env": ["line 2: expected NAME=value", "line 3: GOOD is set twice"]}
    assert "env" not in body["resources"]
