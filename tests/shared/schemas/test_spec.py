"""The run definition (``shared.schemas.spec``): what it accepts and how it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas import RunCreate


def _payload(**overrides: Any) -> dict[str, Any]:
    training = {"dataset": "data/sample.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10}
    resources = {"scheduler": "local", "time_limit": "1m"}
    training.update(overrides.pop("training", {}))
    resources.update(overrides.pop("resources", {}))
    return {"name": "run-a", "training": training, "resources": resources, **overrides}


@pytest.mark.parametrize("dataset", ["data/*.parquet", "shards/part-0[0-4].parquet", "d/?.parquet", "d/"])
def test_dataset_may_be_a_file_directory_or_glob(dataset: str) -> None:
    spec = RunCreate.model_validate(_payload(training={"dataset": dataset}))
    assert spec.training.dataset == dataset
    # The glob reaches the worker as one argument: shell-quoted in scripts, never expanded there.
    assert spec.training.to_worker_args()[spec.training.to_worker_args().index("--dataset") + 1] == dataset


@pytest.mark.parametrize("dataset", ["data/$(id).parquet", "a;b", "../etc/*.parquet", "x`y`", "a b", ""])
def test_dataset_with_shell_or_traversal_characters_is_refused_naming_the_field(dataset: str) -> None:
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(_payload(training={"dataset": dataset}))
    assert info.value.errors()[0]["loc"] == ("training", "dataset")


@pytest.mark.parametrize("path", ["ckpt/*", "ckpt/[a]"])
def test_glob_characters_stay_refused_in_other_paths(path: str) -> None:
    with pytest.raises(ValidationError, match="checkpoint_dir"):
        RunCreate.model_validate(_payload(training={"checkpoint_dir": path}))


@pytest.mark.parametrize("scheduler", ["local", "slurm", "pyslurm"])
def test_every_registered_scheduler_is_accepted(scheduler: str) -> None:
    from controller.scheduler.registry import SCHEDULER_NAMES

    assert scheduler in SCHEDULER_NAMES
    spec = RunCreate.model_validate(_payload(resources={"scheduler": scheduler}))
    assert spec.resources.scheduler == scheduler


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ValidationError, match="scheduler"):
        RunCreate.model_validate(_payload(resources={"scheduler": "kubernetes"}))


def test_an_unknown_field_says_which_known_one_was_meant() -> None:
    import pytest
    from pydantic import ValidationError

    from shared.schemas import RunCreate

    body = {
        "name": "x",
        "training": {"dataset": "d", "tokenizer_name_or_path": "t", "trainng_steps": 5},
        "resources": {"scheduler": "local", "time_limit": "1m"},
    }
    with pytest.raises(ValidationError) as err:
        RunCreate.model_validate(body)
    (error,) = err.value.errors()
    assert error["loc"] == ("training",) and error["type"] == "extra_forbidden"
    assert error["msg"] == "unknown field 'trainng_steps': did you mean 'training_steps'?"
    with pytest.raises(
        ValidationError, match=r"unknown field 'zzz' \(known: allow_restart_from_scratch, backoff_seconds"
    ):
        RunCreate.model_validate(
            {
                **body,
                "training": {"dataset": "d", "tokenizer_name_or_path": "t", "training_steps": 50},
                "policy": {"zzz": 1},
            }
        )


@pytest.mark.parametrize("path", ["/models/llama $(id)", "../models/llama", "m;rm -rf /", "a\nb", ""])
def test_init_from_hf_is_a_path_validated_like_the_others(path: str) -> None:
    with pytest.raises(ValidationError) as info:
        RunCreate.model_validate(_payload(training={"init_from_hf": path}))
    assert info.value.errors()[0]["loc"] == ("training", "init_from_hf")
    ok = RunCreate.model_validate(_payload(training={"init_from_hf": "/models/Llama-3.2-1B"}))
    assert ok.training.to_worker_args()[-2:] == ["--init-from-hf", "/models/Llama-3.2-1B"]


@pytest.mark.parametrize(
    ("trackers", "why"),
    [
        (["mlflow"], "'tensorboard' or 'wandb'"),
        (["wandb", "wandb"], "'wandb' is listed twice"),
        (["tensorboard", "wandb", "tensorboard"], "at most 2"),
        (["--wandb-dir=/etc"], "'tensorboard' or 'wandb'"),
        ([{"name": "wandb"}], "'tensorboard' or 'wandb'"),
    ],
)
def test_trackers_are_names_from_a_fixed_list(trackers: list[Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why) as info:
        RunCreate.model_validate(_payload(training={"trackers": trackers}))
    assert info.value.errors()[0]["loc"][:2] == ("training", "trackers")


def test_trackers_reach_the_worker_as_one_comma_separated_flag() -> None:
    spec = RunCreate.model_validate(_payload(training={"trackers": ["wandb", "tensorboard"]}))
    args = spec.training.to_worker_args()
    assert args[args.index("--trackers") + 1] == "wandb,tensorboard"
    assert "--trackers" not in RunCreate.model_validate(_payload()).training.to_worker_args()
