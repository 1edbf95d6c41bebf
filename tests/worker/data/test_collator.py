"""ParquetDataset + CollatorForCLM: the seed's pad/truncate-to-L+1 samples, shifted labels, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parquet_helpers import write_texts

from worker.data import IGNORE_INDEX, CollatorForCLM, ParquetDataset, load_tokenizer


def test_shift_and_pad_masking_by_pad_id() -> None:
    collate = CollatorForCLM(sequence_length=4, pad_token_id=0)
    inputs, labels = collate([{"input_ids": [5, 6, 7, 0, 0]}, {"input_ids": [1, 2, 3, 4, 5]}])
    assert inputs.tolist() == [[5, 6, 7, 0], [1, 2, 3, 4]]
    assert labels.tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, 5]]


def test_pad_equal_to_eos_keeps_the_real_eos_label() -> None:
    eos = pad = 9
    collate = CollatorForCLM(sequence_length=5, pad_token_id=pad)
    sample = {"input_ids": [5, 6, eos, pad, pad, pad], "attention_mask": [1, 1, 1, 0, 0, 0]}
    inputs, labels = collate([sample])
    assert inputs.tolist() == [[5, 6, eos, pad, pad]]
    # The model learns to emit EOS after 6; the padding after it is ignored.
    assert labels.tolist() == [[6, eos, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]


def test_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="sequence_length \\+ 1"):
        CollatorForCLM(sequence_length=4, pad_token_id=0)([{"input_ids": [1, 2, 3]}])


def test_parquet_dataset_with_the_sample_tokenizer(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(sample_data[1])
    tokenizer.pad_token = tokenizer.eos_token  # the pad == eos case, through the real tokenizer
    path = write_texts(tmp_path / "t.parquet", ["Short text.", "A much longer document " * 40])
    ds = ParquetDataset(path, tokenizer, sequence_length=16, training_samples=5)
    assert len(ds) == 5
    assert ds[2] == ds[0]  # wraps around the 2 rows
    items = [ds[i] for i in range(2)]
    assert all(len(item["input_ids"]) == 17 for item in items)
    inputs, labels = CollatorForCLM(16, tokenizer.pad_token_id)(items)
    assert inputs.shape == labels.shape == (2, 16)
    assert inputs[0, 0].item() == tokenizer.bos_token_id
    real = sum(items[0]["attention_mask"])  # BOS + the short text's tokens
    assert 2 < real < 17
    assert torch.equal(labels[0, : real - 1], torch.tensor(items[0]["input_ids"][1:real]))
    assert (labels[0, real - 1 :] == IGNORE_INDEX).all()
    assert (labels[1] != IGNORE_INDEX).all()  # truncated, no padding
