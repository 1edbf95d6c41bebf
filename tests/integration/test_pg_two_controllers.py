"""Two real controllers (``pyrecover serve``) on one PostgreSQL schema never submit a job twice.

Both processes run their reconcilers against the same fresh schema, each on its own port and data
directory. The scheduler is the ``slurm`` backend talking to a fake SLURM CLI on ``PATH`` (the
process boundary): ``sbatch`` takes a while before the job exists (as slurmctld's RPC does, which
is the window a second controller could use to take an in-flight intent for an abandoned one),
appends every submission to one log with ``O_APPEND``, and every job fails a moment later, so
each run goes through several attempts and both reconcilers race on every one of them.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.services import create_user_token
from tests.controller import dbfixtures
from tests.integration.local_harness import Controller, wait_for

pytestmark = pytest.mark.integration
pg_url = dbfixtures.pg_url  # a fresh schema on PYRECOVER_TEST_POSTGRES_URL; skips (with why) without one

RUNS = 20
FAILURES = 2  # max_failures_without_progress: every run ends FAILED after exactly this many attempts

FAKE_SLURM = r"""#!/bin/bash
# Just enough of sbatch/squeue/scontrol/scancel/sacct for the controller's slurm backend. Bash,
# not Python: the backend calls these tools many times a second, and a start costs ~3 ms.
# One file per job in $state/jobs: "<name> <submit µs> <state> <end µs>"; a PENDING job counts as
# FAILED (exit 1) from <submit> + fail_after on.
set -u
state=@STATE@
fail_after_us=500000

clock() { local t=$EPOCHREALTIME; now=$(( ${t%.*} * 1000000 + 10#${t#*.} )); }
view() {  # submit state end -> vstate vreason vend
    vstate=$2 vend=$3
    if [[ $2 == PENDING ]] && (( now >= $1 + fail_after_us )); then
        vstate=FAILED vend=$(( $1 + fail_after_us ))
    fi
    case $vstate in FAILED) vreason=NonZeroExitCode ;; CANCELLED) vreason=None ;; *) vreason=Priority ;; esac
}
iso() {  # µs varname (the backend runs us with TZ=UTC)
    if (( $1 > 0 )); then
        printf -v "$2" '%(%Y-%m-%dT%H:%M:%S)T' $(( $1 / 1000000 ))
    else
        printf -v "$2" N/A
    fi
}
lock() { exec 9>"$state/lock"; flock "$1" 9; }

sbatch() {
    local script=${*: -1} name="" line n=0 id
    while IFS= read -r line; do
        if [[ $line == "#SBATCH --job-name="* ]]; then name=${line#*=}; break; fi
    done < "$script"
    sleep 0.2  # the job does not exist until slurmctld has answered
    lock -x
    [[ -f $state/counter ]] && read -r n < "$state/counter"
    id=$(( 1000 + n ))
    echo $(( n + 1 )) > "$state/counter"
    clock
    echo "$name $now PENDING 0" > "$state/jobs/$id"
    echo "$name $id $PPID $EPOCHREALTIME" >> "$state/submit.log"  # >>: O_APPEND
    echo "$id"
}

squeue() {
    local ids="" want="" prev="" a f id name submit st end sub_iso end_iso
    for a in "$@"; do
        [[ $prev == -j ]] && ids=",$a,"
        [[ $a == --name=* ]] && want=${a#--name=}
        prev=$a
    done
    lock -s
    clock
    for f in "$state"/jobs/*; do
        [[ -e $f ]] || continue
        id=${f##*/}
        [[ -n $ids && $ids != *",$id,"* ]] && continue
        read -r name submit st end < "$f"
        [[ -n $want && $name != "$want" ]] && continue
        view "$submit" "$st" "$end"
        iso "$submit" sub_iso
        iso "$vend" end_iso
        echo "$id|$vstate|$vreason|$sub_iso|N/A|$end_iso|$name"
    done
}

scontrol() {
    local id=${*: -1} name submit st end sub_iso end_iso code=0:15
    lock -s
    if [[ ! -f $state/jobs/$id ]]; then echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
    read -r name submit st end < "$state/jobs/$id"
    clock
    view "$submit" "$st" "$end"
    [[ $vstate == FAILED ]] && code=1:0
    iso "$submit" sub_iso
    iso "$vend" end_iso
    echo "JobId=$id JobName=$name JobState=$vstate Reason=$vreason ExitCode=$code" \
        "SubmitTime=$sub_iso StartTime=N/A EndTime=$end_iso"
}

scancel() {
    local id=${*: -1} name submit st end
    lock -x
    [[ -f $state/jobs/$id ]] || exit 0
    read -r name submit st end < "$state/jobs/$id"
    clock
    view "$submit" "$st" "$end"
    [[ $vstate == PENDING ]] && echo "$name $submit CANCELLED $now" > "$state/jobs/$id"
    exit 0
}

sacct() { echo "Slurm accounting storage is disabled" >&2; exit 1; }

case ${0##*/} in
    sbatch | squeue | scontrol | scancel | sacct) "${0##*/}" "$@" ;;
    *) echo "fake slurm: unknown tool $0" >&2; exit 2 ;;
