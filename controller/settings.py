"""Controller settings: environment variables with the prefix ``PYRECOVER_``, or keywords in tests.

Nothing is created at import time; ``Settings()`` reads the environment when called. Unsafe
combinations are refused with a message that names the field: ``auth_required`` is on unless
turned off explicitly, serving without it is for a loopback address only, and so is the open
read-only mode. ``pyrecover serve --host/--port`` build their settings the same way.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import env_policy, sbatch_options
from shared.run_rules import RunPolicy
from shared.schemas.notify import NotifyTarget

DB_FILE_NAME = "pyrecover.db"
DATA_DIR_ENV = "PYRECOVER_DATA_DIR"
DEFAULT_DATA_DIR = Path("var")
"""The controller's data dir when ``PYRECOVER_DATA_DIR`` is unset (relative to the working directory).

``pyrecover serve``, ``demo``, ``token create`` and ``logs`` all use it, so the CLI finds the
database, ``cli.json`` and the run folders where the controller put them."""
DEFAULT_PORT = 8000


def default_data_dir() -> Path:
    """``$PYRECOVER_DATA_DIR``, else ``DEFAULT_DATA_DIR``: the one rule every command follows."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


REPORT_RATE_PER_S = 10.0
"""Sustained report requests per second per run. A worker sends about two (a batch per 0.5 s)."""
REPORT_BURST = 50
"""Requests a run may make at once: a worker replaying its spool after an outage."""


def _roots(paths: list[Path]) -> list[Path]:
    """Absolute, normalised, each once (``..`` resolved lexically: a root is the admin's word)."""
    out: list[Path] = []
    for path in paths:
        root = Path(os.path.normpath(Path(path).absolute()))
        if root not in out:
            out.append(root)
    return out


def _verify_default() -> list[Literal["local", "slurm", "pyslurm"]]:
    return ["local"]  # the local backend's jobs write on this machine


