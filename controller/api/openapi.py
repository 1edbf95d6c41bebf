"""The OpenAPI document, stating every rule a request must meet that JSON Schema can express.

FastAPI derives the document from the models; this adds what depends on the controller's
settings or that the models cannot say themselves, so that a client (or a fuzzer) that trusts
the document is not refused (``install``):

* the report body (``ReportBatch``, read by the handler after the token is checked) and its events
  as a tagged union: every event's ``type`` is required, as the union's discriminator is;
* the run fields the admin's policy decides (``shared.run_rules.RunPolicy``): which environment
  variable names are allowed (the allow-list, minus the hard deny-list), which sbatch options,
  and the roots that dataset, tokenizer, Hugging Face and checkpoint paths must lie under;
* ``async_checkpoint`` needs ``use_torch_distributed_ckpt``, and ``checkpoint_frequency`` is not 0.

What JSON Schema cannot state (``lr_warmup_steps <= training_steps``, a ``batch_size`` divisible by
the number of ranks, ``profile_step_start <= profile_step_end``, ``policy.min_nodes <=
resources.nodes``) is in ``POST /runs``' description.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from controller.settings import Settings
from shared.env_policy import DENIED_ENV, ENV_NAME_RE, MAX_ENV_NAME_CHARS, denied_because
from shared.patterns import under_roots_pattern
from shared.run_rules import MAX_ENV_VALUE_CHARS, RunPolicy
from shared.sbatch_options import schema_pattern
from shared.schemas import ReportBatch

_NAME_CHAR = "[A-Za-z0-9_]"


def install(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with one that adds the rules (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            add_rules(doc, settings.run_policy())
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_rules(doc: dict[str, Any], policy: RunPolicy) -> None:
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    _report_batch(components)
    if "ResourcesSpec" in components:
        _resources(components["ResourcesSpec"], policy)
    if "TrainingSpec" in components:
        _training(components["TrainingSpec"], policy)


def _report_batch(components: dict[str, Any]) -> None:
    schema = ReportBatch.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        if "type" in definition.get("properties", {}):
            # The union is tagged by "type": an event without it is refused, default or not.
            definition["required"] = sorted({*definition.get("required", []), "type"})
        components[name] = definition
    components["ReportBatch"] = schema


def _glob_regex(glob: str, *, case_insensitive: bool) -> str:
    out = []
    for char in glob:
        if char == "*":
            out.append(f"{_NAME_CHAR}*")
        elif char == "?":
            out.append(_NAME_CHAR)
        elif case_insensitive and char.isalpha():
            out.append(f"[{char.upper()}{char.lower()}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def env_name_schema(allow: tuple[str, ...]) -> dict[str, Any]:
    """The names ``shared.env_policy.check_env_name`` accepts under ``allow``."""
    exact = all("*" not in a and "?" not in a for a in allow)
    if exact:
        names = sorted(a for a in allow if ENV_NAME_RE.fullmatch(a) and denied_because(a) is None)
        return {"type": "string", "enum": names}
    allowed = "^(?:" + "|".join(_glob_regex(a, case_insensitive=False) for a in allow) + ")$"
    denied = "^(?:" + "|".join(_glob_regex(p, case_insensitive=True) for p, _ in DENIED_ENV) + ")$"
    return {
        "type": "string",
        "maxLength": MAX_ENV_NAME_CHARS,
        "allOf": [{"pattern": ENV_NAME_RE.pattern}, {"pattern": allowed}],
        "not": {"pattern": denied},
    }


def _resources(schema: dict[str, Any], policy: RunPolicy) -> None:
    props = schema["properties"]
    names = env_name_schema(policy.env_allow)
    props["env"]["propertyNames"] = names
    props["env"]["additionalProperties"] = {
        "type": "string",
        "maxLength": MAX_ENV_VALUE_CHARS,
        "pattern": "^[^\\n\\r\\x00]*$",
    }
    props["secret_env"]["items"] = {**props["secret_env"]["items"], **names}
    pattern = schema_pattern(policy.sbatch_allow)
    if pattern is None:
        props["extra_sbatch_args"]["maxItems"] = 0
    else:
        props["extra_sbatch_args"]["items"]["pattern"] = pattern


def _set_pattern(prop: dict[str, Any], pattern: str) -> None:
    """Set ``pattern`` on a string property, or on the string branch of ``anyOf: [string, null]``."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "string":
            branch["pattern"] = pattern


def _training(schema: dict[str, Any], policy: RunPolicy) -> None:
    props = schema["properties"]
    data_roots = [str(r) for r in policy.data_roots]
    checkpoint_roots = [str(r) for r in policy.checkpoint_roots]
    _set_pattern(props["dataset"], under_roots_pattern(data_roots, glob=True))
    _set_pattern(props["tokenizer_name_or_path"], under_roots_pattern(data_roots))
    _set_pattern(props["init_from_hf"], under_roots_pattern(data_roots))
    _set_pattern(props["checkpoint_dir"], under_roots_pattern(checkpoint_roots))
    _set_pattern(props["profile_dir"], under_roots_pattern(checkpoint_roots))
    props["checkpoint_frequency"]["not"] = {"const": 0}
    schema.setdefault("allOf", []).append(
        {
            "if": {"properties": {"async_checkpoint": {"const": True}}, "required": ["async_checkpoint"]},
            "then": {"properties": {"use_torch_distributed_ckpt": {"const": True}}},
        }
    )
