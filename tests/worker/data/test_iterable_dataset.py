"""IterableParquetDataset: packing with BOS, BOS-target masking, epochs, sharding and the global cursor."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from parquet_helpers import BOS, CharTokenizer, make_corpus, reference_stream, write_texts

from worker.data import IGNORE_INDEX, DataError, IterableParquetDataset, load_tokenizer

L = 7  # chunks of L + 1 = 8 tokens


def dataset(files: list[Path], **kw: object) -> IterableParquetDataset:
    return IterableParquetDataset(files, CharTokenizer(), sequence_length=L, **kw)  # type: ignore[arg-type]


def reference_chunks(docs: list[str], n: int) -> list[list[int]]:
    stream = reference_stream(docs, n * (L + 1))
    return [stream[i * (L + 1) : (i + 1) * (L + 1)] for i in range(n)]


def as_chunk(inputs: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Rebuild the L+1 tokens of a sample (labels at BOS targets are -100, i.e. BOS)."""
    last = labels[-1].item()
    return [*inputs.tolist(), BOS if last == IGNORE_INDEX else last]


def test_packs_documents_with_bos_and_masks_bos_targets(tmp_path: Path) -> None:
    files, docs = make_corpus(tmp_path)
    n = 60  # more than one epoch of this corpus: the stream wraps around
    assert n * (L + 1) > sum(len(d) + 1 for d in docs)  # more tokens than one epoch has
    got = list(itertools.islice(dataset(files), n))
    for (inputs, labels), expected in zip(got, reference_chunks(docs, n), strict=True):
        assert inputs.shape == labels.shape == (L,) and inputs.dtype == torch.long
        assert inputs.tolist() == expected[:-1]
        targets = torch.tensor(expected[1:])
        assert torch.equal(labels, torch.where(targets == BOS, IGNORE_INDEX, targets))
    assert any((labels == IGNORE_INDEX).any() for _, labels in got)


def test_epoch_is_counted_in_the_cursor(tmp_path: Path) -> None:
    files, docs = make_corpus(tmp_path)
    epoch_tokens = sum(len(d) + 1 for d in docs)
    ds = dataset(files, local_batch_size=4)
    it = iter(ds)
    while ds.state_dict()["chunks_consumed"] * (L + 1) <= epoch_tokens:
        assert ds.state_dict()["epoch"] == 0
        next(it)
    assert ds.state_dict()["epoch"] == 1


def collect(files: list[Path], *, world: int, batch: int | None, steps: int) -> list[list[list[list[int]]]]:
    """per_step[s][r] = the chunks rank r got at step s (ranks in lockstep); checks the cursors agree."""
    sets = [dataset(files, rank=r, world_size=world, local_batch_size=batch) for r in range(world)]
    its = [iter(d) for d in sets]
    out = []
    for _ in range(steps):
        step = []
        for it in its:
            inputs, labels = next(it)
            if batch is None:
                inputs, labels = inputs[None], labels[None]
            step.append([as_chunk(i, lab) for i, lab in zip(inputs, labels, strict=True)])
        cursors = [d.state_dict() for d in sets]
        assert all(c == cursors[0] for c in cursors), cursors
        out.append(step)
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [None, 2])
def test_rank_shards_are_disjoint_and_cover_the_global_stream(
    tmp_path: Path, world: int, batch: int | None
) -> None:
    files, docs = make_corpus(tmp_path)
    per_rank = batch or 1
    steps = 9
    per_step = collect(files, world=world, batch=batch, steps=steps)
    flat = [chunk for step in per_step for rank_chunks in step for chunk in rank_chunks]
    # Concatenated step by step, rank by rank, the shards are exactly the global stream: no gap,
    # no overlap, and the same stream whatever the world size.
    assert flat == reference_chunks(docs, steps * world * per_rank)
    for step in per_step:
        assert all(len(rank_chunks) == per_rank for rank_chunks in step)


def test_resume_yields_the_identical_continuation(tmp_path: Path) -> None:
    files, _ = make_corpus(tmp_path)
    ref = dataset(files, local_batch_size=3)
    it = iter(ref)
    for _ in range(5):
        next(it)
    saved = json.loads(json.dumps(ref.state_dict()))  # survives JSON (the checkpoint manifest)
    expected = [next(it) for _ in range(12)]
    resumed = dataset(files, local_batch_size=3)
    resumed.load_state_dict(saved)
    got = list(itertools.islice(resumed, 12))
    for (ei, el), (gi, gl) in zip(expected, got, strict=True):
        assert torch.equal(ei, gi) and torch.equal(el, gl)
    assert resumed.state_dict() == ref.state_dict()


