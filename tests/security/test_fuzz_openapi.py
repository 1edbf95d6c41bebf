"""Schemathesis against every operation of the OpenAPI document, authenticated with real tokens,
every check on, then its stateful phase.

For each operation: ``EXAMPLES`` schema-valid requests and ``EXAMPLES`` schema-violating ones
(mutated types, missing fields, bytes that are not UTF-8 ...), half of them aimed at a seeded run
that has attempts, metrics and checkpoints so requests get past "no such run" into the code that
stores things. Every response is checked by every schemathesis check: no 5xx, the status code is
documented, the body matches the documented schema, schema-violating input is refused with 4xx,
schema-valid input is accepted (``positive_data_acceptance``: the document states every pattern,
bound and allow-list the server applies), and a request without credentials is refused
(``ignored_auth``). Report requests carry the seeded run's worker token, the others a user token.

What JSON Schema cannot state is folded into the generated bodies before they are sent, and only
that (the document's prose states it): for runs, ``lr_warmup_steps <= training_steps``, a
``batch_size`` divisible by the number of ranks × ``gradient_accumulation_steps``,
``profile_step_start <= profile_step_end``, ``policy.min_nodes <= resources.nodes``, no
webhook target nor GPU (where a host resolves and whether the memory plan fits), and no dataset
or tokenizer path that exists here (whether it can train is the file system's);
for reports to the seeded run, its attempt, steps within its ``training_steps`` and checkpoint
paths in its own directory. ``tests/controller/api/test_validation.py`` and
``tests/security/test_claims.py`` pin those rules.

The stateful phase chains operations through the links schemathesis infers (a created run's id
into its reads, cancel and resume), with the same checks.

Reproducible: Hypothesis is derandomized (the same cases on every run) and has no example
database. Budget: about two minutes on two busy cores; ``PYRECOVER_FUZZ_EXAMPLES`` raises it.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import text, update

from controller.api import create_app
from controller.db.models import ApiToken, Base
from controller.services import hash_token
from controller.settings import Settings
from shared.training import TrainingFields
from tests.security.conftest import Seeded, _seed, api_routes, seeded_app

EXAMPLES = int(os.environ.get("PYRECOVER_FUZZ_EXAMPLES", "25"))
PG_EXAMPLES = max(5, EXAMPLES // 3)
STATS: Counter[str] = Counter()
T0 = 1_800_000_000.0
EXCLUDED: list[Any] = []  # every check schemathesis has, but for the one operation below
# PATCH /runs/{id} takes free-form parts that are merged into the stored spec and validated as a
# whole run (tests/controller/api/test_extend.py): JSON Schema cannot state a merge.
EXCLUDED_FOR = {("PATCH", "/api/v1/runs/{run_id}"): [positive_data_acceptance]}
TRAINING_STEPS = 100  # the seeded runs' (tests/controller/api/conftest.py:run_body)


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


def _aim_at_attempt_1(case: Case, checkpoint_dir: Path) -> Case:
    """Reports name an attempt; the seeded run has attempt 1, so ingest runs rather than 409. Times,
    counters and steps are folded into range and checkpoint paths into the run's own directory
    (out-of-range ones are the negative cases' job), so these batches are stored and applied."""
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
        for key in ("seq", "world_size", "training_steps"):
            if _number(event.get(key)):
                event[key] = 1 + int(abs(event[key])) % 2**30
        for key in ("step", "resume_step"):
            if _number(event.get(key)):
                event[key] = int(abs(event[key])) % (TRAINING_STEPS + 1)
        if isinstance(event.get("path"), str) and _number(event.get("step")):
            event["path"] = str(checkpoint_dir / f"step-{event['step']}")
        if isinstance(event.get("resumed_from"), str):
            event["resumed_from"] = str(checkpoint_dir / f"step-{event.get('resume_step', 0)}")
    return case


def _cross_field(case: Case) -> Case:
    """A generated run body with the cross-field rules JSON Schema cannot state made true."""
    body = case.body
    training = body.get("training") if isinstance(body, dict) else None
    resources = body.get("resources") if isinstance(body, dict) else None
    if not isinstance(training, dict) or not isinstance(resources, dict):
        return case
    policy = body.get("policy")
    if isinstance(policy, dict):
        # Webhook targets are refused by where their host resolves (tests/controller/notify).
        policy.pop("notify", None)
    # Whether a path that exists here can train is the file system's (a directory without tokenizer
    # files, a file that is not Parquet): tests/controller/services/test_input_checks.py. A missing one
    # is not checked here (inputs_visible is off in tests, tests/conftest.py).
    for key in ("dataset", "tokenizer_name_or_path"):
        value = training.get(key)
        if isinstance(value, str) and glob.glob(glob.escape(value)):
            training[key] = str(Path.cwd() / f"absent-{key}")
    # Whether a run fits the GPU it names is the memory plan's arithmetic (tests/shared/test_memory_plan.py).
    resources.pop("gpu_type", None)
    resources.pop("gpu_memory", None)
    steps = training.get("training_steps")
    warmup = training.get("lr_warmup_steps", _DEFAULT["lr_warmup_steps"])
    if _number(steps) and _number(warmup) and warmup > steps:
        training["lr_warmup_steps"] = steps
    start = training.get("profile_step_start", _DEFAULT["profile_step_start"])
    end = training.get("profile_step_end", _DEFAULT["profile_step_end"])
    if _number(start) and _number(end) and start > end:
        training["profile_step_start"], training["profile_step_end"] = end, start
    nodes, per_node = resources.get("nodes", 1), resources.get("ntasks_per_node", 1)
    if isinstance(policy, dict) and _number(policy.get("min_nodes")) and _number(nodes):
        policy["min_nodes"] = min(int(policy["min_nodes"]), int(nodes))
    batch = training.get("batch_size", _DEFAULT["batch_size"])
    if _number(nodes) and _number(per_node) and _number(batch):
        world = int(nodes) * int(per_node)
        if world > 65_536:  # no batch of at most 65,536 sequences divides by more ranks
            resources["nodes"], world = 1, int(per_node)
        accumulation = training.get("gradient_accumulation_steps", 1)
        if not _number(accumulation) or world * int(accumulation) > 65_536:
            training["gradient_accumulation_steps"] = accumulation = 1
        split = world * int(accumulation)  # every rank's share cut into equal micro-batches
        if int(batch) % split:
            training["batch_size"] = split * max(1, min(int(batch), 65_536) // split)
    return case


_DEFAULT = {name: field.default for name, field in TrainingFields.model_fields.items()}


def _checkpoint_dir(env: Seeded) -> Path:
    settings = env.app.state.settings
    return Path(settings.resolve_checkpoint_dir(".")) / "seeded-running"


def _strategy(operation: Any, mode: GenerationMode, env: Seeded) -> st.SearchStrategy[Case]:
    free = operation.as_strategy(generation_mode=mode)
    positive = mode is GenerationMode.POSITIVE
    if operation.path == "/api/v1/runs" and operation.method.upper() == "POST" and positive:
        return free.map(_cross_field)
    if not any(p.name == "run_id" for p in operation.path_parameters):
        return free
    aimed = operation.as_strategy(generation_mode=mode, path_parameters={"run_id": env.running_id})
    if operation.path.endswith("/reports") and positive:
        # Only valid cases are folded: folding a negative case could make it valid again. A free
        # case that happens to name the seeded run is folded like the aimed ones.
        where = _checkpoint_dir(env)
        aimed = aimed.map(lambda c: _aim_at_attempt_1(c, where))
        free = free.map(
            lambda c: _aim_at_attempt_1(c, where) if c.path_parameters.get("run_id") == env.running_id else c
        )
    return st.one_of(free, aimed)


def _revive(env: Seeded) -> None:
    with env.factory() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == hash_token(env.user)).values(revoked=False))
        s.commit()


