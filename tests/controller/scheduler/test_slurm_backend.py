"""``SlurmScheduler`` with the CLI faked at the process boundary (outputs captured from real Slurm)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from controller.scheduler.base import JobSpec, Scheduler, SchedulerError
from controller.scheduler.slurm import SlurmScheduler, subprocess_runner
from controller.settings import Settings
from shared import envvars
from shared.schemas import ResourcesSpec
from shared.states import SchedulerJobState as S

FIX = Path(__file__).parent / "fixtures" / "slurm"
Reply = subprocess.CompletedProcess[str] | BaseException
Handler = Callable[[list[str]], Reply]


def ok(stdout: str = "", stderr: str = "", rc: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(args=[], returncode=rc, stdout=stdout, stderr=stderr)


class FakeCLI:
    """Answers each command by its program name; records every call and its timeout."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        reply = self.handlers[argv[0]](list(argv))
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def programs(self) -> list[str]:
        return [c[0] for c in self.calls]


def scontrol_from_fixture(name: str) -> Handler:
    lines = {line.split()[0].split("=")[1]: line for line in (FIX / name).read_text().splitlines() if line}

    def handler(argv: list[str]) -> Reply:
        job_id = argv[-1]
        if job_id in lines:
            return ok(lines[job_id] + "\n")
        return ok(stderr="slurm_load_jobs error: Invalid job id specified\n", rc=1)

    return handler


def make_spec(tmp_path: Path, **env: str) -> JobSpec:
    res = ResourcesSpec(scheduler="slurm", time_limit="1", partition="debug")
    return JobSpec(
        run_id=1,
        run_name="demo",
        attempt=2,
        job_name="pyrecover-r1-a2",
        argv=["python", "-m", "worker"],
        env={"PYRECOVER_RUN_ID": "1", **env},
        resources=res,
        workdir=tmp_path,
        stdout=tmp_path / "logs" / "attempt-0002.out",
        stderr=tmp_path / "logs" / "attempt-0002.err",
    )


def test_is_a_scheduler_and_reads_settings() -> None:
    settings = Settings(
        slurm_cli_timeout_s=7.5, slurm_prologue=["module load x"], slurm_srun_args=["--mpi=none"]
    )
    sched = SlurmScheduler(settings)
    assert isinstance(sched, Scheduler)
    assert sched.name == "slurm"
    assert (sched.cli_timeout_s, sched.prologue, sched.srun_args) == (
        7.5,
        ("module load x",),
        ("--mpi=none",),
    )
    explicit = SlurmScheduler(settings, cli_timeout_s=3, prologue=[], srun_args=[])
    assert (explicit.cli_timeout_s, explicit.prologue, explicit.srun_args) == (3.0, (), ())
    with pytest.raises(ValueError, match="cli_timeout_s"):
        SlurmScheduler(cli_timeout_s=0)


def test_submit_writes_script_and_returns_parsable_id(tmp_path: Path) -> None:
    cli = FakeCLI(sbatch=lambda argv: ok("4711\n"))
    sched = SlurmScheduler(cli_timeout_s=12, runner=cli)
    spec = make_spec(tmp_path)
    assert sched.submit(spec) == "4711"
    script = sched.script_path(spec)
    assert cli.calls == [["sbatch", "--parsable", str(script)]]
    assert cli.timeouts == [12.0]
    assert script.read_text().startswith("#!/bin/bash\n")
    assert "#SBATCH --job-name=pyrecover-r1-a2" in script.read_text()
    assert (tmp_path / "logs").is_dir()


