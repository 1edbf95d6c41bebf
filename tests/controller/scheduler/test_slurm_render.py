"""``render_sbatch``: golden files, validation, and shell-injection attempts rendered inert.

Regenerate the golden files after an intended template change with
``PYRECOVER_UPDATE_GOLDEN=1 pytest tests/controller/scheduler/test_slurm_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.scheduler.base import JobSpec
from controller.scheduler.slurm_render import CONTROLLER_ENV, render_sbatch, time_limit_minutes
from shared.run_rules import RunPolicy
from shared.schemas import ResourcesSpec

GOLDEN = Path(__file__).parent / "golden"
ANY_ENV = RunPolicy(env_allow=("V*",), check_roots=False)
"""The injection payloads travel in variables V0..V9: allowed here, so the renderer's quoting is tested."""
UPDATE = os.environ.get("PYRECOVER_UPDATE_GOLDEN") == "1"
BASH = shutil.which("bash")

INJECTIONS = [
    "x; touch {canary}",
    "$(touch {canary})",
    "`touch {canary}`",
    'it\'s "quoted" $HOME ${{HOME}} \\ back\\slash',
    "a\ttab & touch {canary} | cat > /dev/null",
    "'; touch {canary}; echo '",
    "-n",
    "",
    "*",
    "ünïcödé ✓",
]


def make_spec(
    *,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = ("/opt/venv/bin/python", "-m", "worker", "--training-steps", "100"),
    dependency: str | None = None,
    base: Path = Path("/srv/pyrecover/runs/demo"),
    run_name: str = "demo",
    trusted: bool = True,
    **resources: Any,
) -> JobSpec:
    """A job as ``build_job_spec`` makes it: the run's own variables are in its resources too (the
    renderer checks them there against the allow-list). ``trusted=False`` builds the resources
    without validation, as a bypassing caller could."""
    env = dict(env if env is not None else {"PYRECOVER_RUN_ID": "42", "PYRECOVER_ATTEMPT": "3"})
    fields = {"time_limit": "10", **resources}
    fields["env"] = {
        k: v for k, v in env.items() if k not in CONTROLLER_ENV and not k.startswith("PYRECOVER_")
    }
    if trusted:
        res = ResourcesSpec(scheduler="slurm", **fields)
    else:
        res = ResourcesSpec.model_construct(
            **(ResourcesSpec(scheduler="slurm", time_limit="10").__dict__ | fields)
        )
    return JobSpec(
        run_id=42,
        run_name=run_name,
        attempt=3,
        job_name="pyrecover-r42-a3",
        argv=list(argv),
        env=env,
        resources=res,
        workdir=base,
        stdout=base / "logs" / "attempt-0003.out",
        stderr=base / "logs" / "attempt-0003.err",
        dependency=dependency,
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with PYRECOVER_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (intended? regenerate and review)"


def test_golden_minimal() -> None:
    check_golden("minimal.sh", render_sbatch(make_spec()))


def test_golden_full() -> None:
    spec = make_spec(
        time_limit="1-00:00:01",
        nodes=2,
        ntasks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=8,
        mem="200G",
        partition="gpu",
        account="proj-llm",
        qos="high",
        constraint="[a100&ib|h100]",
        signal_lead_seconds=120,
        # Spelled as a user may: a prefix, a separate value, a short option. Rendered canonical.
        extra_sbatch_args=["--exclus", "--gres gpu:4", "-w node[01-02]", "--mail-type=END,FAIL"],
        env={
            "PYRECOVER_RUN_ID": "42",
            "PYRECOVER_CONTROLLER_URL": "https://ctl.example:8000",
            "HF_HUB_CACHE": "/scratch/hf",
        },
        dependency="1234",
        argv=["/opt/venv/bin/python", "-m", "worker", "--dataset", "/data/fineweb.parquet"],
    )
    text = render_sbatch(
        spec,
        prologue=["module load cuda/12.4", "source /opt/venv/bin/activate"],
        srun_args=["--mpi=none", "--cpu-bind=none"],
        token_file=Path("/srv/pyrecover/tokens/run-42"),
        env_file=Path("/srv/pyrecover/runs/demo/logs/attempt-0003.env"),
        signal="USR2",
    )
    check_golden("full.sh", text)
    for line in ("--exclusive", "--gres=gpu:4", "--nodelist=node[01-02]", "--mail-type=END,FAIL"):
        assert f"#SBATCH {line}\n" in text


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(1, 1), (45, 1), (60, 1), (61, 2), (3600, 60), (86401, 1441)]
)
def test_time_is_rounded_up_to_whole_minutes(seconds: int, minutes: int) -> None:
    assert time_limit_minutes(seconds) == minutes


