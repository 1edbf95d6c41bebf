"""Small corpora of real text for token store tests, and the files of a store to compare."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from parquet_helpers import write_texts


def sample_texts(sample_parquet: Path, n: int, *, offset: int = 0) -> list[str]:
    """``n`` real documents (stdlib docstrings) from the sample corpus."""
    texts = pq.read_table(sample_parquet).column("text").to_pylist()
    return [texts[(offset + i) % len(texts)] for i in range(n)]


def make_text_corpus(tmp: Path, sample_parquet: Path) -> tuple[Path, list[Path]]:
    """A directory of three Parquet files with uneven row groups, an empty and a null document."""
    src = tmp / "src"
    src.mkdir()
    texts: list[str | None] = list(sample_texts(sample_parquet, 60))
    texts[3] = ""
    texts[17] = None
    files = [
        write_texts(src / "a.parquet", texts[:25], rows_per_group=4),
        write_texts(src / "b.parquet", texts[25:31], rows_per_group=6),
        write_texts(src / "c.parquet", texts[31:], rows_per_group=7),
    ]
    return src, files


def store_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones too) by relative name."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
