"""The seed's map-style dataset: one document per sample, padded/truncated to L+1 tokens.

Kept for compatibility and as the baseline the streaming pipeline is measured against
(``bench/data.py``); training uses ``IterableParquetDataset``, which packs documents and wastes
no tokens on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from worker.data.files import TEXT_COLUMN, check_parquet_file

IGNORE_INDEX = -100
"""Label value that ``cross_entropy`` skips."""


class ParquetDataset(Dataset[dict[str, list[int]]]):
    """Row ``i % rows`` of the file, tokenized and padded/truncated to ``sequence_length + 1`` tokens.

    ``training_samples`` is the dataset length; it may exceed the number of rows (it wraps).
    Each item is ``{"input_ids": [...], "attention_mask": [...]}`` (mask 0 on padding).
    """

    def __init__(
        self, parquet_file: str | Path, tokenizer: Any, sequence_length: int, training_samples: int
    ) -> None:
        if sequence_length < 1 or training_samples < 0:
            raise ValueError("sequence_length must be >= 1 and training_samples >= 0")
        check_parquet_file(Path(parquet_file))
        self.table = pq.read_table(parquet_file, columns=[TEXT_COLUMN], memory_map=True)
        if self.table.num_rows == 0:
            raise ValueError(f"{parquet_file}: no rows")
        self.column = self.table.column(TEXT_COLUMN)
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.training_samples = training_samples

    def __len__(self) -> int:
        return self.training_samples

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        text = self.column[idx % self.table.num_rows].as_py() or ""
        enc = self.tokenizer(
            text,
            max_length=self.sequence_length + 1,
            padding="max_length",
            truncation=True,
            padding_side="right",
        )
        return {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}


@dataclass
class CollatorForCLM:
    """Stack samples of L+1 tokens into (inputs, labels) of shape [B, L], labels shifted by one.

    Padding positions get label -100. They are found from the attention mask when the samples
    carry one, so that with pad == eos (a common choice) real EOS tokens keep their labels; the
    seed masked every token equal to the pad id and so never taught the model to stop. Without an
    attention mask, tokens equal to ``pad_token_id`` are masked (the seed's rule).
    """

    sequence_length: int
    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
        if ids.shape[1] != self.sequence_length + 1:
            raise ValueError(f"samples have {ids.shape[1]} tokens, expected sequence_length + 1")
        inputs = ids[:, :-1].contiguous()
        labels = ids[:, 1:].clone()
        if all("attention_mask" in e for e in examples):
            mask = torch.tensor([e["attention_mask"] for e in examples], dtype=torch.bool)
            labels[~mask[:, 1:]] = IGNORE_INDEX
        else:
            labels[labels == self.pad_token_id] = IGNORE_INDEX
        return inputs, labels
