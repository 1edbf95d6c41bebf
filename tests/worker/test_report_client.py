"""HttpReporter against a tiny real HTTP server on loopback that can go down and come back."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_report_server import FakeController

from worker.report_client import HttpReporter


@pytest.fixture
def controller() -> Iterator[FakeController]:
    ctl = FakeController()
    ctl.start()
    yield ctl
    ctl.stop()


def until(cond: Callable[[], bool], limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def make(ctl: FakeController, tmp_path: Path, attempt: int = 1, **kw: Any) -> HttpReporter:
    token = tmp_path / "run" / "worker.token"
    token.parent.mkdir(exist_ok=True)
    token.write_text("secret-token\n")
    kw.setdefault("flush_interval", 0.05)
    kw.setdefault("max_backoff", 0.2)
    return HttpReporter(url=ctl.url, run_id=3, attempt=attempt, token_file=token, **kw)


def progress(r: HttpReporter, steps: range) -> None:
    for step in steps:
        r.emit("progress", step=step, loss=1.0, lr=0.1, tokens_seen=step * 10)


def test_batches_with_bearer_token_and_contiguous_seq(controller: FakeController, tmp_path: Path) -> None:
    r = make(controller, tmp_path, batch_size=50, flush_interval=0.3)
    r.emit("started", step=0, world_size=1)
    progress(r, range(1, 120))
    r.close(timeout=10)
    assert controller.seqs(1) == list(range(120))
    assert len(controller.batches) < 120 and max(len(b["events"]) for b in controller.batches) <= 50
    assert set(controller.auth) == {"Bearer secret-token"}
    assert controller.batches[0]["events"][0]["type"] == "started"


def test_reply_action_is_kept_until_consumed(controller: FakeController, tmp_path: Path) -> None:
    controller.action = "stop"
    r = make(controller, tmp_path)
    r.emit("started", step=0, world_size=1)
    until(lambda: bool(controller.batches))
    until(lambda: r._action == "stop")
    assert r.requested_action() == "stop"
    assert r.requested_action() == "none"
    r.close()


def test_server_errors_are_retried(controller: FakeController, tmp_path: Path) -> None:
    controller.status = 503
    r = make(controller, tmp_path)
    r.emit("started", step=0, world_size=1)
    progress(r, range(1, 5))
    until(lambda: len(controller.auth) >= 2)  # it tried, and tried again
    controller.status = 200
    until(lambda: controller.seqs(1) == list(range(5)))
    r.close()


def test_invalid_event_is_dropped_alone(controller: FakeController, tmp_path: Path) -> None:
    r = make(controller, tmp_path)
    r.emit("progress", step=1, loss=1.0)  # missing lr and tokens_seen: would be a 422
    r.emit("finished", step=1)
    r.close()
    assert [e["type"] for e in controller.stored.values()] == ["finished"]


def test_a_nan_loss_goes_out_and_does_not_hold_up_the_events_after_it(
    controller: FakeController, tmp_path: Path
) -> None:
    r = make(controller, tmp_path)
    r.emit("progress", step=13, loss=math.nan, lr=0.1, tokens_seen=52, skipped_steps=1)  # a skipped update
    r.emit(
        "diverged",
        step=15,
        reason="non_finite",
        message="diverged",
        committed_step=10,
        cursor={"chunks_consumed": 60},
    )
    r.close()
    assert [e["type"] for e in controller.stored.values()] == ["progress", "diverged"]
    assert math.isnan(controller.stored[(1, 0)]["loss"])


def test_controller_down_spools_and_delivers_later_without_blocking(
    controller: FakeController, tmp_path: Path
) -> None:
    r = make(controller, tmp_path)
    r.emit("started", step=0, world_size=1)
    until(lambda: controller.seqs(1) == [0])
    controller.stop()
    t0 = time.monotonic()
    progress(r, range(1, 200))
    r.emit("checkpoint_committed", step=199, path="/x/step-199", format="dcp", size_bytes=1, save_seconds=0.1)
    emit_time = time.monotonic() - t0
    until(lambda: (tmp_path / "run" / "reports-a0001.jsonl").exists())
    controller.start()  # same port
    until(lambda: controller.seqs(1) == list(range(201)))
    r.close()
    assert not (tmp_path / "run" / "reports-a0001.jsonl").exists()
    assert emit_time < 5  # generous: emit never waited for the network (it would take ~200 × timeouts)


def test_close_while_down_spools_and_next_attempt_delivers_first(
    controller: FakeController, tmp_path: Path
) -> None:
    controller.stop()
    r1 = make(controller, tmp_path, attempt=1)
    r1.emit("started", step=0, world_size=1)
    progress(r1, range(1, 10))
    r1.emit("stopping", step=9, reason="deadline")
    r1.close(timeout=2)
    assert len((tmp_path / "run" / "reports-a0001.jsonl").read_text().splitlines()) == 11
    controller.start()
    r2 = make(controller, tmp_path, attempt=2)
    r2.emit("started", step=9, world_size=1)
    r2.close()
    assert controller.seqs(1) == list(range(11)) and controller.seqs(2) == [0]
    assert controller.batches[0]["attempt"] == 1  # the old spool went first


def test_seq_never_repeats_across_processes_of_one_attempt(
    controller: FakeController, tmp_path: Path
) -> None:
    r1 = make(controller, tmp_path)
    progress(r1, range(3))
    r1.close()
    r2 = make(controller, tmp_path)  # e.g. the worker process restarted within the same attempt
    progress(r2, range(3, 6))
    r2.close()
    seqs = controller.seqs(1)
    assert len(seqs) == 6 and len(set(seqs)) == 6


def test_redelivered_batch_is_idempotent(controller: FakeController, tmp_path: Path) -> None:
    r = make(controller, tmp_path)
    progress(r, range(5))
    r.close()
    # A spool that was delivered but not deleted (crash) is delivered again: nothing is stored twice.
    (tmp_path / "run" / "reports-a0001.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in controller.stored.values())
    )
    r2 = make(controller, tmp_path)
    r2.close()
    assert controller.seqs(1) == list(range(5)) and len(controller.batches) >= 2


def test_full_queue_drops_oldest_progress_never_lifecycle(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("x")
    # A listener that never answers: the sender thread hangs in its first request, so the queue fills.
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}"
        r = HttpReporter(url=url, run_id=1, attempt=1, token_file=token, max_queue=5, request_timeout=30)
        r.emit("started", step=0, world_size=1)
        until(lambda: not r._queue)  # the sender took it and is now stuck
        r.emit("warning", step=0, kind="x", message="y")
        progress(r, range(1, 10))
        r.emit("stopping", step=9, reason="deadline")
        with r._cond:
            kinds = [e["type"] for e in r._queue]
        assert kinds[0] == "warning" and kinds[-1] == "stopping" and len(kinds) == 5
        assert kinds.count("progress") == 3 and r.dropped == 6
        t = time.monotonic()
        r.close(timeout=0.5)
        assert time.monotonic() - t < 2.0  # bounded although the sender is stuck in a request
        # close() spooled the batch the stuck sender holds ("started") and then the queue, in order.
        spooled = [json.loads(x)["type"] for x in (tmp_path / "reports-a0001.jsonl").read_text().splitlines()]
        assert spooled == ["started", *kinds]


def test_from_env_and_make_reporter(
    controller: FakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.reporting import NullReporter, make_reporter

    token = tmp_path / "worker.token"
    token.write_text("env-token")
    monkeypatch.setenv("PYRECOVER_CONTROLLER_URL", controller.url)
    monkeypatch.setenv("PYRECOVER_RUN_ID", "9")
    monkeypatch.setenv("PYRECOVER_ATTEMPT", "4")
    monkeypatch.setenv("PYRECOVER_TOKEN_FILE", str(token))
    monkeypatch.setenv("PYRECOVER_SPOOL_DIR", str(tmp_path / "spool"))
    assert isinstance(make_reporter(rank=1), NullReporter)
    r = make_reporter(rank=0)
    assert isinstance(r, HttpReporter)
    assert r.url == f"{controller.url}/api/v1/runs/9/reports" and r.attempt == 4
    assert r.spool_dir == tmp_path / "spool"
    r.emit("finished", step=3)
    r.close()
    assert controller.seqs(4) == [0] and controller.auth == ["Bearer env-token"]
