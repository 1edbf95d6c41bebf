"""Schemathesis against every operation of the OpenAPI document, authenticated with a real token.

For each operation: ``EXAMPLES`` schema-valid requests and ``EXAMPLES`` schema-violating ones
(mutated types, missing fields, bytes that are not UTF-8 ...), half of them aimed at a seeded run
that has attempts, metrics and checkpoints so requests get past "no such run" into the code that
stores things. Every response is checked by schemathesis: no 5xx, the status code is documented,
the body matches the documented schema, the content type and headers match, and schema-violating
input is refused with 4xx.

Two checks are off. ``ignored_auth`` re-sends every case without credentials (tripling the cost);
``test_tokens.py`` attacks every route with 19 kinds of bad credentials instead.
``positive_data_acceptance`` (a schema-valid request must get 2xx): our 422s for cross-field
rules (``lr_warmup_steps <= training_steps``, batch divisible by ranks) and content rules (run-name
alphabet, no '..' in paths, time-limit syntax) are correct answers JSON Schema cannot express;
``tests/controller/api/test_validation.py`` pins those.

Reproducible: Hypothesis is derandomized (the same cases on every run) and has no example
database. Budget: about a minute on two busy cores; ``PYRECOVER_FUZZ_EXAMPLES`` raises it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from sqlalchemy import update

from controller.api import create_app
from controller.db.models import ApiToken
from controller.services import hash_token
from controller.settings import Settings
from shared.names import RUN_NAME_PATTERN
from tests.security.conftest import Seeded, api_routes, seeded_app

EXAMPLES = int(os.environ.get("PYRECOVER_FUZZ_EXAMPLES", "25"))
PG_EXAMPLES = max(5, EXAMPLES // 3)
STATS: Counter[str] = Counter()
T0 = 1_800_000_000.0
# positive_data_acceptance: see the module docstring. ignored_auth: it re-sends each case without
# and with broken credentials, tripling the cost; test_tokens.py does that for every route.
EXCLUDED = [positive_data_acceptance, ignored_auth]


def _document() -> dict[str, Any]:
    """The OpenAPI document, built without a database (collection must stay cheap)."""
    app = create_app(Settings(run_reconciler=False, auth_required=True), session_factory=_no_db)
    return app.openapi()


def _no_db() -> Any:
    raise AssertionError("collection needs no database")


DOCUMENT = _document()
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]


def test_the_fuzzer_covers_every_api_route() -> None:
    app = create_app(Settings(run_reconciler=False), session_factory=_no_db)
    routes = {(m, p) for m, p in api_routes(app) if p.startswith("/api/") or p in ("/healthz", "/metrics")}
    assert routes == set(OPERATIONS), "an API route is missing from the OpenAPI document"
    assert len(OPERATIONS) >= 14


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Seeded, schemathesis.BaseSchema]]:
    data_dir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_module_url"))
    # schemathesis's in-process client sends "Host: testserver": a name this controller answers here.
    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        run_reconciler=False,
        auth_required=True,
        allowed_hosts=["testserver"],
    )
    for env in seeded_app(settings):
        schema = schemathesis.openapi.from_asgi("/openapi.json", env.app)
        # Unknown query parameters are ignored, as HTTP APIs conventionally do (a cache-buster
        # "?_=123" must not break a client); everything the document declares is enforced.
        schema.config.generation.update(allow_extra_parameters=False)
        # The token is ours (a real user token on every request), not a generated header value.
        schema.config.generation.update(with_security_parameters=False)
        yield request.param, env, schema


def _modes(operation: Any) -> list[GenerationMode]:
    has_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
    # Without parameters or a body there is nothing to make invalid.
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_input else [GenerationMode.POSITIVE]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The document marks each event's "type" optional (it has a default), yet it tags the union: an
# event without it is refused. Aimed batches name it from the event's own fields.
_TYPE_BY_FIELD = {
    "world_size": "started",
    "loss": "progress",
    "path": "checkpoint_committed",
    "reason": "stopping",
    "error": "failed",
    "message": "warning",
}


def _aim_at_attempt_1(case: Case) -> Case:
    """Reports name an attempt; the seeded run has attempt 1, so ingest runs rather than 409. Times
    and counters are folded into range (out-of-range ones are the unaimed half's job), so most of
    these batches are stored and applied."""
    body = case.body
    if not isinstance(body, dict) or not _number(body.get("attempt")):
        return case
    body["attempt"] = 1
    for event in body.get("events") if isinstance(body.get("events"), list) else []:
        if not isinstance(event, dict):
            continue
        if "type" not in event:
            event["type"] = next((t for f, t in _TYPE_BY_FIELD.items() if f in event), "finished")
        for key in ("time", "deadline"):
            if _number(event.get(key)):
                event[key] = T0 + abs(float(event[key])) % 1e6
        for key in ("save_seconds", "stall_seconds", "startup_seconds", "checkpoint_load_seconds"):
            if _number(event.get(key)):
                event[key] = abs(float(event[key])) % 1000
        for key in ("seq", "step", "resume_step", "world_size", "training_steps"):
            if _number(event.get(key)):
                event[key] = 1 + int(abs(event[key])) % 2**30
    return case


def _plausible_run(drawn: tuple[Case, str]) -> Case:
    """A generated run body with the fields JSON Schema cannot constrain made valid, so creation
    gets past the content rules and into storing, naming conflicts and presenting."""
    case, name = drawn
    body = case.body
    if isinstance(body, dict):
        body["name"] = name
        training, resources = body.get("training"), body.get("resources")
        if isinstance(training, dict):
            training.update(dataset="data/d.parquet", tokenizer_name_or_path="tok", checkpoint_dir="ckpt")
            training.update(lr_warmup_steps=0, batch_size=8)
        if isinstance(resources, dict):
            resources.update(time_limit="10m", nodes=1, ntasks_per_node=1)
            for key in ("mem", "partition", "account", "qos", "constraint", "env", "extra_sbatch_args"):
                resources.pop(key, None)
    return case


def _strategy(operation: Any, mode: GenerationMode, run_id: int) -> st.SearchStrategy[Case]:
    free = operation.as_strategy(generation_mode=mode)
    if (
        operation.path == "/api/v1/runs"
        and operation.method.upper() == "POST"
        and mode is GenerationMode.POSITIVE
    ):
        names = st.from_regex(RUN_NAME_PATTERN, fullmatch=True).filter(lambda n: ".." not in n)
        return st.one_of(free, st.tuples(free, names).map(_plausible_run))
    if not any(p.name == "run_id" for p in operation.path_parameters):
        return free
    aimed = operation.as_strategy(generation_mode=mode, path_parameters={"run_id": run_id})
    if operation.path.endswith("/reports") and mode is GenerationMode.POSITIVE:
        # Only valid cases are folded: folding a negative case could make it valid again.
        aimed = aimed.map(_aim_at_attempt_1)
    return st.one_of(free, aimed)


def _revive(env: Seeded) -> None:
    with env.factory() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == hash_token(env.user)).values(revoked=False))
        s.commit()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_survives_fuzzing(
    seeded: tuple[str, Seeded, schemathesis.BaseSchema], method: str, path: str
) -> None:
    db, env, schema = seeded
    _revive(env)  # an earlier operation (token revoke/rotate) may have revoked the fuzzer's token
    operation = schema[path][method]
    examples = EXAMPLES if db == "sqlite" else PG_EXAMPLES
    headers = env.h()
    started = time.monotonic()
    statuses: Counter[int] = Counter()
    for mode in _modes(operation):

        @given(case=_strategy(operation, mode, env.running_id))
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
            ],
        )
        def fuzz(case: Case) -> None:
            response = case.call(headers=headers)
            statuses[response.status_code] += 1
            case.validate_response(response, headers=headers, excluded_checks=EXCLUDED)

        fuzz()
    trials = sum(statuses.values())
    STATS[f"{db} trials"] += trials
    STATS[f"{db} 5xx"] += sum(n for code, n in statuses.items() if code >= 500)
    print(f"\n{db} {method} {path}: {trials} requests in {time.monotonic() - started:.1f}s {dict(statuses)}")
    assert not any(code >= 500 for code in statuses), statuses
