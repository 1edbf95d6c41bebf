"""Building a token store from Parquet: streaming, parallel, resumable, deterministic.

The sources (the files a ``--dataset`` spec resolves to, in the training order) are cut into
*units*: consecutive row groups of one file, about ``shard_mb`` MB of uncompressed text each
(never less than one row group). Each unit becomes one shard, tokenized by one process that
streams it record batch by record batch (memory is bounded by one batch, not by the file), so
every core works and the output order is the units' order, whatever finishes first.

A unit is *committed* once its two files were written to temporary names, fsynced and renamed,
and then its record ``.build/shard-N.json`` was written the same way. ``.build/plan.json`` says
what is being built (sources, tokenizer fingerprint, units). An interrupted build (even kill -9)
re-run with the same inputs keeps the committed units and builds the rest; with other inputs it
starts over. The manifest is written last, then ``.build/`` is removed: the result is byte for
byte the one an uninterrupted build makes. A lock in ``.build/`` keeps two builds apart.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from worker.data.files import TEXT_COLUMN, DataError, resolve_parquet_files
from worker.data.store_manifest import (
    BUILD_DIRNAME,
    DOCS_DTYPE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORE_FORMAT,
    TOKEN_DTYPES,
    file_crc32,
    fsync_dir,
    read_manifest,
    shard_name,
    source_identity,
    stale_reason,
    token_dtype_for,
    tokenizer_fingerprint,
    write_json_atomic,
)
from worker.data.tokenizer import encode_batch, load_tokenizer

DEFAULT_SHARD_MB = 64.0
ROWS_PER_BATCH = 1024
PLAN_NAME = "plan.json"
_OURS = ("shard-", "manifest.json", BUILD_DIRNAME)


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


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    directory: Path
    built: int
    """Shards tokenized by this call (0 when the store was already fresh)."""
    reused: int
    """Shards an interrupted build had committed and this call kept."""
    manifest: dict[str, Any]
    stale: str | None = None
    """Why an existing store was rebuilt, if it was."""


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
            data, starts = flat.astype(dtype), (local + tokens).astype(DOCS_DTYPE)
            ft.write(memoryview(data))
            fd.write(memoryview(starts))
            crc["tokens"] = zlib.crc32(memoryview(data), crc["tokens"])
            crc["docs"] = zlib.crc32(memoryview(starts), crc["docs"])
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
    fsync_dir(out)
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
    write_json_atomic(out / BUILD_DIRNAME / f"{unit.name}.json", record)
    return record


class _BackendOnly:
    """What ``encode_batch`` needs of a fast tokenizer: the Rust backend (no transformers import)."""

    is_fast = True

    def __init__(self, backend: Any) -> None:
        self.backend_tokenizer = backend


# The tokenizer of this worker process, set once by _init_worker.
_worker: dict[str, Any] = {}


def _init_worker(backend_json: str | None, tokenizer_spec: str, fingerprint: str) -> None:
    """Pool initializer: one single-threaded tokenizer per process (``--workers`` counts cores).

    A fast tokenizer travels as its backend's JSON: rebuilt here it is the very tokenizer the
    parent fingerprinted, and the worker starts in a fraction of a second because it never
    imports transformers. A slow one is loaded again and checked against the fingerprint.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        if backend_json is not None:
            from tokenizers import Tokenizer

            _worker["tokenizer"] = _BackendOnly(Tokenizer.from_str(backend_json))
        else:
            tokenizer = load_tokenizer(tokenizer_spec)
            if tokenizer_fingerprint(tokenizer) != fingerprint:
                raise DataError(f"tokenizer {tokenizer_spec!r} changed while the store was being built")
            _worker["tokenizer"] = tokenizer
    except Exception as exc:  # an initializer that raises breaks the pool; the first task reports it
        _worker["error"] = exc


def _unit_in_worker(unit: Unit, source: str, out: str, bos: int, token_dtype: str) -> dict[str, Any]:
    if "error" in _worker:
        raise _worker["error"]
    return write_unit(unit, Path(source), Path(out), _worker["tokenizer"], bos=bos, token_dtype=token_dtype)


