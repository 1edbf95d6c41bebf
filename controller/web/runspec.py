"""A run's spec on the dashboard: grouped for reading, as YAML to download, clone and edit.

Everything the dashboard shows of a stored spec goes through :func:`shown_spec`, so the page, the
YAML download and "clone this run" can never show more than the API's ``GET /runs/{id}`` does.

YAML typed into the editor is parsed with PyYAML's safe loader minus aliases: ``*ref`` lets a few
kilobytes name an exponentially large document (the "billion laughs"), and a run body never
needs one. A nesting too deep for the parser is refused the same way, with a message, not a 500.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from controller.services.secrets import redacted_spec
from shared.schemas.spec import PolicySpec, ResourcesSpec, TrainingSpec
from shared.training import preset_learning_rate

GROUPS: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("training", "Training", TrainingSpec),
    ("resources", "Resources", ResourcesSpec),
    ("policy", "Policy", PolicySpec),
)


def shown_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored spec as users may see it: what ``GET /api/v1/runs/{id}`` answers as ``spec``
    (``controller/api/presenters.py:public_spec``: secret values redacted, refused optional fields
    dropped). A row no repair makes valid is still shown, redacted, rather than failing the page."""
    # Imported here: the controller.api package mounts these pages, so importing it at module level
    # would make "import controller.web.queries" (tests, tools) circular.
    from controller.api.presenters import public_spec

    try:
        return public_spec(stored).model_dump(mode="json")
    except ValidationError:
        return copy.deepcopy(redacted_spec(stored))


# ---- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ConfigRow:
    key: str
    value: str
    default: str | None
    """The API's default, shown when the value differs from it (``None``: at its default)."""
    help: str = ""
    required: bool = False
    """The field has no default: every run sets it."""

    @property
    def set_by_run(self) -> bool:
        """What the run itself chose (a required field, or a value other than the default)."""
        return self.required or self.default is not None


@dataclass(frozen=True, kw_only=True)
class ConfigGroup:
    key: str
    title: str
    rows: tuple[ConfigRow, ...]

    @property
    def changed(self) -> int:
        return sum(1 for r in self.rows if r.default is not None)

    @property
    def chosen(self) -> tuple[ConfigRow, ...]:
        """The rows the run set, shown first; the rest are at their default."""
        return tuple(r for r in self.rows if r.set_by_run)

    @property
    def defaults(self) -> tuple[ConfigRow, ...]:
        return tuple(r for r in self.rows if not r.set_by_run)


def display(value: Any) -> str:
    """One value as the configuration table shows it."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ", ".join(f"{k}={display(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(display(v) for v in value) or "none"
    return str(value)


def _comparable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_comparable(v) for v in value]
    return value


def config_groups(spec: dict[str, Any]) -> list[ConfigGroup]:
    """Every field of training / resources / policy with its value, in the schema's order; values
    that differ from the API's default carry the default beside them."""
    groups = []
    for key, title, model in GROUPS:
        section = spec.get(key)
        values = section if isinstance(section, dict) else {}
        rows = []
        for name, info in model.model_fields.items():
            value = values.get(name)
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            if key == "training" and name == "learning_rate":  # the preset's, when the run names none
                default = preset_learning_rate(values.get("model_preset", "tiny"))
            differs = not info.is_required() and _comparable(value) != _comparable(default)
            rows.append(
                ConfigRow(
                    key=name,
                    value=display(value),
                    default=display(_comparable(default)) if differs else None,
                    help=" ".join((info.description or "").split()),
                    required=info.is_required(),
                )
            )
        extra = [k for k in values if k not in model.model_fields]  # a row older than today's schema
        rows += [ConfigRow(key=k, value=display(values[k]), default=None, required=True) for k in extra]
        groups.append(ConfigGroup(key=key, title=title, rows=tuple(rows)))
    return groups


def _jsonable_default(info: FieldInfo) -> Any:
    return to_jsonable_python(info.get_default(call_default_factory=True))


def template_spec() -> dict[str, Any]:
    """An empty run body for the YAML editor: every field at the API's default, the required ones
    empty (``null``), so that nothing in it is a value the API would not have chosen itself."""
    spec: dict[str, Any] = {"name": None}
    for key, _title, model in GROUPS:
        fields = model.model_fields.items()
        spec[key] = {name: None if info.is_required() else _jsonable_default(info) for name, info in fields}
    return spec


# ---- YAML --------------------------------------------------------------------------------------


def dump_yaml(spec: dict[str, Any], *, header: str = "") -> str:
    """The spec as YAML in its own key order (name, training, resources, policy)."""
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + body


class SpecYamlError(ValueError):
    """The editor's text is not a YAML mapping we accept; the message says where and why."""


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing aliases (nothing in a run body needs one)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not accepted here", problem_mark=mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> dict[str, Any]:
    """The mapping ``text`` holds, or ``SpecYamlError`` naming the line and column of the problem."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        raise SpecYamlError(f"invalid YAML at {where}: {exc.problem or 'cannot parse'}") from None
    except yaml.YAMLError as exc:
        raise SpecYamlError(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise SpecYamlError("invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecYamlError("the YAML must be a mapping with name, training, resources and policy")
    return data


def line_of(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the key or item ``loc`` names (``("training", "training_steps")``) in
    ``text``, or of its deepest ancestor that exists; ``None`` if the text does not parse."""
    try:
        node = yaml.compose(text, Loader=_Loader)  # a SafeLoader
    except (yaml.YAMLError, RecursionError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
