"""Crash safety: ``kill -9`` a process while it saves, at random moments; "latest" must always load.

A child saves checkpoints back to back (DCP sync, vanilla, DCP async) and is SIGKILLed after a
random delay, so kills land in every phase: writing shards, checksumming, the manifest, the
rename, retention. Each mode keeps one run directory across its trials, so later trials also
start from the debris of earlier kills.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pytest
from ckpt_helpers import make_state, manager, train

from shared.paths import TMP_PREFIX

MODES = [("dcp", False), ("vanilla", False), ("dcp", True)]
TRIALS_PER_MODE = 8  # 24 kills in all
HIDDEN = 1024  # ~13k params x (weights + 2 moments): each save writes ~200 kB in milliseconds


def _save_forever(root: str, fmt: str, async_save: bool, seed: int, ready: EventType) -> None:
    state = make_state(seed=seed, hidden=HIDDEN)
    m = manager(Path(root), format=fmt, async_save=async_save, keep_last_k=2)
    latest = m.latest()
    step = latest.step if latest is not None else 0
    ready.set()  # the random delay starts now, not during the (load-dependent) start-up
    while True:
        train(state, 1)
        step += 1
        state.progress["step"] = step
        m.save(step, state)
        m.completed()


@pytest.mark.slow  # 12-23 s on 2 busy cores: 24 child processes, each killed mid-run
def test_kill_9_during_saves_never_breaks_latest(tmp_path: Path) -> None:
    ctx = mp.get_context("forkserver")
    # Children fork from a server that already imported torch (and dynamo, which AdamW imports
    # lazily), so each trial starts in a fraction of a second.
    ctx.set_forkserver_preload(
        ["torch", "torch._dynamo", "ckpt_helpers", "worker.checkpoint", "test_ckpt_crash"]
    )
    rnd = random.Random(1234)
    killed_mid_write = 0
    restored_steps: list[int] = []
    for trial in range(TRIALS_PER_MODE):
        for fmt, async_save in MODES:
            root = tmp_path / f"{fmt}-{'async' if async_save else 'sync'}"
            ready = ctx.Event()
            child = ctx.Process(target=_save_forever, args=(str(root), fmt, async_save, trial, ready))
            child.start()
            assert ready.wait(120), "child did not start"
            time.sleep(rnd.uniform(0.0, 0.4))
            child.kill()  # SIGKILL: no cleanup, no atexit, no flush
            child.join()
            assert child.exitcode == -9, f"child died on its own (exit {child.exitcode}) in trial {trial}"
            run = root / "run"
            if run.exists() and any(p.name.startswith(TMP_PREFIX) for p in run.iterdir()):
                killed_mid_write += 1

            m = manager(root, format=fmt)
            latest = m.latest()
            if latest is None:
                continue  # killed before the first commit
            state = make_state(seed=99, hidden=HIDDEN)
            restored = m.restore(state)
            assert restored is not None, f"trial {trial} {fmt}: latest {latest.path} did not load"
            assert restored.checkpoint.step == latest.step and restored.warnings == []
            assert state.progress["step"] == latest.step
            restored_steps.append(latest.step)
    kills = len(MODES) * TRIALS_PER_MODE
    print(f"{kills} kills, {killed_mid_write} left a temporary, {len(restored_steps)} restores")
    assert len(restored_steps) >= len(MODES) * TRIALS_PER_MODE // 2, "too few trials got to a commit"
    assert killed_mid_write > 0, "no kill landed during a write; the test would prove nothing"