@pytest.mark.parametrize(("before", "after"), [((2, 2), (3, 1)), ((1, 4), (2, 1)), ((3, 1), (1, 3))])
def test_resume_with_another_world_size_continues_the_global_stream(
    tmp_path: Path, before: tuple[int, int], after: tuple[int, int]
) -> None:
    files, docs = make_corpus(tmp_path)
    (w0, b0), (w1, b1) = before, after
    first = [dataset(files, rank=r, world_size=w0, local_batch_size=b0) for r in range(w0)]
    its = [iter(d) for d in first]
    for _ in range(4):
        for it in its:
            next(it)
    cursor = first[0].state_dict()
    assert cursor["chunks_consumed"] == 4 * w0 * b0

    second = [dataset(files, rank=r, world_size=w1, local_batch_size=b1) for r in range(w1)]
    for d in second:
        d.load_state_dict(cursor)
    its = [iter(d) for d in second]
    union = []
    for _ in range(5):
        for it in its:
            inputs, labels = next(it)
            union += [as_chunk(i, lab) for i, lab in zip(inputs, labels, strict=True)]
    start = 4 * w0 * b0
    assert union == reference_chunks(docs, start + 5 * w1 * b1)[start:]


def test_resume_seeks_by_row_group_instead_of_replaying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = make_corpus(tmp_path)
    ds = dataset(files)
    ds.load_state_dict({"version": 1, "epoch": 0, "file_index": 1, "row_index": 5, "token_offset": 2,
                        "chunks_consumed": 40})  # fmt: skip
    reads: list[tuple[str, int]] = []

    class Spy(pq.ParquetFile):  # type: ignore[misc]
        def __init__(self, source: Path, *args: object, **kwargs: object) -> None:
            super().__init__(source, *args, **kwargs)
            self.spy_name = Path(source).name

        def read_row_group(self, i: int, *args: object, **kwargs: object) -> object:
            reads.append((self.spy_name, i))
            return super().read_row_group(i, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", Spy)
    next(iter(ds))
    # b.parquet has 4 rows per group: row 5 is in group 1. Nothing before it is read.
    assert reads == [("b.parquet", 1)]


def test_bad_cursors_are_rejected(tmp_path: Path) -> None:
    files, _ = make_corpus(tmp_path)
    ds = dataset(files)
    good = ds.state_dict()
    with pytest.raises(DataError, match="version"):
        ds.load_state_dict({**good, "version": 99})
    with pytest.raises(DataError, match="file_index 5"):
        ds.load_state_dict({**good, "file_index": 5})
    with pytest.raises(DataError, match="outside"):
        ds.load_state_dict({**good, "row_index": 10_000})
    with pytest.raises(DataError, match="malformed"):
        ds.load_state_dict({**good, "bogus": 1})
    ds.load_state_dict({**good, "token_offset": 10_000})
    with pytest.raises(DataError, match="data or tokenizer changed"):
        next(iter(ds))


def test_argument_and_data_errors(tmp_path: Path) -> None:
    files, _ = make_corpus(tmp_path)
    with pytest.raises(ValueError, match="rank/world_size"):
        dataset(files, rank=2, world_size=2)
    with pytest.raises(ValueError, match="local_batch_size"):
        dataset(files, local_batch_size=0)
    with pytest.raises(DataError, match="no such file"):
        dataset([tmp_path / "missing.parquet"])
    with pytest.raises(DataError, match="no rows"):
        dataset([write_texts(tmp_path / "empty.parquet.bak", [])])
    with pytest.raises(DataError, match="no BOS"):
        IterableParquetDataset(files, object(), sequence_length=L)
    assert dataset(str(tmp_path / "*.parquet")).files == files  # a spec string is resolved


def test_sample_data_through_the_real_tokenizer(sample_data: tuple[Path, Path]) -> None:
    parquet, tok_dir = sample_data
    tok = load_tokenizer(tok_dir)
    ds = IterableParquetDataset(
        [parquet],
        tok,
        sequence_length=64,
        rank=1,
        world_size=2,
        local_batch_size=4,
        bos_token_id=tok.bos_token_id,
    )
    for inputs, labels in itertools.islice(ds, 3):
        assert inputs.shape == labels.shape == (4, 64)
        assert int(inputs.max()) < len(tok) and int(inputs.min()) >= 0
        assert ((labels == IGNORE_INDEX) == (torch.roll(inputs, -1, 1) == tok.bos_token_id))[:, :-1].all()
    assert ds.state_dict()["chunks_consumed"] == 3 * 8
