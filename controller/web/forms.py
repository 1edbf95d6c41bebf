"""The "new run" form: every field of the API's body, form data → API body, API 422 → field messages.

The form is a client of ``POST /api/v1/runs``: it never validates on its own, so the rules (and the
messages) are exactly the API's. Its fields are generated from the wire schemas
(``shared/schemas/spec.py``, over ``shared/training.py:TrainingFields``): every field of
``training``, ``resources`` and ``policy`` appears with the API's default, its choices and its
docstring as help, so a new option shows up here without touching this file or a template. The
common ones come first; the rest sit under "more options" in their section. A field the form cannot
represent (``policy.notify``, a list of objects) is edited in the YAML editor, which takes the
whole body (``controller/web/runspec.py``).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from shared.schemas.spec import PolicySpec, ResourcesSpec, TrainingSpec

Kind = Literal["text", "int", "float", "bool", "choice", "multi", "lines", "env"]


@dataclass(frozen=True, kw_only=True)
class FormField:
    name: str
    """Dotted path in the API body, e.g. ``training.training_steps``."""
    label: str
    kind: Kind = "text"
    default: Any = None
    """The API's default (``None``: none, or the field is required)."""
    required: bool = False
    choices: tuple[str, ...] = ()
    placeholder: str = ""
    help: str = ""
    common: bool = False
    """Shown at the top of its section; the others are under "more options"."""

    def input_name(self, choice: str | None = None) -> str:
        """The form control's name (one checkbox per choice of a ``multi`` field)."""
        return self.name if choice is None else f"{self.name}[{choice}]"

    def form_value(self, value: Any) -> Any:
        """``value`` (an API value, or whatever a YAML text held there) as the form control shows it."""
        many = isinstance(value, list | tuple)
        if self.kind == "bool":
            return value is True
        if self.kind == "multi":
            return frozenset(str(v) for v in value) if many else frozenset()
        if value is None:
            return ""
        if self.kind == "lines" and many:
            return "\n".join(str(v) for v in value)
        if self.kind == "env" and isinstance(value, Mapping):
            return "\n".join(f"{k}={v}" for k, v in value.items())
        return str(value)


@dataclass(frozen=True, kw_only=True)
class Section:
    key: str
    """The body key the section fills (``""`` for top-level fields such as the run name)."""
    title: str
    fields: tuple[FormField, ...]

    @property
    def common(self) -> tuple[FormField, ...]:
        return tuple(f for f in self.fields if f.common)

    @property
    def more(self) -> tuple[FormField, ...]:
        return tuple(f for f in self.fields if not f.common)


COMMON: dict[str, tuple[str, ...]] = {
    "training": (
        "dataset",
        "tokenizer_name_or_path",
        "training_steps",
        "model_preset",
        "sequence_length",
        "batch_size",
        "learning_rate",
        "lr_warmup_steps",
        "lr_schedule",
        "grad_max_norm",
        "model_dtype",
        "mixed_precision",
        "seed",
        "logging_frequency",
        "checkpoint_dir",
        "checkpoint_frequency",
        "keep_last_k",
        "use_torch_distributed_ckpt",
        "async_checkpoint",
        "timeaware_checkpointing",
    ),
    "resources": ("scheduler", "time_limit", "nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task"),
    "policy": ("max_attempts", "max_failures_without_progress", "backoff_seconds", "prequeue_successor"),
}
"""The knobs most runs set, in this order; every other field follows in the schema's order."""

MODELS: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("training", "Training", TrainingSpec),
    ("resources", "Resources", ResourcesSpec),
    ("policy", "Policy", PolicySpec),
)

_PLACEHOLDERS = {
    "name": "my-run",
    "training.dataset": "data/text.parquet",
    "training.tokenizer_name_or_path": "data/tokenizer",
    "resources.time_limit": "10 (minutes), 45s, 01:00:00",
    "resources.env": "NAME=value, one per line",
    "resources.extra_sbatch_args": "--option=value, one per line",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``Annotated`` and ``| None``, whether ``None`` is allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, optional
            annotation = args[0]
        else:
            return annotation, optional


def _kind_and_choices(annotation: Any) -> tuple[Kind, tuple[str, ...]] | None:
    """The form kind of a field's annotation; ``None`` when no form control can hold it."""
    inner, _optional = _unwrap(annotation)
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin is Literal:
        return "choice", tuple(str(a) for a in args)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):  # policy.on_divergence
        return "choice", tuple(str(m.value) for m in inner)
    if origin in (typing.Union, types.UnionType):
        # ``str | int`` (time_limit) stays text: the API parses both forms.
        return ("text", ()) if {_unwrap(a)[0] for a in args} <= {str, int, float} else None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item, _ = _unwrap(args[0])
        if typing.get_origin(item) is Literal:
            return "multi", tuple(str(a) for a in typing.get_args(item))
        return None
    if origin is list and len(args) == 1 and _unwrap(args[0])[0] is str:
        return "lines", ()
    if origin is dict and args == (str, str):
        return "env", ()
    simple: dict[Any, Kind] = {bool: "bool", int: "int", float: "float", str: "text"}
    return (simple[inner], ()) if inner in simple else None