def test_sbatch_header_carries_each_option() -> None:
    text = render_sbatch(make_spec(time_limit="90s", gpus_per_node=0, dependency="77", signal_lead_seconds=0))
    header = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert "#SBATCH --time=2" in header
    assert "#SBATCH --dependency=afterany:77" in header
    assert "#SBATCH --no-requeue" in header
    assert not any("--gpus-per-node" in line for line in header), "gpus-per-node only when > 0"
    assert not any("--signal" in line for line in header), "signal_lead_seconds=0 disables the backstop"
    assert all(line.startswith("#SBATCH --") for line in header)


def test_token_never_in_script_only_its_file() -> None:
    text = render_sbatch(make_spec(), token_file=Path("/secrets/run-42.token"))
    assert "export PYRECOVER_TOKEN_FILE=/secrets/run-42.token" in text
    with pytest.raises(ValueError, match="by file"):
        render_sbatch(make_spec(env={"PYRECOVER_TOKEN": "s3cret"}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_name": "a b"}, "run name"),
        ({"base": Path("/srv/with space")}, "workdir"),
        ({"base": Path("/srv/percent%j")}, "workdir"),
        ({"base": Path("/srv/new\nline")}, "workdir"),
        ({"dependency": "1; rm -rf /"}, "dependency"),
        ({"dependency": "١٢"}, "dependency"),
        # Values a bypassing caller could put in the resources: the renderer applies the API's rules.
        ({"env": {"BAD NAME": "x"}, "trusted": False}, "valid identifier"),
        ({"env": {"OMP_NUM_THREADS": "nul\x00byte"}, "trusted": False}, "NUL"),
        ({"env": {"OMP_NUM_THREADS": "1\n2"}, "trusted": False}, "newlines"),
        ({"env": {"PYTHONPATH": "/x"}, "trusted": False}, "resources.env: environment variable 'PYTHONPATH'"),
        ({"env": {"NOT_ALLOWED": "1"}, "trusted": False}, "not on this controller's allow-list"),
        ({"mem": "١٢G", "trusted": False}, "resources.mem"),
        ({"partition": "a b", "trusted": False}, "resources.partition"),
        ({"extra_sbatch_args": ["--out=/etc/passwd"], "trusted": False}, "--output is not allowed"),
        ({"extra_sbatch_args": ["--export=ALL,BASH_ENV=/x"], "trusted": False}, "--export is not allowed"),
        ({"extra_sbatch_args": ["--job=x"], "trusted": False}, "--job-name is not allowed"),
        ({"argv": []}, "argv"),
    ],
)
def test_unsafe_values_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_sbatch(make_spec(**kwargs))


def test_variables_from_neither_the_run_nor_the_controller_are_refused() -> None:
    spec = make_spec(env={"PYRECOVER_RUN_ID": "1"})
    import dataclasses

    sneaked = dataclasses.replace(spec, env={**spec.env, "OMP_NUM_THREADS": "1"})
    with pytest.raises(ValueError, match="neither the run's nor the controller's own"):
        render_sbatch(sneaked)


def test_the_admins_allow_lists_apply() -> None:
    spec = make_spec(extra_sbatch_args=["--comment=x"], env={"OMP_NUM_THREADS": "2"})
    assert "#SBATCH --comment=x" in render_sbatch(spec)
    with pytest.raises(ValueError, match="--comment is not on this controller's allow-list"):
        render_sbatch(spec, policy=RunPolicy(sbatch_allow=("exclusive",), check_roots=False))
    with pytest.raises(ValueError, match="'OMP_NUM_THREADS' is not on this controller's allow-list"):
        render_sbatch(spec, policy=RunPolicy(env_allow=("HF_TOKEN",), check_roots=False))


def test_secret_values_are_sourced_from_their_file_never_written_into_the_script() -> None:
    text = render_sbatch(make_spec(), env_file=Path("/srv/runs/7/logs/attempt-0001.env"))
    assert "\n. /srv/runs/7/logs/attempt-0001.env\n" in text
    assert not any(line.startswith(". ") for line in render_sbatch(make_spec()).splitlines())