def _headers(env: Seeded, path: str) -> dict[str, str]:
    return env.h(env.worker) if path.endswith("/reports") else env.h()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_survives_fuzzing(
    seeded: tuple[str, Seeded, schemathesis.BaseSchema], method: str, path: str
) -> None:
    db, env, schema = seeded
    _revive(env)  # an earlier operation (token revoke/rotate) may have revoked the fuzzer's token
    operation = schema[path][method]
    examples = EXAMPLES if db == "sqlite" else PG_EXAMPLES
    headers = _headers(env, path)
    started = time.monotonic()
    statuses: Counter[int] = Counter()
    for mode in _modes(operation):

        @given(case=_strategy(operation, mode, env))
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
            excluded = EXCLUDED + EXCLUDED_FOR.get((method, path), [])
            case.validate_response(response, headers=headers, excluded_checks=excluded)

        fuzz()
    trials = sum(statuses.values())
    STATS[f"{db} trials"] += trials
    STATS[f"{db} 5xx"] += sum(n for code, n in statuses.items() if code >= 500)
    print(f"\n{db} {method} {path}: {trials} requests in {time.monotonic() - started:.1f}s {dict(statuses)}")
    assert not any(code >= 500 for code in statuses), statuses


def reseed(env: Seeded) -> None:
    """Empty every table (ids restart) and seed again: the same runs under the same ids."""
    running, failed = env.running_id, env.failed_id
    with env.factory() as s:
        bind = s.get_bind()
        tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
        if bind.dialect.name == "postgresql":
            s.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                s.execute(text(f"DELETE FROM {table}"))  # no AUTOINCREMENT: ids start at 1 again
        s.commit()
    env.user, env.worker, env.running_id, env.failed_id = _seed(env.factory)
    assert (env.running_id, env.failed_id) == (running, failed)


