"""Public read schemas: paging envelope, action body, JSON Schema names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.schemas import EventPublic, Page, RunAction


def test_page_is_generic_and_validates_items() -> None:
    page = Page[EventPublic].model_validate(
        {
            "items": [
                {"id": 1, "time": "2026-01-01T00:00:00Z", "kind": "state", "message": "m", "data": None}
            ],
            "total": 1,
            "limit": 50,
            "offset": 0,
        }
    )
    assert page.items[0].kind == "state"
    with pytest.raises(ValidationError):
        Page[EventPublic].model_validate({"items": [{"id": "x"}], "total": 1, "limit": 1, "offset": 0})


def test_run_action_accepts_only_known_actions() -> None:
    assert RunAction(action="checkpoint").action == "checkpoint"
    for bad in ({"action": "explode"}, {"action": "stop", "extra": 1}):
        with pytest.raises(ValidationError):
            RunAction.model_validate(bad)
