"""``dataset_mode: padded``: the seed's map-style data path, one document per sample, for training.

``worker.data.dataset.ParquetDataset`` (row ``i % rows``, tokenized and padded/truncated to
``sequence_length + 1`` tokens, ``training_samples`` long) batched by
``worker.data.dataset.CollatorForCLM`` (padding never a target). It yields this rank's
``(inputs, labels)`` like ``IterableParquetDataset``, and its cursor is only the number of samples
all ranks consumed together: sample ``n`` of the global order is read by whichever rank holds
that position of its step's global batch, so a resume on another world size continues exactly
where the last step stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from worker.data.dataset import CollatorForCLM, ParquetDataset
from worker.data.files import DataError

PADDED_CURSOR_VERSION = 101
"""Not the packed stream's: a cursor of one mode is never read by the other."""


class PaddedParquetStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """The seed's samples in the global order ``0, 1, 2, ...``; rank ``r`` takes the ``r``-th slice of
    each step's global batch. ``training_samples`` only sets the wrap-around length, as the seed's
    did; the stream goes on past it (wrapping again) if a run is extended."""

    def __init__(
        self,
        files: Sequence[Path],
        tokenizer: Any,
        *,
        sequence_length: int,
        rank: int,
        world_size: int,
        local_batch_size: int | None,
        training_samples: int,
    ) -> None:
        if len(files) != 1:
            raise DataError(
                f"dataset_mode padded reads one Parquet file, like the seed's ParquetDataset "
                f"({len(files)} given): name one file, or use dataset_mode packed"
            )
        try:
            self.samples = ParquetDataset(files[0], tokenizer, sequence_length, max(training_samples, 1))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad with")
        self.collate = CollatorForCLM(sequence_length=sequence_length, pad_token_id=int(pad))
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = local_batch_size
        self._consumed = 0

    @property
    def chunks_per_step(self) -> int:
        """Global samples one optimizer step consumes (local batch × world size)."""
        return (self.local_batch_size or 1) * self.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"version": PADDED_CURSOR_VERSION, "chunks_consumed": self._consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != PADDED_CURSOR_VERSION:
            raise DataError(
                f"data cursor version {state.get('version')!r} is not the padded mode's "
                f"({PADDED_CURSOR_VERSION}): this checkpoint was written with another dataset_mode"
            )
        consumed = state.get("chunks_consumed")
        if not isinstance(consumed, int) or isinstance(consumed, bool) or consumed < 0:
            raise DataError(f"malformed data cursor {state!r}")
        self._consumed = consumed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        per_rank = self.local_batch_size or 1
        while True:
            first = self._consumed + self.rank * per_rank
            inputs, labels = self.collate([self.samples[i] for i in range(first, first + per_rank)])
            # Updated before the yield: whoever receives the batch may checkpoint right away.
            self._consumed += self.chunks_per_step
            if self.local_batch_size is None:
                yield inputs[0], labels[0]
            else:
                yield inputs, labels
