"""Property: if the API accepts a spec, it renders, ``bash -n`` accepts the script, and the script
holds no sbatch option and no variable outside the allow-lists (nor any on the deny-list).

Specs are drawn from a mix of legitimate and hostile values for every field that reaches the
script: environment names (allowed, denied, unknown, lower-case), values full of shell syntax,
sbatch options in every spelling sbatch accepts (prefixes, short forms, separate values), memory,
partition, time limits with non-ASCII digits. Each is posted to the real app; an accepted one
goes through the same path as a real attempt (``build_job_spec`` → ``SlurmScheduler.write_script``).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.db.models import Run
from controller.reconciler.jobspec import build_job_spec
from controller.scheduler.slurm import SlurmScheduler
from controller.scheduler.slurm_render import CONTROLLER_ENV
from shared import envfile
from shared.env_policy import DENIED_ENV, allowed, denied_because
from shared.sbatch_options import OWNED_OPTIONS, SBATCH_OPTIONS, SHORT_OPTIONS
from tests.controller.api.conftest import Api, make_api, run_body

BASH = shutil.which("bash")
ENV_ALLOW = ["OMP_NUM_THREADS", "HF_TOKEN", "NCCL_DEBUG", "LAB_*"]
SBATCH_ALLOW = ["exclusive", "gres", "nodelist", "comment", "mail-type"]
SBATCH_LINE = re.compile(r"^#SBATCH --([a-z][a-z-]*)(?:=(\S+))?$")
EXPORT_LINE = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=")
NAMES = itertools.count()
SCRIPT_SET = {"MASTER_ADDR", "MASTER_PORT"}  # set by the template itself, after the user's variables

SHELL_TEXT = st.sampled_from(
    ["1", "$(id)", "`id`", "a;b", "x y", "'q'", '"q"', "\\", "${IFS}", "*", "", "ünï", "a\tb", "-n", "١٢"]
)
ALLOWED_NAMES = st.sampled_from([*ENV_ALLOW[:-1], "LAB_THING", "LAB_DIR", "LAB_KEY", "lab_x"])
ENV_NAMES = st.one_of(
    ALLOWED_NAMES,
    ALLOWED_NAMES,
    ALLOWED_NAMES,
    st.sampled_from([p.replace("*", "X").replace("?", "4") for p, _ in DENIED_ENV]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
)


def _spellings(name: str) -> list[str]:
    out = [f"--{name}"]
    out += [f"--{name[:n]}" for n in range(2, len(name))]
    out += [f"-{k}" for k, v in SHORT_OPTIONS.items() if v == name]
    return out


OPTION_WORDS = st.one_of(
    st.sampled_from(sorted({w for name in SBATCH_ALLOW for w in _spellings(name)})),
    st.sampled_from(sorted({w for name in SBATCH_OPTIONS for w in _spellings(name)})),
)
VALUES = st.one_of(
    st.sampled_from(["gpu:1", "node[1-2]", "END", "x", "/etc/passwd", "ALL,BASH_ENV=/x"]), SHELL_TEXT
)
FRIENDLY_ARGS = st.sampled_from(
    ["--exclusive", "--exclus", "--gres=gpu:1", "--gres gpu:2", "-w node[1-2]", "--comment=a,b",
     "--mail-type=END", "--nodelist=n1"]
)  # fmt: skip
TIME_LIMITS = st.sampled_from(["10", "1h", "0:30", "45s", "01:00:00", "1-00:00:00", "١٠", " 5", "0"])


@st.composite
def sbatch_arg(draw: Any) -> str:
    word = draw(OPTION_WORDS)
    how = draw(st.sampled_from(["bare", "eq", "space", "attached"]))
    value = draw(VALUES)
    return {"bare": word, "eq": f"{word}={value}", "space": f"{word} {value}", "attached": word + value}[how]


@st.composite
def specs(draw: Any) -> dict[str, Any]:
    body = run_body(f"p{next(NAMES)}")  # each draw a fresh name: a 409 would hide the outcome
    # Half the specs are hostile anywhere; the other half only in their values (which the script
    # must carry inert), so that both sides of the property are exercised.
    hostile = draw(st.booleans())
    names = (
        ENV_NAMES
        if hostile
        else ALLOWED_NAMES.filter(lambda n: allowed(n, ENV_ALLOW) and not denied_because(n))
    )
    resources: dict[str, Any] = {
        "scheduler": "slurm",
        "time_limit": draw(TIME_LIMITS if hostile else st.sampled_from(["10", "1h", "0:30", "1-00:00:00"])),
    }
    env = draw(st.dictionaries(names, SHELL_TEXT, max_size=3))
    if env:
        resources["env"] = env
    if draw(st.booleans()):
        resources["secret_env"] = draw(st.lists(names, max_size=2))
    args = draw(st.lists(sbatch_arg() if hostile else FRIENDLY_ARGS, max_size=2))
    if args:
        resources["extra_sbatch_args"] = args
    for key, values in (("mem", ["4G", "١٢G", "12 G", "512M"]), ("partition", ["gpu", "a b", "p;q", "gpu١"])):
        if draw(st.booleans()):
            resources[key] = draw(st.sampled_from(values if hostile else values[::3]))
    body["resources"] = resources
    return body


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from make_api(tmp_path_factory.mktemp("prop"), env_allow=ENV_ALLOW, sbatch_allow=SBATCH_ALLOW)


COUNTS = {"accepted": 0, "refused": 0}


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=specs())
def test_an_accepted_spec_renders_to_a_script_within_the_allow_lists(api: Api, body: dict[str, Any]) -> None:
    r = api.client.post("/api/v1/runs", json=body, headers=api.h())
    if r.status_code == 422:
        COUNTS["refused"] += 1
        assert r.json()["detail"][0]["field"].split(".")[0] in ("resources", "name", "training"), r.text
        return
    assert r.status_code == 201, r.text
    COUNTS["accepted"] += 1
    run_id = r.json()["id"]
    with api.factory() as s:
        row = s.get(Run, run_id)
        assert row is not None
        spec = row.spec_model()
    job = build_job_spec(
        settings=api.settings,
        run_id=run_id,
        run_name=spec.name,
        attempt=1,
        training=spec.training,
        resources=spec.resources,
        token="pyr_w_x",
    )
    scheduler = SlurmScheduler(api.settings)
    script = scheduler.write_script(job)
    assert BASH is not None
    subprocess.run([BASH, "-n", str(script)], check=True)
    text = script.read_text()
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            m = SBATCH_LINE.fullmatch(line)
            assert m, line
            assert m[1] in OWNED_OPTIONS | {"open-mode"} or m[1] in SBATCH_ALLOW, line
        elif m := EXPORT_LINE.match(line):
            _check_variable(m[1], line)
    env_file = scheduler.env_file_path(job)
    if env_file.exists():
        assert f". {env_file}" in text
        for name in envfile.read(env_file):
            _check_variable(name, f"secret {name}")
            assert name not in text, "a secret variable's name (and value) stays out of the script"


def _check_variable(name: str, line: str) -> None:
    if name in CONTROLLER_ENV or name in SCRIPT_SET:
        return
    assert denied_because(name) is None, line
    assert allowed(name, ENV_ALLOW), line


def test_the_property_saw_both_outcomes() -> None:
    """The draws must reach both sides, or the property says nothing (runs after the one above)."""
    print(f"\nspec property: {COUNTS['accepted']} accepted and rendered, {COUNTS['refused']} refused")
    assert COUNTS["accepted"] >= 30 and COUNTS["refused"] >= 30, COUNTS


def test_the_env_file_round_trips_hostile_values(tmp_path: Path) -> None:
    values = {"A": "$(id)", "B": 'it\'s "q" `x` \\ ${IFS}', "C": "", "D": "ünï\ttab"}
    path = envfile.write(tmp_path / "e.env", values)
    assert envfile.read(path) == values
    assert BASH is not None
    out = subprocess.run(
        [BASH, "-c", f'. {path}; printf "%s\\0" "$A" "$B" "$C" "$D"'], capture_output=True, check=True
    )
    assert out.stdout.decode().split("\0")[:-1] == list(values.values())
    assert (path.stat().st_mode & 0o777) == 0o600
