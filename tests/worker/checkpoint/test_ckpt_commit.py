"""Commit protocol, "latest", corruption fallback, config checks and retention."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from ckpt_helpers import assert_same_training_state, make_state, manager, train

from shared.paths import COMMITTED_MARKER, MANIFEST_NAME, TMP_PREFIX
from worker.checkpoint import CheckpointConfig, CheckpointError, CheckpointManager
from worker.checkpoint import manifest as mf
from worker.checkpoint.retention import steps_to_keep


def _save_steps(root: Path, steps: list[int], fmt: str = "dcp", **kw: object) -> None:
    state = make_state()
    m = manager(root, format=fmt, **kw)
    for step in steps:
        train(state, 1)
        state.progress["step"] = step
        m.save(step, state)


def test_manifest_records_the_contract_fields(tmp_path: Path) -> None:
    state = make_state()
    train(state, 2)
    m = manager(tmp_path, run_config={"model": {"dim": 8}, "lr": 0.01})
    m.save(2, state)
    ckpt = m.latest()
    assert ckpt is not None
    man = ckpt.manifest
    assert man["step"] == 2 and man["world_size"] == 1 and man["format"] == "dcp"
    assert man["tokens_seen"] == 64 and man["data_cursor"] == {"offset": 8}
    assert man["config"] == {"model": {"dim": 8}, "lr": 0.01} and len(man["config_hash"]) == 16
    assert set(man["files"]) == {".metadata", "__0_0.distcp"}
    assert all(set(v) == {"size", "checksum"} for v in man["files"].values())
    assert man["torch_version"] and man["created_at"]
    assert mf.verify(ckpt.path) == []
    # Checksums taken while writing equal those of the bytes on disk.
    assert man["files"] == mf.checksum_files(ckpt.path)


@pytest.mark.parametrize("async_save", [False, True])
def test_the_manifest_names_the_attempt_and_its_times_when_told(tmp_path: Path, async_save: bool) -> None:
    """What a controller that lost the reports reads off the disk (controller/reconciler/ondisk.py)."""
    state = make_state()
    m = manager(tmp_path, async_save=async_save)
    m.save(1, state)
    m.wait()
    assert "attempt" not in m.latest().manifest  # type: ignore[union-attr]  # standalone: no attempt
    m.attempt = {"number": "3", "training_started_at": 1_800_000_000.5}
    before = time.time()
    m.save(2, state)
    m.wait()
    claimed = m.latest().manifest["attempt"]  # type: ignore[union-attr]
    assert claimed["number"] == "3" and claimed["training_started_at"] == 1_800_000_000.5
    assert before <= claimed["committed_at"] <= time.time()


@pytest.mark.parametrize("async_save", [False, True])
def test_several_writer_threads_per_rank(tmp_path: Path, async_save: bool) -> None:
    state = make_state()
    train(state, 2)
    m = CheckpointManager(
        CheckpointConfig(root=tmp_path, run_name="run", io_threads=2, async_save=async_save)
    )
    m.save(2, state)
    m.wait()
    m.close()
    ckpt = m.latest()
    assert ckpt is not None and {"__0_0.distcp", "__0_1.distcp"} <= set(ckpt.manifest["files"])
    assert ckpt.manifest["files"] == mf.checksum_files(ckpt.path)
    fresh = make_state(seed=2)
    manager(tmp_path).restore(fresh)
    assert_same_training_state(state, fresh)


def test_latest_ignores_temporaries_and_dirs_without_manifest(tmp_path: Path) -> None:
    _save_steps(tmp_path, [5])
    run = tmp_path / "run"
    (run / f"{TMP_PREFIX}50-deadbeef").mkdir()  # a crashed write of a later step
    (run / "step-60").mkdir()  # renamed but without manifest (e.g. a copy gone wrong)
    (run / "step-70").mkdir()
    (run / "step-70" / MANIFEST_NAME).write_text("{not json")
    (run / "step-80").write_text("a file, not a directory")
    m = manager(tmp_path)
    latest = m.latest()
    assert latest is not None and latest.step == 5
    assert [c.step for c in m.committed()] == [5]
    fresh = make_state(seed=3)
    restored = m.restore(fresh)
    assert restored is not None and restored.checkpoint.step == 5
    # The commit protocol never leaves a step-<N> without a valid manifest: such a directory newer
    # than the one used is damage worth telling the user about (a crashed temporary is not).
    assert len(restored.warnings) == 2, restored.warnings
    assert "step-60" in restored.warnings[0] and "step-70" in restored.warnings[1]


def test_latest_sorts_steps_numerically(tmp_path: Path) -> None:
    _save_steps(tmp_path, [9, 100, 10], keep_last_k=5)
    m = manager(tmp_path)
    assert [c.step for c in m.committed()] == [9, 10, 100]
    latest = m.latest()
    assert latest is not None and latest.step == 100
    fresh = make_state(seed=3)
    m.restore(fresh)
    assert fresh.progress["step"] == 100


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def _corrupt_flip(d: Path) -> None:
    shard = max((p for p in d.iterdir() if p.name != MANIFEST_NAME), key=lambda p: p.stat().st_size)
    _flip_byte(shard, shard.stat().st_size // 2)


def _corrupt_truncate(d: Path) -> None:
    shard = max((p for p in d.iterdir() if p.name != MANIFEST_NAME), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size // 2)


def _corrupt_missing_manifest(d: Path) -> None:
    (d / MANIFEST_NAME).unlink()


def _corrupt_forged_manifest(d: Path) -> None:
    man = json.loads((d / MANIFEST_NAME).read_text())
    name = next(iter(man["files"]))
    man["files"][name]["checksum"] = "00000000" if man["files"][name]["checksum"] != "00000000" else "1"
    (d / MANIFEST_NAME).write_text(json.dumps(man))


def _corrupt_missing_shard(d: Path) -> None:
    next(p for p in d.iterdir() if p.suffix in (".distcp", ".pt")).unlink()


CORRUPTIONS = {
    "flipped-byte": _corrupt_flip,
    "truncated-shard": _corrupt_truncate,
    "missing-manifest": _corrupt_missing_manifest,
    "forged-manifest": _corrupt_forged_manifest,
    "missing-shard": _corrupt_missing_shard,
}


@pytest.mark.parametrize("fmt", ["dcp", "vanilla"])
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_newest_falls_back_to_previous(
    tmp_path: Path, fmt: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _save_steps(tmp_path, [10, 20], fmt=fmt)
    newest = tmp_path / "run" / "step-20"
    CORRUPTIONS[kind](newest)

    if kind != "missing-manifest":
        assert mf.verify(newest), "verify must report the damage"
    fresh = make_state(seed=4)
    with caplog.at_level(logging.ERROR, logger="pyrecover.worker.checkpoint"):
        restored = manager(tmp_path, format=fmt).restore(fresh)
    assert restored is not None and restored.checkpoint.step == 10 and fresh.progress["step"] == 10
    # A missing manifest makes step-20 no candidate at all, yet it is still reported as damage.
    assert len(restored.warnings) == 1 and "step-20" in restored.warnings[0]
    assert any(r.levelno == logging.ERROR and "step-20" in r.getMessage() for r in caplog.records)


def test_explicit_corrupt_checkpoint_is_an_error(tmp_path: Path) -> None:
    _save_steps(tmp_path, [10, 20])
    _corrupt_flip(tmp_path / "run" / "step-20")
    with pytest.raises(CheckpointError, match="corrupt"):
        manager(tmp_path).restore(make_state(), tmp_path / "run" / "step-20")
    with pytest.raises(CheckpointError, match="no manifest"):
        manager(tmp_path).restore(make_state(), tmp_path / "run" / "step-99")


def test_all_committed_corrupt_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    _save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        _corrupt_truncate(tmp_path / "run" / f"step-{step}")
    with pytest.raises(CheckpointError, match="none verifies"):
        manager(tmp_path).restore(make_state())


def test_immutable_key_change_is_an_error_and_others_are_noted(tmp_path: Path) -> None:
    cfg = {"model": {"dim": 8, "layers": 2}, "dataset": "a.parquet", "learning_rate": 0.01, "steps": 10}
    state = make_state()
    train(state, 1)
    immutable = ("model", "dataset")
    manager(tmp_path, run_config=cfg, immutable_keys=immutable).save(1, state)

    changed = {**cfg, "model": {"dim": 16, "layers": 2}}
    with pytest.raises(CheckpointError) as err:
        manager(tmp_path, run_config=changed, immutable_keys=immutable).restore(make_state())
    assert "model.dim" in str(err.value) and "8" in str(err.value) and "16" in str(err.value)

    allowed = {**cfg, "learning_rate": 0.02, "steps": 20}
    restored = manager(tmp_path, run_config=allowed, immutable_keys=immutable).restore(make_state())
    assert restored is not None
    assert restored.changed_fields == {"learning_rate": (0.01, 0.02), "steps": (10, 20)}


def test_retention_policy_keeps_last_k_every_n_and_protected() -> None:
    steps = [100, 10, 20, 30, 40, 50, 9]
    assert steps_to_keep(steps, keep_last_k=2, keep_every_n=None) == {50, 100}
    assert steps_to_keep(steps, keep_last_k=2, keep_every_n=20) == {20, 40, 50, 100}
    assert steps_to_keep(steps, keep_last_k=2, keep_every_n=None, protected=[9, 77]) == {9, 50, 100}


def test_retention_on_disk_numeric_and_protects_the_resumed_one(tmp_path: Path) -> None:
    _save_steps(tmp_path, [70, 80, 90], keep_last_k=2)
    assert [c.step for c in manager(tmp_path).committed()] == [80, 90]
    # Resume from 80 explicitly, then keep saving: 80 stays while this job runs.
    state = make_state()
    m = manager(tmp_path, keep_last_k=2, keep_every_n=200)
    m.restore(state, "step-80")
    for step in (100, 110, 135, 200, 210):
        train(state, 1)
        m.save(step, state)
    assert [c.step for c in m.committed()] == [80, 200, 210]
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("step-")]
    assert leftovers == [COMMITTED_MARKER]  # no temporary left, only the mark of a committed past


def test_stale_temporaries_are_removed_after_a_commit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f"{TMP_PREFIX}5-0badf00d"
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    _save_steps(tmp_path, [10])
    assert not stale.exists()


def test_failed_delete_is_logged_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _save_steps(tmp_path, [1, 2], keep_last_k=2)
    real_rename = os.rename

    def refuse_old(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src).name == "step-1":
            raise PermissionError("read-only")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", refuse_old)
    with caplog.at_level(logging.WARNING, logger="pyrecover.worker.checkpoint"):
        _save_steps(tmp_path, [3], keep_last_k=2)
    assert [c.step for c in manager(tmp_path).committed()] == [1, 2, 3]
    assert any("could not remove" in r.getMessage() for r in caplog.records)
