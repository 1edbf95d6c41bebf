"""The "new run" form: which fields it shows, form data → API body, API 422 → messages per field.

The form is a client of ``POST /api/v1/runs``: it never validates on its own, so the rules (and the
messages) are exactly the API's. Defaults and choices are read from the wire schemas, so a new
option in ``shared/schemas/spec.py`` shows up here with its default without touching this file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from shared.schemas.spec import PolicySpec, ResourcesSpec, TrainingSpec

Kind = Literal["text", "int", "float", "bool"]


@dataclass(frozen=True, kw_only=True)
class FormField:
    name: str
    """Dotted path in the API body, e.g. ``training.training_steps``."""
    label: str
    kind: Kind = "text"
    default: Any = None
    choices: tuple[str, ...] = ()
    placeholder: str = ""


@dataclass(frozen=True, kw_only=True)
class Section:
    key: str
    """The body key the section fills (``""`` for top-level fields such as the run name)."""
    title: str
    fields: tuple[FormField, ...]


# (section key, model, field names shown) — the common knobs; everything else keeps its default.
_LAYOUT: tuple[tuple[str, str, type[BaseModel] | None, tuple[str, ...]], ...] = (
    ("run", "Run", None, ("name",)),
    (
        "training",
        "Training",
        TrainingSpec,
        (
            "dataset",
            "tokenizer_name_or_path",
            "training_steps",
            "model_preset",
            "sequence_length",
            "batch_size",
            "learning_rate",
            "lr_warmup_steps",
            "lr_schedule",
            "model_dtype",
            "seed",
            "logging_frequency",
            "checkpoint_dir",
            "checkpoint_frequency",
            "keep_last_k",
            "use_torch_distributed_ckpt",
            "async_checkpoint",
            "timeaware_checkpointing",
        ),
    ),
    (
        "resources",
        "Resources",
        ResourcesSpec,
        (
            "scheduler",
            "time_limit",
            "nodes",
            "ntasks_per_node",
            "gpus_per_node",
            "cpus_per_task",
            "mem",
            "partition",
            "account",
            "qos",
        ),
    ),
    (
        "policy",
        "Policy",
        PolicySpec,
        ("max_attempts", "max_failures_without_progress", "backoff_seconds", "prequeue_successor"),
    ),
)

_PLACEHOLDERS = {
    "name": "my-run",
    "training.dataset": "data/text.parquet",
    "training.tokenizer_name_or_path": "data/tokenizer",
    "resources.time_limit": "10 (minutes), 45s, 01:00:00",
}


def _kind_and_choices(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    """Form kind of a pydantic annotation (``Annotated[int, ...]`` → int, ``Literal[...]`` → choices)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind_and_choices(typing.get_args(annotation)[0])
    if origin is Literal:
        return "text", tuple(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        # ``str | int`` (time_limit) stays text: the API parses both forms.
        return _kind_and_choices(args[0]) if len(args) == 1 else ("text", ())
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    return "text", ()


def _label(name: str) -> str:
    return name.replace("_", " ")


def build_sections() -> tuple[Section, ...]:
    sections = []
    for key, title, model, names in _LAYOUT:
        fields = []
        for name in names:
            dotted = name if model is None else f"{key}.{name}"
            if model is None:
                fields.append(
                    FormField(name=dotted, label=_label(name), placeholder=_PLACEHOLDERS.get(dotted, ""))
                )
                continue
            info = model.model_fields[name]
            kind, choices = _kind_and_choices(info.annotation)
            default = None if info.default is PydanticUndefined else info.default
            fields.append(
                FormField(
                    name=dotted,
                    label=_label(name),
                    kind=kind,
                    default=default,
                    choices=choices,
                    placeholder=_PLACEHOLDERS.get(dotted, ""),
                )
            )
        sections.append(Section(key=key, title=title, fields=tuple(fields)))
    return tuple(sections)


SECTIONS = build_sections()
FIELDS = {f.name: f for s in SECTIONS for f in s.fields}


def form_to_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The API body for submitted form values.

    Empty text fields are left out so the API applies its default (or says the field is
    required); an unchecked box is ``False``. Numbers that do not parse are sent as typed, so
    the API's message ("Input should be a valid integer") is the one the user sees.
    """
    body: dict[str, Any] = {}
    for f in FIELDS.values():
        raw = form.get(f.name)
        value: Any
        if f.kind == "bool":
            value = raw in ("true", "on", "1")
        elif raw is None or not raw.strip():
            continue
        else:
            value = _coerce(raw.strip(), f.kind)
        *parents, leaf = f.name.split(".")
        target = body
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return body


def _coerce(raw: str, kind: Kind) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        return raw
    return raw


@dataclass
class FormErrors:
    """API validation messages placed where the form shows them."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)
    form: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fields or self.sections or self.form)


def _clean(msg: str) -> str:
    # pydantic prefixes messages raised by validators; the prefix tells a user nothing.
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def place_errors(status: int, detail: Any) -> FormErrors:
    """Map an API error reply to fields.

    A 422 ``detail`` is FastAPI's list of ``{"loc": ["body", "training", "training_steps"],
    "msg": ...}``: the message goes to the deepest shown field on that path, else to its section
    (a model-level rule such as "lr_warmup_steps must not exceed training_steps"), else to the top
    of the form. Any other error (409 name taken, 401, ...) goes to the top of the form.
    """
    errors = FormErrors()
    if status != 422 or not isinstance(detail, list):
        text = detail if isinstance(detail, str) else "the API rejected the run"
        errors.form.append(f"HTTP {status}: {text}")
        return errors
    section_keys = {s.key for s in SECTIONS}
    for item in detail:
        if not isinstance(item, dict):
            errors.form.append(str(item))
            continue
        loc = [str(p) for p in item.get("loc", []) if p != "body"]
        msg = _clean(str(item.get("msg", "invalid")))
        placed = False
        for depth in range(len(loc), 0, -1):
            path = ".".join(loc[:depth])
            if path in FIELDS:
                errors.fields.setdefault(path, []).append(msg)
                placed = True
                break
            if path in section_keys:
                suffix = ".".join(loc[depth:])
                errors.sections.setdefault(path, []).append(f"{suffix}: {msg}" if suffix else msg)
                placed = True
                break
        if not placed:
            errors.form.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return errors