def test_submit_error_carries_sbatch_message(tmp_path: Path) -> None:
    msg = (
        "sbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    sched = SlurmScheduler(runner=FakeCLI(sbatch=lambda argv: ok(stderr=msg, rc=1)))
    with pytest.raises(SchedulerError, match="invalid partition specified: nosuch"):
        sched.submit(make_spec(tmp_path))


def test_submit_timeout_and_missing_binary(tmp_path: Path) -> None:
    slow = SlurmScheduler(cli_timeout_s=2, runner=FakeCLI(sbatch=lambda a: subprocess.TimeoutExpired(a, 2)))
    with pytest.raises(SchedulerError, match="did not answer within 2 s"):
        slow.submit(make_spec(tmp_path))
    missing = SlurmScheduler(runner=FakeCLI(sbatch=lambda a: FileNotFoundError(2, "No such file", "sbatch")))
    with pytest.raises(SchedulerError, match="cannot run sbatch"):
        missing.submit(make_spec(tmp_path))


def test_submit_refuses_unrenderable_spec_and_readable_token(tmp_path: Path) -> None:
    cli = FakeCLI(sbatch=lambda argv: ok("1\n"))
    sched = SlurmScheduler(runner=cli)
    with pytest.raises(SchedulerError, match="cannot render"):
        sched.submit(make_spec(tmp_path, PYRECOVER_TOKEN="secret"))
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o644)
    with pytest.raises(SchedulerError, match="owner only"):
        sched.submit(make_spec(tmp_path, **{envvars.TOKEN_FILE: str(token)}))
    with pytest.raises(SchedulerError, match="does not exist"):
        sched.submit(make_spec(tmp_path, **{envvars.TOKEN_FILE: str(tmp_path / "nope")}))
    token.chmod(0o600)
    assert sched.submit(make_spec(tmp_path, **{envvars.TOKEN_FILE: str(token)})) == "1"
    assert cli.programs() == ["sbatch"], "nothing was submitted for the refused specs"


def test_submit_garbage_reply(tmp_path: Path) -> None:
    sched = SlurmScheduler(runner=FakeCLI(sbatch=lambda argv: ok("Submitted batch job\n")))
    with pytest.raises(SchedulerError, match="no job id"):
        sched.submit(make_spec(tmp_path))


def test_poll_batches_one_squeue_and_scontrol_only_for_finished() -> None:
    cli = FakeCLI(
        squeue=lambda argv: ok((FIX / "squeue_live.txt").read_text()),
        scontrol=scontrol_from_fixture("scontrol_mixed.txt"),
        sacct=lambda argv: ok("Slurm accounting storage is disabled\n", rc=1),
    )
    sched = SlurmScheduler(runner=cli)
    got = sched.poll(["1", "2", "3", "4", "5", "99999", "not-a-number"])
    assert cli.programs().count("squeue") == 1
    squeue = next(c for c in cli.calls if c[0] == "squeue")
    assert squeue[squeue.index("-j") + 1] == "1,2,3,4,5,99999"
    assert "--states=all" in squeue
    # scontrol only for the three finished jobs, never for the live ones.
    assert sorted(c[-1] for c in cli.calls if c[0] == "scontrol") == ["1", "2", "3"]
    assert {k: v.state for k, v in got.items()} == {
        "1": S.COMPLETED,
        "2": S.FAILED,
        "3": S.CANCELLED,
        "4": S.RUNNING,
        "5": S.PENDING,
        "99999": S.LOST,
        "not-a-number": S.LOST,
    }
    assert (got["1"].exit_code, got["2"].exit_code) == (0, 3)
    assert got["2"].reason == "NonZeroExitCode"
    assert got["4"].exit_code is None and got["4"].end_time is None
    assert got["4"].deadline == 1795899157.0, "a running job's EndTime is its deadline"
    assert got["5"].reason == "Dependency"
    assert got["99999"].reason is not None and "no longer knows" in got["99999"].reason
    # Accounting is disabled: remembered, so the next poll does not ask sacct again.
    cli.calls.clear()
    sched.poll(["99999"])
    assert "sacct" not in cli.programs()


