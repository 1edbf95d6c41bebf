"""Submit-time input checks: real files on disk, the worker's own torch-free checks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controller.services.errors import InvalidField
from controller.services.input_checks import check_inputs
from controller.settings import Settings
from shared.schemas import RunCreate


def body(dataset: str, tokenizer: str, scheduler: str = "local") -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": "r",
            "training": {"dataset": dataset, "tokenizer_name_or_path": tokenizer, "training_steps": 10},
            "resources": {"scheduler": scheduler, "time_limit": "1m"},
        }
    )


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["hello world", "more text"]}), data)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    return data, tok


def settings(tmp_path: Path, visible: list[str]) -> Settings:
    return Settings(data_dir=tmp_path, inputs_visible=visible)


def test_inputs_that_exist_and_can_train_pass(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    data, tok = inputs
    check_inputs(body(str(data), str(tok)), settings(tmp_path, ["local"]))
    check_inputs(body(str(data), "meta-llama/Llama-3.1-8B"), settings(tmp_path, ["local"]))  # a hub name


@pytest.mark.parametrize("which", ["dataset", "tokenizer_name_or_path"])
def test_a_missing_path_is_refused_naming_the_field_where_the_controller_sees_it(
    tmp_path: Path, inputs: tuple[Path, Path], which: str
) -> None:
    data, tok = inputs
    paths = {"dataset": str(data), "tokenizer_name_or_path": str(tok)}
    paths[which] = str(tmp_path / "nowhere" / "x.parquet")
    spec = body(paths["dataset"], paths["tokenizer_name_or_path"])
    with pytest.raises(InvalidField) as err:
        check_inputs(spec, settings(tmp_path, ["local"]))
    assert err.value.field == f"training.{which}" and "nowhere" in str(err.value)
    # a backend with its own file system: the path may exist there, the worker decides (exit 3)
    check_inputs(body(paths["dataset"], paths["tokenizer_name_or_path"], "slurm"), settings(tmp_path, []))
    with pytest.raises(InvalidField):
        check_inputs(
            body(paths["dataset"], paths["tokenizer_name_or_path"], "slurm"), settings(tmp_path, ["slurm"])
        )


def test_a_path_that_is_here_but_cannot_train_is_refused_for_every_backend(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    data, tok = inputs
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_text)
    for dataset, words in ((empty, "no rows"), (no_text, "text")):
        with pytest.raises(InvalidField, match=words) as err:
            check_inputs(body(str(dataset), str(tok), "slurm"), settings(tmp_path, []))
        assert err.value.field == "training.dataset"
    bare = tmp_path / "bare_tok"
    bare.mkdir()
    with pytest.raises(InvalidField, match="no tokenizer files") as err:
        check_inputs(body(str(data), str(bare), "slurm"), settings(tmp_path, []))
    assert err.value.field == "training.tokenizer_name_or_path"


def test_a_relative_path_is_checked_where_the_worker_will_read_it(
    tmp_path: Path, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tok = inputs
    monkeypatch.chdir(tmp_path)
    check_inputs(body("d.parquet", str(tok)), settings(tmp_path, ["local"]))
    with pytest.raises(InvalidField, match=r"data/missing\.parquet"):
        check_inputs(body("data/missing.parquet", str(tok)), settings(tmp_path, ["local"]))


def test_a_fifo_named_as_the_dataset_is_refused_without_being_read(
    tmp_path: Path, inputs: tuple[Path, Path]
) -> None:
    """A hostile value must not hang the request: a FIFO is never opened (only regular files are)."""
    _, tok = inputs
    fifo = tmp_path / "pipe.parquet"
    import os

    os.mkfifo(fifo)
    with pytest.raises(InvalidField) as err:
        check_inputs(body(str(fifo), str(tok)), settings(tmp_path, ["local"]))
    assert err.value.field == "training.dataset"
