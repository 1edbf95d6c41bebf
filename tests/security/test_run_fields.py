"""No run field can execute code or escape its run: the issue's cases, through the real app.

Each refused body is a 422 naming the field and stores nothing. The rules are
``shared/run_rules.py`` (the one validator), ``shared/env_policy.py`` (the hard deny-list) and
``shared/sbatch_options.py`` (sbatch's own option parsing); the admin's allow-lists and roots come
from the settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.db.models import Run
from controller.settings import Settings
from shared.env_policy import DEFAULT_ENV_ALLOW, DENIED_ENV
from shared.sbatch_options import DEFAULT_SBATCH_ALLOW, NEVER_ALLOWED, SBATCH_OPTIONS, SHORT_OPTIONS
from tests.controller.api.conftest import Api, make_api, run_body


def _runs(api: Api) -> int:
    with api.factory() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


def _post(api: Api, body: dict[str, Any]) -> Any:
    return api.client.post("/api/v1/runs", json=body, headers=api.h())


def _refused(api: Api, body: dict[str, Any], field: str) -> str:
    before = _runs(api)
    r = _post(api, body)
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["detail"]]
    assert any(f.startswith(field) for f in fields), (field, r.json())
    assert _runs(api) == before, "a refused run was stored"
    return str(r.json()["message"])


def _with(**resources: Any) -> dict[str, Any]:
    body = run_body("fields")
    body["resources"] = {"scheduler": "slurm", "time_limit": "10"} | resources
    return body


def example_names() -> list[str]:
    """One concrete name per deny-list entry (its glob filled in), plus the issue's own."""
    names = {p.replace("*", "X").replace("?", "4") for p, _ in DENIED_ENV}
    return sorted(names | {"PYTHONPATH", "LD_PRELOAD", "PATH", "BASH_ENV", "PYTHONSTARTUP", "ld_preload"})


@pytest.fixture
def open_api(tmp_path: Path) -> Iterator[Api]:
    """The most permissive controller an admin can configure: every variable the deny-list leaves."""
    yield from make_api(tmp_path, env_allow=["*"])


def test_every_denied_variable_is_refused_whatever_the_allow_list(open_api: Api) -> None:
    names = example_names()
    for name in names:
        message = _refused(open_api, _with(env={name: "/tmp/marker"}), "resources.env")
        assert name in message
        # ... and as a name declared secret, where no value is even given.
        _refused(open_api, _with(secret_env=[name]), "resources.secret_env")
    # The allow-list "*" lets everything else through: the refusals above are the deny-list's.
    assert _post(open_api, _with(env={"SOME_LAB_SETTING": "1"})).status_code == 201
    print(f"\ndenied env: {len(names)} names x 2 fields refused with 422 under env_allow=['*']")


def test_the_admin_cannot_allow_a_denied_variable() -> None:
    for entry in ("LD_*", "PYTHONPATH", "BASH_ENV", "SLURM_*", "HOME", "NCCL_NET_PLUGIN", "CUDA_CACHE_PATH"):
        with pytest.raises(ValueError, match="hard deny-list"):
            Settings(env_allow=[entry])


def test_the_default_allow_list_holds_what_training_needs_and_nothing_denied(api: Api) -> None:
    env = dict.fromkeys(DEFAULT_ENV_ALLOW, "1")
    r = _post(api, _with(env=env))
    assert r.status_code == 201, r.text
    _refused(api, _with(env={"MY_TOOL_SETTING": "1"}), "resources.env")


@pytest.mark.parametrize(
    "args",
    [
        ["--out=/any/file", "--open=truncate"],  # the overwrite, prefixes and all
        ["--output=/any/file"],
        ["--o=/x"],  # ambiguous prefix: refused, never guessed
        ["-o/any/file"],
        ["-o /any/file"],
        ["--error /x"],
        ["--job=x"],  # renames the job: recovery by name breaks
        ["-Jx"],
        ["--export=ALL,BASH_ENV=/tmp/x.sh"],
        ["--exp=ALL,LD_PRELOAD=/x.so"],
        ["--export-file=/tmp/env"],
        ["--get-user-env"],
        ["--chdir=/"],
        ["-D /"],
        ["--dependency=afterok:1"],
        ["--requeue"],
        ["--signal=B:KILL@1"],
        ["--wrap=id"],
        ["--container=/tmp/bundle"],
        ["--bb=create_persistent"],
        ["--uid=0"],
        ["--clusters=other"],
        ["--time-min=1"],
        ["--input=/etc/shadow"],
        ["--exclusive --output=/x"],  # two options in one argument
        ["--gres=gpu:1;touch /tmp/x"],
        ["--comment=$(id)"],
        ["exclusive"],
        ["--no-such-option"],
    ],
)
def test_sbatch_arguments_are_read_as_sbatch_reads_them(api: Api, args: list[str]) -> None:
    _refused(api, _with(extra_sbatch_args=args), "resources.extra_sbatch_args")


def test_allowed_options_in_any_spelling_sbatch_accepts(api: Api) -> None:
    args = ["--exclus", "--gres gpu:2", "--gres-flags=enforce-binding", "-w node[01-02]", "-xnode3", "--nice"]
    r = _post(api, _with(extra_sbatch_args=args))
    assert r.status_code == 201, r.text


