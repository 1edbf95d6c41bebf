"""``slurm_parse`` against outputs captured from a real Slurm 22.05 single-node cluster.

The fixtures in ``fixtures/slurm/`` were produced by ``deploy/slurm-local/up.sh`` and ``sbatch``
jobs that completed, failed with exit 3, were cancelled, waited on a dependency and hit
``--time=1`` (``squeue -h --states=all -o SQUEUE_FORMAT`` and ``scontrol -o show job <id>``, under
``TZ=UTC``). The ``*_preempted.txt`` ones come from the multi-node cluster (``up.sh --nodes 3``):
jobs in partition ``debug`` preempted by ``sbatch -p high -w <node> --exclusive`` jobs
(PreemptMode=CANCEL, GraceTime=30). On SIGTERM job 16 exited 0 and job 17 exited 3 within the grace;
job 18 ignored SIGTERM and was killed when the grace ran out; job 19 is a preemptor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.scheduler import slurm_parse as sp
from shared.states import SchedulerJobState as S

FIX = Path(__file__).parent / "fixtures" / "slurm"


def read(name: str) -> str:
    return (FIX / name).read_text()


def test_squeue_live_jobs() -> None:
    rows = sp.parse_squeue(read("squeue_live.txt"))
    assert {k: v.state.state for k, v in rows.items()} == {
        "1": S.COMPLETED,
        "2": S.FAILED,
        "3": S.CANCELLED,
        "4": S.RUNNING,
        "5": S.PENDING,
    }
    assert rows["5"].reason == "Dependency"
    assert rows["5"].start_time is None and rows["5"].end_time is None
    assert rows["2"].reason == "NonZeroExitCode"
    assert rows["1"].reason is None  # "None" means no reason
    # 2026-11-28T20:51:37 UTC, and the running job's expected end 60 s later (--time=1).
    assert rows["4"].start_time == 1795899097.0
    assert rows["4"].end_time == 1795899157.0
    assert rows["4"].name == "cap-timeout"


def test_squeue_ended_jobs_include_timeout() -> None:
    rows = sp.parse_squeue(read("squeue_ended.txt"))
    assert rows["4"].state.state is S.TIMEOUT
    assert rows["4"].reason == "TimeLimit"
    assert rows["5"].state.state is S.COMPLETED


def test_squeue_name_with_separator_stays_in_the_last_column() -> None:
    rows = sp.parse_squeue("9|RUNNING|None|2026-11-28T20:51:34|N/A|N/A|weird|name|x\n")
    assert rows["9"].name == "weird|name|x"
    assert rows["9"].state.state is S.RUNNING


def test_squeue_garbage_is_an_error() -> None:
    with pytest.raises(ValueError, match="unexpected squeue line"):
        sp.parse_squeue("squeue: error: something odd\n")


def test_scontrol_exit_codes_and_states() -> None:
    jobs = sp.parse_scontrol_jobs(read("scontrol_mixed.txt") + read("scontrol_timeout.txt"))
    assert (jobs["1"].state.state, jobs["1"].exit_code, jobs["1"].signal) == (S.COMPLETED, 0, 0)
    assert (jobs["2"].state.state, jobs["2"].exit_code, jobs["2"].signal) == (S.FAILED, 3, 0)
    assert jobs["3"].state.state is S.CANCELLED
    assert (jobs["4"].state.state, jobs["4"].exit_code, jobs["4"].signal) == (S.TIMEOUT, 0, 15)
    assert jobs["4"].reason == "TimeLimit"
    assert sp.shell_exit_code(jobs["4"].exit_code, jobs["4"].signal) == 143
    assert jobs["1"].extra["NodeList"] == "vm"
    assert jobs["1"].submit_time == 1795899094.0


def test_scontrol_job_that_left_within_its_preemption_grace_is_preempted() -> None:
    jobs = sp.parse_scontrol_jobs(read("scontrol_preempted.txt"))
    got = {k: (v.state.state, v.state.raw, v.exit_code, v.signal) for k, v in jobs.items()}
    assert got == {
        # Slurm says COMPLETED / FAILED (the exit status) and sets PreemptTime: the cluster ended it.
        "16": (S.PREEMPTED, "COMPLETED", 0, 0),
        "17": (S.PREEMPTED, "FAILED", 3, 0),
        # Killed at the end of the grace: PREEMPTED in Slurm's own words.
        "18": (S.PREEMPTED, "PREEMPTED", 0, 9),
        # The preemptor (a partition that cannot be preempted) has no PreemptTime at all.
        "19": (S.COMPLETED, "COMPLETED", 0, 0),
    }
    assert jobs["16"].extra["PreemptTime"] == "2026-12-01T10:49:31"
    assert "PreemptTime" not in jobs["19"].extra


def test_scontrol_preempt_time_none_changes_nothing() -> None:
    line = read("scontrol_ok_fail_cancel.txt").splitlines()[0]
    assert "PreemptTime" not in line
    never = line.replace(
        "SuspendTime=None", "PreemptEligibleTime=2026-11-28T20:55:27 PreemptTime=None SuspendTime=None"
    )
    job = sp.parse_scontrol_jobs(never + "\n")["6"]
    assert (job.state.state, "PreemptTime" in job.extra) == (S.COMPLETED, False)


def test_squeue_cannot_tell_a_graceful_preemption_from_a_completion() -> None:
    # Which is why the backend asks scontrol about every job that has just finished.
    rows = sp.parse_squeue(read("squeue_preempted.txt"))
    assert {k: v.state.state for k, v in rows.items()} == {
        "16": S.COMPLETED,
        "17": S.FAILED,
        "18": S.PREEMPTED,
        "19": S.COMPLETED,
        "20": S.COMPLETED,
    }


def test_scontrol_pending_dependency() -> None:
    job = sp.parse_scontrol_jobs(read("scontrol_dep.txt"))["5"]
    assert job.name == "cap-dep"


def test_scontrol_backend_jobs_ok_fail_cancel() -> None:
    jobs = sp.parse_scontrol_jobs(read("scontrol_ok_fail_cancel.txt"))
    assert {k: (v.state.state, sp.shell_exit_code(v.exit_code, v.signal)) for k, v in jobs.items()} == {
        "6": (S.COMPLETED, 0),
        "7": (S.FAILED, 3),
        "8": (S.CANCELLED, 143),
    }


def test_scontrol_fields_with_spaces() -> None:
    f = sp.parse_scontrol_fields(
        "JobId=3 JobName=a b Reason=Job's QOS not permitted ExitCode=0:0 Comment=x=y"
    )
    assert f["JobName"] == "a b"
    assert f["Reason"] == "Job's QOS not permitted"
    assert f["ExitCode"] == "0:0"


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("PENDING", S.PENDING),
        ("PD", S.PENDING),
        ("CONFIGURING", S.PENDING),
        ("REQUEUED", S.PENDING),
        ("RUNNING", S.RUNNING),
        ("COMPLETING", S.RUNNING),
        ("CG", S.RUNNING),
        ("SUSPENDED", S.RUNNING),
        ("COMPLETED", S.COMPLETED),
        ("FAILED", S.FAILED),
        ("TIMEOUT", S.TIMEOUT),
        ("DEADLINE", S.TIMEOUT),
        ("PREEMPTED", S.PREEMPTED),
        ("NODE_FAIL", S.NODE_FAIL),
        ("BOOT_FAIL", S.BOOT_FAIL),
        ("OUT_OF_MEMORY", S.OUT_OF_MEMORY),
        ("OOM", S.OUT_OF_MEMORY),
        ("CANCELLED", S.CANCELLED),
        ("CANCELLED+", S.CANCELLED),
        ("CANCELLED by 0", S.CANCELLED),
        ("SOMETHING_NEW", S.RUNNING),
    ],
)
def test_state_mapping(raw: str, state: S) -> None:
    assert sp.parse_state(raw).state is state


def test_cancelled_by_uid_is_kept() -> None:
    st = sp.parse_state("CANCELLED by 1000")
    assert (st.state, st.cancelled_by, st.raw) == (S.CANCELLED, "1000", "CANCELLED by 1000")


def test_sacct_parsable_lines() -> None:
    text = (
        "11|CANCELLED by 0|0:15|2026-11-28T20:00:00|2026-11-28T20:00:01|2026-11-28T20:01:00|None|vm-[1-2]|"
        "pyrecover-r1-a1\n"
        "12|TIMEOUT|0:0|2026-11-28T20:00:00|2026-11-28T20:00:01|2026-11-28T20:02:28|TimeLimit|vm-3|pyrecover-r1-a2\n"
        "13|PENDING|0:0|2026-11-28T20:00:00|Unknown|Unknown|Dependency|None assigned|pyrecover-r1-a3\n"
    )
    rows = sp.parse_sacct(text)
    assert rows["11"].state.cancelled_by == "0"
    assert rows["11"].signal == 15
    assert rows["12"].state.state is S.TIMEOUT
    assert rows["13"].start_time is None
    assert rows["13"].name == "pyrecover-r1-a3"
    # The nodes, for a NODE_FAIL of a job only sacct still knows; a job that never ran has none.
    assert rows["11"].extra == {"NodeList": "vm-[1-2]"} and rows["12"].extra == {"NodeList": "vm-3"}
    assert rows["13"].extra == {}


def test_sbatch_parsable() -> None:
    assert sp.parse_sbatch_parsable("4711\n") == "4711"
    assert sp.parse_sbatch_parsable("4711;cluster-a\n") == "4711"
    with pytest.raises(ValueError, match="no job id"):
        sp.parse_sbatch_parsable("sbatch: error: nope\n")
    with pytest.raises(ValueError, match="no job id"):
        sp.parse_sbatch_parsable("")


def test_times() -> None:
    assert sp.parse_time("1970-01-01T00:01:00") == 60.0
    for value in ("N/A", "Unknown", "None", "", "garbage"):
        assert sp.parse_time(value) is None
    assert sp.parse_exit_code("2:9") == (2, 9)
    assert sp.parse_exit_code("") == (None, None)


def test_messages() -> None:
    assert sp.accounting_disabled("Slurm accounting storage is disabled\n")
    assert not sp.accounting_disabled("JobID|State\n")
    assert sp.invalid_job_id("slurm_load_jobs error: Invalid job id specified\n")


def test_cancel_cause_from_real_logs() -> None:
    assert sp.cancel_cause_from_log(read("stderr_timeout.txt")) is S.TIMEOUT
    assert sp.cancel_cause_from_log(read("stderr_scancel.txt")) is S.CANCELLED
    line = "slurmstepd-n1: error: *** JOB 9 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO {} ***\n"
    assert sp.cancel_cause_from_log(line.format("PREEMPTION")) is S.PREEMPTED
    assert sp.cancel_cause_from_log(line.format("NODE FAILURE")) is S.NODE_FAIL
    assert sp.cancel_cause_from_log("training finished\n") is None


def test_squeue_backend_jobs_by_name() -> None:
    rows = sp.parse_squeue(read("squeue_ok_fail_cancel.txt"))
    assert {r.name: r.state.state for r in rows.values()} == {
        "pyrecover-r1-a1": S.COMPLETED,
        "pyrecover-r1-a2": S.FAILED,
        "pyrecover-r1-a3": S.CANCELLED,
    }


def test_sinfo_nodes_per_partition_and_the_default_one() -> None:
    text = "vm-1|idle|debug*\nvm-1|idle|high\nvm-2|down*|debug*\nvm-3|mixed|high\n"
    assert sp.parse_sinfo_nodes(text) == {"vm-1": "idle", "vm-2": "down*", "vm-3": "mixed"}
    assert sp.parse_sinfo_nodes(text, default_only=True) == {"vm-1": "idle", "vm-2": "down*"}
    with pytest.raises(ValueError, match="unexpected sinfo line"):
        sp.parse_sinfo_nodes("vm-1 idle\n")
