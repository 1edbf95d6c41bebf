from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from controller.reconciler.jobspec import build_job_spec, controller_url, resolve_checkpoint_dir, run_dir
from controller.settings import Settings
from shared.schemas import ResourcesSpec, TrainingSpec


def settings(data_dir: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        data_dir=data_dir, port=8123, worker_python="/venv/python", checkpoint_root=data_dir / "ckpt"
    )
    return Settings(**(base | kw))


def test_job_spec_argv_env_token_file_and_logs(tmp_path: Path) -> None:
    training = TrainingSpec(dataset="/d/x.parquet", tokenizer_name_or_path="/d/tok", training_steps=50)
    resources = ResourcesSpec(scheduler="local", time_limit="45s", env={"HF_HUB_CACHE": "/hf"})
    spec = build_job_spec(
        settings=settings(tmp_path, data_roots=["/d"]),
        run_id=4,
        run_name="demo",
        attempt=2,
        training=training,
        resources=resources,
        token="tok-SECRET",
    )
    argv = list(spec.argv)
    assert argv[:3] == ["/venv/python", "-m", "worker"]
    assert argv[-4:] == ["--experiment-name", "demo", "--resume-from-checkpoint", "latest"]
    assert argv.count("--checkpoint-dir") == 1
    assert argv[argv.index("--checkpoint-dir") + 1] == str(tmp_path / "ckpt")
    assert argv[argv.index("--training-steps") + 1] == "50"
    assert spec.job_name == "pyrecover-r4-a2"
    token_file = Path(spec.env["PYRECOVER_TOKEN_FILE"])
    assert token_file.read_text().strip() == "tok-SECRET"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.parent == run_dir(tmp_path, 4) == spec.workdir
    assert not any("tok-SECRET" in v for v in [*argv, *spec.env.values()])
    assert spec.env["PYRECOVER_CONTROLLER_URL"] == "http://127.0.0.1:8123"
    assert spec.env["PYRECOVER_RUN_ID"] == "4" and spec.env["PYRECOVER_ATTEMPT"] == "2"
    assert spec.env["HF_HUB_CACHE"] == "/hf"
    assert spec.env["PYRECOVER_SIGNAL_LEAD"] == "30"  # the run's signal_lead_seconds (the default)
    assert spec.stdout.name == "attempt-0002.out" and spec.stderr.parent == run_dir(tmp_path, 4) / "logs"


def test_token_file_is_replaced_and_stays_private(tmp_path: Path) -> None:
    training = TrainingSpec(dataset="x", tokenizer_name_or_path="t", training_steps=5, lr_warmup_steps=1)
    res = ResourcesSpec(scheduler="local", time_limit="1m")
    for n, tok in ((1, "a"), (2, "b")):
        spec = build_job_spec(
            settings=settings(tmp_path),
            run_id=1,
            run_name="r",
            attempt=n,
            training=training,
            resources=res,
            token=tok,
        )
    path = Path(spec.env["PYRECOVER_TOKEN_FILE"])
    assert path.read_text().strip() == "b" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.is_file()] == ["worker.token"]


def test_urls_and_checkpoint_roots(tmp_path: Path) -> None:
    assert controller_url(settings(tmp_path, public_url="https://ctl.example/")) == "https://ctl.example"
    assert controller_url(settings(tmp_path, host="0.0.0.0")) == "http://127.0.0.1:8123"
    assert resolve_checkpoint_dir(settings(tmp_path), "/abs/ck") == Path("/abs/ck")
    assert (
        resolve_checkpoint_dir(settings(tmp_path, checkpoint_root=None), "ck")
        == tmp_path / "checkpoints" / "ck"
    )


