"""TokenStoreDataset gives the Parquet path's batches and cursors, step for step, and resumes exactly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from store_helpers import make_text_corpus

from worker.data import DataError, IterableParquetDataset, load_tokenizer
from worker.data.store_build import build_store
from worker.data.store_dataset import TokenStoreDataset
from worker.data.token_store import TokenStore

L = 31  # chunks of 32 tokens; the corpus holds about 6,000: every test below wraps epochs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, sample_data: tuple[Path, Path]) -> dict[str, Any]:
    """A 3-file corpus, its store (several shards per file) and the tokenizer."""
    tmp = tmp_path_factory.mktemp("store-dataset")
    src, files = make_text_corpus(tmp, sample_data[0])
    build_store(str(src), str(sample_data[1]), tmp / "store", shard_mb=0.01)
    store = TokenStore(tmp / "store")
    assert len(store.manifest["shards"]) > len(files)
    return {"files": files, "store": store, "tokenizer": load_tokenizer(sample_data[1])}


def parquet(c: dict[str, Any], **kw: Any) -> IterableParquetDataset:
    return IterableParquetDataset(c["files"], c["tokenizer"], sequence_length=L, **kw)


def stored(c: dict[str, Any], **kw: Any) -> TokenStoreDataset:
    return TokenStoreDataset(c["store"], sequence_length=L, bos_token_id=0, **kw)


def assert_same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape
        assert torch.equal(x, y)


@pytest.mark.parametrize(("world", "batch"), [(1, 2), (3, 2), (8, 1), (2, None)])
def test_every_rank_gets_the_parquet_batches_and_cursor_across_epochs(
    corpus: dict[str, Any], world: int, batch: int | None
) -> None:
    per_step = world * (batch or 1) * (L + 1)
    steps = 2 * corpus["store"].tokens_per_epoch // per_step + 3  # two epoch wraps and a bit
    for rank in range(world):
        a = parquet(corpus, rank=rank, world_size=world, local_batch_size=batch)
        b = stored(corpus, rank=rank, world_size=world, local_batch_size=batch)
        assert a.state_dict() == b.state_dict()
        for _, x, y in zip(range(steps), a, b, strict=False):
            assert_same(x, y)
            assert a.state_dict() == b.state_dict()
        assert b.state_dict()["epoch"] >= 2


def test_labels_mask_bos_targets(corpus: dict[str, Any]) -> None:
    inputs, labels = next(iter(stored(corpus, local_batch_size=50)))
    assert (labels == -100).any() and not (labels == 0).any()
    assert torch.equal(torch.where(labels == -100, 0, labels)[:, :-1], inputs[:, 1:])


def test_save_and_restore_mid_stream_continues_bit_exactly(corpus: dict[str, Any]) -> None:
    ref = stored(corpus, rank=1, world_size=2, local_batch_size=3)
    it = iter(ref)
    for _ in range(23):
        next(it)
    saved = json.loads(json.dumps(ref.state_dict()))  # as a checkpoint manifest keeps it
    expected = [next(it) for _ in range(40)]
    resumed = stored(corpus, rank=1, world_size=2, local_batch_size=3)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved  # reported unchanged until a batch is consumed
    for x, y in zip(expected, itertools.islice(resumed, 40), strict=True):
        assert_same(x, y)
    assert resumed.state_dict() == ref.state_dict()


@pytest.mark.parametrize(("before", "after"), [((2, 2), (3, 1)), ((1, 4), (8, 1)), ((3, 1), (1, 3))])
def test_resume_with_another_world_size_continues_the_global_stream(
    corpus: dict[str, Any], before: tuple[int, int], after: tuple[int, int]
) -> None:
    (w0, b0), (w1, b1) = before, after
    first = stored(corpus, rank=w0 - 1, world_size=w0, local_batch_size=b0)
    for _ in itertools.islice(first, 17):
        pass
    cursor = first.state_dict()
    # What one rank holding the whole global batch reads from there on is the reference.
    whole = stored(corpus, world_size=1, local_batch_size=1)
    whole.load_state_dict(cursor)
    reference = [x for x, _ in itertools.islice(whole, 9 * w1 * b1)]
    second = [stored(corpus, rank=r, world_size=w1, local_batch_size=b1) for r in range(w1)]
    for d in second:
        d.load_state_dict(cursor)
    its = [iter(d) for d in second]
    union = [row for _ in range(9) for it in its for row in next(it)[0]]
    assert all(torch.equal(u, r[0]) for u, r in zip(union, reference, strict=True))
    assert len({json.dumps(d.state_dict()) for d in second}) == 1


def test_cursors_move_between_the_two_sources(corpus: dict[str, Any]) -> None:
    """A cursor saved while streaming Parquet resumes on the store, and the other way round."""
    a = parquet(corpus, local_batch_size=2)
    it = iter(a)
    for _ in range(29):
        next(it)
    b = stored(corpus, local_batch_size=2)
    b.load_state_dict(a.state_dict())
    for _, x, y in zip(range(15), it, b, strict=False):
        assert_same(x, y)
    c = parquet(corpus, local_batch_size=2)
    c.load_state_dict(b.state_dict())
    for _, x, y in zip(range(15), c, b, strict=False):
        assert_same(x, y)


def test_bad_cursors_and_arguments_are_refused(corpus: dict[str, Any]) -> None:
    ds = stored(corpus)
    good = ds.state_dict()
    for bad, match in [
        ({**good, "version": 99}, "version"),
        ({**good, "file_index": 5}, "file_index 5"),
        ({**good, "row_index": 10_000}, "outside"),
        ({**good, "bogus": 1}, "malformed"),
        ({**good, "epoch": "x"}, "malformed"),
        ({**good, "token_offset": 10_000}, "data or tokenizer changed"),
        ({**good, "chunks_consumed": -1}, "chunks_consumed"),
    ]:
        with pytest.raises(DataError, match=match):
            ds.load_state_dict(bad)
    assert ds.state_dict() == good  # a refused cursor changes nothing
    with pytest.raises(DataError, match="BOS id 0"):
        TokenStoreDataset(corpus["store"], sequence_length=L, bos_token_id=1)
    with pytest.raises(ValueError, match="rank/world_size"):
        stored(corpus, rank=2, world_size=2)
    with pytest.raises(ValueError, match="local_batch_size"):
        stored(corpus, local_batch_size=0)
