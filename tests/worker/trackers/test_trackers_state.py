"""The tracker run's persisted identity and mark: made once, read back only when it can be trusted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from worker.trackers.state import RUN_ID_PATTERN, TrackerState, TrackerStateError, new_run_id


def test_the_run_id_is_made_once_and_read_back_by_every_attempt(tmp_path: Path) -> None:
    first = TrackerState.open(tmp_path / "t", run_name="llama-1b", controller_run_id="17")
    assert re.fullmatch(r"llama-1b-17-[0-9a-f]{8}", first.run_id)
    first.advance(5)
    again = TrackerState.open(tmp_path / "t", run_name="llama-1b", controller_run_id="99")
    assert (again.run_id, again.logged_through) == (first.run_id, 5)
    with pytest.raises(ValueError, match="not beyond"):
        again.advance(5)
    # standalone runs and odd controller ids get a random suffix only
    assert re.fullmatch(r"r-[0-9a-f]{8}", new_run_id("r", None))
    assert re.fullmatch(r"r-[0-9a-f]{8}", new_run_id("r", "1; rm -rf /"))
    assert new_run_id("r", None) != new_run_id("r", None)
    long_name = "a" * 63
    assert re.fullmatch(RUN_ID_PATTERN, new_run_id(long_name, "123456789"))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("{not json", "not JSON"),
        ('{"format": 2}', "not a format-1"),
        ({"run_id": "../../etc", "logged_through": 1}, "does not match"),
        ({"run_id": "x/y", "logged_through": 1}, "does not match"),
        ({"run_id": "-rm", "logged_through": 1}, "does not match"),
        ({"run_id": "ok-1", "logged_through": -3}, "is not a step"),
        ({"run_id": "ok-1", "logged_through": True}, "is not a step"),
        ({"run_id": "ok-1", "logged_through": 2, "run_name": "other"}, "belongs to run 'other'"),
    ],
)
def test_a_state_file_that_cannot_be_trusted_is_refused(tmp_path: Path, body: object, why: str) -> None:
    if isinstance(body, dict):
        body = json.dumps({"format": 1, "run_name": "r", **body})
    assert isinstance(body, str)
    (tmp_path / "state.json").write_text(body)
    with pytest.raises(TrackerStateError, match=why) as info:
        TrackerState.open(tmp_path, run_name="r", controller_run_id=None)
    assert "move it aside" in str(info.value)
