"""The two on-disk formats: how a state dict is written into a directory and read back.

- DCP: ``.metadata`` plus one ``__<rank>_<i>.distcp`` file per rank and writer thread. Every rank
  writes its own shard; replicated (DDP) tensors are de-duplicated across ranks by DCP's planner.
- vanilla: a single ``checkpoint.pt`` written by rank 0 with ``torch.save``.

Nothing here knows about manifests or step directories; the manager composes these with the
commit protocol. ``load_plain`` reads either format into plain CPU tensors without a process group
(the CLI's ``compare`` and offline tools use it).
"""

from __future__ import annotations

import io
import os
import threading
import warnings
import zlib
from collections.abc import Generator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as _dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as _dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as _dcp_save

from .staging import CachedCpuStager

VANILLA_FILE = "checkpoint.pt"
DCP_METADATA = ".metadata"


def detect_format(directory: Path) -> str | None:
    if (directory / DCP_METADATA).is_file():
        return "dcp"
    if (directory / VANILLA_FILE).is_file():
        return "vanilla"
    return None


# ---------------------------------------------------------------- checksums while writing


class CrcFile:
    """A write-only file wrapper that computes size and CRC-32 of what passes through.

    Checksumming while writing saves reading the checkpoint back (measured: that pass cost ~20% of
    a sync save). ``tell()`` is the byte count, which is the file offset for a fresh ``wb`` file.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.crc = 0
        self.size = 0

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        self._fh.write(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def fileno(self) -> int:
        return self._fh.fileno()

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def entry(self) -> dict[str, Any]:
        return {"size": self.size, "checksum": f"{self.crc:08x}"}


class _CrcFileSystem(FileSystem):
    """DCP's local file system, recording size + CRC-32 of every file it writes (keyed by path)."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[Path, dict[str, Any]] = {}
        self._lock = threading.Lock()  # DCP writes files from several threads with io_threads > 1

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with Path(path).open("wb") as fh:
            sink = CrcFile(fh)
            yield cast(io.IOBase, sink)
        with self._lock:
            self._sums[Path(path)] = sink.entry()

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        super().rename(path, new_path)
        with self._lock:
            entry = self._sums.pop(Path(path), None)
            if entry is not None:
                self._sums[Path(new_path)] = entry

    def take(self, directory: Path) -> dict[str, dict[str, Any]]:
        """The entries recorded for files directly in ``directory`` (forgotten afterwards)."""
        with self._lock:
            mine = [p for p in self._sums if p.parent == directory]
            return {p.name: self._sums.pop(p) for p in mine}


def _writer(io_threads: int) -> FileSystemWriter:
    writer = FileSystemWriter(".", sync_files=True, thread_count=io_threads)
    writer.fs = _CrcFileSystem()
    return writer


# ---------------------------------------------------------------- DCP


def dcp_save(
    state_dict: dict[str, Any], directory: Path, *, io_threads: int = 1
) -> dict[str, dict[str, Any]]:
    """Collective over the default group (or none): every rank writes and fsyncs its shard.

    Returns ``{file name: {"size", "checksum"}}`` for the files *this rank* wrote.
    """
    writer = _writer(io_threads)
    _dcp_save(state_dict, checkpoint_id=directory, storage_writer=writer, no_dist=not _distributed())
    return cast(_CrcFileSystem, writer.fs).take(directory)