class Settings(BaseSettings):
    """Everything the controller (API, reconciler, backends) is configured with."""

    model_config = SettingsConfigDict(env_prefix="PYRECOVER_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR, description="Where the database, run folders and logs live (default ./var)."
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; default: a SQLite file in data_dir.")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=DEFAULT_PORT, description="0: any free port (``pyrecover serve`` reports the one it bound)."
    )
    public_url: str = Field(
        default="",
        description="URL workers and browsers use to reach the controller (behind a reverse proxy: its "
        "https URL); default: derived from host and port.",
    )
    auth_required: bool = Field(
        default=True,
        description="Require a token (API) or a signed-in session (dashboard) for everything but /healthz. "
        "Only `pyrecover serve --insecure-no-auth` turns it off, on a loopback address.",
    )
    open_read_only: bool = Field(default=False, description="Let GET requests through without a token.")
    users_read_all_runs: bool = Field(
        default=False,
        description="Let users and viewers read every run (acting on one still needs ownership or a share).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted besides public_url's host and the loopback names "
        "(DNS rebinding defence); entries are host or host:port.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For/-Proto are believed; default: none.",
    )
    session_ttl_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = Field(
        default=12 * 3600, description="How long a dashboard sign-in lasts."
    )
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=10.0, description="A connection that has not sent a whole request head by then is closed."
    )
    login_failures_per_minute: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=10, description="Failed dashboard sign-ins per client address and minute before 429."
    )
    reconcile_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    run_reconciler: bool = True
    local_kill_wait_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    local_signal_lead_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    worker_python: str = Field(default=sys.executable, description="Python interpreter that runs workers.")
    checkpoint_root: Path | None = Field(
        default=None, description="Root for relative checkpoint_dir values; default: <data_dir>/checkpoints."
    )
    slurm_cli_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    slurm_prologue: list[str] = Field(
        default_factory=list, description="Admin lines added to sbatch scripts."
    )
    slurm_srun_args: list[str] = Field(default_factory=list, description="Extra srun arguments (admin).")
    env_allow: list[str] = Field(
        default_factory=lambda: list(env_policy.DEFAULT_ENV_ALLOW),
        description=(
            "Environment variables a run may set (names or globs such as 'MYLAB_*'); the hard deny-list "
            "(shared/env_policy.py) applies first and no entry can lift it."
        ),
    )
    sbatch_allow: list[str] = Field(
        default_factory=lambda: list(sbatch_options.DEFAULT_SBATCH_ALLOW),
        description=(
            "sbatch options (full long names) a run may add in extra_sbatch_args; options pyrecover sets or "
            "that run code, name files or change the job's identity are never allowed."
        ),
    )
    data_roots: list[Path] = Field(
        default_factory=list,
        description=(
            "Dataset and tokenizer paths must lie under one of these; default: the directory the "
            "controller starts in and data_dir."
        ),
    )
    checkpoint_roots: list[Path] = Field(
        default_factory=list,
        description="Absolute checkpoint and profile directories must lie under one of these; "
        "checkpoint_root is always one (the default is checkpoint_root alone).",
    )
    verify_checkpoints: list[Literal["local", "slurm", "pyslurm"]] = Field(
        default_factory=_verify_default,
        description=(
            "Backends whose checkpoint file system the controller can read: before a run of theirs is "
            "COMPLETED the controller verifies the final checkpoint's manifest and files itself."
        ),
    )
    inputs_visible: list[Literal["local", "slurm", "pyslurm"]] = Field(
        default_factory=_verify_default,
        description=(
            "Backends whose compute nodes see the controller's file system for datasets and tokenizers: "
            "a dataset or tokenizer path missing here is refused at submit (422). A path that exists here "
            "but cannot train (no text column, no rows, no tokenizer files) is refused for every backend."
        ),
    )
    max_request_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 1 << 20
    report_rate_per_s: Annotated[float, Field(gt=0, le=1e9)] = Field(
        default=REPORT_RATE_PER_S,
        description="Sustained report requests/s per run before 429 (a worker sends about 2).",
    )
    report_burst: Annotated[int, Field(ge=1, le=10**9)] = Field(
        default=REPORT_BURST, description="Report requests a run may make at once (a spool replay)."
    )
    run_notifier: bool = Field(
        default=True, description="Deliver webhook notifications (a thread, beside the reconciler)."
    )
    notify_webhooks: list[NotifyTarget] = Field(
        default_factory=list,
        description="Webhooks told about every run (admin; JSON list of {url, events}). Trusted: any host.",
    )
    notify_secret: str = Field(
        default="",
        description="HMAC key signing webhook bodies; default: a random key kept in <data_dir>/notify.key.",
    )
    notify_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a run's own webhooks (policy.notify) may target although they resolve to a "
        "private, loopback or link-local address; every other host must resolve to public addresses only.",
    )
    notify_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=8, description="Tries per webhook delivery (exponential backoff from 2 s, at most 1 h apart)."
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        # Absolute from here on, against the working directory the controller starts in: workers,
        # local job shims and sbatch scripts run elsewhere, and a relative ``var`` would name
        # another directory there.
        self.data_dir = self.data_dir.absolute()
        if self.checkpoint_root is not None:
            self.checkpoint_root = self.checkpoint_root.absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / DB_FILE_NAME).as_posix()}"
        if not self.public_url:
            self.public_url = derived_url(self.host, self.port)
        self.public_url = self.public_url.rstrip("/")
        parts = urlsplit(self.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"public_url must be an http(s) URL with a host, got {self.public_url!r}")
        if self.checkpoint_root is None:
            self.checkpoint_root = self.data_dir / "checkpoints"
        self.data_roots = _roots(self.data_roots or [Path.cwd(), self.data_dir])
        self.checkpoint_roots = _roots([self.checkpoint_root, *self.checkpoint_roots])
        if self.open_read_only and not is_loopback(self.host):
            raise ValueError(
                f"open_read_only is only allowed on a loopback host (host={self.host!r}); "
                "bind to 127.0.0.1 or turn open_read_only off"
            )
        return self

    @field_validator("env_allow")
    @classmethod
    def _env_allow(cls, v: list[str]) -> list[str]:
        return env_policy.check_allow_list(v)

    @field_validator("sbatch_allow")
    @classmethod
    def _sbatch_allow(cls, v: list[str]) -> list[str]:
        return sbatch_options.check_allow_list(v)

    def resolve_checkpoint_dir(self, checkpoint_dir: str) -> Path:
        """A run's absolute checkpoint root: relative values are taken below ``checkpoint_root``."""
        path = Path(checkpoint_dir)
        if path.is_absolute():
            return path
        root = self.checkpoint_root or self.data_dir / "checkpoints"
        return (root / path).absolute()

    def run_policy(self) -> RunPolicy:
        """The admin's rules for run fields (``shared.run_rules``), from these settings."""
        assert self.checkpoint_root is not None  # set by _derive
        return RunPolicy(
            env_allow=tuple(self.env_allow),
            sbatch_allow=tuple(self.sbatch_allow),
            data_roots=tuple(self.data_roots),
            checkpoint_roots=tuple(self.checkpoint_roots),
            input_base=Path.cwd(),
            checkpoint_base=self.checkpoint_root,
        )

    def validate_for_serving(self) -> None:
        """Refuse to serve an unauthenticated API beyond this machine (raise ``ValueError``)."""
        if not is_loopback(self.host) and not self.auth_required:
            raise ValueError(
                f"refusing to listen on {self.host!r} without authentication: --insecure-no-auth is for a "
                "loopback address (127.0.0.1) only; create tokens with `pyrecover token create` instead"
            )


def derived_url(host: str, port: int) -> str:
    """``http://host:port`` for a bind address (a wildcard bind → the loopback address)."""
    host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
