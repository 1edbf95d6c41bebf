"""Small Parquet files and a character tokenizer whose token stream a test can compute by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BOS = 1


class CharTokenizer:
    """Token id = code point; BOS = 1. Slow-path (not ``is_fast``) tokenizer API."""

    bos_token_id = BOS
    is_fast = False

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [ord(c) for c in text]


def write_texts(path: Path, texts: list[str | None], *, rows_per_group: int = 3) -> Path:
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), path, row_group_size=rows_per_group)
    return path


def make_corpus(tmp: Path) -> tuple[list[Path], list[str]]:
    """Two files of uneven documents (several row groups each); returns (files, all texts in order)."""
    docs = [f"doc{i} " * (1 + (i * 7) % 5) for i in range(23)]
    docs[4] = ""  # an empty document still contributes its BOS
    files = [
        write_texts(tmp / "a.parquet", docs[:13]),
        write_texts(tmp / "b.parquet", docs[13:], rows_per_group=4),
    ]
    return files, docs


def reference_stream(docs: list[str], n_tokens: int) -> list[int]:
    """The global token stream: documents in order, each BOS-prefixed, repeated epoch after epoch."""
    epoch = [t for d in docs for t in [BOS, *map(ord, d)]]
    return (epoch * (n_tokens // len(epoch) + 1))[:n_tokens]
