"""Reading a run file (YAML or JSON), the body of ``POST /api/v1/runs``, with errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.client.errors import PyrecoverError


def load_run_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML (``.yaml``/``.yml``) or JSON file holds; ``PyrecoverError`` says what is wrong
    and where (line and column of a parse error)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PyrecoverError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise PyrecoverError(f"{path}: invalid YAML at {where}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PyrecoverError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    if not isinstance(data, dict):
        raise PyrecoverError(f"{path} must hold a mapping with name, training, resources and policy")
    return data
