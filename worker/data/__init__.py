"""Data for the worker: Parquet files, tokenizer, the seed's map-style dataset, the streaming dataset,
and the token store (built once by ``pyrecover data tokenize``, read without tokenizing).

Names are imported lazily (PEP 562) so that ``pyrecover data prepare`` and its helper processes
start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "worker.data.dataset",
    "CollatorForCLM": "worker.data.dataset",
    "ParquetDataset": "worker.data.dataset",
    "DataError": "worker.data.files",
    "resolve_parquet_files": "worker.data.files",
    "IterableParquetDataset": "worker.data.iterable",
    "Cursor": "worker.data.iterable",
    "load_tokenizer": "worker.data.tokenizer",
    "TokenStore": "worker.data.token_store",
    "TokenStoreDataset": "worker.data.store_dataset",
    "build_store": "worker.data.store_build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worker.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
