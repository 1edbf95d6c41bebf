"""``GET /runs/{id}/jobs/{n}/log``: an attempt's log, from any host, for whoever may read the run.

The controller holds every attempt's log in the run directory (``shared.paths.attempt_log_paths``:
the local backend writes there, and SLURM writes there through ``--output/--error`` on the shared
file system). ``tail`` gives the last lines, ``offset`` pages through a large file
(``X-Log-Offset`` in the reply is where to continue), and ``follow`` streams what is appended until
the attempt has ended, like ``tail -f`` that knows when to stop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import select

from controller.api.deps import MAX_ID, ReadableRun, SessionDep, SettingsDep
from controller.api.routes.runs import RUN_ERRORS
from controller.db.models import Attempt
from shared.paths import attempt_log_paths, run_dir
from shared.states import AttemptState

router = APIRouter(prefix="/runs", tags=["runs"])

MAX_READ = 4 << 20
"""At most this many bytes per reply without ``follow`` (page on with ``offset``)."""
MAX_TAIL_LINES = 100_000
FOLLOW_POLL_S = 0.5
FOLLOW_MAX_S = 7 * 86_400.0
"""A follow ends after a week even if the attempt never does (a lost job's record)."""

Stream = Literal["stderr", "stdout"]


def log_path(data_dir: FilePath, run_id: int, attempt: int, stream: Stream) -> FilePath:
    out, err = attempt_log_paths(run_dir(data_dir, run_id), attempt)
    return err if stream == "stderr" else out


def read_tail(path: FilePath, lines: int) -> tuple[bytes, int]:
    """The last ``lines`` lines (at most ``MAX_READ`` bytes) and the file's size, reading from the end."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        block, data = 64 << 10, b""
        position = size
        while position > 0 and data.count(b"\n") <= lines and len(data) < MAX_READ:
            step = min(block, position)
            position -= step
            fh.seek(position)
            data = fh.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:] if lines else []
    return b"".join(kept)[-MAX_READ:], size


def read_from(path: FilePath, offset: int) -> tuple[bytes, int]:
    """Up to ``MAX_READ`` bytes from ``offset``, and where the next read starts."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(MAX_READ)
    return data, offset + len(data)


@router.get(
    "/{run_id}/jobs/{attempt}/log",
    response_class=PlainTextResponse,
    response_model=None,
    responses={**RUN_ERRORS, 404: {"description": "No such run or attempt"}},
)
async def get_log(
    run: ReadableRun,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    attempt: Annotated[int, Path(ge=1, le=MAX_ID, description="The attempt number.")],
    stream: Annotated[Stream, Query(description="stderr (the training log) or stdout.")] = "stderr",
    tail: Annotated[int | None, Query(ge=0, le=MAX_TAIL_LINES, description="Only the last N lines.")] = None,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Start at this byte (paging).")] = 0,
    follow: Annotated[bool, Query(description="Stream what is appended until the attempt ends.")] = False,
) -> PlainTextResponse | StreamingResponse:
    """One attempt's log as text: whole (paged by ``offset``), its last lines, or followed live."""
    found = session.scalar(select(Attempt.id).where(Attempt.run_id == run.id, Attempt.number == attempt))
    if found is None:
        raise HTTPException(404, f"run {run.id} has no attempt {attempt}")
    path = log_path(settings.data_dir, run.id, attempt, stream)
    if not path.exists():
        data, position = b"", 0
    elif tail is not None:
        data, position = await run_in_threadpool(read_tail, path, tail)
    else:
        data, position = await run_in_threadpool(read_from, path, offset)
    headers = {"X-Log-Offset": str(position), "Cache-Control": "no-store"}
    if not follow:
        return PlainTextResponse(data.decode("utf-8", errors="replace"), headers=headers)
    factory = request.app.state.session_factory
    attempt_id = int(found)

    def ended() -> bool:
        with factory() as s:
            state = s.scalar(select(Attempt.state).where(Attempt.id == attempt_id))
            return state is None or state == AttemptState.ENDED

    async def chunks() -> AsyncIterator[bytes]:
        yield data
        cursor = position
        deadline = asyncio.get_running_loop().time() + FOLLOW_MAX_S
        while True:
            done = await run_in_threadpool(ended)  # read before the file: nothing is missed at the end
            if path.exists():
                while True:
                    more, cursor = await run_in_threadpool(read_from, path, cursor)
                    if not more:
                        break
                    yield more
            if done or await request.is_disconnected() or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(FOLLOW_POLL_S)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8", headers=headers)