def _committed(out: Path, unit: Unit, itemsize: int) -> dict[str, Any] | None:
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


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    (out / BUILD_DIRNAME).mkdir(exist_ok=True)
    fh = open(out / BUILD_DIRNAME / "lock", "w")  # noqa: SIM115 - held for the whole build
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{out}: another `pyrecover data tokenize` is building this store") from None
        yield
    finally:
        fh.close()


def _check_out_dir(out: Path) -> None:
    """Refuse an ``--out`` that is something else than a (partial) store: it would be written into."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory")
    if not out.is_dir():
        return
    if (out / MANIFEST_NAME).exists():
        try:
            raw = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raw = None
        if not isinstance(raw, dict) or raw.get("format") != STORE_FORMAT:
            raise DataError(f"--out {out}: its {MANIFEST_NAME} is not a token store's; pick a new directory")
        return
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(_OURS))
    if foreign and not (out / BUILD_DIRNAME).exists():
        raise DataError(
            f"--out {out}: not empty and not a token store ({foreign[0]!r}); pick a new directory"
        )


def _tokenize_units(
    todo: list[Unit],
    files: list[Path],
    out: Path,
    tokenizer: Any,
    tokenizer_spec: str,
    *,
    workers: int,
    advance: Callable[[int], None],
) -> Iterator[dict[str, Any]]:
    """Build every unit of ``todo`` (in this process when ``workers`` is 1); yields their records."""
    fingerprint, bos = tokenizer_fingerprint(tokenizer), tokenizer.bos_token_id
    token_dtype = token_dtype_for(len(tokenizer))
    if workers == 1 or len(todo) <= 1:
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as asked
        try:
            for u in todo:
                yield write_unit(u, files[u.source], out, tokenizer, bos=bos, token_dtype=token_dtype,
                                 on_rows=advance)  # fmt: skip
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
        return
    # spawn, not fork: this process has threads (checksums, the progress bar).
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(backend.to_str() if backend is not None else None, tokenizer_spec, fingerprint),
    )
    try:
        futures = {
            pool.submit(_unit_in_worker, u, str(files[u.source]), str(out), bos, token_dtype): u for u in todo
        }
        for fut in as_completed(futures):
            try:
                record = fut.result()
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "a tokenizer process died (out of memory? try fewer --workers); "
                    "committed shards are kept: run the same command again to continue"
                ) from exc
            advance(futures[fut].rows)
            yield record
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error: no queued unit starts


def _checksum_sources(files: list[Path]) -> Callable[[], list[str]]:
    """Start reading the sources' whole-file CRCs in a thread (zlib drops the GIL); returns a join."""
    result: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(file_crc32(f) for f in files)
        except BaseException as exc:  # re-raised in the caller's thread by join()
            failure.append(exc)

    thread = threading.Thread(target=run, name="source-checksums", daemon=True)
    thread.start()

    def join() -> list[str]:
        thread.join()
        if failure:
            raise DataError(f"cannot checksum the sources: {failure[0]}") from failure[0]
        return result

    return join


