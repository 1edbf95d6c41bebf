"""``Client``: pyrecover's public Python API, the same calls as the CLI, over the REST API.

    from controller.client import Client

    client = Client()                        # URL and token as the CLI finds them
    run = client.submit("deploy/examples/run-local-tiny.yaml")
    for update in client.follow(run.id):     # until COMPLETED, FAILED or CANCELLED
        print(update.state, update.current_step, "/", update.training_steps)
    print(client.checkpoints(run.id)[-1].path)

Every reply is a typed model from ``shared.schemas`` (``RunPublic``, ``AttemptPublic`` ...); every
refusal is a typed exception from ``controller.client.errors`` carrying the server's message.
A run is named by its id or its name wherever a ``run`` argument appears.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from controller.client import config
from controller.client.errors import ConnectionFailed, InvalidRequest, NotFound, PyrecoverError, error_for
from shared.events import WorkerAction
from shared.schemas import (
    AttemptPublic,
    CheckpointPublic,
    EventPublic,
    MetricPoint,
    Page,
    RunCreate,
    RunPublic,
)
from shared.states import TERMINAL_RUN_STATES
from shared.unknown_fields import error_loc

M = TypeVar("M", bound=BaseModel)
RunRef = int | str


class Client:
    """A connection to one controller. Thread-safe for separate calls; close it (or use ``with``)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        data_dir: Path | None = None,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``url`` / ``token`` default to ``$PYRECOVER_URL`` / ``$PYRECOVER_TOKEN``, then the data dir's
        ``cli.json`` (see ``controller.client.config``)."""
        self.connection = config.resolve(url, token, data_dir)
        headers = {"Authorization": f"Bearer {self.connection.token}"} if self.connection.token else {}
        self._http = httpx.Client(
            base_url=self.connection.url + "/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    @property
    def url(self) -> str:
        return self.connection.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the decoded JSON reply, or the typed exception for an error status."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(
                f"cannot reach the controller at {self.url} (from {self.connection.source}): "
                f"{type(exc).__name__}: {exc or 'no answer'}. Is `pyrecover serve` running there?"
            ) from exc
        if response.status_code >= 400:
            raise error_for(response)
        return response.json() if response.content else None

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    @staticmethod
    def _model(kind: type[M], data: Any) -> M:
        try:
            return kind.model_validate(data)
        except ValidationError as exc:
            raise PyrecoverError(f"unexpected reply from the controller ({kind.__name__}): {exc}") from exc

    def _pages(self, path: str, item: type[M], *, page_size: int = 1000, **params: Any) -> list[M]:
        out: list[M] = []
        offset = 0
        while True:
            page = self._get(path, limit=page_size, offset=offset, **params)
            rows = [self._model(item, row) for row in page.get("items", [])]
            out += rows
            offset += len(rows)
            if not rows or offset >= int(page.get("total", 0)):
                return out

    # ------------------------------------------------------------------ runs
    def run_id(self, run: RunRef) -> int:
        """The id of a run given by id or name."""
        if isinstance(run, int) or (isinstance(run, str) and run.isdigit()):
            return int(run)
        page = self._get("/runs", name=run, limit=1)
        for row in page.get("items", []):
            if row.get("name") == run:
                return int(row["id"])
        raise NotFound(404, f"no run named {run!r}")

    def submit(self, spec: RunCreate | Mapping[str, Any] | str | Path) -> RunPublic:
        """Create a run from a ``RunCreate``, a mapping of the same fields, or a YAML/JSON run file."""
        if isinstance(spec, str | Path):
            from controller.client.runfile import load_run_file

            spec = load_run_file(Path(spec))
        if not isinstance(spec, RunCreate):
            try:
                spec = RunCreate.model_validate(dict(spec))
            except ValidationError as exc:
                fields = [{"field": ".".join(map(str, error_loc(e))), "msg": e["msg"]} for e in exc.errors()]
                message = "; ".join(f"{f['field']}: {f['msg']}" for f in fields)
                raise InvalidRequest(422, message.replace("Value error, ", ""), fields=fields) from None
        return self._model(RunPublic, self.request("POST", "/runs", json=spec.model_dump(mode="json")))

    def runs(self, *, state: str | None = None, limit: int = 50, offset: int = 0) -> Page[RunPublic]:
        """One page of runs, newest first (``state`` filters: RUNNING, FAILED ...)."""
        data = self._get("/runs", state=state.upper() if state else None, limit=limit, offset=offset)
        return TypeAdapter(Page[RunPublic]).validate_python(data)

    def run(self, run: RunRef) -> RunPublic:
        return self._model(RunPublic, self._get(f"/runs/{self.run_id(run)}"))

    def jobs(self, run: RunRef) -> list[AttemptPublic]:
        """The attempt chain, oldest first."""
        return self._pages(f"/runs/{self.run_id(run)}/jobs", AttemptPublic)

    def checkpoints(self, run: RunRef) -> list[CheckpointPublic]:
        return self._pages(f"/runs/{self.run_id(run)}/checkpoints", CheckpointPublic)

    def metrics(self, run: RunRef, *, max_points: int | None = None) -> list[MetricPoint]:
        """The metric series in step order (``max_points`` thins it evenly, first and last kept)."""
        return self._pages(f"/runs/{self.run_id(run)}/metrics", MetricPoint, max_points=max_points)

    def events(self, run: RunRef) -> list[EventPublic]:
        return self._pages(f"/runs/{self.run_id(run)}/events", EventPublic)

    def cancel(self, run: RunRef) -> RunPublic:
        return self._model(RunPublic, self.request("POST", f"/runs/{self.run_id(run)}/cancel"))

    def resume(self, run: RunRef) -> RunPublic:
        return self._model(RunPublic, self.request("POST", f"/runs/{self.run_id(run)}/resume"))

    def checkpoint_now(self, run: RunRef) -> RunPublic:
        """Ask the running worker to save a checkpoint at its next step boundary."""
        return self._action(run, WorkerAction.CHECKPOINT)

    def stop(self, run: RunRef) -> RunPublic:
        """Ask the running worker to save a final checkpoint and stop (the run goes on later: ``resume``)."""
        return self._action(run, WorkerAction.STOP)

    def _action(self, run: RunRef, action: WorkerAction) -> RunPublic:
        body = {"action": action.value}
        return self._model(RunPublic, self.request("POST", f"/runs/{self.run_id(run)}/actions", json=body))

    def update(
        self,
        run: RunRef,
        *,
        training: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> RunPublic:
        """Change settings that may change between attempts; the next attempt uses them."""
        body = {"training": dict(training or {}), "policy": dict(policy or {})}
        return self._model(RunPublic, self.request("PATCH", f"/runs/{self.run_id(run)}", json=body))

    def extend(self, run: RunRef, training_steps: int, **training: Any) -> RunPublic:
        """Train the run up to ``training_steps`` (a COMPLETED run continues from its final checkpoint)."""
        return self.update(run, training={"training_steps": training_steps, **training})

    def logs(self, run: RunRef, attempt: int, *, stream: str = "stderr", tail: int | None = None) -> str:
        """One attempt's log (``stderr`` is the training log), or its last ``tail`` lines."""
        path = f"/runs/{self.run_id(run)}/jobs/{attempt}/log"
        if tail is not None:
            return self._get_text(path, stream=stream, tail=tail)[0]
        parts, offset = [], 0
        while True:  # the server answers at most a few MiB at a time
            text, next_offset = self._get_text(path, stream=stream, offset=offset)
            parts.append(text)
            if next_offset == offset or not text:
                return "".join(parts)
            offset = next_offset

    def follow_logs(self, run: RunRef, attempt: int, *, stream: str = "stderr") -> Iterator[str]:
        """The log as it is written, chunk by chunk, until the attempt ends."""
        params = {"stream": stream, "follow": "true"}
        path = f"/runs/{self.run_id(run)}/jobs/{attempt}/log"
        try:
            with self._http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                yield from response.iter_text()
        except httpx.HTTPError as exc:
            raise ConnectionFailed(
                f"lost the log stream from {self.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def _get_text(self, path: str, **params: Any) -> tuple[str, int]:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the controller at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_for(response)
        return response.text, int(response.headers.get("X-Log-Offset", 0))

    def follow(
        self, run: RunRef, *, interval: float = 2.0, timeout: float | None = None
    ) -> Iterator[RunPublic]:
        """Yield the run whenever its state, step or attempt count changes, until it has ended.

        ``timeout`` (seconds) raises ``TimeoutError`` if the run has not ended by then.
        """
        run_id = self.run_id(run)
        end = None if timeout is None else time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        while True:
            current = self.run(run_id)
            key = (current.state, current.current_step, current.attempts_count)
            if key != last:
                last = key
                yield current
            if current.state in TERMINAL_RUN_STATES:
                return
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"run {run_id} is still {current.state} after {timeout:g} s")
            time.sleep(interval)

    def wait(self, run: RunRef, *, interval: float = 2.0, timeout: float | None = None) -> RunPublic:
        """Block until the run has ended; its final state."""
        updates = list(self.follow(run, interval=interval, timeout=timeout))
        return updates[-1]
