"""``pyrecover data tokenize``: build, the cheap ``--check`` a preparatory job runs, exit codes, output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from parquet_helpers import write_texts
from store_helpers import make_text_corpus, sample_texts

from worker.data.prepare import main


def tokenize(src: Path, tok: Path, out: Path, *extra: str) -> int:
    return main(
        ["tokenize", "--dataset", str(src), "--tokenizer-name-or-path", str(tok), "--out", str(out), *extra]
    )


def test_check_says_missing_fresh_stale_or_unfinished(
    tmp_path: Path, sample_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, files = make_text_corpus(tmp_path, sample_data[0])
    tok, out = sample_data[1], tmp_path / "store"
    assert tokenize(src, tok, out, "--check") == 1
    assert capsys.readouterr().out.startswith("missing: no store in")
    assert not out.exists()  # a check changes nothing

    assert tokenize(src, tok, out, "--workers", "1") == 0
    err = capsys.readouterr().err
    assert "built 3 shards" in err and "tokens in 60 documents" in err
    assert "\r" not in err and "tokenizing" not in err  # no progress bar when stderr is no terminal
    assert tokenize(src, tok, out, "--check") == 0
    assert capsys.readouterr().out.startswith(f"fresh: {out} (")

    write_texts(files[2], sample_texts(sample_data[0], 5, offset=77))
    assert tokenize(src, tok, out, "--check") == 1
    assert "c.parquet changed" in capsys.readouterr().out
    assert tokenize(src, tok, out, "--quiet") == 0
    assert capsys.readouterr().err == ""
    assert tokenize(src, tok, out, "--check", "--verify") == 0
    assert capsys.readouterr().out.startswith("fresh:")  # rebuilt: whole-file checksums agree too

    (out / "manifest.json").unlink()
    (out / ".build").mkdir()
    assert tokenize(src, tok, out, "--check") == 1
    assert capsys.readouterr().out.startswith("unfinished: an interrupted build")


def test_bad_input_is_exit_3_with_one_line(
    tmp_path: Path, sample_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = make_text_corpus(tmp_path, sample_data[0])
    cases = [
        (tmp_path / "nope.parquet", sample_data[1], tmp_path / "o1", ()),
        (src, tmp_path / "no-tokenizer", tmp_path / "o2", ()),
        (src, sample_data[1], tmp_path / "o3", ("--workers", "0")),
        (src, sample_data[1], src, ()),  # into the Parquet directory itself
        (src, sample_data[1], src, ("--check",)),
    ]
    for dataset, tok, out, extra in cases:
        assert tokenize(dataset, tok, out, *extra) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pyrecover data tokenize: error:"), err
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    assert sorted(p.name for p in src.iterdir()) == ["a.parquet", "b.parquet", "c.parquet"]


def test_the_pyrecover_command_forwards_tokenize() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main()", "data", "tokenize", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for flag in ("--dataset", "--tokenizer-name-or-path", "--out", "--workers", "--check", "--quiet"):
        assert flag in out


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, sample_data: tuple[Path, Path]) -> None:
    import os
    import pty

    src, _ = make_text_corpus(tmp_path, sample_data[0])
    leader, follower = pty.openpty()
    code = "import sys; from worker.data.prepare import main; sys.exit(main())"
    args = ["tokenize", "--dataset", str(src), "--tokenizer-name-or-path", str(sample_data[1]),
            "--out", str(tmp_path / "store"), "--workers", "1", "--shard-mb", "0.01"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)  # read while it runs: a full terminal buffer would block the child
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "tokenizing" in shown and "60/60" in shown and "rows" in shown
