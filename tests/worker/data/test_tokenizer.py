"""worker.data.tokenizer: offline loading, clear errors, pad = eos when the tokenizer has no pad."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from worker.data import DataError, load_tokenizer
from worker.data.tokenizer import encode_batch


def test_sample_tokenizer_ids(sample_data: tuple[Path, Path]) -> None:
    tok = load_tokenizer(sample_data[1])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.is_fast
    texts = ["Return the number of items.", "", "Ünïcode ✓"]
    ids = encode_batch(tok, texts)
    assert ids == [tok.encode(t, add_special_tokens=False) for t in texts]
    assert tok.decode(ids[2]) == texts[2]  # byte-level: nothing is unknown


def test_pad_falls_back_to_eos(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(str(sample_data[1]))
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "nopad"))
    loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token_id == loaded.eos_token_id == 1


@pytest.mark.parametrize("name", ["./no/such/dir", "/no/such/tokenizer", "a/b/c"])
def test_missing_tokenizer_is_a_clear_error_without_network(name: str) -> None:
    with pytest.raises(DataError, match="pyrecover data prepare"):
        load_tokenizer(name)


def test_a_file_is_not_a_tokenizer(sample_data: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match="is a file"):
        load_tokenizer(sample_data[1] / "tokenizer.json")