esac
"""


def install_fake_slurm(root: Path) -> Path:
    bin_dir = root / "bin"
    (root / "jobs").mkdir(parents=True)
    bin_dir.mkdir()
    # The state's place is written into the program: the backend runs the tools in a minimal environment.
    program = root / "fake_slurm.sh"
    program.write_text(FAKE_SLURM.replace("@STATE@", shlex.quote(str(root))))
    program.chmod(0o755)
    for tool in ("sbatch", "squeue", "scontrol", "scancel", "sacct"):
        (bin_dir / tool).symlink_to(program)
    return bin_dir


@pytest.fixture
def controllers(pg_url: str, tmp_path: Path) -> Iterator[list[Controller]]:
    slurm = tmp_path / "slurm"
    bin_dir = install_fake_slurm(slurm)
    upgrade_database(pg_url)  # once, before either controller starts (both refuse an unmigrated DB)
    token = admin_token(pg_url)
    pair = [Controller(tmp_path / f"controller-{i}") for i in range(2)]
    for c in pair:
        c.token = token
        c.data_dir.mkdir()
        c.env.update(
            PYRECOVER_DATABASE_URL=pg_url,
            PYRECOVER_RECONCILE_INTERVAL_S="0.5",
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
    try:
        with ThreadPoolExecutor(2) as pool:  # start both at once: each waits for its /healthz
            list(pool.map(Controller.start, pair))
        yield pair
    finally:
        for c in pair:
            c.stop()


def admin_token(url: str) -> str:
    """A token of the database's first user (an admin), valid on both controllers."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            token = create_user_token(session, "pg-admin")
            session.commit()
    finally:
        engine.dispose()
    return token


def api(c: Controller, method: str, path: str, **kw: Any) -> Any:
    """The REST API with the shared admin token (both controllers serve the same database)."""
    headers = {"Authorization": f"Bearer {c.token}"}
    resp = httpx.request(method, f"{c.url}/api/v1{path}", headers=headers, timeout=30, **kw)
    assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def create_run(c: Controller, name: str) -> int:
    body = {
        "name": name,
        "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
        "resources": {"scheduler": "slurm", "time_limit": "1"},
        "policy": {"backoff_seconds": 0, "max_failures_without_progress": FAILURES},
    }
    return int(api(c, "POST", "/runs", json=body)["id"])


def test_two_controllers_submit_every_attempt_exactly_once(
    controllers: list[Controller], tmp_path: Path
) -> None:
    first, second = controllers
    # Half of the runs through each controller's API (both reconcilers see all of them), at once.
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: create_run(controllers[i % 2], f"pg-race-{i}"), range(RUNS)))

    def all_failed() -> bool:
        return int(api(first, "GET", "/runs", params={"state": "FAILED", "limit": 1})["total"]) == RUNS

    wait_for(all_failed, 40, "every run to use up its attempts and fail")

    log = (tmp_path / "slurm" / "submit.log").read_text().splitlines()
    submitted = [line.split() for line in log]
    names = Counter(name for name, _job, _pid, _t in submitted)
    dupes = sorted(name for name, n in names.items() if n > 1)
    assert not dupes, f"job names submitted more than once: {dupes}"
    assert len(submitted) == RUNS * FAILURES
    job_of = {name: job for name, job, _pid, _t in submitted}
    for run_id in runs:
        jobs: list[dict[str, Any]] = api(second, "GET", f"/runs/{run_id}/jobs", params={"limit": 100})[
            "items"
        ]
        numbers = sorted(j["number"] for j in jobs)
        assert numbers == list(range(1, FAILURES + 1)), (run_id, numbers)
        for job in jobs:
            # Exactly one scheduler job per attempt number, and it is the one the attempt recorded.
            assert job_of[job["job_name"]] == job["external_id"], json.dumps(job)
    # Both controllers did part of the work (otherwise nothing raced).
    submitters = {pid for _name, _job, pid, _t in submitted}
    assert len(submitters) == 2, f"all submissions came from one controller: {submitters}"
