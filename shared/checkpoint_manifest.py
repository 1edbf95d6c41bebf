"""Reading and verifying a committed checkpoint without torch: what the worker and the controller
both need to decide whether a ``step-<N>`` directory counts.

A ``step-<N>`` directory counts only if its ``manifest.json`` parses and names the step; it is
*verified* when every file the manifest lists has the recorded size and CRC-32 (``verify``), and
it is *trusted* when, beyond that, the manifest lists files at all and lists every data file in
the directory (``problems``: a forged or hand-edited manifest that lists nothing, or leaves the
shards out, would otherwise verify). The worker writes manifests (``worker/checkpoint/manifest.py``)
and chooses what to resume from (``worker/checkpoint/restore.py``); the controller verifies a run's
final checkpoint before it calls the run COMPLETED (``controller/reconciler/ending.py``).
"""

from __future__ import annotations

import json
import stat
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shared.paths import MANIFEST_NAME

MANIFEST_VERSION = 1
CHECKSUM_ALGORITHM = "crc32"
DATA_SUFFIXES = (".distcp", ".pt")
"""Files a checkpoint's data lives in (DCP shards, torch.save files)..."""
DATA_NAMES = frozenset({".metadata", "checkpoint.pt"})
"""... and the DCP metadata and vanilla file by name."""
_CHUNK = 8 << 20  # large reads keep zlib in its fast path and outside the GIL


class ManifestError(Exception):
    """There is no manifest that counts: missing, unreadable, or without the required keys."""


def file_crc32(path: Path, *, fsync: bool = False) -> tuple[int, str]:
    """(size, checksum) of one file; optionally fsync it in the same pass."""
    import os

    crc = 0
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
            size += n
        if fsync:
            os.fsync(fh.fileno())
    return size, f"{crc:08x}"


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest, or ``ManifestError`` saying why there is none that counts."""
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no {MANIFEST_NAME} (not a committed checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{directory}: {MANIFEST_NAME} is unreadable: {e}") from e
    if not isinstance(manifest, dict):
        raise ManifestError(f"{directory}: {MANIFEST_NAME} is not a JSON object")
    for key, typ in (("step", int), ("world_size", int), ("format", str), ("files", dict)):
        if not isinstance(manifest.get(key), typ) or isinstance(manifest.get(key), bool):
            raise ManifestError(f"{directory}: {MANIFEST_NAME} lacks a valid {key!r}")
    if manifest.get("checksum_algorithm", CHECKSUM_ALGORITHM) != CHECKSUM_ALGORITHM:
        raise ManifestError(f"{directory}: unknown checksum algorithm {manifest['checksum_algorithm']!r}")
    return manifest


def verify(directory: Path, manifest: Mapping[str, Any] | None = None, *, threads: int = 4) -> list[str]:
    """Every problem found (empty when the checkpoint is intact): sizes first, then checksums."""
    try:
        manifest = manifest if manifest is not None else read_manifest(directory)
    except ManifestError as e:
        return [str(e)]
    problems: list[str] = []
    to_hash: list[tuple[str, dict[str, Any]]] = []
    for name, entry in sorted(manifest["files"].items()):
        if not isinstance(entry, dict) or ".." in str(name).split("/") or str(name).startswith("/"):
            problems.append(f"{name}: not a file entry inside the checkpoint")
            continue
        path = directory / name
        try:
            info = path.stat()
        except OSError:
            problems.append(f"{name}: missing")
            continue
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):
            # A device or a FIFO (a link to /dev/zero, say) would be read forever: never hashed.
            problems.append(f"{name}: not a regular file")
        elif size != entry.get("size"):
            problems.append(f"{name}: size {size} != {entry.get('size')} recorded (truncated or overwritten)")
        else:
            to_hash.append((name, entry))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(to_hash)))) as pool:
        sums = list(pool.map(lambda item: file_crc32(directory / item[0])[1], to_hash))
    for (name, entry), crc in zip(to_hash, sums, strict=True):
        if crc != entry.get("checksum"):
            problems.append(f"{name}: checksum {crc} != {entry.get('checksum')} recorded (corrupt)")
    return problems


def problems(directory: Path, manifest: Mapping[str, Any], *, threads: int = 4) -> list[str]:
    """``verify`` plus what a forged manifest could hide: no files at all, or data files (shards,
    DCP metadata, the vanilla file) present but not listed, hence never checked."""
    found = verify(directory, manifest, threads=threads)
    if not manifest["files"]:
        found.append(f"{MANIFEST_NAME} lists no files")
    listed = set(manifest["files"])
    try:
        names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    except OSError as e:
        return [*found, f"cannot list {directory}: {e}"]
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if name not in listed and (base in DATA_NAMES or base.endswith(DATA_SUFFIXES)):
            found.append(f"{name}: not listed in {MANIFEST_NAME} (forged or hand-edited manifest)")
    return found


def check_step(directory: Path, step: int) -> list[str]:
    """Everything wrong with ``directory`` as the committed checkpoint of ``step`` (empty: it counts)."""
    try:
        manifest = read_manifest(directory)
    except ManifestError as e:
        return [str(e)]
    if manifest["step"] != step:
        return [f"{directory}: {MANIFEST_NAME} names step {manifest['step']}, not {step}"]
    return problems(directory, manifest)
