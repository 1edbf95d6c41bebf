"""TokenStore: reads by stream position across shards and epochs, maps only what it reads, and
translates positions to the Parquet path's cursors and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_helpers import make_text_corpus

from worker.data import DataError
from worker.data.store_build import build_store
from worker.data.token_store import TokenStore


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sample_data: tuple[Path, Path]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("token-store")
    src, files = make_text_corpus(tmp, sample_data[0])
    build_store(str(src), str(sample_data[1]), tmp / "store", shard_mb=0.01)
    store = TokenStore(tmp / "store")
    epoch = np.concatenate(
        [np.fromfile(tmp / "store" / f"{s['name']}.tokens", dtype="<u2") for s in store.manifest["shards"]]
    ).astype(np.int64)
    return {"dir": tmp / "store", "epoch": epoch, "files": files, "tmp": tmp}


def test_reads_any_range_of_the_endless_stream(built: dict[str, Any]) -> None:
    store = TokenStore(built["dir"])
    epoch = built["epoch"]
    t = store.tokens_per_epoch
    assert t == len(epoch) and len(store.manifest["shards"]) > 3
    endless = np.concatenate([epoch] * 4)
    for start, n in [(0, 1), (0, t), (5, 700), (t - 3, 10), (t - 1, 2 * t + 5), (3 * t + 17, 40)]:
        got = store.read(start, n)
        assert got.dtype == np.int64 and got.tolist() == endless[start : start + n].tolist(), (start, n)


def test_a_seek_maps_only_the_shard_it_reads(built: dict[str, Any]) -> None:
    store = TokenStore(built["dir"], max_open=2)
    last = store.manifest["shards"][-1]
    store.read(10 * store.tokens_per_epoch + store.tokens_per_epoch - last["tokens"], 8)
    assert list(store._maps) == [len(store.manifest["shards"]) - 1]  # no other shard touched
    for i in range(5):
        store.read(store._token_starts[i], 1)
    assert len(store._maps) == 2  # at most max_open stay mapped


def test_positions_and_parquet_cursors_translate_both_ways(built: dict[str, Any]) -> None:
    store = TokenStore(built["dir"])
    t = store.tokens_per_epoch
    for p in [1, 2, 100, t - 1, t, t + 1, 3 * t + 999]:
        epoch, f, row, offset = store.locate(p)
        assert store.position(epoch, f, row, offset) == p
        assert epoch == (p - 1) // t and offset >= 1
    assert store.locate(t)[0] == 0  # the last token of an epoch still belongs to it
    # The documents of file b start right after those of file a: row 0 of file 1, offset 0.
    first_b = store.position(0, 1, 0, 0)
    assert store.read(first_b, 1).tolist() == [store.bos_token_id]
    assert store.locate(first_b + 1)[1:] == (1, 0, 1)


def test_a_damaged_shard_is_refused_when_read(built: dict[str, Any]) -> None:
    copy = built["tmp"] / "damaged"
    shutil.copytree(built["dir"], copy)
    (copy / "shard-00001.tokens").write_bytes((copy / "shard-00001.tokens").read_bytes()[:-2])
    (copy / "shard-00002.docs").unlink()
    store = TokenStore(copy)
    store.read(0, 4)  # shard 0 is intact
    with pytest.raises(DataError, match=r"shard-00001\.tokens has .* bytes.*rebuild"):
        store.read(store._token_starts[1], 4)
    with pytest.raises(DataError, match=r"shard-00002\.docs is missing"):
        store.read(store._token_starts[2], 4)


def test_a_documents_index_that_points_outside_its_shard_is_refused(built: dict[str, Any]) -> None:
    copy = built["tmp"] / "bad-index"
    shutil.copytree(built["dir"], copy)
    docs = np.fromfile(copy / "shard-00000.docs", dtype="<u8")
    docs[1] = 10**12
    docs.tofile(copy / "shard-00000.docs")
    with pytest.raises(DataError, match="documents index of shard 0 is damaged"):
        TokenStore(copy).position(0, 0, 0, 0)


def test_a_manifest_is_validated_before_anything_is_mapped(built: dict[str, Any]) -> None:
    copy = built["tmp"] / "hostile"
    shutil.copytree(built["dir"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="must be named 'shard-00000'"):
        TokenStore(copy)


def test_a_store_rebuilt_under_a_reader_is_refused_at_the_next_shard(built: dict[str, Any]) -> None:
    copy = built["tmp"] / "rebuilt"
    shutil.copytree(built["dir"], copy)
    store = TokenStore(copy)
    store.read(0, 4)
    manifest = (copy / "manifest.json").read_text()
    (copy / "manifest.json").unlink()  # what a rebuild does first
    (copy / "manifest.json").write_text(manifest)  # ... and last (a new file, even with these bytes)
    store.read(1, 4)  # shard 0 stays mapped: it still reads what it mapped
    with pytest.raises(DataError, match="rebuilt or removed while this run read it"):
        store.read(store._token_starts[1], 4)
