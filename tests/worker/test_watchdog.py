"""The watchdog: phase limits, a trip (stacks, heartbeat, report, exit code), waiting on a busy peer,
and real 2-rank workers with a SIGSTOPped rank, a stalled data read and slow saves."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_report_server import FakeController
from train_launch import run_worker, tiny_args, wait_for_step

from shared.events import HangPhase
from shared.exit_codes import ExitCode
from shared.schemas import ReportBatch
from worker.watchdog import Watchdog, WatchdogConfig


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed = False

    def emit(self, type: str, *, step: int, **fields: Any) -> None:
        self.events.append({"type": str(type), "step": step, **fields})

    def close(self, timeout: float = 10.0) -> None:
        self.closed = True


class Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.done = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


def make(tmp_path: Path, **kw: Any) -> tuple[Watchdog, Exits, Recorder]:
    exits, rec = Exits(), Recorder()
    config = WatchdogConfig(factor=3.0, floor=kw.pop("floor", 1.0), startup=kw.pop("startup", 30.0))
    dog = Watchdog(
        config,
        rank=kw.pop("rank", 0),
        world_size=kw.pop("world_size", 1),
        directory=tmp_path,
        reporter=rec,
        make_reporter=lambda: rec,
        exit=exits,
        host="node-a",
    )
    return dog, exits, rec


def test_limits_use_the_startup_bound_until_measured_then_p99_or_the_floor(tmp_path: Path) -> None:
    dog, _, _ = make(tmp_path, floor=2.0, startup=30.0)
    assert dog.limit(HangPhase.STARTUP) == dog.limit(HangPhase.LOAD) == 30.0
    assert dog.limit(HangPhase.STEP) == dog.limit(HangPhase.SAVE) == 30.0
    for _ in range(3):  # warm-up steps (compilation, first reads) are not measured
        dog.enter(HangPhase.STEP)
        dog.step_done()
    assert dog.limit(HangPhase.STEP) == 30.0
    dog._steps.extend([1.0] * 98 + [4.0, 10.0])  # one slow outlier barely moves the p99
    assert dog.limit(HangPhase.STEP) == pytest.approx(3 * (4.0 + 6.0 * 0.01), rel=1e-6)
    dog._steps.clear()
    dog._steps.extend([0.1] * 10)
    assert dog.limit(HangPhase.STEP) == 2.0  # the floor
    with dog.during(HangPhase.SAVE):  # a poll for a background save: no measurement
        assert dog.phase is HangPhase.SAVE
    assert dog.phase is HangPhase.STEP and dog.limit(HangPhase.SAVE) == 30.0
    with dog.during(HangPhase.SAVE, measure=True):
        time.sleep(0.05)
    dog.saved(1.5)  # a background write's full duration
    assert dog.limit(HangPhase.SAVE) == 4.5


def test_a_stall_trips_dumps_every_stack_reports_and_exits_with_the_hung_code(tmp_path: Path) -> None:
    dog, exits, rec = make(tmp_path, floor=1.0, startup=1.0)
    dog.enter(HangPhase.STEP, 42)
    started = time.monotonic()
    dog.start()
    assert exits.done.wait(30), "the watchdog did not trip"
    waited = time.monotonic() - started
    dog.stop(remove=False)
    assert exits.codes == [ExitCode.HUNG] and waited >= 1.0
    stacks = (tmp_path / "stacks-rank0.txt").read_text()
    assert "no progress in step at step 42" in stacks and "Thread 0x" in stacks and "File " in stacks
    heartbeat = json.loads((tmp_path / "rank-0.json").read_text())
    assert heartbeat["hung"] is True and heartbeat["phase"] == "step" and heartbeat["host"] == "node-a"
    assert heartbeat["reported"] is True
    hung, failed = rec.events
    assert hung["type"] == "hung" and failed["type"] == "failed" and rec.closed
    assert hung["phase"] == "step" and hung["step"] == 42 and hung["stalled_seconds"] >= 1.0
    assert hung["stacks_path"] == str(tmp_path / "stacks-rank0.txt") and "Thread 0x" in hung["stacks_excerpt"]
    assert "hung: no progress in step at step 42" in failed["error"]
    ReportBatch.model_validate(
        {"attempt": 1, "events": [{**e, "seq": i, "time": 1.0} for i, e in enumerate(rec.events)]}
    )


def test_progress_keeps_it_quiet(tmp_path: Path) -> None:
    dog, exits, _ = make(tmp_path, floor=1.0, startup=1.0)
    dog.start()
    end = time.monotonic() + 3.0
    step = 0
    while time.monotonic() < end:
        step += 1
        dog.enter(HangPhase.STEP, step)
        time.sleep(0.2)
        dog.step_done()
    dog.stop()
    assert exits.codes == [] and not (tmp_path / "rank-0.json").exists()


def test_a_rank_waits_for_a_busy_peer_and_trips_once_the_peer_gives_up(tmp_path: Path) -> None:
    dog, exits, rec = make(tmp_path, floor=1.0, startup=1.0, rank=1, world_size=2)
    peer = tmp_path / "rank-0.json"

    def write_peer(**kw: Any) -> None:
        now = time.time()
        peer.write_text(json.dumps({
            "rank": 0, "host": "node-0", "phase": "save", "step": 8, "doing": "", "since": now - 2,
            "limit": 600.0, "hung": False, "written_at": now, **kw,
        }))  # fmt: skip

    hung = threading.Event()
    stop = threading.Event()

    def rank_0() -> None:  # its heartbeat thread: fresh every 0.2 s
        while not stop.wait(0.2):
            write_peer(hung=hung.is_set())

    write_peer()
    writer = threading.Thread(target=rank_0, daemon=True)
    writer.start()
    dog.enter(HangPhase.STEP, 9)
    dog.start()
    try:
        time.sleep(3.0)  # rank 0 commits a save alone, within its own limit: we wait for it
        assert exits.codes == []
        hung.set()  # rank 0 gives up
        assert exits.done.wait(30)
    finally:
        stop.set()
        dog.stop(remove=False)
    assert exits.codes == [ExitCode.HUNG]
    assert rec.events == []  # rank 0 still runs: it is the one that reports


def _peer_beat(path: Path, *, reported: bool, age: float) -> None:
    now = time.time()
    path.write_text(json.dumps({
        "rank": 0, "host": "node-0", "phase": "step", "step": 59, "doing": "", "since": now - age - 20,
        "limit": 10.0, "hung": True, "reported": reported, "written_at": now - age,
    }))  # fmt: skip


@pytest.mark.parametrize("reported", [True, False])
def test_a_rank_woken_after_its_peer_reported_the_hang_does_not_report_it_again(
    tmp_path: Path, reported: bool
) -> None:
    """Rank 1 was the one SIGSTOPped; rank 0 reported the hang and exited. When SLURM wakes rank 1
    to kill it, its broken collective must not become a second ``hung`` report (rank 0, no longer
    running, leaves rank 1 the reporting rank). Had rank 0 died before reporting, rank 1 reports."""
    dog, exits, rec = make(tmp_path, rank=1, world_size=2)
    _peer_beat(tmp_path / "rank-0.json", reported=reported, age=60.0)
    dog.enter(HangPhase.STEP, 59)
    assert dog.on_failure() is True
    assert [e["type"] for e in rec.events] == ([] if reported else ["hung", "failed"])
    assert exits.codes == []


# A watchdog in its own process whose main thread takes a step per line read from stdin (so a step
# cannot end while the test holds the lines back); "quit" ends it cleanly (exit 0).
_STEPPER = """
import os, sys
from pathlib import Path
from shared.events import HangPhase
from worker.watchdog import Watchdog, WatchdogConfig
dog = Watchdog(WatchdogConfig(floor=3.0, startup=3.0), rank=0, world_size=1, directory=Path(sys.argv[1]))
dog.start()
step = 0
dog.enter(HangPhase.STEP, step)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        dog.stop()
        os._exit(0)
    dog.step_done()
    step += 1
    dog.enter(HangPhase.STEP, step)