def test_stateful_phase(seeded: tuple[str, Seeded, schemathesis.BaseSchema]) -> None:
    """Operations chained through inferred links (create → read, cancel, resume ...), every check on."""
    db, env, schema = seeded
    base = schema.as_state_machine()
    steps: Counter[str] = Counter()

    class Chain(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            # Every scenario starts from the same database: Hypothesis replays choices, and a run
            # name taken or a run cancelled by an earlier scenario would make it draw otherwise.
            reseed(env)

        def before_call(self, case: Case) -> None:
            if case.operation.path == "/api/v1/runs" and case.method.upper() == "POST":
                _cross_field(case)
            elif (
                case.operation.path.endswith("/reports")
                and case.path_parameters.get("run_id") == env.running_id
            ):
                _aim_at_attempt_1(case, _checkpoint_dir(env))

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"headers": _headers(env, case.operation.path)}

        def after_call(self, response: Any, case: Case) -> None:
            super().after_call(response, case)
            steps[f"{case.method.upper()} {case.operation.path} {response.status_code}"] += 1

        def validate_response(self, response: Any, case: Case, **kwargs: Any) -> None:
            assert response.status_code < 500, (case.method, case.operation.path, response.text[:500])
            excluded = EXCLUDED + EXCLUDED_FOR.get((case.method.upper(), case.operation.path), [])
            case.validate_response(response, headers=kwargs.get("headers"), excluded_checks=excluded)

    examples = max(5, (EXAMPLES if db == "sqlite" else PG_EXAMPLES) // 2)
    Chain.run(
        settings=hypothesis.settings(
            max_examples=examples,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    chained = sum(n for key, n in steps.items() if "{run_id}" in key)
    STATS[f"{db} stateful steps"] += sum(steps.values())
    calls = sum(steps.values())
    print(f"\n{db} stateful: {calls} calls, {chained} on a run, {len(steps)} distinct (operation, status)")
    assert chained > 0, steps
