"""W&B takes from the environment only what the worker allows, and writes only into the run's directory."""

from __future__ import annotations

import os
from pathlib import Path

from worker.trackers import Trackers
from worker.trackers.wandb_env import account_home, prepare_wandb_env

HOSTILE = {
    "WANDB_X_EXECUTABLE": "/tmp/evil-python",  # the program W&B would start
    "WANDB_CONFIG_PATHS": "/etc/passwd",  # read into the run's config, uploaded online
    "WANDB_RUN_ID": "someone-elses-run",
    "WANDB_RESUME": "must",
    "WANDB_BASE_URL": "https://collector.example",  # where the API key would go
    "WANDB_SERVICE": "2-999-tcp-localhost-1",
    "_WANDB_CORE_PATH": "/tmp/evil-core",
    "WANDB__EXECUTABLE": "/tmp/evil-python",
    "NETRC": "/tmp/other-netrc",
    "WANDB_PROJECT": "../../etc",
    "WANDB_ENTITY": "team a",
    "WANDB_MODE": "online;rm",
}


def test_only_allowed_well_formed_variables_survive_and_directories_are_pinned(tmp_path: Path) -> None:
    environ = dict(HOSTILE)
    environ |= {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HOME": str(tmp_path / "home")}
    environ |= {"WANDB_DIR": "/etc", "WANDB_CACHE_DIR": "/root/.ssh", "PATH": "/usr/bin"}
    env = prepare_wandb_env(environ, state_dir=tmp_path / "env")
    assert sorted(environ) == sorted(
        [
            "HOME",
            "PATH",
            "WANDB_API_KEY",
            "WANDB_ARTIFACT_DIR",
            "WANDB_CACHE_DIR",
            "WANDB_CONFIG_DIR",
            "WANDB_DATA_DIR",
        ]
    )
    assert all(Path(environ[k]).parent == tmp_path / "env" for k in environ if k.endswith("_DIR"))
    assert set(env.ignored) == set(HOSTILE) | {"WANDB_DIR"}
    assert (env.mode, env.project, env.entity) == ("offline", "pyrecover", None)
    # the settings file is the account's own, whatever HOME says
    assert env.system_settings == account_home() / ".config" / "wandb" / "settings"
    assert not str(env.system_settings).startswith(str(tmp_path))

    kept = {"WANDB_MODE": "disabled", "WANDB_PROJECT": "llama-sweeps", "WANDB_ENTITY": "my-team"}
    env = prepare_wandb_env(dict(kept), state_dir=tmp_path / "env")
    assert (env.mode, env.project, env.entity) == ("disabled", "llama-sweeps", "my-team")


def test_an_offline_run_lands_in_the_run_directory_under_its_own_id(tmp_path: Path) -> None:
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    home.mkdir()
    os.environ.update(HOSTILE)
    os.environ |= {"WANDB_DIR": str(elsewhere), "WANDB_CACHE_DIR": str(elsewhere), "HOME": str(home)}
    directory = tmp_path / "ckpt" / "r" / "trackers"
    env = prepare_wandb_env(os.environ, state_dir=directory / "wandb-env")
    messages: list[str] = []
    trackers = Trackers(
        ("wandb",),
        directory=directory,
        run_name="r",
        run_config={"learning_rate": 3e-4},
        wandb_env=env,
        notify=lambda step, message: messages.append(message),
    )
    for step in range(1, 4):
        trackers.log(step, {"train/loss": 1.0 / step})
    assert trackers.close(timeout=120)
    assert messages == []
    assert trackers.state is not None
    runs = sorted((directory / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(f"-{trackers.state.run_id}")
    assert (runs[0] / f"run-{trackers.state.run_id}.wandb").is_file()
    assert "someone-elses-run" not in str(list((directory / "wandb").rglob("*")))
    assert list(elsewhere.iterdir()) == [] and list(home.iterdir()) == []
