"""The token store's manifest: what a store holds, what it was built from, and whether it is fresh.

A token store is a directory::

    manifest.json          written last (temp + fsync + rename): a directory without it is no store
    shard-00000.tokens     the BOS-prefixed documents of one run of row groups, packed back to back
    shard-00000.docs       uint64 start offset (into that shard) of each of its documents
    ...

Tokens are little-endian uint16 when every id fits (vocabulary of at most 65,536), else uint32.
Shard ``i`` holds consecutive rows of one source file; shards in index order, their documents in
order, are exactly the global token stream of the Parquet path for one epoch.

The manifest records the tokenizer's fingerprint (a hash of what determines the ids, see
:func:`tokenizer_fingerprint`), the source files (absolute path, size, CRC-32 of the whole file
and of its Parquet footer, rows), every shard (source, row groups, rows, tokens, CRC-32 of both
files) and the totals. It holds no timestamps: building the same sources with the same tokenizer
gives the same bytes, whether or not the build was interrupted.

Freshness is checked cheaply (sizes and footer CRCs: a Parquet footer holds every row group's
offsets, sizes and statistics, so rewriting a file changes it) or fully (``verify``: whole-file
CRCs). Everything read from a manifest is validated: names, counts and sizes must agree before a
shard is mapped, so a hostile or damaged manifest is refused, never followed outside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.data.files import DataError

MANIFEST_NAME = "manifest.json"
BUILD_DIRNAME = ".build"
STORE_FORMAT = "pyrecover-token-store"
FORMAT_VERSION = 1
TOKEN_DTYPES = {"uint16": "<u2", "uint32": "<u4"}
DOCS_DTYPE = "<u8"
_SHARD_NAME = re.compile(r"shard-[0-9]{5,9}")
_CHUNK = 8 << 20


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def token_dtype_for(vocab_size: int) -> str:
    """``uint16`` when every id (0 … vocab_size-1) fits in 16 bits, else ``uint32``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that determines the ids the store holds; stable across loads and saves.

    For a fast tokenizer: the backend's full definition (model, vocabulary, merges, added tokens,
    normalizer, pre-tokenizer, post-processor) without its truncation and padding settings, which
    ``encode_batch`` switches off; plus the BOS id prefixed to each document and the vocabulary
    size. For a slow tokenizer: its class, vocabulary, BOS id and size. File timestamps, paths
    and ``tokenizer_config.json`` cosmetics do not count.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    what: dict[str, Any]
    if getattr(tokenizer, "is_fast", False) and backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        what = {"backend": spec}
    elif hasattr(tokenizer, "get_vocab"):
        what = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    else:
        raise DataError(f"cannot fingerprint tokenizer of type {type(tokenizer).__name__}")
    what["bos_token_id"] = tokenizer.bos_token_id
    what["vocab_size"] = len(tokenizer)
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# --- files ---------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Persist a directory's entries: a rename is durable only after this."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` via a temporary sibling, fsync, rename and a directory fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def footer_crc32(path: Path) -> str:
    """CRC-32 of a Parquet file's footer (metadata + length + magic): a few KB read from the end."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < 12:
            raise DataError(f"{path}: too small to be a Parquet file")
        fh.seek(size - 8)
        tail = fh.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length + 8 > size:
            raise DataError(f"{path}: no Parquet footer")
        fh.seek(size - 8 - length)
        return f"{zlib.crc32(fh.read(length + 8)):08x}"


def source_identity(path: Path) -> dict[str, Any]:
    """The cheap identity of a source file: absolute path, size and footer CRC."""
    return {"path": str(path), "size": path.stat().st_size, "footer_crc32": footer_crc32(path)}


# --- reading and validating ------------------------------------------------------------------------
def is_token_store(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a store manifest (valid or not)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / MANIFEST_NAME).is_file()


def _int(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if type(value) is not int or value < minimum:
        raise DataError(f"{where}: {key!r} must be an integer >= {minimum} (got {value!r})")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key!r} must be a non-empty string (got {value!r})")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{where}: {key!r} must be a list of objects")
    return value


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if it is a well-formed, self-consistent store manifest, else DataError."""
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise DataError(f"{where}: not a token store manifest (no format {STORE_FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{where}: token store format version {manifest.get('format_version')!r} is not "
            f"{FORMAT_VERSION}; rebuild it with `pyrecover data tokenize`"
        )
    if manifest.get("token_dtype") not in TOKEN_DTYPES:
        raise DataError(f"{where}: token_dtype must be one of {sorted(TOKEN_DTYPES)}")
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict):
        raise DataError(f"{where}: 'tokenizer' must be an object")
    _str(tok, "fingerprint", where)
    _int(tok, "bos_token_id", where)
    vocab = _int(tok, "vocab_size", where, 1)
    if token_dtype_for(vocab) == "uint32" and manifest["token_dtype"] == "uint16":
        raise DataError(f"{where}: a vocabulary of {vocab} does not fit uint16 tokens")
    sources = _list(manifest, "sources", where)
    for s in sources:
        _str(s, "path", where)
        _str(s, "footer_crc32", where)
        _str(s, "crc32", where)
        _int(s, "size", where)
        _int(s, "rows", where)
    shards = _list(manifest, "shards", where)
    if not shards:
        raise DataError(f"{where}: the store has no shards")
    for i, sh in enumerate(shards):
        if sh.get("name") != shard_name(i) or not _SHARD_NAME.fullmatch(sh["name"]):
            raise DataError(f"{where}: shard {i} must be named {shard_name(i)!r} (got {sh.get('name')!r})")
        if not 0 <= _int(sh, "source", where) < len(sources):
            raise DataError(f"{where}: shard {i} names source {sh['source']} of {len(sources)}")
        _int(sh, "tokens", where, 1)
        _int(sh, "documents", where, 1)
        _int(sh, "first_row", where)
        _str(sh, "tokens_crc32", where)
        _str(sh, "docs_crc32", where)
    counts = manifest.get("counts")
    if not isinstance(counts, dict):
        raise DataError(f"{where}: 'counts' must be an object")
    if (
        _int(counts, "tokens", where) != sum(sh["tokens"] for sh in shards)
        or _int(counts, "documents", where) != sum(sh["documents"] for sh in shards)
        or counts["documents"] != sum(s["rows"] for s in sources)
    ):
        raise DataError(f"{where}: the counts disagree with the shards and sources")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated manifest of the store in ``directory``, or DataError saying why there is none."""
    path = Path(directory).expanduser() / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{directory}: no {MANIFEST_NAME} (not a built token store)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    return validate_manifest(raw, str(path))


# --- freshness ------------------------------------------------------------------------------------
def tokenizer_mismatch(manifest: Mapping[str, Any], fingerprint: str) -> str | None:
    built = manifest["tokenizer"]["fingerprint"]
    if built == fingerprint:
        return None
    return (
        f"it was built with another tokenizer ({manifest['tokenizer'].get('name_or_path')!r}, "
        f"fingerprint {built[:19]}…; this one is {fingerprint[:19]}…)"
    )


def source_change(recorded: Mapping[str, Any], *, verify: bool = False) -> str | None:
    """Why the source file ``recorded`` (a manifest entry) no longer matches, or None; raises
    FileNotFoundError when it is gone."""
    path = Path(recorded["path"])
    size = path.stat().st_size
    if size != recorded["size"]:
        return f"source {path} changed (size {recorded['size']} → {size})"
    if footer_crc32(path) != recorded["footer_crc32"]:
        return f"source {path} changed (its Parquet footer differs)"
    if verify and file_crc32(path) != recorded["crc32"]:
        return f"source {path} changed (its checksum differs)"
    return None


def stale_reason(
    manifest: Mapping[str, Any], *, files: list[Path], fingerprint: str, verify: bool = False
) -> str | None:
    """Why a store does not hold ``files`` tokenized with the tokenizer of ``fingerprint``, or None."""
    if reason := tokenizer_mismatch(manifest, fingerprint):
        return reason
    recorded = [s["path"] for s in manifest["sources"]]
    wanted = [str(f) for f in files]
    if recorded != wanted:
        added, gone = set(wanted) - set(recorded), set(recorded) - set(wanted)
        return f"the dataset now names other files ({len(added)} new, {len(gone)} gone)"
    for entry in manifest["sources"]:
        try:
            if reason := source_change(entry, verify=verify):
                return reason
        except FileNotFoundError:
            return f"source {entry['path']} is gone"
    return None
