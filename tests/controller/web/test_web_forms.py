"""The new-run form: defaults from the schemas, form → API body, API 422 → field messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.web.forms import FIELDS, form_to_body, place_errors
from shared.schemas.spec import RunCreate


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
    body = form_to_body(_valid_form())
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
    body = form_to_body(form)
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
        RunCreate.model_validate(form_to_body(form))
    errors = place_errors(422, _detail(info.value))
    assert errors.sections["training"] == ["lr_warmup_steps must not exceed training_steps"]
    form = _valid_form() | {"training.batch_size": "3", "resources.ntasks_per_node": "2"}
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(form_to_body(form))
    errors = place_errors(422, _detail(info.value))
    assert errors.form and "divisible" in errors.form[0]


def test_non_validation_errors_go_to_the_top() -> None:
    errors = place_errors(409, "a run named 'x' already exists")
    assert errors.form == ["HTTP 409: a run named 'x' already exists"]
    assert not place_errors(422, [])
