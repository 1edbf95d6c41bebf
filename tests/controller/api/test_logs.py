"""An attempt's log through the API: whole, paged, its tail, followed until the attempt ends."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from controller.db.models import Attempt
from shared.paths import attempt_log_paths, run_dir
from shared.states import AttemptState
from tests.controller.api.conftest import Api


def _log(api: Api, run_id: int, attempt: int, text: str, stream: str = "err") -> None:
    out, err = attempt_log_paths(run_dir(api.settings.data_dir, run_id), attempt)
    path = err if stream == "err" else out
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(text)


def test_whole_tail_paged_and_either_stream(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id, 1, AttemptState.RUNNING)
    _log(api, run_id, 1, "".join(f"line {i}\n" for i in range(10)))
    _log(api, run_id, 1, "to stdout\n", stream="out")
    url = f"/api/v1/runs/{run_id}/jobs/1/log"
    whole = api.client.get(url, headers=api.h())
    assert whole.status_code == 200 and whole.text.splitlines() == [f"line {i}" for i in range(10)]
    assert whole.headers["X-Log-Offset"] == str(len(whole.text))
    tail = api.client.get(url, params={"tail": 3}, headers=api.h())
    assert tail.text == "line 7\nline 8\nline 9\n"
    rest = api.client.get(url, params={"offset": len("line 0\nline 1\n")}, headers=api.h())
    assert rest.text.startswith("line 2\n")
    assert api.client.get(url, params={"stream": "stdout"}, headers=api.h()).text == "to stdout\n"
    assert api.client.get(f"/api/v1/runs/{run_id}/jobs/2/log", headers=api.h()).status_code == 404
    assert api.client.get(url, params={"tail": -1}, headers=api.h()).status_code == 422


def test_a_log_not_written_yet_is_empty_not_an_error(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id, 1, AttemptState.PENDING)
    reply = api.client.get(f"/api/v1/runs/{run_id}/jobs/1/log", headers=api.h())
    assert reply.status_code == 200 and reply.text == "" and reply.headers["X-Log-Offset"] == "0"


def test_follow_streams_appended_lines_and_ends_with_the_attempt(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id, 1, AttemptState.RUNNING)
    _log(api, run_id, 1, "first\n")

    def worker() -> None:
        time.sleep(0.8)
        _log(api, run_id, 1, "second\n")
        time.sleep(0.8)
        _log(api, run_id, 1, "last words\n")
        with api.factory() as s:
            attempt = s.scalar(select(Attempt).where(Attempt.run_id == run_id))
            assert attempt is not None
            attempt.state = AttemptState.ENDED
            s.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    with api.client.stream(
        "GET", f"/api/v1/runs/{run_id}/jobs/1/log", params={"follow": True}, headers=api.h()
    ) as reply:
        body = "".join(reply.iter_text())
    thread.join()
    assert body == "first\nsecond\nlast words\n"  # nothing written before the end is missed
    assert 1.5 < time.monotonic() - started < 15
