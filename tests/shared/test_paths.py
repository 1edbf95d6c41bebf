"""Path conventions, and which dataset/tokenizer values are local paths (never hub ids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.paths import looks_local, parse_step, run_dir, step_dir


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("data/tokenizr", True),  # a typo inside an existing directory: never the hub's "data" org
        ("data", True),  # exists
        ("./tok", True),
        ("../tok", True),
        ("~/tok", True),
        ("/abs/tok", True),
        ("a/b/c", True),
        ("meta-llama/Llama-3.1-8B", False),
        ("gpt2", False),
    ],
)
def test_what_looks_local(value: str, local: bool, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert looks_local(value, tmp_path) is local


def test_layout() -> None:
    assert run_dir(Path("/srv/var"), 7) == Path("/srv/var/runs/7")
    assert step_dir(Path("/ck"), "r", 12) == Path("/ck/r/step-12")
    assert (
        parse_step("step-12") == 12 and parse_step("step-012x") is None and parse_step(".tmp-step-3") is None
    )
