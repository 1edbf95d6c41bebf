"""``pyrecover checkpoint list | verify | compare``: output and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_helpers import make_state, manager, train

from shared.paths import TMP_PREFIX
from worker.checkpoint.cli import main


@pytest.fixture
def ckpts(tmp_path: Path) -> dict[str, Path]:
    """The same state saved as DCP and vanilla at step 3, and a trained-on DCP at step 4."""
    state = make_state()
    train(state, 3)
    manager(tmp_path / "d", format="dcp").save(3, state)
    manager(tmp_path / "v", format="vanilla").save(3, state)
    train(state, 1)
    manager(tmp_path / "d", format="dcp").save(4, state)
    return {
        "dcp3": tmp_path / "d" / "run" / "step-3",
        "van3": tmp_path / "v" / "run" / "step-3",
        "dcp4": tmp_path / "d" / "run" / "step-4",
    }


def test_compare_equal_across_formats(ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(ckpts["dcp3"]), str(ckpts["van3"])]) == 0
    assert "EQUAL: 4 tensors" in capsys.readouterr().out
    assert main(["compare", "--optimizer", str(ckpts["dcp3"]), str(ckpts["van3"])]) == 0


def test_compare_different_reports_max_abs_diff(
    ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(ckpts["dcp3"]), str(ckpts["dcp4"])]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT: 4 of 4" in out and "model.fc1.weight: max abs diff" in out
    assert main(["compare", "--tolerance", "1.0", str(ckpts["van3"]), str(ckpts["dcp4"])]) == 0


def test_run_as_a_module_it_compares_too(ckpts: dict[str, Path]) -> None:
    """``python -m worker.checkpoint.cli`` is how tests in other processes call it: without its
    ``__main__`` block it exited 0 having compared nothing, so every check through it passed."""
    import subprocess
    import sys

    def compare(a: str, b: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "worker.checkpoint.cli", "compare", str(ckpts[a]), str(ckpts[b])]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    same, different = compare("dcp3", "van3"), compare("dcp3", "dcp4")
    assert same.returncode == 0 and "EQUAL" in same.stdout, same
    assert different.returncode == 1 and "DIFFERENT" in different.stdout, different


def test_compare_usage_errors(ckpts: dict[str, Path], tmp_path: Path) -> None:
    assert main(["compare", str(ckpts["dcp3"]), str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(ckpts["dcp3"]), str(tmp_path / "empty")]) == 2
    assert main(["compare", "--tolerance", "-1", str(ckpts["dcp3"]), str(ckpts["van3"])]) == 2
    assert main(["compare", str(ckpts["dcp3"])]) == 2


def test_verify_exit_codes(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(ckpts["dcp3"])]) == 0
    assert main(["verify", str(ckpts["van3"])]) == 0
    assert main(["verify", str(tmp_path / "missing")]) == 2
    shard = ckpts["van3"] / "checkpoint.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(ckpts["van3"])]) == 1
    assert "checkpoint.pt: checksum" in capsys.readouterr().out
    (tmp_path / "no-manifest").mkdir()
    assert main(["verify", str(tmp_path / "no-manifest")]) == 1


def test_list(ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = ckpts["dcp3"].parent
    (run / f"{TMP_PREFIX}9-abcdef01").mkdir()
    assert main(["list", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["3", "dcp"] and out[1].endswith("ok")
    assert out[2].split()[:2] == ["4", "dcp"]
    assert "not committed: .tmp-step-9-abcdef01" in out[3]
    (ckpts["dcp4"] / "__0_0.distcp").write_bytes(b"garbage")
    assert main(["list", str(run)]) == 1
    assert "CORRUPT" in capsys.readouterr().out
    assert main(["list", "--no-verify", str(run)]) == 0
    assert main(["list", str(run / "nope")]) == 2


@pytest.mark.parametrize(
    "argv", [["--help"], ["list", "--help"], ["verify", "--help"], ["compare", "--help"]]
)
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage: pyrecover checkpoint" in capsys.readouterr().out


def test_no_subcommand_is_usage_error() -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