def test_relative_paths_reach_the_worker_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's cwd is the run directory, so every relative path must be resolved by the controller.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "tokenizer").mkdir(parents=True)
    (tmp_path / "data" / "sample.parquet").write_bytes(b"")
    training = TrainingSpec(
        dataset="data/sample.parquet", tokenizer_name_or_path="data/tokenizer", training_steps=20
    )
    spec = build_job_spec(
        settings=settings(Path("var"), checkpoint_root=None),
        run_id=7,
        run_name="rel",
        attempt=1,
        training=training,
        resources=ResourcesSpec(scheduler="local", time_limit="45s"),
        token="t",
    )
    argv = list(spec.argv)

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--dataset") == str(tmp_path / "data" / "sample.parquet")
    assert flag("--tokenizer-name-or-path") == str(tmp_path / "data" / "tokenizer")
    assert flag("--checkpoint-dir") == str(
        tmp_path / "var" / "checkpoints"
    )  # the root itself: no doubled name
    assert Path(spec.env["PYRECOVER_TOKEN_FILE"]) == tmp_path / "var" / "runs" / "7" / "worker.token"
    assert spec.workdir == tmp_path / "var" / "runs" / "7" and spec.stdout.is_absolute()
    # Seen from the worker's cwd, every path still names the same file.
    monkeypatch.chdir(spec.workdir)
    assert Path(spec.env["PYRECOVER_TOKEN_FILE"]).read_text().strip() == "t"
    assert Path(flag("--dataset")).exists() and Path(flag("--tokenizer-name-or-path")).is_dir()


def test_a_hub_name_or_remote_path_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    training = TrainingSpec(
        dataset="shards/train", tokenizer_name_or_path="meta-llama/Llama-3.1-8B", training_steps=20
    )
    spec = build_job_spec(
        settings=settings(tmp_path),
        run_id=1,
        run_name="hub",
        attempt=1,
        training=training,
        resources=ResourcesSpec(scheduler="local", time_limit="45s"),
        token="t",
    )
    argv = list(spec.argv)
    assert argv[argv.index("--tokenizer-name-or-path") + 1] == "meta-llama/Llama-3.1-8B"
    assert argv[argv.index("--dataset") + 1] == "shards/train"


def test_a_mistyped_relative_path_reaches_the_worker_absolute_not_as_a_hub_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.reconciler.jobspec import absolute_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    training = TrainingSpec(
        dataset="data/*.parquet", tokenizer_name_or_path="data/tokenizr", training_steps=20
    )
    assert absolute_inputs(training) == {
        "dataset": str(tmp_path / "data" / "*.parquet"),
        "tokenizer_name_or_path": str(tmp_path / "data" / "tokenizr"),
    }
    hub = TrainingSpec(dataset="/d", tokenizer_name_or_path="meta-llama/Llama-3.1-8B", training_steps=20)
    assert absolute_inputs(hub) == {}


def test_relative_init_from_hf_and_trackers_reach_the_worker_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama").mkdir(parents=True)
    training = TrainingSpec(
        dataset="/d/x.parquet",
        tokenizer_name_or_path="/d/tok",
        training_steps=50,
        init_from_hf="models/llama",
        trackers=["tensorboard", "wandb"],
    )
    spec = build_job_spec(
        settings=settings(tmp_path, data_roots=[Path("/d"), tmp_path]),
        run_id=4,
        run_name="demo",
        attempt=1,
        training=training,
        resources=ResourcesSpec(scheduler="local", time_limit="45s"),
        token="t",
    )
    argv = list(spec.argv)
    # workers run in the run's own directory: a relative path must not reach them as it was given
    assert argv[argv.index("--init-from-hf") + 1] == str(tmp_path / "models" / "llama")
    assert argv[argv.index("--trackers") + 1] == "tensorboard,wandb"
    without = TrainingSpec(dataset="/d/x.parquet", tokenizer_name_or_path="/d/tok", training_steps=50)
    plain = build_job_spec(
        settings=settings(tmp_path, data_roots=[Path("/d"), tmp_path]),
        run_id=5,
        run_name="plain",
        attempt=1,
        training=without,
        resources=ResourcesSpec(scheduler="local", time_limit="45s"),
        token="t",
    )
    assert "--init-from-hf" not in plain.argv and "--trackers" not in plain.argv


