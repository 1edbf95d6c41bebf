"""The loss CSV: appended across resumes, rows after the resumed step dropped, repr-exact floats."""

from __future__ import annotations

from pathlib import Path

from worker.loss_log import HEADER, LossCSV, read_losses


def test_resume_drops_rows_after_the_resumed_step_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "run" / "loss.csv"
    csv = LossCSV(path, resume_step=0)
    for step in range(1, 6):
        csv.write(step, 1.0 / step)
    csv.close()
    csv = LossCSV(path, resume_step=3)  # steps 4 and 5 will be trained again
    csv.write(4, 0.25)
    csv.close()
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert read_losses(path)[3] == 1.0 / 3  # repr round-trips exactly


def test_fresh_file_gets_a_header_and_reopen_without_change_keeps_bytes(tmp_path: Path) -> None:
    path = tmp_path / "loss.csv"
    csv = LossCSV(path, resume_step=0)
    csv.write(1, 0.1 + 0.2)
    csv.close()
    before = path.read_bytes()
    LossCSV(path, resume_step=1).close()
    assert path.read_bytes() == before == b"step,loss\n1,0.30000000000000004\n"
