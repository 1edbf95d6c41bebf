"""The seed scripts' six flags run unchanged: each maps to its replacement or is explained, in one line."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from worker import cli
from worker.config import build_parser, config_from_args, parse_config
from worker.seed_flags import SEED_FLAGS, apply_seed_flags

BASE = ["--dataset", "data/x.parquet", "--tokenizer-name-or-path", "tok"]
SEED_LINE = [
    "--distributed",
    "--verify-checkpoints",
    "--max-kept-checkpoints",
    "5",
    "--default-iter-time",
    "2.5",
    "--default-ckpt-time",
    "30",
    "--use_flash_attention",
]


def test_every_seed_flag_is_accepted_and_explained_once() -> None:
    args = build_parser().parse_args(BASE + SEED_LINE)
    notes = apply_seed_flags(args)
    config = config_from_args(args)
    assert config.keep_last_k == 5
    assert len(notes) == len(SEED_FLAGS) == 6
    for flag, note in zip(SEED_FLAGS, notes, strict=True):
        assert note.startswith(flag.flags[0]), note
    assert "--keep-last-k 5" in notes[2]
    assert "ignored" in notes[3] and "measures the step time" in notes[3]
    assert "scaled_dot_product_attention" in notes[5]


def test_without_seed_flags_nothing_changes_and_nothing_is_said() -> None:
    args = build_parser().parse_args(BASE)
    assert apply_seed_flags(args) == []
    assert config_from_args(args).keep_last_k == parse_config(BASE).keep_last_k == 3


@pytest.mark.parametrize(("given", "kept"), [("1", 2), ("0", 2), ("7", 7)])
def test_max_kept_checkpoints_keeps_at_least_the_newest_and_the_resumed_from(given: str, kept: int) -> None:
    args = build_parser().parse_args([*BASE, "--max_kept_checkpoints", given])
    [note] = apply_seed_flags(args)
    assert config_from_args(args).keep_last_k == kept
    assert ("raised from" in note) == (int(given) != kept), note


def test_the_worker_logs_one_line_per_seed_flag(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import worker.train

    seen: list[Any] = []
    monkeypatch.setattr(worker.train, "run_training", lambda config: seen.append(config) or 0)
    with caplog.at_level(logging.INFO, logger="pyrecover.worker"):
        assert cli.main(BASE + SEED_LINE) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seed flag ")]
    assert len(lines) == 6 and seen[0].keep_last_k == 5
