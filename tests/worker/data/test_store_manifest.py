"""Store manifests: the tokenizer fingerprint, source identities, validation and freshness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_helpers import make_text_corpus, sample_texts
from transformers import AutoTokenizer

from worker.data import DataError, load_tokenizer
from worker.data.prepare import train_tokenizer
from worker.data.store_build import build_store
from worker.data.store_manifest import (
    file_crc32,
    footer_crc32,
    read_manifest,
    source_identity,
    stale_reason,
    token_dtype_for,
    tokenizer_fingerprint,
    validate_manifest,
)


def test_the_fingerprint_is_what_determines_the_ids(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    tok_dir = sample_data[1]
    fp = tokenizer_fingerprint(load_tokenizer(tok_dir))
    assert fp.startswith("sha256:") and fp == tokenizer_fingerprint(load_tokenizer(tok_dir))
    saved = AutoTokenizer.from_pretrained(str(tok_dir))
    saved.backend_tokenizer.enable_truncation(max_length=16)  # encode_batch switches these off
    saved.backend_tokenizer.enable_padding(length=16, pad_id=2, pad_token="<|pad|>")
    saved.save_pretrained(str(tmp_path / "resaved"))
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "resaved")) == fp  # not the files' bytes

    other_bos = load_tokenizer(tok_dir)
    other_bos.bos_token = "<|eos|>"
    assert tokenizer_fingerprint(other_bos) != fp
    train_tokenizer(sample_texts(sample_data[0], 200), tmp_path / "other", vocab_size=400)
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "other")) != fp


def test_token_type_by_vocabulary_size() -> None:
    assert [token_dtype_for(n) for n in (300, 65_536, 65_537, 128_256)] == [
        "uint16",
        "uint16",
        "uint32",
        "uint32",
    ]


def test_a_footer_checksum_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x", "y"]}), path)
    first = footer_crc32(path)
    pq.write_table(pa.table({"text": ["x", "z"]}), path)
    assert footer_crc32(path) != first  # the statistics (min/max) in the footer changed
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="no Parquet footer"):
        footer_crc32(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="too small"):
        footer_crc32(tmp_path / "c.parquet")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sample_data: tuple[Path, Path]) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("manifest")
    src, files = make_text_corpus(tmp, sample_data[0])
    build_store(str(src), str(sample_data[1]), tmp / "store", shard_mb=0.01)
    return {"dir": tmp / "store", "manifest": read_manifest(tmp / "store"), "files": files, "src": src}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.update(format="something"), "not a token store manifest"),
        (lambda m: m.update(format_version=2), "format version 2 .* rebuild"),
        (lambda m: m.update(token_dtype="float64"), "token_dtype"),
        (lambda m: m["tokenizer"].update(vocab_size=70_000), "does not fit uint16"),
        (lambda m: m["shards"][1].update(name="shard-00000"), "must be named 'shard-00001'"),
        (lambda m: m["shards"][0].update(name="/etc/passwd"), "must be named"),
        (lambda m: m["shards"][0].update(source=7), "names source 7"),
        (lambda m: m["shards"][0].update(tokens=-5), "'tokens' must be an integer >= 1"),
        (lambda m: m["shards"][0].update(tokens=True), "'tokens' must be an integer"),
        (lambda m: m["shards"][0].update(tokens=m["shards"][0]["tokens"] + 1), "counts disagree"),
        (lambda m: m["sources"][0].update(rows=0), "counts disagree"),
        (lambda m: m.update(shards=[]), "no shards"),
    ],
)
def test_a_damaged_or_hostile_manifest_is_refused(store: dict[str, Any], change: Any, match: str) -> None:
    manifest = json.loads(json.dumps(store["manifest"]))
    validate_manifest(manifest, "m")
    change(manifest)
    with pytest.raises(DataError, match=match):
        validate_manifest(manifest, "m")


def test_freshness_sees_each_kind_of_change(
    tmp_path: Path, store: dict[str, Any], sample_data: tuple[Path, Path]
) -> None:
    manifest, files = store["manifest"], [f.resolve() for f in store["files"]]
    fp = manifest["tokenizer"]["fingerprint"]
    assert stale_reason(manifest, files=files, fingerprint=fp, verify=True) is None
    assert "another tokenizer" in str(stale_reason(manifest, files=files, fingerprint="sha256:0"))
    assert "1 new, 1 gone" in str(
        stale_reason(manifest, files=[*files[:2], tmp_path / "x.parquet"], fingerprint=fp)
    )
    moved = json.loads(json.dumps(manifest))
    moved["sources"][2]["size"] += 1
    assert "c.parquet changed (size" in str(stale_reason(moved, files=files, fingerprint=fp))
    moved = json.loads(json.dumps(manifest))
    moved["sources"][2]["footer_crc32"] = "00000000"
    assert "footer differs" in str(stale_reason(moved, files=files, fingerprint=fp))
    moved["sources"][2]["path"] = str(tmp_path / "gone.parquet")
    assert "is gone" in str(
        stale_reason(moved, files=[*files[:2], tmp_path / "gone.parquet"], fingerprint=fp)
    )


def test_only_verify_sees_a_same_size_patch_under_an_unchanged_footer(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["hello world"] * 50}), path, compression="none", write_statistics=False)
    recorded = {**source_identity(path), "crc32": file_crc32(path)}
    data = bytearray(path.read_bytes())
    at = data.index(b"hello world")
    data[at] = ord("j")  # "jello world": same size, same footer
    path.write_bytes(bytes(data))
    assert source_identity(path) == {k: recorded[k] for k in ("path", "size", "footer_crc32")}
    manifest = {"tokenizer": {"fingerprint": "f"}, "sources": [recorded]}
    assert stale_reason(manifest, files=[path], fingerprint="f") is None
    assert "checksum differs" in str(stale_reason(manifest, files=[path], fingerprint="f", verify=True))
