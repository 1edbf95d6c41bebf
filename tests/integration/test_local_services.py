"""The local services that ``.ci/run`` starts: ``deploy/slurm-local`` and ``deploy/postgres-local``.

Skipped without a running cluster / without ``PYRECOVER_TEST_POSTGRES_URL``; a failure under
``PYRECOVER_STRICT_INTEGRATION=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PIDFILE = Path("/run/slurm/slurmctld.pid")


def _slurmctld_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _slurmd_pids() -> dict[str, int | None]:
    """Node name → pid of its running slurmd (one per node: slurmd-<node>.pid)."""
    pids: dict[str, int | None] = {}
    for pidfile in PIDFILE.parent.glob("slurmd-*.pid"):
        pid = int(pidfile.read_text().strip() or 0)
        pids[pidfile.stem.removeprefix("slurmd-")] = pid if Path(f"/proc/{pid}").exists() else None
    return pids


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N"], capture_output=True, text=True)
    return sorted(out.stdout.split())


def test_slurm_up_is_idempotent_on_a_running_cluster() -> None:
    if os.geteuid() != 0:
        pytest.skip("deploy/slurm-local/up.sh needs root")
    before = _slurmctld_pid()
    if before is None or shutil.which("sinfo") is None:
        pytest.skip("no local SLURM cluster running (deploy/slurm-local/up.sh)")
    nodes, slurmds = _nodes(), _slurmd_pids()
    assert sorted(slurmds) == nodes and None not in slurmds.values(), (nodes, slurmds)
    # Without --nodes, and with the node count it runs with: both leave the cluster alone.
    for args in ([], ["--nodes", str(len(nodes))]):
        out = subprocess.run(
            [str(ROOT / "deploy" / "slurm-local" / "up.sh"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "SLURM ready" in out.stdout
        assert _slurmctld_pid() == before, "a second up.sh must not restart a running slurmctld"
        assert _slurmd_pids() == slurmds, "a second up.sh must not restart a running slurmd"
        assert _nodes() == nodes
    conf = Path("/etc/slurm/slurm.conf").read_text()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    assert f" CPUs={nproc} " in conf, "the node line carries this machine's CPU count"
    assert "@" not in "".join(line for line in conf.splitlines() if not line.startswith("#"))


def test_postgres_url_reaches_the_test_database() -> None:
    url = os.environ.get("PYRECOVER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PYRECOVER_TEST_POSTGRES_URL not set (deploy/postgres-local/up.sh prints it)")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(url)
    table = f"pyrecover_probe_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            assert conn.execute(sqlalchemy.text("select current_user")).scalar() == "pyrecover"
            assert conn.execute(sqlalchemy.text("select current_database()")).scalar() == "pyrecover_test"
            # The role owns the database: it may create and drop tables (migrations do).
            conn.execute(sqlalchemy.text(f"create table {table} (id int primary key)"))
            conn.execute(sqlalchemy.text(f"insert into {table} values (1)"))
            assert conn.execute(sqlalchemy.text(f"select count(*) from {table}")).scalar() == 1
            conn.execute(sqlalchemy.text(f"drop table {table}"))
    finally:
        engine.dispose()