def test_owned_options_and_bad_srun_args_are_refused() -> None:
    with pytest.raises(ValueError, match="pyrecover sets it from the run's fields"):
        render_sbatch(make_spec(extra_sbatch_args=["--time=999"]))
    with pytest.raises(ValueError, match="srun argument"):
        render_sbatch(make_spec(), srun_args=["--mpi=pmix; touch /tmp/x"])
    with pytest.raises(ValueError, match="single line"):
        render_sbatch(make_spec(), prologue=["module load a\nrm -rf /"])
    with pytest.raises(ValueError, match="signal"):
        render_sbatch(make_spec(), signal="KILL")


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_rendered_script_is_valid_bash(tmp_path: Path) -> None:
    env = {f"V{i}": s.format(canary=tmp_path / "canary") for i, s in enumerate(INJECTIONS)}
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(make_spec(env=env, argv=["/bin/echo", *env.values()]), policy=ANY_ENV))
    subprocess.run([BASH, "-n", str(script)], check=True)


def _env_block(text: str) -> str:
    """The ``export`` lines of a rendered script: the part that turns user values into shell."""
    return "\n".join(line for line in text.splitlines() if line.startswith("export ") and "$((" not in line)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_injection_attempts_come_through_literally_and_execute_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    values = [s.format(canary=canary) for s in INJECTIONS]
    env = {f"V{i}": v for i, v in enumerate(values)}
    argv = ["/bin/echo", *values]
    text = render_sbatch(make_spec(env=env, argv=argv), policy=ANY_ENV)
    # Execute the env exports, then print each variable NUL-separated, plus the srun argv as the
    # shell would pass it (the srun line with srun replaced by printf).
    srun_line = re.search(r"^srun .*\\\n\s+(.*) &$", text, re.MULTILINE)
    assert srun_line is not None
    probe = tmp_path / "probe.sh"
    probe.write_text(
        _env_block(text)
        + "\n"
        + "".join(f'printf "%s\\0" "${{V{i}}}"\n' for i in range(len(values)))
        + f"printf '%s\\0' {srun_line.group(1)}\n"
    )
    out = subprocess.run([BASH, str(probe)], capture_output=True, check=True, cwd=tmp_path).stdout
    fields = out.decode().split("\0")[:-1]
    assert fields[: len(values)] == values, "every env value arrives byte for byte"
    assert fields[len(values) :] == argv, "every worker argument arrives byte for byte"
    assert not canary.exists(), "an injection attempt executed"


def test_a_controller_value_with_a_newline_stays_one_shell_word() -> None:
    # User values with newlines are refused (above); one of the controller's own (a URL, say)
    # still goes through shlex.quote, which keeps it one shell word.
    spec = make_spec(env={"PYRECOVER_CONTROLLER_URL": "line1\nline2; touch /tmp/pwned"})
    assert "export PYRECOVER_CONTROLLER_URL='line1\nline2; touch /tmp/pwned'" in render_sbatch(spec)


def _sbatch_header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_the_runs_exclusions_render_as_one_exclude_merged_with_the_users() -> None:
    import dataclasses

    own = dataclasses.replace(make_spec(), exclude=("vm-2", "vm-3"))
    assert "#SBATCH --exclude=vm-2,vm-3" in _sbatch_header(render_sbatch(own))
    both = dataclasses.replace(
        make_spec(extra_sbatch_args=["--exclude=gpu[01-02]", "-x vm-3"]), exclude=("vm-3",)
    )
    excludes = [line for line in _sbatch_header(render_sbatch(both)) if "--exclude" in line]
    # sbatch keeps only the last --exclude: one line holds the user's hosts and the run's.
    assert excludes == ["#SBATCH --exclude=gpu[01-02],vm-3"]
    assert not any("--exclude" in line for line in _sbatch_header(render_sbatch(make_spec())))


@pytest.mark.parametrize("host", ["vm-1 --uid=0", "vm%j", "a\nb", "$(id)", "vm'1"])
def test_a_hostile_excluded_host_is_refused(host: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match="excluded host"):
        render_sbatch(dataclasses.replace(make_spec(), exclude=(host,)))
