"""Which dataset training reads: a store (checked against the run) or Parquet; end to end in the worker."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from parquet_helpers import write_texts
from store_helpers import make_text_corpus, sample_texts

from shared.exit_codes import ExitCode
from worker.cli import main
from worker.data import DataError, IterableParquetDataset, load_tokenizer
from worker.data.prepare import train_tokenizer
from worker.data.source import open_training_dataset, resolve_dataset
from worker.data.store_build import build_store
from worker.data.store_dataset import TokenStoreDataset
from worker.data.token_store import TokenStore
from worker.loss_log import read_losses


def _open(source: object, tok_dir: Path) -> object:
    return open_training_dataset(
        source, load_tokenizer(tok_dir), tokenizer_spec=str(tok_dir), sequence_length=16,
        rank=0, world_size=1, local_batch_size=2, bos_token_id=0,
    )  # fmt: skip


def test_a_store_is_detected_by_its_manifest(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    src, files = make_text_corpus(tmp_path, sample_data[0])
    assert resolve_dataset(str(src)) == files
    assert isinstance(_open(files, sample_data[1]), IterableParquetDataset)
    build_store(str(src), str(sample_data[1]), tmp_path / "store")
    store = resolve_dataset(str(tmp_path / "store"))
    assert isinstance(store, TokenStore)
    assert isinstance(_open(store, sample_data[1]), TokenStoreDataset)
    (tmp_path / "half" / ".build").mkdir(parents=True)
    with pytest.raises(DataError, match=r"unfinished token store .* again to finish it"):
        resolve_dataset(str(tmp_path / "half"))


def test_a_store_of_another_tokenizer_is_refused_saying_what_to_do(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    build_store(str(src), str(sample_data[1]), tmp_path / "store")
    train_tokenizer(sample_texts(sample_data[0], 200), tmp_path / "other", vocab_size=400)
    with pytest.raises(DataError) as err:
        _open(resolve_dataset(str(tmp_path / "store")), tmp_path / "other")
    message = str(err.value)
    assert "\n" not in message and "another tokenizer" in message
    assert f"pyrecover data tokenize --dataset {src} --tokenizer-name-or-path {tmp_path / 'other'}" in message


def test_a_store_whose_sources_changed_is_refused_and_one_without_them_warns(
    tmp_path: Path, sample_data: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    src, files = make_text_corpus(tmp_path, sample_data[0])
    build_store(str(src), str(sample_data[1]), tmp_path / "store")
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    write_texts(files[0], sample_texts(sample_data[0], 30, offset=900))
    with pytest.raises(DataError, match=r"is stale: source .*a\.parquet changed.*pyrecover data tokenize"):
        _open(resolve_dataset(str(tmp_path / "store")), sample_data[1])
    shutil.rmtree(src)  # a store copied where its sources are not: everything training needs is in it
    with caplog.at_level(logging.WARNING, logger="pyrecover.worker"):
        assert isinstance(_open(resolve_dataset(str(tmp_path / "copy")), sample_data[1]), TokenStoreDataset)
    assert "3 of 3 source files are not reachable" in caplog.text


def _train(dataset: Path, tok: Path, ckpt: Path, name: str) -> int:
    return main([
        "--dataset", str(dataset), "--tokenizer-name-or-path", str(tok), "--model-preset", "tiny",
        "--sequence-length", "32", "--batch-size", "4", "--model-dtype", "fp32", "--seed", "7",
        "--training-steps", "6", "--checkpoint-frequency", "-1", "--checkpoint-dir", str(ckpt),
        "--experiment-name", name, "--log-loss-to-csv", "--no-use-torch-distributed-ckpt",
    ])  # fmt: skip


def test_training_on_the_store_gives_the_losses_of_training_on_parquet(
    tmp_path: Path, sample_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    parquet, tok = tmp_path / "corpus.parquet", sample_data[1]
    shutil.copy(sample_data[0], parquet)
    build_store(str(parquet), str(tok), tmp_path / "tokens")
    assert _train(parquet, tok, tmp_path, "parquet") == ExitCode.OK
    parquet.unlink()  # the store run cannot read the Parquet: it trains on the store alone
    assert _train(tmp_path / "tokens", tok, tmp_path, "store") == ExitCode.OK
    losses = read_losses(tmp_path / "store" / "loss.csv")
    assert sorted(losses) == list(range(1, 7))
    assert losses == read_losses(tmp_path / "parquet" / "loss.csv")  # exactly: the same batches

    train_tokenizer(sample_texts(sample_data[0], 200), tmp_path / "other", vocab_size=400)
    capsys.readouterr()
    assert _train(tmp_path / "tokens", tmp_path / "other", tmp_path, "wrong") == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("pyrecover train: error: dataset: token store") and "another tokenizer" in err[-1]
    )
