"""shared/training.py: a run that names no learning rate gets its preset's, and says so."""

from __future__ import annotations

import pytest

from shared.model_shapes import PRESETS
from shared.schemas.spec import TrainingSpec
from shared.training import PRESET_LEARNING_RATES
from worker.config import parse_config

BASE = {"dataset": "/d/x.parquet", "tokenizer_name_or_path": "/d/tok", "training_steps": 50}


def test_every_preset_has_a_default_learning_rate() -> None:
    assert set(PRESET_LEARNING_RATES) == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESET_LEARNING_RATES))
def test_an_unset_learning_rate_is_the_presets_in_the_api_and_the_worker(preset: str) -> None:
    spec = TrainingSpec(**BASE, model_preset=preset)
    assert spec.learning_rate == PRESET_LEARNING_RATES[preset] == spec.peak_learning_rate
    args = spec.to_worker_args()
    assert float(args[args.index("--learning-rate") + 1]) == PRESET_LEARNING_RATES[preset]
    worker = parse_config(["--dataset", "d", "--tokenizer-name-or-path", "t", "--model-preset", preset])
    assert worker.learning_rate == PRESET_LEARNING_RATES[preset]


def test_a_given_learning_rate_wins_and_the_tiny_default_is_the_one_that_learns() -> None:
    assert TrainingSpec(**BASE, learning_rate=1e-2).learning_rate == 1e-2
    assert TrainingSpec(**BASE, learning_rate=None).learning_rate == 3e-3  # tiny is the default preset
    assert (
        parse_config(
            ["--dataset", "d", "--tokenizer-name-or-path", "t", "--learning-rate", "5e-4"]
        ).learning_rate
        == 5e-4
    )