"""


def test_a_whole_process_stopped_and_resumed_is_not_a_hang(tmp_path: Path) -> None:
    """SIGSTOP then SIGCONT of the whole process (a suspended job, a paused machine): every thread
    was stopped, the main one too, so the time stopped is nobody's hang. Stopped for 5 s, longer
    than the 3 s limit, then held 1 s more inside the same step: without the pause it would be within
    its limit, so it must not trip."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _STEPPER, str(tmp_path)],
        cwd=repo,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(6):
            proc.stdin.write("step\n")
            proc.stdin.flush()
            time.sleep(0.2)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5.0)
        proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        proc.stdin.write("step\nquit\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-3000:]}"
    assert "this process was stopped for" in err, err[-3000:]


# --- real workers --------------------------------------------------------------------------------

FAST = ["--hang-floor-seconds", "5", "--hang-startup-seconds", "60", "--checkpoint-frequency", "-1"]


@pytest.fixture
def controller() -> Iterator[FakeController]:
    ctl = FakeController()
    ctl.start()
    yield ctl
    ctl.stop()


def report_env(ctl: FakeController, tmp_path: Path) -> dict[str, str]:
    token = tmp_path / "rundir" / "worker.token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("secret-token\n")
    return {
        "PYRECOVER_CONTROLLER_URL": ctl.url,
        "PYRECOVER_RUN_ID": "3",
        "PYRECOVER_ATTEMPT": "1",
        "PYRECOVER_TOKEN_FILE": str(token),
    }


def stored(ctl: FakeController, kind: str) -> list[dict[str, Any]]:
    with ctl.lock:
        return [e for e in ctl.stored.values() if e["type"] == kind]


def stop_rank_at_step(csv: Path, step: int, rank: int, seen: dict[str, float]) -> Any:
    """SIGSTOP ``rank`` once the loss CSV shows ``step``; SIGKILL it after the others ended."""

    def act(procs: list[subprocess.Popen[bytes]]) -> None:
        assert wait_for_step(csv, step, procs)
        procs[rank].send_signal(signal.SIGSTOP)
        seen["stopped"] = time.monotonic()
        others = [p for r, p in enumerate(procs) if r != rank]
        for p in others:
            p.wait(timeout=240)
        seen["exited"] = time.monotonic()
        procs[rank].kill()

    return act


@pytest.mark.slow
@pytest.mark.parametrize("stopped", [1, 0])
def test_a_sigstopped_rank_is_named_with_its_host_by_the_ranks_that_wait_for_it(
    sample_data: tuple[Path, Path], tmp_path: Path, controller: FakeController, stopped: int
) -> None:
    args = [*tiny_args(sample_data, tmp_path, "stop", steps=400, fmt="dcp"), *FAST]
    seen: dict[str, float] = {}
    csv = tmp_path / "stop" / "loss.csv"
    result = run_worker(
        args,
        world_size=2,
        env=report_env(controller, tmp_path),
        while_running=stop_rank_at_step(csv, 8, stopped, seen),
    )
    waiter = 1 - stopped
    assert result.returncodes[waiter] == ExitCode.HUNG, result.explain()
    print(f"hang detected and the waiting rank exited {seen['exited'] - seen['stopped']:.1f} s after SIGSTOP")
    log = result.stderr[waiter]
    assert "watchdog: no progress in step" in log and "Thread 0x" in log  # the stacks are in its log
    (hung,) = stored(controller, "hung")  # rank 1 reports when rank 0 is the one stopped
    assert hung["rank"] == waiter and hung["phase"] == "step"
    (suspect,) = hung["suspects"]
    assert suspect["rank"] == stopped and suspect["reason"].startswith("not running")
    assert suspect["host"] and suspect["host"] != "unknown"
    failed = stored(controller, "failed")
    assert failed and f"rank {stopped} on {suspect['host']}" in failed[-1]["error"]
    assert Path(hung["stacks_path"]).is_file()


@pytest.mark.slow
def test_a_stalled_data_read_is_named_by_every_rank(
    sample_data: tuple[Path, Path], tmp_path: Path, controller: FakeController
) -> None:
    args = [*tiny_args(sample_data, tmp_path, "stall", steps=400, fmt="dcp"), *FAST]
    env = {**report_env(controller, tmp_path), "PYRECOVER_TEST_STALL_DATA": "8:600:1"}
    started = time.monotonic()
    result = run_worker(args, world_size=2, env=env, timeout=300)
    print(f"stalled read: both ranks exited {time.monotonic() - started:.1f} s after start")
    assert result.returncodes == [ExitCode.HUNG, ExitCode.HUNG], result.explain()
    assert all("Thread 0x" in log for log in result.stderr)
    (hung,) = stored(controller, "hung")
    assert hung["rank"] == 0 and hung["step"] == 8
    assert [(s["rank"], s["reason"]) for s in hung["suspects"]] == [(1, "stuck reading data")]
    # The evidence stays: heartbeats and both ranks' stacks.
    (job,) = (tmp_path / "stall" / ".watchdog").iterdir()
    assert sorted(p.name for p in job.iterdir()) == [
        "rank-0.json", "rank-1.json", "stacks-rank0.txt", "stacks-rank1.txt",
    ]  # fmt: skip


@pytest.mark.slow
def test_saves_ten_times_a_step_never_trip_it(sample_data: tuple[Path, Path], tmp_path: Path) -> None:
    args = tiny_args(sample_data, tmp_path, "slowsave", steps=16, fmt="dcp")
    args += ["--hang-floor-seconds", "2", "--hang-startup-seconds", "60", "--checkpoint-frequency", "4"]
    # Rank 0 alone sleeps 3 s in every save (a slow file system; rank 1 waits for it in the commit),
    # about 10x this machine's step; the floor is 2 s, so only the measured saves keep it quiet.
    result = run_worker(args, world_size=2, env={"PYRECOVER_TEST_SLOW_SAVE": "3:0"})
    assert result.ok, result.explain()
    assert "watchdog: no progress" not in result.stderr[0] + result.stderr[1]
    assert "finished 16 steps" in result.stderr[0]
    assert not (tmp_path / "slowsave" / ".watchdog").exists()  # nothing hung: nothing kept
