"""CPU staging for async DCP saves: copy the state into buffers this process keeps between saves.

An async save must snapshot the state before the loop changes it again. Copying into fresh
memory means allocating (and page-faulting) the whole state every time; DCP's default stager
caches buffers but copies storage by storage on one thread (measured here: ~4 GB/s). This stager
keeps one buffer per state-dict entry and copies with ``Tensor.copy_``, which uses torch's
intra-op threads (~2x faster on 2 cores), so the loop's stall is one parallel memcpy of the state.
Buffers are pinned where CUDA exists (faster device-to-host copies). Saves must not overlap:
the buffers of the previous save are overwritten by the next one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.staging import AsyncStager


class CachedCpuStager(AsyncStager):
    """Stages synchronously (the copy is complete when ``stage`` returns)."""

    _synchronize_after_execute = False  # nothing to synchronise: stage() is synchronous

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, ...], torch.Tensor] = {}
        self._pin = torch.cuda.is_available()

    @torch.no_grad()
    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        staged: dict[str, Any] = self._copy(state_dict, ())
        return staged

    def _copy(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, torch.Tensor):
            buf = self._buffers.get(path)
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                buf = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=self._pin)
                self._buffers[path] = buf
            buf.copy_(value.detach())
            return buf
        if isinstance(value, dict):
            return {k: self._copy(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple):
            copied = [self._copy(v, (*path, str(i))) for i, v in enumerate(value)]
            return copied if isinstance(value, list) else tuple(copied)
        return value  # numbers, strings, bytes blobs: immutable, or (blobs) fresh on every save

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        self._buffers.clear()