def _help(info: FieldInfo) -> str:
    return " ".join((info.description or "").split())


def _default(info: FieldInfo) -> Any:
    return None if info.is_required() else info.get_default(call_default_factory=True)


def build_sections() -> tuple[tuple[Section, ...], tuple[str, ...]]:
    """(the form's sections, the dotted names of the fields only the YAML editor edits)."""
    sections = [
        Section(
            key="",
            title="Run",
            fields=(
                FormField(
                    name="name",
                    label="name",
                    required=True,
                    placeholder=_PLACEHOLDERS["name"],
                    help="Letters, digits, '.', '_' and '-'; checkpoints go to <checkpoint_dir>/<name>/.",
                    common=True,
                ),
            ),
        )
    ]
    yaml_only: list[str] = []
    for key, title, model in MODELS:
        common = COMMON[key]
        names = [n for n in common if n in model.model_fields]
        names += [n for n in model.model_fields if n not in common]
        fields = []
        for name in names:
            info = model.model_fields[name]
            dotted = f"{key}.{name}"
            kind = _kind_and_choices(info.annotation)
            if kind is None:
                yaml_only.append(dotted)
                continue
            fields.append(
                FormField(
                    name=dotted,
                    label=name.replace("_", " "),
                    kind=kind[0],
                    default=_default(info),
                    required=info.is_required(),
                    choices=kind[1],
                    placeholder=_PLACEHOLDERS.get(dotted, ""),
                    help=_help(info),
                    common=name in common,
                )
            )
        sections.append(Section(key=key, title=title, fields=tuple(fields)))
    return tuple(sections), tuple(yaml_only)


SECTIONS, YAML_ONLY = build_sections()
FIELDS = {f.name: f for s in SECTIONS for f in s.fields}


def default_values() -> dict[str, Any]:
    """What the empty form shows: every field at the API's default."""
    return {f.name: f.form_value(f.default) for f in FIELDS.values()}


def values_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The form filled in with a run's spec (``clone this run``); fields it lacks keep their default."""
    values = default_values()
    for f in FIELDS.values():
        target: Any = spec
        for part in f.name.split("."):
            target = target.get(part, _MISSING) if isinstance(target, Mapping) else _MISSING
        if target is not _MISSING:
            values[f.name] = f.form_value(target)
    return values


_MISSING = object()


def values_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """What the user submitted, to show again beside the errors (an unchecked box is absent)."""
    values: dict[str, Any] = {}
    for f in FIELDS.values():
        if f.kind == "bool":
            values[f.name] = _checked(form.get(f.name))
        elif f.kind == "multi":
            values[f.name] = frozenset(c for c in f.choices if _checked(form.get(f.input_name(c))))
        else:
            values[f.name] = form.get(f.name, "")
    return values


def _checked(raw: str | None) -> bool:
    return raw in ("true", "on", "1")


def form_to_body(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The API body for submitted form values, and the errors of values no body can express.

    Empty text fields are left out so the API applies its default (or says the field is
    required); an unchecked box is ``False``. Numbers that do not parse are sent as typed, so
    the API's message ("Input should be a valid integer") is the one the user sees. A ``NAME=value``
    line without ``=`` cannot be sent at all: it is an error of its field.
    """
    body: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for f in FIELDS.values():
        raw = form.get(f.name)
        value: Any
        if f.kind == "bool":
            value = _checked(raw)
        elif f.kind == "multi":
            value = [c for c in f.choices if _checked(form.get(f.input_name(c)))]
        elif raw is None or not raw.strip():
            continue
        elif f.kind == "lines":
            value = [line.strip() for line in raw.splitlines() if line.strip()]
        elif f.kind == "env":
            value, bad = _env_lines(raw)
            if bad:
                errors[f.name] = bad
                continue
        else:
            value = _coerce(raw.strip(), f.kind)
        *parents, leaf = f.name.split(".")
        target = body
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return body, errors


def _env_lines(raw: str) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    bad: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            bad.append(f"line {number}: expected NAME=value")
        elif name.strip() in env:
            bad.append(f"line {number}: {name.strip()} is set twice")
        else:
            env[name.strip()] = value
    return env, bad


def _coerce(raw: str, kind: Kind) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        return raw
    return raw


def open_sections(values: Mapping[str, Any], errors: FormErrors) -> set[str]:
    """Sections whose "more options" start open: one of them has an error or is not at its default."""
    opened = set()
    defaults = default_values()
    for section in SECTIONS:
        for f in section.more:
            if f.name in errors.fields or values.get(f.name, defaults[f.name]) != defaults[f.name]:
                opened.add(section.key)
    return opened


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
