"""A run's spec on the dashboard: grouped for reading, redacted as the API shows it, YAML both ways."""

from __future__ import annotations

import pytest

import controller.api  # noqa: F401  (the app's import order: controller.api mounts the web routes)
from controller.web.runspec import (
    SpecYamlError,
    config_groups,
    dump_yaml,
    line_of,
    load_yaml,
    shown_spec,
    template_spec,
)
from shared.schemas import RunCreate
from tests.controller.web.web_seed import spec


def test_config_groups_put_what_the_run_chose_first_with_the_default_beside_it() -> None:
    body = spec("grouped") | {}
    body["training"]["learning_rate"] = 1e-3
    groups = {g.key: g for g in config_groups(body)}
    training = groups["training"]
    chosen = {r.key: r for r in training.chosen}
    assert chosen["learning_rate"].value == "0.001" and chosen["learning_rate"].default == "0.003"  # tiny's
    assert chosen["training_steps"].required and chosen["training_steps"].default is None
    assert "batch_size" in {r.key for r in training.defaults}  # at its default: folded away
    assert training.changed == 1 and len(training.chosen) + len(training.defaults) == len(training.rows)
    partition = next(r for r in groups["resources"].rows if r.key == "partition")
    assert partition.value == "gpu" and partition.default == "–"
    legacy = config_groups({"training": {"retired_knob": 3}})  # a row older than today's schema
    assert ("retired_knob", "3") in {(r.key, r.value) for r in legacy[0].chosen}


def test_shown_spec_is_the_api_spec_and_never_a_secret() -> None:
    body = spec("secretive")
    body["resources"]["env"] = {"HF_TOKEN": "hf_live_value", "OMP_NUM_THREADS": "2"}
    shown = shown_spec(body)
    assert shown["resources"]["env"] == {"OMP_NUM_THREADS": "2"}
    assert "HF_TOKEN" in shown["resources"]["secret_env"]
    assert body["resources"]["env"]["HF_TOKEN"] == "hf_live_value"  # the stored row is untouched
    broken = body | {"name": "<b>not a name</b>"}  # no repair makes it valid: still shown, redacted
    assert "hf_live_value" not in str(shown_spec(broken)) and shown_spec(broken)["name"] == broken["name"]


def test_the_yaml_template_and_a_download_load_back() -> None:
    template = load_yaml(dump_yaml(template_spec(), header="a header\n\nsecond"))
    assert template["name"] is None and template["training"]["model_dtype"] == "bf16"
    template["name"] = "from-template"
    template["training"] |= {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 50}
    template["resources"] |= {"scheduler": "local", "time_limit": 10}
    assert RunCreate.model_validate(template).training.training_steps == 50
    text = dump_yaml(spec("round-trip"))
    assert RunCreate.model_validate(load_yaml(text)).model_dump(mode="json") == spec("round-trip")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1]\nb: *x\n", "aliases (*name) are not accepted here"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: [\n", "invalid YAML at line 2"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
        ("a: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
    ids=["alias", "not-a-mapping", "unclosed", "deep", "python-tag"],
)
def test_hostile_yaml_is_refused_with_a_message(text: str, message: str) -> None:
    with pytest.raises(SpecYamlError) as info:
        load_yaml(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_line_of_finds_the_key_or_its_nearest_ancestor() -> None:
    text = "name: x\ntraining:\n  dataset: d\n  trackers:\n    - wandb\n"
    assert line_of(text, ("training", "dataset")) == 3
    assert line_of(text, ("training", "trackers", 0)) == 5
    assert line_of(text, ("training", "missing")) == 2
    assert line_of("name: [", ("name",)) is None
