"""Divergence and all-checkpoints-corrupt on the real SLURM cluster, through a real controller's API.

Three runs at once, each on its own in-process controller (a fault hook reaches a SLURM job only
through the admin's ``slurm_prologue`` lines, which hold for every job of a controller):

1. **fp16, pure dtype** (``model_dtype: fp16``, ``mixed_precision: false``; no hook). On a CPU the
   very first AdamW update in fp16 turns weights non-finite (its eps, 1e-8, is 0 in fp16), so the
   first save is refused and the attempt ends ``diverged`` (exit 6). Under ``on_divergence: fail``
   the run FAILs after that one attempt, saying what happened and what to do; no committed
   checkpoint holds a non-finite number.
2. **NaN batches, rollback** (``PYRECOVER_TEST_NAN_BATCHES``, ``on_divergence: rollback``). Batches
   NAN_FIRST..NAN_LAST give a NaN loss; ``max_skipped_steps`` of them in a row end attempt 1
   ``diverged``. The controller records the data window on the run (a ``rollback`` event with its
   bounds), attempt 2 resumes from the last checkpoint with ``--data-skip-to`` past the window (the
   hook stays armed: batches keep their data-stream numbers, so it never meets them again) and the
   run COMPLETES, its data cursor exactly the skipped window ahead.
3. **Every checkpoint corrupt** (``log_loss_to_csv``). Attempt 1 commits at FREQ, 2 x FREQ, then
   stalls reading batch STALL_BATCH (``PYRECOVER_TEST_STALL_DATA``, attempt 1 only) while the test
   sends its ranks SIGTERM (``scancel --signal=TERM``): it stops after that step with a final save.
   Attempt 2 is held in the prologue (a hold file named after its job) while the test damages
   every committed checkpoint; released, its worker refuses (exit 4, integrity) and the run FAILs
   at once with what to do, the damaged checkpoints moved into quarantine unchanged and loss.csv
   untouched. The user then copies back a good copy of the newest checkpoint (taken before the
   damage) and resumes the run (``POST /runs/{id}/resume``): it COMPLETES from that step,
   bit-identical to the same training run standalone without interruption.

Prints each case's figures (the worker's and the run's messages, the window, seconds from submission
to the end, divergence -> training again, damage -> FAILED, resume -> COMPLETED) and appends one row
per case to the fault suite's results (``tests/fault/chaos.record``: ``PYRECOVER_CHAOS_RESULTS``).
Skipped without a cluster; a failure in CI.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from slurm_harness import (
    Runs,
    assert_ledger_adds_up,
    assert_same_weights,
    controller,
    finish,
    require_nodes,
    sh,
    start_reference,
    terminal,
    to_unix,
    training,
)

from shared.paths import LOSS_CSV_NAME, MANIFEST_NAME, QUARANTINE_PREFIX, TMP_PREFIX, parse_step
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait, pytest.mark.chaos]

STEPS = 40
FREQ = 10
BATCH = 4  # slurm_harness.training's global batch: batch k is samples (k-1)*4 .. k*4
NAN_FIRST, NAN_LAST = 13, 15  # three NaN batches in a row after the checkpoint of step 10
MAX_SKIPPED = 3
STALL_BATCH = 25  # after the checkpoints of steps 10 and 20
STALL_SECONDS = 20  # time enough to see step 24 reported and signal the ranks


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def _events(runs: Runs, run_id: int) -> list[dict[str, Any]]:
    return list(runs.api.get(f"/runs/{run_id}/events", limit=1000)["items"])


def _log(data_dir: Path, run_id: int, attempt: int) -> str:
    """The attempt's stdout and stderr (the worker logs to stderr)."""
    logs = data_dir / "runs" / str(run_id) / "logs"
    return "".join(
        p.read_text(errors="replace")
        for p in sorted(logs.glob(f"attempt-{attempt:04d}.*"))
        if p.suffix != ".env"
    )


def _committed(run_dir: Path) -> list[int]:
    return sorted(
        step for p in run_dir.iterdir()
        if (step := parse_step(p.name)) is not None and (p / MANIFEST_NAME).is_file()
    )  # fmt: skip