def test_secret_values_come_from_the_runs_file_never_the_spec(tmp_path: Path) -> None:
    from controller.services.secrets import write_secrets

    cfg = settings(tmp_path, env_allow=["HF_TOKEN", "OMP_NUM_THREADS", "WANDB_API_KEY"])
    write_secrets(tmp_path, 3, {"HF_TOKEN": "hf_from_file", "WANDB_API_KEY": "not-declared-any-more"})
    training = TrainingSpec(dataset="x", tokenizer_name_or_path="t", training_steps=5, lr_warmup_steps=1)
    # As stored: the secret's name, no value (the spec of a row older than the split may still hold one).
    res = ResourcesSpec(
        scheduler="local", time_limit="1m", env={"OMP_NUM_THREADS": "2"}, secret_env=["HF_TOKEN"]
    )
    spec = build_job_spec(
        settings=cfg, run_id=3, run_name="s", attempt=1, training=training, resources=res, token="t"
    )
    assert dict(spec.secret_env) == {"HF_TOKEN": "hf_from_file"}  # only names the run declares
    assert spec.env["OMP_NUM_THREADS"] == "2" and "HF_TOKEN" not in spec.env
    legacy = ResourcesSpec(scheduler="local", time_limit="1m", env={"WANDB_API_KEY": "in-the-row"})
    spec = build_job_spec(
        settings=cfg, run_id=4, run_name="s", attempt=1, training=training, resources=legacy, token="t"
    )
    assert dict(spec.secret_env) == {"WANDB_API_KEY": "in-the-row"} and "WANDB_API_KEY" not in spec.env
    assert "in-the-row" not in repr(spec), "secret values stay out of a JobSpec's repr (logs)"


@pytest.mark.parametrize(
    ("training", "resources", "field"),
    [
        ({"dataset": "/etc/shadow"}, {}, "training.dataset"),
        ({"checkpoint_dir": "/elsewhere"}, {}, "training.checkpoint_dir"),
        ({}, {"env": {"NOT_ALLOWED": "1"}}, "resources.env"),
        ({}, {"extra_sbatch_args": ["--comment=x"]}, "resources.extra_sbatch_args"),
    ],
)
def test_a_stored_run_is_checked_again_by_todays_rules(
    tmp_path: Path, training: dict[str, Any], resources: dict[str, Any], field: str
) -> None:
    from shared.run_rules import RuleViolation

    cfg = settings(tmp_path, sbatch_allow=["exclusive"])
    spec_training = TrainingSpec(**({"dataset": "x", "tokenizer_name_or_path": "t", "training_steps": 5,
                                     "lr_warmup_steps": 1} | training))  # fmt: skip
    res = ResourcesSpec(**({"scheduler": "slurm", "time_limit": "1m"} | resources))
    with pytest.raises(RuleViolation) as err:
        build_job_spec(
            settings=cfg, run_id=9, run_name="r", attempt=1, training=spec_training, resources=res, token="t"
        )
    assert err.value.field == field
    assert not (tmp_path / "runs" / "9").exists(), "nothing is written for a run that may not start"


def test_a_rollback_and_a_restart_from_scratch_reach_the_workers_own_parser(tmp_path: Path) -> None:
    from controller.reconciler.decide import Rollback
    from worker.config import build_parser

    training = TrainingSpec(dataset="/d/x.parquet", tokenizer_name_or_path="/d/tok", training_steps=50)
    resources = ResourcesSpec(scheduler="local", time_limit="45s")
    common: dict[str, Any] = dict(
        settings=settings(tmp_path, data_roots=["/d"]),
        run_id=4,
        run_name="demo",
        attempt=2,
        training=training,
        resources=resources,
        token="t",
    )
    plain = build_parser().parse_args(build_job_spec(**common).argv[3:])
    assert plain.resume_from_checkpoint == "latest" and plain.data_skip_to is None
    assert plain.allow_restart_from_scratch is False
    spec = build_job_spec(
        **common,
        rollback=Rollback(from_step=50, skip_to=464, window_start=400),
        allow_restart_from_scratch=True,
    )
    parsed = build_parser().parse_args(spec.argv[3:])
    assert parsed.resume_from_checkpoint == "step-50" and parsed.data_skip_to == 464
    assert parsed.allow_restart_from_scratch is True