def test_poll_timeout_job_exit_code_and_signal() -> None:
    cli = FakeCLI(
        squeue=lambda argv: ok((FIX / "squeue_ended.txt").read_text()),
        scontrol=scontrol_from_fixture("scontrol_timeout.txt"),
    )
    st = SlurmScheduler(runner=cli).poll(["4"])["4"]
    assert (st.state, st.exit_code, st.reason, st.extra["signal"]) == (S.TIMEOUT, 143, "TimeLimit", "15")
    assert st.end_time == 1795899168.0


def test_poll_reports_a_job_that_saved_and_left_within_its_preemption_grace_as_preempted() -> None:
    cli = FakeCLI(
        squeue=lambda argv: ok((FIX / "squeue_preempted.txt").read_text()),
        scontrol=scontrol_from_fixture("scontrol_preempted.txt"),
    )
    got = SlurmScheduler(runner=cli).poll(["16", "18", "19"])
    assert {k: (v.state, v.exit_code) for k, v in got.items()} == {
        "16": (S.PREEMPTED, 0),
        "18": (S.PREEMPTED, 137),
        "19": (S.COMPLETED, 0),
    }
    assert got["16"].extra["slurm_state"] == "COMPLETED"
    assert got["16"].extra["PreemptTime"] == "2026-12-01T10:49:31"


def test_poll_all_ids_unknown_squeue_error_means_lost() -> None:
    cli = FakeCLI(
        squeue=lambda argv: ok(stderr="slurm_load_jobs error: Invalid job id specified\n", rc=1),
        sacct=lambda argv: ok("Slurm accounting storage is disabled\n", rc=1),
    )
    assert SlurmScheduler(runner=cli).poll(["99999"])["99999"].state is S.LOST


def test_poll_uses_sacct_where_accounting_exists() -> None:
    sacct_out = (
        "31|CANCELLED by 1000|0:15|2026-11-28T20:00:00|2026-11-28T20:00:01|2026-11-28T20:01:00|None|vm-[1-2]|"
        "pyrecover-r1-a1\n"
    )
    cli = FakeCLI(squeue=lambda argv: ok(""), sacct=lambda argv: ok(sacct_out))
    st = SlurmScheduler(runner=cli).poll(["31"])["31"]
    assert (st.state, st.exit_code, st.extra["cancelled_by"]) == (S.CANCELLED, 143, "1000")
    sacct = next(c for c in cli.calls if c[0] == "sacct")
    assert sacct[sacct.index("-j") + 1] == "31" and "-X" in sacct and "-P" in sacct


def test_poll_squeue_failure_is_a_scheduler_error() -> None:
    cli = FakeCLI(squeue=lambda argv: ok(stderr="squeue: error: Unable to contact slurm controller\n", rc=1))
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        SlurmScheduler(runner=cli).poll(["1"])


def test_poll_empty_makes_no_call() -> None:
    cli = FakeCLI()
    assert SlurmScheduler(runner=cli).poll([]) == {}
    assert cli.calls == []


def test_cancel_is_idempotent() -> None:
    replies = iter(
        [
            ok(),
            ok(
                stderr="scancel: error: Kill job error on job id 5: "
                "Job/step already completing or completed\n",
                rc=1,
            ),
            ok(stderr="scancel: error: Kill job error on job id 9: Invalid job id specified\n", rc=1),
            ok(stderr="scancel: error: Unable to contact slurm controller\n", rc=1),
        ]
    )
    cli = FakeCLI(scancel=lambda argv: next(replies))
    sched = SlurmScheduler(runner=cli)
    sched.cancel("5")
    sched.cancel("5")
    sched.cancel("9")
    with pytest.raises(SchedulerError, match="Unable to contact"):
        sched.cancel("5")
    with pytest.raises(SchedulerError, match="not a SLURM job id"):
        sched.cancel("5; rm -rf /")
    assert cli.calls[0] == ["scancel", "5"]


