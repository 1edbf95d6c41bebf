"""Rank discovery from torchrun or SLURM variables; node-list expansion; job-derived ports."""

from __future__ import annotations

import pytest

from worker.distributed import expand_nodelist, port_for_job, resolve_env


def test_expand_nodelist() -> None:
    assert expand_nodelist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert expand_nodelist("a1") == ["a1"]
    assert expand_nodelist("x[9-11]-ib") == ["x9-ib", "x10-ib", "x11-ib"]


def test_torchrun_variables_win() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert resolve_env(env | {"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == (3, 4, 1, {})


def test_slurm_variables_derive_master_address_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: expand the node list ourselves
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "123456",
    }
    rank, world, local, extra = resolve_env(env)
    assert (rank, world, local) == (5, 8, 1)
    assert extra["MASTER_ADDR"] == "gpu07"
    port = int(extra["MASTER_PORT"])
    assert port == port_for_job("123456") and 1024 < port < 32768
    assert port_for_job("123457") != port


def test_single_process_needs_nothing() -> None:
    assert resolve_env({}) == (0, 1, 0, {})
    assert resolve_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0, {})


def test_multi_rank_without_port_source_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        resolve_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"})
