"""Reading a built token store: the global token stream by position, and cursors in row terms.

The store's shards, in order, are one epoch of the global stream (``T`` tokens). Position ``p``
of the endless stream (epoch after epoch) is token ``p mod T`` of that epoch: finding its shard
is a bisection over the shard offsets the manifest lists (no data read), and reading is a copy
out of the shard's memory map. A shard is mapped when first touched (and its file sizes checked
against the manifest then, so a rank opens only what it reads); at most ``max_open`` stay mapped.
A store rebuilt while it is read is noticed when the next shard is mapped, and refused.

Positions translate to and from the Parquet path's cursor (epoch, file, row, token offset) with
the documents index, so both sources share one cursor format.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from worker.data.files import DataError
from worker.data.store_manifest import DOCS_DTYPE, MANIFEST_NAME, TOKEN_DTYPES, read_manifest


class TokenStore:
    """A read-only view of the store in ``directory`` (validated manifest; shards mapped lazily)."""

    def __init__(self, directory: str | Path, *, max_open: int = 64) -> None:
        self.directory = Path(directory).expanduser()
        self.manifest: dict[str, Any] = read_manifest(self.directory)
        self._manifest_id = self._identity()
        m = self.manifest
        self.dtype = np.dtype(TOKEN_DTYPES[m["token_dtype"]])
        self.bos_token_id: int = m["tokenizer"]["bos_token_id"]
        self._shards: list[dict[str, Any]] = m["shards"]
        self._token_starts = [0, *itertools.accumulate(s["tokens"] for s in self._shards)]
        self._doc_starts = [0, *itertools.accumulate(s["documents"] for s in self._shards)]
        self._row_starts = [0, *itertools.accumulate(s["rows"] for s in m["sources"])]
        self.tokens_per_epoch: int = self._token_starts[-1]
        self.documents: int = self._doc_starts[-1]
        self.source_paths = [Path(s["path"]) for s in m["sources"]]
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._max_open = max(1, max_open)

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = (self.directory / MANIFEST_NAME).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _map(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, document starts) of shard ``i`` as memory maps."""
        maps = self._maps.get(i)
        if maps is not None:
            self._maps.move_to_end(i)
            return maps
        # A rebuild removes the manifest before it rewrites any shard and writes a new one last:
        # an unchanged manifest file means the shards are still the ones it describes.
        if self._identity() != self._manifest_id:
            raise DataError(
                f"token store {self.directory} was rebuilt or removed while this run read it; "
                "restart the run (its checkpoint keeps the position)"
            )
        shard = self._shards[i]
        out = []
        for kind, dtype, count in (
            ("tokens", self.dtype, shard["tokens"]),
            ("docs", np.dtype(DOCS_DTYPE), shard["documents"]),
        ):
            path = self.directory / f"{shard['name']}.{kind}"
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(f"token store {self.directory}: {path.name} is missing ({exc})") from exc
            if size != count * dtype.itemsize:
                raise DataError(
                    f"token store {self.directory}: {path.name} has {size} bytes, the manifest says "
                    f"{count * dtype.itemsize}; rebuild it with `pyrecover data tokenize --force`"
                )
            out.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))
        maps = (out[0], out[1])
        self._maps[i] = maps
        if len(self._maps) > self._max_open:
            self._maps.popitem(last=False)
        return maps

    def read(self, position: int, n: int) -> np.ndarray:
        """Tokens [position, position + n) of the endless stream, as int64 (wrapping at each epoch end)."""
        out = np.empty(n, dtype=np.int64)
        starts, total = self._token_starts, self.tokens_per_epoch
        q, filled = position % total, 0
        while filled < n:
            i = bisect.bisect_right(starts, q) - 1
            lo = q - starts[i]
            take = min(n - filled, starts[i + 1] - q)
            out[filled : filled + take] = self._map(i)[0][lo : lo + take]
            filled += take
            q = (q + take) % total
        return out

    # --- documents and rows ---------------------------------------------------------------------
    def _doc_span(self, g: int) -> tuple[int, int]:
        """[start, end) in the epoch of global document ``g``."""
        i = bisect.bisect_right(self._doc_starts, g) - 1
        local = g - self._doc_starts[i]
        docs = self._map(i)[1]
        begin = int(docs[local])
        end = int(docs[local + 1]) if local + 1 < len(docs) else self._shards[i]["tokens"]
        if not 0 <= begin < end <= self._shards[i]["tokens"] or (local == 0 and begin != 0):
            raise DataError(f"token store {self.directory}: the documents index of shard {i} is damaged")
        return self._token_starts[i] + begin, self._token_starts[i] + end

    def _doc_at(self, q: int) -> int:
        """Global index of the document holding epoch token ``q``."""
        i = bisect.bisect_right(self._token_starts, q) - 1
        local = int(np.searchsorted(self._map(i)[1], q - self._token_starts[i], side="right")) - 1
        return self._doc_starts[i] + local

    def locate(self, position: int) -> tuple[int, int, int, int]:
        """The Parquet cursor (epoch, file, row, token offset) after ``position`` > 0 stream tokens.

        It names the document of the last consumed token, with the offset just after that token
        (which may equal the document's length): exactly what the Parquet path reports.
        """
        if position <= 0:
            raise ValueError("locate: position must be > 0")
        epoch, q = divmod(position - 1, self.tokens_per_epoch)
        g = self._doc_at(q)
        start, _ = self._doc_span(g)
        f = bisect.bisect_right(self._row_starts, g) - 1
        return epoch, f, g - self._row_starts[f], q - start + 1

    def position(self, epoch: int, file_index: int, row_index: int, token_offset: int) -> int:
        """The stream position of a Parquet cursor; DataError if it lies outside this store."""
        if not 0 <= file_index < len(self.source_paths):
            raise DataError(
                f"data cursor file_index {file_index} but the dataset has {len(self.source_paths)}"
            )
        rows = self._row_starts[file_index + 1] - self._row_starts[file_index]
        if not 0 <= row_index < max(rows, 1) or min(token_offset, epoch) < 0:
            raise DataError(f"data cursor row {row_index} lies outside {self.source_paths[file_index]}")
        g = self._row_starts[file_index] + row_index
        if g >= self.documents:  # an empty last file: like the Parquet path, the next epoch begins
            epoch, g = epoch + 1, 0
        start, end = self._doc_span(g)
        if token_offset > end - start:
            raise DataError(
                f"data cursor token_offset {token_offset} exceeds the {end - start} tokens of row "
                f"{row_index} of {self.source_paths[file_index]}: "
                "data or tokenizer changed since the checkpoint?"
            )
        return epoch * self.tokens_per_epoch + start + token_offset
