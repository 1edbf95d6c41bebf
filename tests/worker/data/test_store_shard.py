"""One shard: units of whole row groups, streamed into tokens + documents index, committed records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parquet_helpers import CharTokenizer, write_texts

from worker.data import DataError
from worker.data.store_shard import Unit, committed_record, plan_units, write_unit


def test_units_are_whole_row_groups_of_one_file(tmp_path: Path) -> None:
    a = write_texts(tmp_path / "a.parquet", ["x" * 100] * 10, rows_per_group=3)  # groups of 3,3,3,1
    b = write_texts(tmp_path / "b.parquet", ["y"] * 2, rows_per_group=5)
    units = plan_units([a, b], shard_bytes=1)
    assert [(u.source, u.first_group, u.end_group, u.first_row, u.rows) for u in units] == [
        (0, 0, 1, 0, 3), (0, 1, 2, 3, 3), (0, 2, 3, 6, 3), (0, 3, 4, 9, 1), (1, 0, 1, 0, 2),
    ]  # fmt: skip
    assert [(u.source, u.rows) for u in plan_units([a, b], shard_bytes=1 << 30)] == [(0, 10), (1, 2)]


def test_an_id_that_does_not_fit_the_token_type_is_refused(tmp_path: Path) -> None:
    src = write_texts(tmp_path / "a.parquet", ["ok", "\U00011170"])  # code point 70000 > uint16
    (tmp_path / "out" / ".build").mkdir(parents=True)
    unit = Unit(index=0, source=0, first_group=0, end_group=1, first_row=0, rows=2)
    with pytest.raises(DataError, match="does not fit uint16"):
        write_unit(unit, src, tmp_path / "out", CharTokenizer(), bos=1, token_dtype="uint16")
    record = write_unit(unit, src, tmp_path / "out", CharTokenizer(), bos=1, token_dtype="uint32")
    assert np.fromfile(tmp_path / "out" / "shard-00000.tokens", dtype="<u4").tolist() == [
        1,
        111,
        107,
        1,
        70000,
    ]
    assert record["documents"] == 2 and record["tokens"] == 5


def test_a_record_counts_only_while_its_files_have_its_sizes(tmp_path: Path) -> None:
    src = write_texts(tmp_path / "a.parquet", ["abc", "de"])
    out = tmp_path / "out"
    (out / ".build").mkdir(parents=True)
    unit = Unit(index=0, source=0, first_group=0, end_group=1, first_row=0, rows=2)
    assert committed_record(out, unit, 2) is None
    record = write_unit(unit, src, out, CharTokenizer(), bos=1, token_dtype="uint16")
    assert committed_record(out, unit, 2) == record
    other = Unit(index=0, source=0, first_group=0, end_group=1, first_row=0, rows=3)
    assert committed_record(out, other, 2) is None  # planned differently
    with open(out / "shard-00000.tokens", "ab") as fh:
        fh.write(b"\0\0")  # a torn or foreign file
    assert committed_record(out, unit, 2) is None
    (out / ".build" / "shard-00000.json").write_text("{")
    assert committed_record(out, unit, 2) is None