def _all_finite(step_dir: Path) -> bool:
    """Every floating-point tensor of the checkpoint (weights and AdamW state) is finite."""
    import torch

    from worker.checkpoint.storage import load_plain

    content = load_plain(step_dir)
    tensors = [t for part in ("model", "optim") for t in content[part].values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def _span(run: dict[str, Any]) -> float:
    """Seconds from the run's submission to its (last) end."""
    return round((to_unix(run["finished_at"]) or 0.0) - (to_unix(run["created_at"]) or 0.0), 1)


def _data_cursor(step_dir: Path) -> dict[str, int]:
    from worker.checkpoint.state import unpack
    from worker.checkpoint.storage import load_plain

    return dict(unpack(load_plain(step_dir)["meta"])["progress"]["data_cursor"])


def _loss_rows(run_dir: Path) -> int:
    lines = [line for line in (run_dir / LOSS_CSV_NAME).read_text().splitlines() if line.strip()]
    return len(lines) - 1  # the header


def _hashes(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def _largest_shard(d: Path) -> Path:
    return max(
        (p for p in d.rglob("*") if p.is_file() and p.name != MANIFEST_NAME), key=lambda p: p.stat().st_size
    )


def _damage(d: Path, truncate: bool) -> None:
    """A truncated shard, or one flipped bit in the middle of it; the manifest stays (committed)."""
    shard = _largest_shard(d)
    size = shard.stat().st_size
    if truncate:
        shard.write_bytes(shard.read_bytes()[: size // 2])
        return
    with open(shard, "r+b") as fh:
        fh.seek(size // 2)
        byte = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([byte[0] ^ 0x10]))


def test_divergence_fails_or_rolls_back_and_all_corrupt_checkpoints_fail_the_run_until_restored(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    require_nodes(1)
    started = time.monotonic()
    roots = [tmp_path, sample[0].parent, sample[1].parent]
    hold = tmp_path / "hold"
    hold.mkdir()
    fp16_body = training(
        sample, STEPS, tmp_path / "ckpt-fp16", model_dtype="fp16", mixed_precision=False,
        checkpoint_frequency=1, max_skipped_steps=MAX_SKIPPED,
    )  # fmt: skip
    nan_body = training(
        sample, STEPS, tmp_path / "ckpt-nan", checkpoint_frequency=FREQ, max_skipped_steps=MAX_SKIPPED
    )
    corrupt_body = training(
        sample, STEPS, tmp_path / "ckpt-corrupt", checkpoint_frequency=FREQ, log_loss_to_csv=True
    )
    reference = start_reference(corrupt_body, tmp_path / "reference", "reference", tmp_path)
    nan_hook = [f"export PYRECOVER_TEST_NAN_BATCHES={NAN_FIRST}-{NAN_LAST}"]
    corrupt_hooks = [
        f"export PYRECOVER_TEST_STALL_DATA={STALL_BATCH}:{STALL_SECONDS}",
        "export PYRECOVER_TEST_HOOKS_ATTEMPT=1",
        # A job whose hold file exists waits (at most 10 min) until the test removes it.
        f'h={hold}/"$SLURM_JOB_NAME"; n=0; '
        'while [ -e "$h" ] && [ $n -lt 2400 ]; do sleep 0.25; n=$((n+1)); done',
    ]
    try:
        with ExitStack() as stack:
            fp16 = stack.enter_context(controller(tmp_path / "ctl-fp16", roots=roots))
            nan = stack.enter_context(controller(tmp_path / "ctl-nan", roots=roots, slurm_prologue=nan_hook))
            corrupt = stack.enter_context(
                controller(tmp_path / "ctl-corrupt", roots=roots, slurm_prologue=corrupt_hooks)
            )
            corrupt_id = corrupt.submit("corrupt", corrupt_body)
            (hold / f"pyrecover-r{corrupt_id}-a2").touch()  # before attempt 2 can exist
            fp16_id = fp16.submit("fp16", fp16_body)
            nan_id = nan.submit("nan", nan_body, policy={"on_divergence": "rollback"})
            figures = _all_checkpoints_corrupt(corrupt, corrupt_id, tmp_path, hold, corrupt_body)
            fp16.wait([fp16_id], terminal, limit=120)
            nan.wait([nan_id], terminal, limit=120)
            fp16_run, fp16_jobs, fp16_events = fp16.run(fp16_id), fp16.jobs(fp16_id), _events(fp16, fp16_id)
            nan_run, nan_jobs, nan_events = nan.run(nan_id), nan.jobs(nan_id), _events(nan, nan_id)
            nan_metrics, corrupt_run = nan.metrics(nan_id), corrupt.run(corrupt_id)
            fp16_log = _log(tmp_path / "ctl-fp16", fp16_id, 1)
            nan_logs = [_log(tmp_path / "ctl-nan", nan_id, n) for n in (1, 2)]
    finally:
        for held in hold.iterdir():  # a failed test never leaves a job of its own waiting
            held.unlink()
        finish(reference, timeout=300)
    seconds = round(time.monotonic() - started, 1)

    # 3 (continued): the resumed run ends bit-identical to the uninterrupted reference.
    assert_same_weights(
        tmp_path / "ckpt-corrupt" / "corrupt" / f"step-{STEPS}",
        tmp_path / "reference" / "reference" / f"step-{STEPS}",
    )

    # 1: fp16 pure dtype diverges; nothing non-finite committed; FAILED after one attempt.
    assert fp16_run["state"] == "FAILED", (fp16_run, fp16_jobs)
    assert [(j["end_reason"], j["exit_code"]) for j in fp16_jobs] == [("diverged", 6)], fp16_jobs
    fp16_error = fp16_run["last_error"] or ""
    assert "attempt 1 diverged" in fp16_error and "NaN/inf" in fp16_error, fp16_error
    assert "policy.on_divergence=fail" in fp16_error and "nothing to roll back to" in fp16_error, fp16_error
    assert "What to do:" in fp16_error and "mixed_precision: true" in fp16_error, fp16_error
    diverged = [e["message"] for e in fp16_events if e["kind"] == "diverged"]
    assert len(diverged) == 1 and "no checkpoint was committed" in diverged[0], fp16_events
    fp16_dir = tmp_path / "ckpt-fp16" / "fp16"
    fp16_committed = _committed(fp16_dir)
    assert all(_all_finite(fp16_dir / f"step-{s}") for s in fp16_committed), fp16_committed
    assert fp16_run["latest_checkpoint_step"] in (None, *fp16_committed), fp16_run
    assert not [p for p in fp16_dir.iterdir() if p.name.startswith(TMP_PREFIX)], list(fp16_dir.iterdir())
    assert "refusing to save" in fp16_log or "updates in a row had a non-finite" in fp16_log, fp16_log[-3000:]

    # 2: rolled back past the NaN window, recorded on the run, completed.
    assert nan_run["state"] == "COMPLETED", (nan_run, nan_jobs)
    assert_ledger_adds_up(nan_run)
    assert [j["end_reason"] for j in nan_jobs] == ["diverged", "finished"], nan_jobs
    assert nan_jobs[0]["exit_code"] == 6, nan_jobs
    (rollback,) = [e for e in nan_events if e["kind"] == "rollback"]
    window = rollback["data"]
    assert window["attempt"] == 1 and window["from_step"] == FREQ, rollback
    skip_from, skip_to = int(window["skip_from"]), int(window["skip_to"])
    assert skip_from <= (NAN_FIRST - 1) * BATCH and skip_to >= NAN_LAST * BATCH, rollback
    assert (skip_from, skip_to) == (FREQ * BATCH, NAN_LAST * BATCH), (
        rollback
    )  # exactly since step 10's cursor
    assert f"skips the data window from sample {skip_from} to sample {skip_to}" in rollback["message"], (
        rollback
    )
    assert f"diverged at step {NAN_LAST}: {MAX_SKIPPED} updates in a row" in rollback["message"], rollback
    second = nan_jobs[1]
    assert second["step_at_start"] == FREQ and str(second["resumed_from"]).endswith(f"step-{FREQ}"), second
    script = (tmp_path / "ctl-nan" / "runs" / str(nan_id) / "logs" / "attempt-0002.sbatch").read_text()
    assert f"--data-skip-to {skip_to}" in script and f"--resume-from-checkpoint step-{FREQ}" in script, script
    assert all(f"test hook: batch {k} gives a NaN" in nan_logs[0] for k in range(NAN_FIRST, NAN_LAST + 1))
    assert "gives a NaN" not in nan_logs[1] and "update skipped" not in nan_logs[1], nan_logs[1][-3000:]
    nan_dir = tmp_path / "ckpt-nan" / "nan"
    nan_committed = _committed(nan_dir)
    assert nan_committed[-1] == STEPS and all(_all_finite(nan_dir / f"step-{s}") for s in nan_committed)
    # Steps 11..40 of attempt 2 read the batches after the window: the cursor is that far ahead.
    skipped_batches = (skip_to - skip_from) // BATCH
    assert _data_cursor(nan_dir / f"step-{STEPS}")["chunks_consumed"] == (STEPS + skipped_batches) * BATCH

    # Figures: each run from its submission to its end; the rollback's divergence -> training again.
    spans = {
        name: _span(run) for name, run in (("fp16", fp16_run), ("nan", nan_run), ("corrupt", corrupt_run))
    }
    again = min(to_unix(m["time"]) or 0.0 for m in nan_metrics if m["attempt"] == 2)
    recovered = again - (to_unix(nan_jobs[0]["end_time"]) or 0.0)
    print(
        f"\n1 fp16 pure: {fp16_jobs[0]['error']}\n  run ({spans['fp16']:.1f} s): {fp16_error[:500]}\n"
        f"2 NaN batches {NAN_FIRST}-{NAN_LAST}: rollback {window}, divergence -> training again "
        f"{recovered:.1f} s, run {spans['nan']:.1f} s\n  {rollback['message'][:400]}\n"
        f"3 all corrupt: {figures['summary']}\n  damage released -> FAILED {figures['to_failed']:.1f} s, "
        f"resume -> COMPLETED {figures['to_completed']:.1f} s, run {spans['corrupt']:.1f} s\n"
        f"  failed: {figures['failed'][:600]}\n"
        f"test {seconds:.1f} s"
    )
    from tests.fault.chaos import record

    record(
        "divergence: fp16 pure dtype (NaN on the first update)",
        path="controller + SLURM, on_divergence: fail",
        trials=1,
        survived=1,
        data_lost="none: no non-finite checkpoint committed; run FAILED after 1 attempt, saying what to do",
        seconds=spans["fp16"],
    )
    record(
        f"divergence: NaN batches {NAN_FIRST}-{NAN_LAST}",
        path="controller + SLURM, on_divergence: rollback",
        trials=1,
        survived=1,
        data_lost=f"the skipped window only (samples {skip_from}..{skip_to}, {skipped_batches} batches)",
        seconds=spans["nan"],
    )
    record(
        "every committed checkpoint corrupt (flipped bit, truncated shard)",
        path="controller + SLURM, damage between attempts, user restores + resumes",
        trials=1,
        survived=1,
        data_lost="none: run FAILED at once (integrity), quarantine and loss.csv kept; "
        "restored copy resumed, final weights bit-identical",
        seconds=spans["corrupt"],
    )


def _all_checkpoints_corrupt(
    runs: Runs, run_id: int, tmp_path: Path, hold: Path, body: dict[str, Any]
) -> dict[str, Any]:
    """Case 3 up to the completed run (the weights are compared by the caller)."""
    run_dir = Path(body["checkpoint_dir"]) / "corrupt"

    def stalled_after_two_checkpoints(run: dict[str, Any]) -> bool:
        jobs = runs.jobs(run_id)
        if terminal(run) or any(j["end_reason"] for j in jobs):
            pytest.fail(f"attempt 1 ended before the test stopped it: {run['state']} {jobs}")
        return (
            bool(jobs)
            and jobs[0]["state"] == "RUNNING"
            and (run.get("latest_checkpoint_step") or 0) >= 2 * FREQ
            and run["current_step"] >= STALL_BATCH - 1
        )

    runs.wait([run_id], stalled_after_two_checkpoints, limit=240)
    job = str(runs.jobs(run_id)[0]["external_id"])
    signalled = sh("scancel", "--signal=TERM", job)  # this test's own job only
    assert signalled.returncode == 0, signalled.stderr
    runs.wait(
        [run_id],
        lambda r: len(runs.jobs(run_id)) >= 2 and bool(runs.jobs(run_id)[0]["end_reason"]),
        limit=120,
    )
    first = runs.jobs(run_id)[0]
    assert first["end_reason"] == "signal_stop", first

    committed = _committed(run_dir)
    newest = committed[-1]
    assert len(committed) >= 2 and newest == STALL_BATCH, f"stopped at the stalled step: {committed} {first}"
    rows_before = _loss_rows(run_dir)
    assert rows_before == newest, rows_before
    good = tmp_path / "good" / f"step-{newest}"
    shutil.copytree(run_dir / f"step-{newest}", good)
    damaged: dict[int, dict[str, str]] = {}
    for i, step in enumerate(committed):
        _damage(run_dir / f"step-{step}", truncate=i == 0)
        damaged[step] = _hashes(run_dir / f"step-{step}")
    (hold / f"pyrecover-r{run_id}-a2").unlink()  # attempt 2 may start its worker now
    released = time.monotonic()

    runs.wait([run_id], terminal, limit=180)
    to_failed = time.monotonic() - released
    run, jobs = runs.run(run_id), runs.jobs(run_id)
    assert run["state"] == "FAILED", (run, jobs)
    assert [(j["end_reason"], j["exit_code"]) for j in jobs[1:]] == [("integrity_error", 4)], jobs
    failed = run["last_error"] or ""
    assert "integrity_error" in failed and "none verifies" in failed, failed
    assert "restore a good one as step-<N>/" in failed and "/resume" in failed, failed
    quarantined = {
        parse_step(p.name.removeprefix(".quarantine-").split("-corrupt-")[0]): p
        for p in run_dir.iterdir() if p.name.startswith(QUARANTINE_PREFIX)
    }  # fmt: skip
    assert sorted(quarantined) == committed and not _committed(run_dir), sorted(run_dir.iterdir())
    for step, hashes in damaged.items():
        assert _hashes(quarantined[step]) == hashes, f"quarantined step {step} changed"
    assert _loss_rows(run_dir) == rows_before
    warned = [e["message"] for e in _events(runs, run_id) if str(e["kind"]).startswith("warning:checkpoint")]
    assert all(any(f"step-{s}" in w for w in warned) for s in committed), warned

    # The user puts the good copy back and resumes the run.
    shutil.copytree(good, run_dir / f"step-{newest}")
    runs.api.post(f"/runs/{run_id}/resume")
    resumed_at = time.monotonic()
    runs.wait([run_id], terminal, limit=240)
    to_completed = time.monotonic() - resumed_at
    run, jobs = runs.run(run_id), runs.jobs(run_id)
    assert run["state"] == "COMPLETED", (run, jobs)
    assert_ledger_adds_up(run)
    resumed = jobs[-1]
    assert len(jobs) == 3 and resumed["end_reason"] == "finished", jobs
    assert resumed["step_at_start"] == newest and str(resumed["resumed_from"]).endswith(f"step-{newest}"), (
        resumed
    )
    assert _loss_rows(run_dir) == STEPS
    summary = (
        f"committed {committed}, stopped at step {newest} (SIGTERM in the stall), all damaged; attempt 2 "
        f"exit {jobs[1]['exit_code']} ({jobs[1]['end_reason']}), {len(quarantined)} quarantined intact, "
        f"loss.csv {rows_before} rows kept; restored step-{newest}, attempt 3 went from {newest} to {STEPS}"
    )
    return {"summary": summary, "failed": failed, "to_failed": to_failed, "to_completed": to_completed}