class DcpAsyncWriter:
    """One reusable async writer: stages to CPU in the caller (``CachedCpuStager``), then writes
    in DCP's background thread. Saves must not overlap (the manager waits for the previous one).
    """

    def __init__(self, *, io_threads: int, process_group: dist.ProcessGroup | None) -> None:
        self._writer = _writer(io_threads)
        self._stager = CachedCpuStager()
        self._pg = process_group

    def start(self, state_dict: dict[str, Any], directory: Path) -> Future[Any]:
        future = _dcp_async_save(
            state_dict,
            checkpoint_id=directory,
            storage_writer=self._writer,
            async_stager=self._stager,
            process_group=self._pg,
            no_dist=not _distributed(),
        )
        if not isinstance(future, Future):  # AsyncSaveResponse comes only with async staging
            raise TypeError(f"dcp.async_save returned {type(future).__name__}, expected a Future")
        return future

    def take_checksums(self, directory: Path) -> dict[str, dict[str, Any]]:
        """Size + CRC-32 of the files this rank wrote into ``directory`` (call after the future)."""
        return cast(_CrcFileSystem, self._writer.fs).take(directory)

    def close(self) -> None:
        self._stager.close()


def dcp_load(template: dict[str, Any], directory: Path) -> None:
    """Load into ``template`` in place (tensors are copied into, blobs replaced); resharding as needed."""
    reader = FileSystemReader(directory)
    _dcp_load(template, storage_reader=reader, no_dist=not _distributed())


def _dcp_load_plain(directory: Path) -> dict[str, Any]:
    """Every entry of a DCP checkpoint as a CPU tensor or object, in one process, no process group."""
    reader = FileSystemReader(directory)
    metadata = reader.read_metadata()
    flat: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            flat[fqn] = torch.empty(md.size, dtype=md.properties.dtype)
        elif isinstance(md, BytesStorageMetadata):
            flat[fqn] = b""
    _ignore_single_process_warning()
    _dcp_load(flat, storage_reader=FileSystemReader(directory), no_dist=True)
    nested: dict[str, Any] = {}
    for fqn, value in flat.items():
        top, _, rest = fqn.partition(".")
        if rest:
            nested.setdefault(top, {})[rest] = value
        else:
            nested[top] = value
    return nested


# ---------------------------------------------------------------- vanilla


def vanilla_save(payload: dict[str, Any], directory: Path) -> tuple[str, int, str]:
    """torch.save ``payload`` into ``directory``, fsynced. Returns (file name, size, crc32 hex)."""
    path = directory / VANILLA_FILE
    with open(path, "wb") as fh:
        sink = CrcFile(fh)
        torch.save(payload, cast(BinaryIO, sink))
        fh.flush()
        os.fsync(fh.fileno())
    return VANILLA_FILE, sink.size, f"{sink.crc:08x}"


def vanilla_load(directory: Path) -> dict[str, Any]:
    # weights_only: the payload is tensors, numbers, strings and bytes blobs; mmap keeps RAM flat.
    loaded = torch.load(directory / VANILLA_FILE, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(loaded, dict) or "model" not in loaded:
        raise ValueError(f"{directory / VANILLA_FILE} is not a pyrecover vanilla checkpoint")
    return loaded


# ---------------------------------------------------------------- either


def load_plain(directory: Path, fmt: str | None = None) -> dict[str, Any]:
    """``{"model": {fqn: tensor}, "optim": {...}, "meta": blob, "rng": {...}}`` on CPU, no process group."""
    fmt = fmt or detect_format(directory)
    if fmt == "dcp":
        return _dcp_load_plain(directory)
    if fmt == "vanilla":
        return vanilla_load(directory)
    raise ValueError(f"{directory}: neither a DCP ({DCP_METADATA}) nor a vanilla ({VANILLA_FILE}) checkpoint")


def _distributed() -> bool:
    """Whether DCP calls are collective; without a process group we say so with ``no_dist=True``."""
    if dist.is_available() and dist.is_initialized():
        return True
    # DCP warns on every single-process save/load even when told ``no_dist=True``; for us a single
    # process is a deliberate, supported mode, so the warning is noise (and an error under
    # ``-W error``). The filter is global, not a catch_warnings() block, because async saves warn
    # from DCP's own writer thread; it matches only this message.
    _ignore_single_process_warning()
    return False


def _ignore_single_process_warning() -> None:
    warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)


_SINGLE_PROCESS_WARNING = (
    r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming the intent"
)
