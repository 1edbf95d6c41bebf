"""Building a token store from Parquet: streaming, parallel, resumable, deterministic.

The sources (the files a ``--dataset`` spec resolves to, in the training order) are cut into
units of whole row groups (``store_shard``); each becomes one shard, tokenized by one of
``workers`` processes, so every core works, and the output order is the units' order whatever
finishes first.

``.build/plan.json`` says what is being built (sources, tokenizer fingerprint, units). An
interrupted build (even kill -9) re-run with the same inputs keeps the committed units and
builds the rest; with other inputs it starts over. The manifest is written last, then
``.build/`` is removed: the result is byte for byte the one an uninterrupted build makes, with
any number of workers. A lock in ``.build/`` keeps two builds apart; pool workers end when the
build process dies.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.data.files import DataError, resolve_parquet_files
from worker.data.store_manifest import (
    BUILD_DIRNAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORE_FORMAT,
    TOKEN_DTYPES,
    file_crc32,
    fsync_dir,
    read_manifest,
    source_identity,
    stale_reason,
    token_dtype_for,
    tokenizer_fingerprint,
    write_json_atomic,
)
from worker.data.store_shard import Unit, committed_record, plan_units, write_unit
from worker.data.tokenizer import load_tokenizer

DEFAULT_SHARD_MB = 64.0
PLAN_NAME = "plan.json"
# The only names a build ever creates, deletes or overwrites in --out.
_SHARD_FILE = re.compile(r"shard-[0-9]{5,9}\.(tokens|docs)")
_TMP_FILE = re.compile(r"\.(shard-[0-9]{5,9}\.(tokens|docs)|manifest\.json)\.tmp-[0-9]+")


def _is_ours(name: str) -> bool:
    return name in (MANIFEST_NAME, BUILD_DIRNAME) or bool(
        _SHARD_FILE.fullmatch(name) or _TMP_FILE.fullmatch(name)
    )


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


class _BackendOnly:
    """What ``encode_batch`` needs of a fast tokenizer: the Rust backend (no transformers import)."""

    is_fast = True

    def __init__(self, backend: Any) -> None:
        self.backend_tokenizer = backend


# The tokenizer of this worker process, set once by _init_worker.
_worker: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """End this process once ``parent`` is gone: idle pool workers of a killed build wait forever
    on a queue their siblings keep open. Whatever they were writing is uncommitted, hence harmless."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(parent: int, backend_json: str | None, tokenizer_spec: str, fingerprint: str) -> None:
    """Pool initializer: one single-threaded tokenizer per process (``--workers`` counts cores).

    A fast tokenizer travels as its backend's JSON: rebuilt here it is the very tokenizer the
    parent fingerprinted, and the worker starts in a fraction of a second because it never
    imports transformers. A slow one is loaded again and checked against the fingerprint.
    """
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
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


def check_out_dir(out: Path) -> None:
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
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p.name))
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
        initargs=(
            os.getpid(),
            backend.to_str() if backend is not None else None,
            tokenizer_spec,
            fingerprint,
        ),
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
    check_out_dir(out)
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
        for p in out.iterdir():  # left by killed workers
            if _TMP_FILE.fullmatch(p.name):
                p.unlink(missing_ok=True)
        itemsize = np.dtype(TOKEN_DTYPES[token_dtype]).itemsize
        records = {u.index: r for u in units if (r := committed_record(out, u, itemsize)) is not None}
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
        for p in out.iterdir():  # shards of an older, larger build of this directory
            if _SHARD_FILE.fullmatch(p.name) and p.name not in names:
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
        fsync_dir(out)  # every shard's rename is durable before the manifest that names it
        write_json_atomic(out / MANIFEST_NAME, manifest)
        shutil.rmtree(build, ignore_errors=True)
    return BuildResult(directory=out, built=len(todo), reused=reused, manifest=manifest, stale=stale)


def record_index(record: dict[str, Any]) -> int:
    """The unit index of a shard record (its name is ``shard-<index>``)."""
    return int(record["name"].removeprefix("shard-"))
