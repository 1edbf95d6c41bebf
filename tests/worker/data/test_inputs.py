"""worker.data.inputs: the controller's submit-time checks name the field, tell missing from unusable,
and never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from parquet_helpers import write_texts

from worker.data.inputs import InputProblem, check_training_inputs


def _kinds(problems: list[InputProblem]) -> list[tuple[str, str]]:
    return [(p.field, p.kind) for p in problems]


def test_submit_time_checks_name_the_field_and_tell_missing_from_unusable(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    good = write_texts(tmp_path / "good.parquet", ["some text"])
    assert check_training_inputs(str(good), str(tok)) == []
    assert check_training_inputs(f"{tmp_path}/*.parquet", "meta-llama/Llama-3.1-8B") == []  # a hub name

    (tmp_path / "empty").mkdir()
    empty = write_texts(tmp_path / "empty" / "e.parquet", [])
    (problem,) = check_training_inputs(str(empty), str(tok))
    assert (problem.field, problem.kind) == ("dataset", "invalid") and "no rows" in problem.message
    (tmp_path / "notes.txt").write_text("not parquet")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
    cases = {
        str(tmp_path / "nope.parquet"): ("dataset", "missing"),
        f"{tmp_path}/nothing-*.parquet": ("dataset", "missing"),
        str(tmp_path / "notes.txt"): ("dataset", "invalid"),
        str(tmp_path / "nocol.parquet"): ("dataset", "invalid"),
        str(tmp_path / "empty"): ("dataset", "invalid"),
    }
    for spec, expected in cases.items():
        assert _kinds(check_training_inputs(spec, str(tok))) == [expected], spec
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{}")
    assert _kinds(check_training_inputs(str(tmp_path / "store"), str(tok))) == [("dataset", "invalid")]

    bare = tmp_path / "bare"
    bare.mkdir()
    for spec, expected in {
        str(tmp_path / "no-tokenizer"): ("tokenizer_name_or_path", "missing"),
        str(tok / "tokenizer.json"): ("tokenizer_name_or_path", "invalid"),
        str(bare): ("tokenizer_name_or_path", "invalid"),
    }.items():
        (problem,) = check_training_inputs(str(good), spec)
        assert (problem.field, problem.kind) == expected and spec in problem.message


def test_the_submit_time_checks_never_import_torch(sample_data: tuple[Path, Path]) -> None:
    parquet, tokenizer = sample_data
    code = (
        "import sys; from worker.data.inputs import check_training_inputs; "
        f"assert check_training_inputs({str(parquet)!r}, {str(tokenizer)!r}) == []; "
        f"check_training_inputs({str(parquet.parent / 'nope')!r}, 'org/name'); "
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_built_token_store_passes(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    from worker.data.store_build import build_store

    src = write_texts(tmp_path / "src.parquet", ["a few words", "and a few more"])
    build_store(str(src), str(sample_data[1]), tmp_path / "store")
    assert check_training_inputs(str(tmp_path / "store"), str(sample_data[1])) == []
