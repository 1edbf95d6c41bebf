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


def test_encode_batch_ignores_truncation_and_padding_saved_with_the_tokenizer(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    clean = load_tokenizer(sample_data[1])
    spoiled = AutoTokenizer.from_pretrained(str(sample_data[1]))
    spoiled.backend_tokenizer.enable_truncation(max_length=16)
    spoiled.backend_tokenizer.enable_padding(length=16, pad_id=2, pad_token="<|pad|>")
    spoiled.save_pretrained(str(tmp_path / "spoiled"))
    tok = load_tokenizer(tmp_path / "spoiled")
    backend = tok.backend_tokenizer
    assert backend.truncation is not None and backend.padding is not None  # the saved state came back
    texts = ["Return the number of items in the container, counting nested ones. " * 3, "short", ""]
    ids = encode_batch(tok, texts)
    assert ids == encode_batch(clean, texts)
    assert [len(i) for i in ids] == [len(clean.encode(t, add_special_tokens=False)) for t in texts]
    assert len(ids[0]) > 16 and tok.pad_token_id not in ids[1] and ids[2] == []
    # Switched off for the call only: code that relies on the backend's settings keeps them.
    assert backend.truncation is not None and backend.truncation["max_length"] == 16
    assert backend.padding is not None and backend.padding["length"] == 16


def test_encode_batch_restores_settings_a_padded_call_left(sample_data: tuple[Path, Path]) -> None:
    tok = load_tokenizer(sample_data[1])
    text = "A long enough sentence to be cut by the truncation of a padded call. " * 2
    expected = encode_batch(tok, [text])
    tok(["x", text], padding="max_length", truncation=True, max_length=8)  # leaves state on the backend
    state = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    assert encode_batch(tok, [text]) == expected
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == state


def test_a_mistyped_relative_path_is_a_missing_directory_not_a_hub_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.data.files import DataError
    from worker.data.tokenizer import load_tokenizer

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"tokenizer directory 'data/tokenizr' does not exist"):
        load_tokenizer("data/tokenizr")
