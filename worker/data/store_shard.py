"""One shard of a token store: which rows it holds, how it is written, when it counts as committed.

A *unit* is a run of consecutive row groups of one source file, about ``shard_bytes`` of
uncompressed text (never less than one row group), planned from the Parquet footers alone.
``write_unit`` streams it record batch by record batch (memory is bounded by one batch, not by
the file), appends each document as BOS + ids to ``shard-N.tokens`` and its start offset to
``shard-N.docs``, checksumming while writing; both files go to temporary names, are fsynced
and renamed, and only then is the unit's record ``.build/shard-N.json`` written.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from worker.data.files import TEXT_COLUMN, DataError
from worker.data.store_manifest import BUILD_DIRNAME, DOCS_DTYPE, TOKEN_DTYPES, shard_name
from worker.data.tokenizer import encode_batch

ROWS_PER_BATCH = 1024


@dataclass(frozen=True, kw_only=True)
class Unit:
    """Row groups [first_group, end_group) of source ``source``: rows first_row … first_row+rows-1."""

    index: int
    source: int
    first_group: int
    end_group: int
    first_row: int
    rows: int

    @property
    def name(self) -> str:
        return shard_name(self.index)


def plan_units(files: list[Path], *, shard_bytes: int) -> list[Unit]:
    """Units over ``files`` in stream order, from the footers only (no data read)."""
    units: list[Unit] = []
    for fi, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        row = start = 0
        size = rows = 0
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            size += group.total_byte_size
            rows += group.num_rows
            if size >= shard_bytes or rg == meta.num_row_groups - 1:
                if rows:
                    units.append(Unit(index=len(units), source=fi, first_group=start,
                                      end_group=rg + 1, first_row=row, rows=rows))  # fmt: skip
                row, start, size, rows = row + rows, rg + 1, 0, 0
    return units


def write_unit(
    unit: Unit,
    source: Path,
    out: Path,
    tokenizer: Any,
    *,
    bos: int,
    token_dtype: str,
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize ``unit`` into ``out/<name>.tokens`` + ``.docs``, commit it, and return its record."""
    dtype = np.dtype(TOKEN_DTYPES[token_dtype])
    max_id = np.iinfo(dtype).max
    final = {kind: out / f"{unit.name}.{kind}" for kind in ("tokens", "docs")}
    tmp = {kind: out / f".{p.name}.tmp-{os.getpid()}" for kind, p in final.items()}
    crc = {"tokens": 0, "docs": 0}
    tokens = rows = 0
    parquet = pq.ParquetFile(source)
    with open(tmp["tokens"], "wb") as ft, open(tmp["docs"], "wb") as fd:
        groups = list(range(unit.first_group, unit.end_group))
        for batch in parquet.iter_batches(
            batch_size=ROWS_PER_BATCH, row_groups=groups, columns=[TEXT_COLUMN], use_threads=False
        ):
            ids = encode_batch(tokenizer, [t or "" for t in batch.column(0).to_pylist()])
            lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
            local = np.cumsum(lengths) - lengths  # each document's BOS, within this batch
            flat = np.full(int(lengths.sum()), bos, dtype=np.int64)
            body = np.ones(flat.size, dtype=bool)
            body[local] = False
            flat[body] = np.fromiter(itertools.chain.from_iterable(ids), np.int64, flat.size - len(ids))
            if flat.size and (int(flat.max()) > max_id or int(flat.min()) < 0):
                raise DataError(f"{source}: a token id does not fit {token_dtype}")
            data = flat.astype(dtype).data  # fresh, contiguous arrays: their buffers, no copy
            starts = (local + tokens).astype(DOCS_DTYPE).data
            ft.write(data)
            fd.write(starts)
            crc["tokens"] = zlib.crc32(data, crc["tokens"])
            crc["docs"] = zlib.crc32(starts, crc["docs"])
            tokens += flat.size
            rows += len(ids)
            if on_rows is not None:
                on_rows(len(ids))
        for fh in (ft, fd):
            fh.flush()
            os.fsync(fh.fileno())
    if rows != unit.rows:
        raise DataError(f"{source}: read {rows} rows of row groups {groups}, the footer says {unit.rows}")
    for kind in ("tokens", "docs"):
        os.replace(tmp[kind], final[kind])
    record = {
        "name": unit.name,
        "source": unit.source,
        "row_groups": [unit.first_group, unit.end_group],
        "first_row": unit.first_row,
        "documents": rows,
        "tokens": tokens,
        "tokens_crc32": f"{crc['tokens']:08x}",
        "docs_crc32": f"{crc['docs']:08x}",
    }
    # The record is written after the data was fsynced, but needs no fsync itself: a record lost
    # or torn in a crash only means this unit is built again (and _committed checks the sizes,
    # so a record whose renames were lost counts for nothing). Two fsyncs per unit, not five.
    path = out / BUILD_DIRNAME / f"{unit.name}.json"
    tmp_record = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp_record.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp_record, path)
    return record


def committed_record(out: Path, unit: Unit, itemsize: int) -> dict[str, Any] | None:
    """The record of ``unit`` if an earlier (interrupted) build committed it, else None.

    Sizes are checked, not checksums: the files were fsynced and renamed before the record was
    written, so a record exists only for complete files.
    """
    try:
        record = json.loads((out / BUILD_DIRNAME / f"{unit.name}.json").read_text())
        ok = (
            record["row_groups"] == [unit.first_group, unit.end_group]
            and record["source"] == unit.source
            and record["documents"] == unit.rows
            and (out / f"{unit.name}.docs").stat().st_size == unit.rows * np.dtype(DOCS_DTYPE).itemsize
            and (out / f"{unit.name}.tokens").stat().st_size == record["tokens"] * itemsize
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if ok else None
