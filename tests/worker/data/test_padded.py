"""dataset_mode padded: the seed's ParquetDataset + CollatorForCLM as a training stream with a cursor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_launch import load_checkpoint, run_worker, tensors_equal, tiny_args

from worker.data import CollatorForCLM, DataError, ParquetDataset, load_tokenizer
from worker.data.iterable import IterableParquetDataset
from worker.data.padded import PaddedParquetStream


def _stream(sample_data: tuple[Path, Path], rank: int, world: int, local: int = 2) -> PaddedParquetStream:
    tokenizer = load_tokenizer(sample_data[1])
    return PaddedParquetStream(
        [sample_data[0]],
        tokenizer,
        sequence_length=16,
        rank=rank,
        world_size=world,
        local_batch_size=local,
        training_samples=40,
    )


def test_ranks_read_the_seeds_samples_in_the_global_order(sample_data: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(sample_data[1])
    seed = ParquetDataset(sample_data[0], tokenizer, 16, 40)
    collate = CollatorForCLM(sequence_length=16, pad_token_id=tokenizer.pad_token_id)
    ranks = [iter(_stream(sample_data, r, 2)) for r in range(2)]
    for step in range(25):  # past training_samples (40 = 10 steps of 4): it wraps like the seed's
        for r, it in enumerate(ranks):
            first = step * 4 + r * 2
            want = collate([seed[first], seed[first + 1]])
            got = next(it)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), (step, r)


def test_a_resume_on_another_world_size_continues_at_the_same_sample(sample_data: tuple[Path, Path]) -> None:
    one = _stream(sample_data, 0, 1, local=4)
    batches = iter(one)
    for _ in range(3):
        next(batches)
    state = one.state_dict()
    assert state["chunks_consumed"] == 12
    expected = next(batches)
    halves = []
    for r in range(2):
        s = _stream(sample_data, r, 2, local=2)
        s.load_state_dict(state)
        halves.append(next(iter(s)))
    assert torch.equal(torch.cat([h[0] for h in halves]), expected[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), expected[1])


def test_a_packed_cursor_is_refused_and_so_are_several_files(sample_data: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(sample_data[1])
    packed = IterableParquetDataset([sample_data[0]], tokenizer, sequence_length=16).state_dict()
    with pytest.raises(DataError, match="another dataset_mode"):
        _stream(sample_data, 0, 1).load_state_dict(packed)
    with pytest.raises(DataError, match="one Parquet file"):
        PaddedParquetStream(
            [sample_data[0], sample_data[0]],
            tokenizer,
            sequence_length=16,
            rank=0,
            world_size=1,
            local_batch_size=1,
            training_samples=4,
        )


@pytest.mark.slow
def test_padded_training_resumes_bit_exact(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"

    def args(name: str, *extra: str) -> list[str]:
        return [*tiny_args(sample_data, ckpt, name, steps=20, fmt="dcp"), "--dataset-mode", "padded", *extra]

    ref = run_worker(args("ref"), world_size=1)
    assert ref.ok, ref.explain()
    first = run_worker(args("int", "--stop-after-steps", "10"), world_size=1)
    assert first.ok, first.explain()
    second = run_worker(args("int"), world_size=1)
    assert second.ok, second.explain()
    assert "resumed from" in second.stderr[0]
    a, b = load_checkpoint(ckpt / "ref" / "step-20"), load_checkpoint(ckpt / "int" / "step-20")
    assert tensors_equal(a["model"], b["model"]) and tensors_equal(a["optim"], b["optim"])
    assert (ckpt / "ref" / "loss.csv").read_bytes() == (ckpt / "int" / "loss.csv").read_bytes()
