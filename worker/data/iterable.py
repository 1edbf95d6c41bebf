"""Streaming, packing, rank-sharded and resumable Parquet dataset for training.

One global stream: files in order, row groups in order, rows in order; each document is
tokenized (in batches, without special tokens), prefixed with BOS and appended to a token stream
that is cut into consecutive chunks of L+1 tokens. At the end of the data the stream wraps to the
first row again (the next epoch) without breaking the current chunk.

Sharding: optimizer step s consumes global chunks [s·G, (s+1)·G) with G = local_batch × world;
rank r takes chunks s·G + r·b … s·G + (r+1)·b − 1. Every rank reads the whole stream (so the
packing, and the cursor, are the same everywhere) and keeps only its slice, so what the ranks
train on together is independent of the world size: no overlap, no gap.

Cursor: after each yielded batch, ``state_dict()`` is the position of the first token not yet
consumed by ANY rank — (epoch, file, row, token offset into that row's BOS-prefixed tokens) —
plus the number of chunks consumed. It is identical on all ranks and independent of the world
size, so a run may resume with a different one. Restoring seeks by row-group metadata and
re-tokenizes only from the cursor's row onwards: resume cost does not grow with the position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

from worker.data.dataset import IGNORE_INDEX
from worker.data.files import TEXT_COLUMN, DataError, check_parquet_file, resolve_parquet_files
from worker.data.tokenizer import encode_batch

CURSOR_VERSION = 1


@dataclass(kw_only=True)
class Cursor:
    """Global stream position (see the module docstring); JSON-serialisable through ``asdict``."""

    epoch: int = 0
    file_index: int = 0
    row_index: int = 0
    """Row within the file (counted over all its row groups)."""
    token_offset: int = 0
    """Tokens of that row (BOS included) already consumed; may equal its length."""
    chunks_consumed: int = 0
    """Global chunks (samples of L+1 tokens) consumed by all ranks together."""


@dataclass
class _Doc:
    epoch: int
    file_index: int
    row_index: int
    tokens: list[int]


class IterableParquetDataset(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Yields this rank's ``(inputs, labels)`` LongTensors, [local_batch_size, L] (or [L] if None).

    Labels are the inputs shifted by one, with -100 where the target is BOS (the model is not
    asked to predict where a document starts). Iterate it directly, or through a DataLoader with
    ``batch_size=None, num_workers=0``: worker processes would each hold their own cursor. A new
    ``iter()`` continues from the current cursor.
    """

    def __init__(
        self,
        files: Sequence[str | Path] | str | Path,
        tokenizer: Any,
        *,
        sequence_length: int,
        rank: int = 0,
        world_size: int = 1,
        local_batch_size: int | None = None,
        bos_token_id: int | None = None,
        tokenize_batch_rows: int = 256,
    ) -> None:
        if isinstance(files, str | Path):
            self.files = resolve_parquet_files(files)
        else:
            self.files = [Path(f) for f in files]
            for f in self.files:
                if not f.is_file():
                    raise DataError(f"{f}: no such file")
                check_parquet_file(f)
        if not self.files:
            raise DataError("no Parquet files given")
        if sequence_length < 1:
            raise ValueError(f"sequence_length: must be >= 1 (got {sequence_length})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank/world_size: need 0 <= rank < world_size (got {rank}/{world_size})")
        if local_batch_size is not None and local_batch_size < 1:
            raise ValueError(f"local_batch_size: must be >= 1 or None (got {local_batch_size})")
        bos = bos_token_id if bos_token_id is not None else getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise DataError("the tokenizer has no BOS token; pass bos_token_id")
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = local_batch_size
        self.bos_token_id = int(bos)
        self.tokenize_batch_rows = tokenize_batch_rows
        # Row counts per row group from the footers only: seeking needs no data read.
        self._row_groups: list[list[int]] = []
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            self._row_groups.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        if sum(map(sum, self._row_groups)) == 0:
            named = str(self.files[0]) + (f" and {len(self.files) - 1} more" if len(self.files) > 1 else "")
            raise DataError(f"{named}: no rows to train on (the 'text' column is empty)")
        self._cursor = Cursor()

    @property
    def chunks_per_step(self) -> int:
        """Global chunks one optimizer step consumes (local batch × world size)."""
        return (self.local_batch_size or 1) * self.world_size

    def state_dict(self) -> dict[str, Any]:
        """The global cursor after the last yielded batch (the same on every rank)."""
        return {"version": CURSOR_VERSION, **asdict(self._cursor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (also one saved with another world size or batch split)."""
        if state.get("version") != CURSOR_VERSION:
            raise DataError(f"data cursor version {state.get('version')!r} is not {CURSOR_VERSION}")
        try:
            cursor = Cursor(**{k: int(v) for k, v in state.items() if k != "version"})
        except TypeError as exc:
            raise DataError(f"malformed data cursor {state!r}") from exc
        if not 0 <= cursor.file_index < len(self.files):
            raise DataError(
                f"data cursor file_index {cursor.file_index} but the dataset has {len(self.files)}"
            )
        rows = sum(self._row_groups[cursor.file_index])
        if not 0 <= cursor.row_index < max(rows, 1) or min(cursor.token_offset, cursor.epoch) < 0:
            raise DataError(f"data cursor {state!r} lies outside {self.files[cursor.file_index]}")
        self._cursor = cursor

    def _documents(self, epoch: int, file_index: int, row_index: int) -> Iterator[_Doc]:
        """BOS-prefixed token lists of every row from the given position on, forever (epoch after epoch)."""
        bos, step = self.bos_token_id, self.tokenize_batch_rows
        while True:
            for fi in range(file_index, len(self.files)):
                parquet = pq.ParquetFile(self.files[fi])
                first = 0  # index in the file of the row group's first row
                for rg, n_rows in enumerate(self._row_groups[fi]):
                    if row_index >= first + n_rows:
                        first += n_rows
                        continue  # seek: whole row groups before the cursor are never read
                    column = parquet.read_row_group(rg, columns=[TEXT_COLUMN]).column(0)
                    for start in range(max(row_index - first, 0), n_rows, step):
                        texts = [t or "" for t in column.slice(start, step).to_pylist()]
                        for j, ids in enumerate(encode_batch(self.tokenizer, texts)):
                            yield _Doc(epoch, fi, first + start + j, [bos, *ids])
                    first += n_rows
                row_index = 0
            epoch, file_index = epoch + 1, 0

    def _chunks(self, cursor: Cursor) -> Iterator[tuple[list[int], Cursor]]:
        """Consecutive chunks of L+1 tokens, each with the cursor just after it."""
        size = self.sequence_length + 1
        docs = self._documents(cursor.epoch, cursor.file_index, cursor.row_index)
        doc = next(docs)
        offset = cursor.token_offset
        if offset > len(doc.tokens):
            raise DataError(
                f"data cursor token_offset {offset} exceeds the {len(doc.tokens)} tokens of row "
                f"{doc.row_index} of {self.files[doc.file_index]}: "
                "data or tokenizer changed since the checkpoint?"
            )
        consumed = cursor.chunks_consumed
        while True:
            chunk: list[int] = []
            while len(chunk) < size:
                if offset == len(doc.tokens):
                    doc, offset = next(docs), 0
                take = min(size - len(chunk), len(doc.tokens) - offset)
                chunk.extend(doc.tokens[offset : offset + take])
                offset += take
            consumed += 1
            yield (
                chunk,
                Cursor(
                    epoch=doc.epoch,
                    file_index=doc.file_index,
                    row_index=doc.row_index,
                    token_offset=offset,
                    chunks_consumed=consumed,
                ),
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        per_rank = self.local_batch_size or 1
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        chunks = self._chunks(self._cursor)
        while True:
            mine: list[list[int]] = []
            for j in range(self.chunks_per_step):
                chunk, after = next(chunks)
                if lo <= j < hi:
                    mine.append(chunk)
            ids = torch.tensor(mine, dtype=torch.long)
            inputs = ids[:, :-1]
            labels = ids[:, 1:].clone()
            labels[labels == self.bos_token_id] = IGNORE_INDEX
            # Updated before the yield: whoever receives the batch may checkpoint right away.
            self._cursor = after
            if self.local_batch_size is None:
                yield inputs[0], labels[0]
            else:
                yield inputs, labels