def build_store(
    dataset: str,
    tokenizer_spec: str,
    out: Path,
    *,
    workers: int = 1,
    shard_mb: float = DEFAULT_SHARD_MB,
    force: bool = False,
    verify: bool = False,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> BuildResult:
    """Make ``out`` a fresh token store of ``dataset`` tokenized with ``tokenizer_spec``.

    A fresh store is left as it is (unless ``force``; ``verify`` also compares whole-file source
    checksums); a stale one is rebuilt; an interrupted build is continued. ``workers`` processes
    tokenize (1: this process, on one core). ``progress(total_rows)`` may return a callable that
    is told the rows done. Raises DataError on bad input, before anything in ``out`` changes.
    """
    if workers < 1:
        raise DataError(f"--workers: must be >= 1 (got {workers})")
    if not shard_mb > 0:
        raise DataError(f"--shard-mb: must be > 0 (got {shard_mb})")
    files = [f.resolve() for f in resolve_parquet_files(dataset)]
    tokenizer = load_tokenizer(tokenizer_spec)
    if tokenizer.bos_token_id is None:
        raise DataError(f"tokenizer {tokenizer_spec!r} has no BOS token")
    fingerprint = tokenizer_fingerprint(tokenizer)
    token_dtype = token_dtype_for(len(tokenizer))
    _check_out_dir(out)
    stale = None
    if (out / MANIFEST_NAME).exists():
        try:
            stale = stale_reason(read_manifest(out), files=files, fingerprint=fingerprint, verify=verify)
        except DataError as exc:
            stale = str(exc)
        if stale is None and not force:
            if (out / BUILD_DIRNAME).exists():  # a build killed between its commit and its clean-up
                with _build_lock(out):
                    shutil.rmtree(out / BUILD_DIRNAME)
            return BuildResult(directory=out, built=0, reused=0, manifest=read_manifest(out))
        stale = stale or "rebuild forced"
    units = plan_units(files, shard_bytes=max(int(shard_mb * 1e6), 1))
    if not units:
        raise DataError(f"{dataset}: the dataset has no rows")
    sources = [source_identity(f) for f in files]
    plan = {
        "format": STORE_FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "token_dtype": token_dtype,
        "bos_token_id": tokenizer.bos_token_id,
        "sources": sources,
        "units": [asdict(u) for u in units],
    }
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        build = out / BUILD_DIRNAME
        if (out / MANIFEST_NAME).exists():  # stale: no reader may take the old store for current
            (out / MANIFEST_NAME).unlink()
            fsync_dir(out)
        try:
            same_plan = json.loads((build / PLAN_NAME).read_text()) == plan
        except (OSError, ValueError):
            same_plan = False
        if not same_plan:
            for p in build.glob("shard-*.json"):
                p.unlink()
            write_json_atomic(build / PLAN_NAME, plan)
        for p in out.glob(".shard-*.tmp-*"):  # left by killed workers
            p.unlink(missing_ok=True)
        itemsize = np.dtype(TOKEN_DTYPES[token_dtype]).itemsize
        records = {u.index: r for u in units if (r := _committed(out, u, itemsize)) is not None}
        reused = len(records)
        todo = [u for u in units if u.index not in records]
        advance = progress(sum(u.rows for u in units)) if progress else (lambda n: None)
        advance(sum(u.rows for u in units if u.index in records))
        join_checksums = _checksum_sources(files)
        for record in _tokenize_units(todo, files, out, tokenizer, tokenizer_spec, workers=workers,
                                      advance=advance):  # fmt: skip
            records[record_index(record)] = record
        shards = [records[u.index] for u in units]
        rows = [0] * len(files)
        for sh in shards:
            rows[sh["source"]] += sh["documents"]
        for s, crc, n in zip(sources, join_checksums(), rows, strict=True):
            s.update(crc32=crc, rows=n)
        names = {f"{sh['name']}.{kind}" for sh in shards for kind in ("tokens", "docs")}
        for p in out.glob("shard-*"):  # shards of an older, larger build of this directory
            if p.name not in names:
                p.unlink()
        manifest = {
            "format": STORE_FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "token_dtype": token_dtype,
            "shard_mb": shard_mb,
            "tokenizer": {
                "fingerprint": fingerprint,
                "name_or_path": tokenizer_spec,
                "bos_token_id": tokenizer.bos_token_id,
                "vocab_size": len(tokenizer),
            },
            "sources": sources,
            "shards": shards,
            "counts": {
                "sources": len(sources),
                "shards": len(shards),
                "documents": sum(sh["documents"] for sh in shards),
                "tokens": sum(sh["tokens"] for sh in shards),
            },
        }
        write_json_atomic(out / MANIFEST_NAME, manifest)
        shutil.rmtree(build, ignore_errors=True)
    return BuildResult(directory=out, built=len(todo), reused=reused, manifest=manifest, stale=stale)


def record_index(record: dict[str, Any]) -> int:
    """The unit index of a shard record (its name is ``shard-<index>``)."""
    return int(record["name"].removeprefix("shard-"))
