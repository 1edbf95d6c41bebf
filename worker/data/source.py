"""Which dataset a ``--dataset`` spec means for training: a token store, or Parquet to stream.

A directory with a token store manifest is read as a store (``pyrecover data tokenize`` builds
one); anything else is a Parquet file, directory or glob for ``IterableParquetDataset``. Both
give the same batches and share one cursor format.

A store is used only when it matches the run:

- built with another tokenizer (fingerprint): refused, with the command that rebuilds it;
- its source files still reachable but changed (size or Parquet footer): refused as stale, for
  the same reason a checkpoint refuses a changed dataset: the run would silently train on data
  its user has replaced. Rebuild it (``pyrecover data tokenize`` says what changed);
- its sources not reachable from here (a store copied to scratch): used, with a warning, since
  the store holds everything training needs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from worker.data.files import DataError, resolve_parquet_files
from worker.data.store_manifest import (
    BUILD_DIRNAME,
    is_token_store,
    source_change,
    tokenizer_fingerprint,
    tokenizer_mismatch,
)

log = logging.getLogger("pyrecover.worker")


def _rebuild_hint(manifest: dict[str, Any], directory: str, tokenizer_spec: str) -> str:
    return (
        f"rebuild it with `pyrecover data tokenize --dataset {manifest.get('dataset', '…')} "
        f"--tokenizer-name-or-path {tokenizer_spec} --out {directory}`"
    )


def check_store(directory: str, store: Any, tokenizer: Any, tokenizer_spec: str) -> None:
    """Refuse a store that does not match ``tokenizer`` or whose reachable sources changed."""
    manifest = store.manifest
    if reason := tokenizer_mismatch(manifest, tokenizer_fingerprint(tokenizer)):
        raise DataError(
            f"token store {directory}: {reason}; {_rebuild_hint(manifest, directory, tokenizer_spec)}, "
            f"or train with the tokenizer it was built with"
        )
    missing = 0
    for entry in manifest["sources"]:
        try:
            reason = source_change(entry)
        except FileNotFoundError:
            missing += 1
            continue
        if reason:
            raise DataError(
                f"token store {directory} is stale: {reason}; "
                + _rebuild_hint(manifest, directory, tokenizer_spec)
            )
    if missing:
        log.warning(
            "token store %s: %d of %d source files are not reachable here, so it cannot be checked "
            "against them; training on it as built",
            directory,
            missing,
            len(manifest["sources"]),
        )


def resolve_dataset(spec: str) -> Any:
    """A ``TokenStore`` (its manifest validated) or the Parquet files ``spec`` names; else DataError."""
    path = Path(spec).expanduser()
    if is_token_store(path):
        from worker.data.token_store import TokenStore

        return TokenStore(path)
    if path.is_dir() and (path / BUILD_DIRNAME).is_dir():
        raise DataError(
            f"{spec}: an unfinished token store (its build was interrupted); "
            "run the same `pyrecover data tokenize` command again to finish it"
        )
    return resolve_parquet_files(spec)


def open_training_dataset(
    source: Any,
    tokenizer: Any,
    *,
    tokenizer_spec: str,
    sequence_length: int,
    rank: int,
    world_size: int,
    local_batch_size: int | None,
    bos_token_id: int,
    mode: str = "packed",
    training_samples: int = 0,
) -> Any:
    """This rank's dataset over ``source`` (what :func:`resolve_dataset` returned); DataError if unusable.

    A ``TokenStoreDataset`` for a store (checked against the tokenizer and its sources first),
    else an ``IterableParquetDataset``; with ``mode="padded"``, the seed's map-style samples
    (``worker.data.padded.PaddedParquetStream``, ``training_samples`` long before it wraps).
    """
    if mode == "padded":
        if not isinstance(source, list):
            raise DataError(
                "dataset_mode padded reads a Parquet file, not a token store: use dataset_mode packed"
            )
        from worker.data.padded import PaddedParquetStream

        return PaddedParquetStream(
            source,
            tokenizer,
            sequence_length=sequence_length,
            rank=rank,
            world_size=world_size,
            local_batch_size=local_batch_size,
            training_samples=training_samples,
        )
    if not isinstance(source, list):
        from worker.data.store_dataset import TokenStoreDataset

        check_store(str(source.directory), source, tokenizer, tokenizer_spec)
        return TokenStoreDataset(
            source,
            sequence_length=sequence_length,
            rank=rank,
            world_size=world_size,
            local_batch_size=local_batch_size,
            bos_token_id=bos_token_id,
        )
    from worker.data.iterable import IterableParquetDataset

    return IterableParquetDataset(
        source,
        tokenizer,
        sequence_length=sequence_length,
        rank=rank,
        world_size=world_size,
        local_batch_size=local_batch_size,
        bos_token_id=bos_token_id,
    )