def test_the_sbatch_allow_list_is_the_admins(tmp_path: Path) -> None:
    for api in make_api(tmp_path, sbatch_allow=["gres"]):
        assert _post(api, _with(extra_sbatch_args=["--gres=gpu:1"])).status_code == 201
        _refused(api, _with(extra_sbatch_args=["--exclusive"]), "resources.extra_sbatch_args")
    for name in sorted(NEVER_ALLOWED):
        with pytest.raises(ValueError, match="can never be allowed"):
            Settings(sbatch_allow=[name])


def test_the_option_table_is_complete() -> None:
    """Every short option maps to a long one; the default allow-list holds nothing forbidden."""
    assert set(SHORT_OPTIONS.values()) <= set(SBATCH_OPTIONS)
    assert set(NEVER_ALLOWED) <= set(SBATCH_OPTIONS)
    assert not set(DEFAULT_SBATCH_ALLOW) & set(NEVER_ALLOWED)


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"mem": "١٢G"}, "resources.mem"),  # Arabic-Indic digits: Python's \d matches them
        ({"mem": "12G\n"}, "resources.mem"),
        ({"time_limit": "١٠"}, "resources.time_limit"),
        ({"time_limit": " 10"}, "resources.time_limit"),
        ({"time_limit": "0"}, "resources.time_limit"),
        ({"time_limit": 527041}, "resources.time_limit"),
        ({"partition": "gpu١"}, "resources.partition"),
        ({"extra_sbatch_args": ["--output=/x"]}, "resources.extra_sbatch_args"),
        ({"extra_sbatch_args": ["--gres=gpu:١"]}, "resources.extra_sbatch_args"),
    ],
)
def test_values_that_used_to_fail_only_at_render_time_are_422_at_submit(
    api: Api, resources: dict[str, Any], field: str
) -> None:
    _refused(api, _with(**resources), field)


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"dataset": "/etc/shadow"}, "training.dataset"),
        ({"dataset": "/home/someone-else/data/*.parquet"}, "training.dataset"),
        ({"tokenizer_name_or_path": "/root/.cache/tok"}, "training.tokenizer_name_or_path"),
        ({"checkpoint_dir": "/etc"}, "training.checkpoint_dir"),
        ({"checkpoint_dir": "/var/tmp/ckpt"}, "training.checkpoint_dir"),
        ({"profile": True, "profile_dir": "/etc/cron.d"}, "training.profile_dir"),
        ({"dataset": "data/١.parquet"}, "training.dataset"),
    ],
)
def test_paths_must_lie_under_the_admins_roots(api: Api, training: dict[str, Any], field: str) -> None:
    body = run_body("paths", **training)
    _refused(api, body, field)


def test_paths_under_the_roots_and_relative_ones_are_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    for api in make_api(tmp_path, data_roots=[shared / "datasets"], checkpoint_roots=[shared / "ckpt"]):
        ok = run_body(
            "ok",
            dataset=str(shared / "datasets" / "fineweb" / "*.parquet"),
            tokenizer_name_or_path="meta-llama/Llama-3.1-8B",  # a hub name (nothing of that name here)
            checkpoint_dir=str(shared / "ckpt" / "team-a"),
        )
        assert _post(api, ok).status_code == 201
        assert _post(api, run_body("rel", checkpoint_dir="nested/dir")).status_code == 201
        _refused(api, run_body("out", dataset=str(shared / "datasets-other" / "x")), "training.dataset")


def test_a_symlink_under_a_root_does_not_lead_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    for api in make_api(tmp_path, data_roots=[root]):
        _refused(api, run_body("sym", dataset=str(root / "escape" / "passwd")), "training.dataset")


STRINGS = [
    ("name", "a" * 64),
    ("training.dataset", "d" * 4097),
    ("training.tokenizer_name_or_path", "t" * 4097),
    ("training.checkpoint_dir", "c" * 4097),
    ("training.profile_dir", "p" * 4097),
    ("resources.time_limit", "1" * 33),
    ("resources.mem", "1" * 14),
    ("resources.partition", "p" * 257),
    ("resources.account", "a" * 257),
    ("resources.qos", "q" * 257),
    ("resources.constraint", "c" * 1025),
    ("resources.env", {"X" * 257: "1"}),
    ("resources.env", {"OMP_NUM_THREADS": "1" * (32 * 1024 + 1)}),
    ("resources.secret_env", ["S" * 257]),
    ("resources.extra_sbatch_args", ["--comment=" + "c" * 1020]),
]


@pytest.mark.parametrize(("field", "value"), STRINGS, ids=[f for f, _ in STRINGS])
def test_every_string_field_has_a_length_limit(api: Api, field: str, value: Any) -> None:
    body = run_body("long")
    body["resources"] = {"scheduler": "slurm", "time_limit": "10"}
    section, _, key = field.partition(".")
    if not key:
        body[section] = value
    else:
        body[section][key] = value
    _refused(api, body, field)


def test_the_limits_are_stated_in_the_openapi_document(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["RunCreate"]["properties"]["name"]["maxLength"] == 63
    assert "pattern" in schemas["RunCreate"]["properties"]["name"]
    resources = schemas["ResourcesSpec"]["properties"]
    names = resources["env"]["propertyNames"]["enum"]
    assert "OMP_NUM_THREADS" in names and "PYTHONPATH" not in names
    assert "pattern" in resources["extra_sbatch_args"]["items"]
    assert json.dumps(schemas["TrainingSpec"]["properties"]["dataset"]).count("pattern") == 1
