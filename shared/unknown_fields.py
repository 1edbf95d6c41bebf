"""Unknown fields in a run file get a "did you mean" instead of pydantic's bare "Extra inputs are
not permitted": ``training.trainng_steps`` → ``unknown field 'trainng_steps': did you mean
'training_steps'?``. Used as a ``mode="before"`` model validator by every model a user writes."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError


def refuse_unknown(model: type[BaseModel], data: Any) -> Any:
    """``data`` unchanged, or an error naming the first unknown key and the closest known one."""
    if not isinstance(data, dict):
        return data
    known = set(model.model_fields)
    for key in data:
        if isinstance(key, str) and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f": did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known))})"
            message = f"unknown field {key!r}{hint}".replace("{", "{{").replace("}", "}}")
            raise PydanticCustomError("extra_forbidden", message, {"unknown_field": key})
    return data


def error_loc(err: Any) -> tuple[Any, ...]:
    """Where a pydantic error points, down to the unknown key itself: ``("training", "surprise")``
    rather than the model holding it, so an API reply names the field a user mistyped."""
    loc = tuple(err.get("loc", ()))
    unknown = (err.get("ctx") or {}).get("unknown_field")
    return (*loc, unknown) if isinstance(unknown, str) else loc
