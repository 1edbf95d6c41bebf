"""JSON ``true``/``false`` is not a number: a validator that keeps pydantic's lax mode from reading
``true`` as ``1`` in a numeric field.

Pydantic's lax mode (what the API and the worker use, so that ``2.0`` is an integer as JSON
Schema says) also turns booleans into numbers; the OpenAPI document says such a field is a
number, so ``"exit_allowance": true`` must be refused (schemathesis found it accepted). Models
attach ``no_bool_numbers`` as a ``field_validator("*", mode="before")``.
"""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin

from pydantic import ValidationInfo


def _admits_bool(annotation: Any) -> bool:
    """Whether ``annotation`` accepts a boolean as such (bool, or a union/Annotated holding bool)."""
    if annotation is bool:
        return True
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_bool(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(a) for a in get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    return annotation is Any or annotation is object


def _is_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _is_number(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_number(a) for a in get_args(annotation))
    return False


def no_bool_numbers(cls: Any, value: Any, info: ValidationInfo) -> Any:
    """``ValueError`` for a boolean given to a numeric field that does not also accept booleans."""
    if isinstance(value, bool) and info.field_name is not None:
        annotation = cls.model_fields[info.field_name].annotation
        if _is_number(annotation) and not _admits_bool(annotation):
            raise ValueError("must be a number, not true or false")
    return value
