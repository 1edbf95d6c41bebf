"""Building a token store: layout and contents, determinism, kill -9 and resume, staleness, refusals."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from parquet_helpers import write_texts
from store_helpers import make_text_corpus, sample_texts, store_files

from worker.data import DataError, load_tokenizer
from worker.data.store_build import build_store
from worker.data.store_manifest import MANIFEST_NAME, read_manifest, tokenizer_fingerprint
from worker.data.tokenizer import encode_batch

TINY_SHARDS = 1e-9  # MB: every row group becomes its own shard


def reference_epoch(files: list[Path], tok: object) -> tuple[list[int], list[int]]:
    """(tokens, document starts) of one epoch, the way the Parquet path builds its stream."""
    import pyarrow.parquet as pq

    tokens: list[int] = []
    starts: list[int] = []
    for f in files:
        texts = [t or "" for t in pq.read_table(f).column("text").to_pylist()]
        for ids in encode_batch(tok, texts):
            starts.append(len(tokens))
            tokens += [tok.bos_token_id, *ids]  # type: ignore[attr-defined]
    return tokens, starts


def read_store(directory: Path) -> tuple[list[int], list[int]]:
    manifest = read_manifest(directory)
    tokens: list[int] = []
    starts: list[int] = []
    for sh in manifest["shards"]:
        docs = np.fromfile(directory / f"{sh['name']}.docs", dtype="<u8")
        starts += [len(tokens) + int(d) for d in docs]
        tokens += np.fromfile(directory / f"{sh['name']}.tokens", dtype="<u2").tolist()
    return tokens, starts


def test_a_store_holds_the_parquet_stream_its_index_and_a_manifest(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    src, files = make_text_corpus(tmp_path, sample_data[0])
    tok = load_tokenizer(sample_data[1])
    out = tmp_path / "store"
    result = build_store(str(src), str(sample_data[1]), out, shard_mb=0.01)
    manifest = read_manifest(out)
    assert result.built == len(manifest["shards"]) > len(files)  # several shards per file
    tokens, starts = read_store(out)
    assert (tokens, starts) == reference_epoch(files, tok)
    assert manifest["token_dtype"] == "uint16"  # a vocabulary of 8192
    assert manifest["counts"] == {
        "sources": 3,
        "shards": result.built,
        "documents": 60,
        "tokens": len(tokens),
    }
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)
    for entry, f in zip(manifest["sources"], files, strict=True):
        assert entry["path"] == str(f.resolve()) and entry["size"] == f.stat().st_size
        assert entry["crc32"] == f"{zlib.crc32(f.read_bytes()):08x}"
    for sh in manifest["shards"]:
        assert sh["tokens_crc32"] == f"{zlib.crc32((out / (sh['name'] + '.tokens')).read_bytes()):08x}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME] + [f"{sh['name']}.{k}" for sh in manifest["shards"] for k in ("tokens", "docs")]
    )  # the work-in-progress folder is gone
    assert "created" not in json.dumps(manifest)  # no timestamps: same inputs, same bytes


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_kill_9_mid_build_then_the_same_command_finishes_it_byte_for_byte(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    """Killed while 2 processes build, continued by 1: the bytes of an uninterrupted 1-process build."""
    texts = sample_texts(sample_data[0], 1200)
    src = write_texts(tmp_path / "big.parquet", texts, rows_per_group=8)  # 150 row groups
    tok = str(sample_data[1])
    ref = build_store(str(src), tok, tmp_path / "ref", workers=1, shard_mb=TINY_SHARDS)
    total = len(ref.manifest["shards"])
    out = tmp_path / "killed"
    code = "import sys; from worker.data.prepare import main; sys.exit(main())"
    args = ["tokenize", "--dataset", str(src), "--tokenizer-name-or-path", tok, "--out", str(out),
            "--workers", "2", "--shard-mb", str(TINY_SHARDS), "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, *args])
    children: list[int] = []
    try:
        while proc.poll() is None:
            if len(list((out / ".build").glob("shard-*.json"))) >= 3:
                children = _children(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)  # orphaned workers finish their unit and leave on their own
    assert not any(Path(f"/proc/{c}").exists() for c in children)
    assert not (out / MANIFEST_NAME).exists()
    committed = len(list((out / ".build").glob("shard-*.json")))
    assert 3 <= committed < total

    again = build_store(str(src), tok, out, workers=1, shard_mb=TINY_SHARDS)
    assert again.reused >= committed and again.reused + again.built == total
    assert store_files(out) == store_files(tmp_path / "ref")


def test_a_fresh_store_is_kept_and_a_stale_one_rebuilt(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    src, files = make_text_corpus(tmp_path, sample_data[0])
    tok = str(sample_data[1])
    out = tmp_path / "store"
    build_store(str(src), tok, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = build_store(str(src), tok, out)
    assert again.built == 0 and again.stale is None
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten

    write_texts(files[1], sample_texts(sample_data[0], 9, offset=500), rows_per_group=2)
    rebuilt = build_store(str(src), tok, out)
    assert rebuilt.stale is not None and "b.parquet" in rebuilt.stale and rebuilt.built > 0
    build_store(str(src), tok, tmp_path / "fresh")
    assert store_files(out) == store_files(tmp_path / "fresh")

    (src / "d.parquet").write_bytes(files[0].read_bytes())  # the directory now names one more file
    assert "1 new" in str(build_store(str(src), tok, out).stale)


def test_an_interrupted_build_of_other_inputs_is_discarded(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    tok = str(sample_data[1])
    out = tmp_path / "store"
    (out / ".build").mkdir(parents=True)
    (out / ".build" / "plan.json").write_text('{"sources": "something else"}')
    (out / ".build" / "shard-00000.json").write_text(json.dumps({"name": "shard-00000", "tokens": 1}))
    (out / "shard-00000.tokens").write_bytes(b"\0\0")
    (out / "shard-00000.docs").write_bytes(b"\0" * 8)
    (out / "shard-00099.tokens").write_bytes(b"\0\0")  # more shards than the new plan has
    result = build_store(str(src), tok, out, shard_mb=0.01)
    assert result.reused == 0
    build_store(str(src), tok, tmp_path / "fresh", shard_mb=0.01)
    assert store_files(out) == store_files(tmp_path / "fresh")


def test_an_out_dir_that_is_something_else_is_refused_untouched(
    tmp_path: Path, sample_data: tuple[Path, Path]
) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    notes = tmp_path / "home"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    (notes / "shard-plan.txt").write_text("also mine")  # shard-like, but no name a build writes
    with pytest.raises(DataError, match="not empty and not a token store"):
        build_store(str(src), str(sample_data[1]), notes)
    ckpt = tmp_path / "step-10"
    ckpt.mkdir()
    (ckpt / MANIFEST_NAME).write_text('{"step": 10}')
    with pytest.raises(DataError, match="not a token store's"):
        build_store(str(src), str(sample_data[1]), ckpt)
    with pytest.raises(DataError, match="not a directory"):
        build_store(str(src), str(sample_data[1]), notes / "notes.txt")
    assert store_files(notes) == {"notes.txt": b"mine", "shard-plan.txt": b"also mine"}
    assert store_files(ckpt) == {MANIFEST_NAME: b'{"step": 10}'}


def test_a_second_build_of_the_same_store_is_refused(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    out = tmp_path / "store"
    (out / ".build").mkdir(parents=True)
    with open(out / ".build" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DataError, match="another `pyrecover data tokenize`"):
            build_store(str(src), str(sample_data[1]), out)
    assert not (out / MANIFEST_NAME).exists()


def test_bad_inputs_are_refused(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    tok = str(sample_data[1])
    with pytest.raises(DataError, match="--workers"):
        build_store(str(src), tok, tmp_path / "s", workers=0)
    with pytest.raises(DataError, match="--shard-mb"):
        build_store(str(src), tok, tmp_path / "s", shard_mb=float("nan"))
    with pytest.raises(DataError, match="no rows"):
        build_store(str(write_texts(tmp_path / "empty.parquet", [])), tok, tmp_path / "s")
    with pytest.raises(DataError, match="no such file"):
        build_store(str(tmp_path / "missing.parquet"), tok, tmp_path / "s")
    assert not (tmp_path / "s").exists()
