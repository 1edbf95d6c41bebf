"""``pyrecover data prepare``: help, the corpus, the tokenizer, idempotence and byte-for-byte determinism."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from worker.data.prepare import file_docstrings, main


def test_data_help_explains_the_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main()", "data", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "prepare" in out and "tokenizer" in out


def test_prepare_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--vocab-size", "--force"):
        assert flag in out
    assert main([]) == 2  # no subcommand: help, and a usage error


def test_bad_vocab_size_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--out", str(tmp_path / "x"), "--vocab-size", "10"])
    assert exit_info.value.code == 2
    assert "--vocab-size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sample_corpus_and_tokenizer(sample_data: tuple[Path, Path]) -> None:
    parquet, tok_dir = sample_data
    meta = pq.ParquetFile(parquet).metadata
    assert meta.num_row_groups >= 4
    texts = pq.read_table(parquet).column("text").to_pylist()
    assert len(texts) > 1000 and len(set(texts)) == len(texts) and min(map(len, texts)) >= 100
    assert any("Return" in t for t in texts)  # real English prose
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert len(tok) == 8192
    ids = tok("Return a list of the lines in the string.")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) < 15  # BPE learned English words


def test_prepare_is_deterministic_and_idempotent(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    out = tmp_path / "again"
    assert main(["prepare", "--out", str(out)]) == 0
    parquet, tok_dir = sample_data
    assert (out / "sample.parquet").read_bytes() == parquet.read_bytes()
    names = sorted(p.name for p in tok_dir.iterdir())
    assert names == sorted(p.name for p in (out / "tokenizer").iterdir())
    for name in names:
        assert (out / "tokenizer" / name).read_bytes() == (tok_dir / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".prepare-")]  # no temp leftovers

    stamp = (out / "sample.parquet").stat().st_mtime_ns
    assert main(["prepare", "--out", str(out)]) == 0  # present: kept
    assert (out / "sample.parquet").stat().st_mtime_ns == stamp
    os.utime(out / "sample.parquet", ns=(0, 0))
    assert main(["prepare", "--out", str(out), "--force", "--vocab-size", "1024"]) == 0
    assert (out / "sample.parquet").stat().st_mtime_ns != 0
    assert len(AutoTokenizer.from_pretrained(str(out / "tokenizer"))) == 1024


def test_docstrings_of_one_file(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        '"""Module doc."""\n'
        "class A:\n    '''Class doc.'''\n    def f(self):\n        '''Method doc.'''\n"
        "if True:\n    def g():\n        '''Nested in if.'''\n"
        "def h():\n    x = 1\n"
    )
    assert file_docstrings(src) == ["Module doc.", "Class doc.", "Method doc.", "Nested in if."]
    (tmp_path / "bad.py").write_text("def (:\n")
    assert file_docstrings(tmp_path / "bad.py") == []