def test_find_by_name_picks_newest_exact_match() -> None:
    out = (
        "12|COMPLETED|None|2026-11-28T20:00:00|N/A|N/A|pyrecover-r1-a2\n"
        "30|PENDING|Dependency|2026-11-28T20:00:00|N/A|N/A|pyrecover-r1-a2\n"
        "31|PENDING|Priority|2026-11-28T20:00:00|N/A|N/A|pyrecover-r1-a20\n"
    )
    cli = FakeCLI(squeue=lambda argv: ok(out))
    assert SlurmScheduler(runner=cli).find_by_name("pyrecover-r1-a2") == "30"
    assert "--name=pyrecover-r1-a2" in cli.calls[0]
    assert "--me" in cli.calls[0], "only this user's jobs: another pyrecover may use the same names"


def test_find_by_name_falls_back_to_sacct_then_none() -> None:
    cli = FakeCLI(
        squeue=lambda argv: ok(""), sacct=lambda argv: ok("Slurm accounting storage is disabled\n", rc=1)
    )
    sched = SlurmScheduler(runner=cli)
    assert sched.find_by_name("pyrecover-r1-a2") is None
    assert sched.find_by_name("pyrecover-r1-a2") is None
    assert cli.programs() == ["squeue", "sacct", "squeue"], "sacct asked once, then remembered as disabled"


def test_real_runner_passes_no_controller_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRECOVER_DATABASE_URL", "postgresql://u:secret@db/x")
    monkeypatch.setenv("TZ", "Europe/Zurich")
    proc = subprocess_runner(["env"], 10)
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert "PYRECOVER_DATABASE_URL" not in env
    assert env["TZ"] == "UTC"
    assert "PATH" in env


def test_relative_paths_become_absolute_in_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sbatch resolves --output against --chdir: a relative data dir must not be rendered as is.
    monkeypatch.chdir(tmp_path)
    token = tmp_path / "run" / "worker.token"
    token.parent.mkdir()
    token.write_text("t")
    token.chmod(0o600)
    rel = Path("run")
    spec = JobSpec(
        run_id=1,
        run_name="demo",
        attempt=1,
        job_name="pyrecover-r1-a1",
        argv=["python"],
        env={envvars.TOKEN_FILE: "run/worker.token"},
        resources=ResourcesSpec(scheduler="slurm", time_limit="1"),
        workdir=rel,
        stdout=rel / "logs" / "attempt-0001.out",
        stderr=rel / "logs" / "attempt-0001.err",
    )
    cli = FakeCLI(sbatch=lambda argv: ok("9\n"))
    SlurmScheduler(runner=cli).submit(spec)
    script_path = Path(cli.calls[0][-1])
    assert script_path == tmp_path / "run" / "logs" / "attempt-0001.sbatch"
    text = script_path.read_text()
    assert f"#SBATCH --chdir={tmp_path / 'run'}\n" in text
    assert f"#SBATCH --output={tmp_path / 'run' / 'logs' / 'attempt-0001.out'}\n" in text
    assert f"export PYRECOVER_TOKEN_FILE={token}\n" in text


def test_node_states_asks_sinfo_for_the_partition_and_refuses_a_hostile_name() -> None:
    from controller.scheduler.base import NodeInventory

    cli = FakeCLI(sinfo=lambda argv: ok("vm-1|idle|debug*\nvm-2|down*|debug*\n"))
    sched = SlurmScheduler(runner=cli)
    assert isinstance(sched, NodeInventory)
    assert sched.node_states("debug") == {"vm-1": "idle", "vm-2": "down*"}
    assert cli.calls[-1][-2:] == ["-p", "debug"]
    assert sched.node_states(None) == {"vm-1": "idle", "vm-2": "down*"}
    with pytest.raises(SchedulerError, match="not a partition name"):
        sched.node_states("debug --uid=0")
    failing = SlurmScheduler(runner=FakeCLI(sinfo=lambda argv: ok(stderr="sinfo: error", rc=1)))
    with pytest.raises(SchedulerError, match="sinfo failed"):
        failing.node_states("debug")
