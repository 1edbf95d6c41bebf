"""Render the fault suite's figures (the JSON lines of ``PYRECOVER_CHAOS_RESULTS``) as a Markdown table.

    python tests/fault/results_table.py var/chaos-results.jsonl

One row per fault and path; trials and survivals of repeated rows (several sessions appending to
one file) are added up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(lines: list[dict[str, object]]) -> str:
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for line in lines:
        key = (str(line["fault"]), str(line["path"]))
        row = rows.setdefault(key, {"trials": 0, "survived": 0, "seconds": 0.0, "data_lost": ""})
        row["trials"] = int(str(row["trials"])) + int(str(line["trials"]))
        row["survived"] = int(str(row["survived"])) + int(str(line["survived"]))
        row["seconds"] = float(str(row["seconds"])) + float(str(line.get("seconds", 0.0)))
        row["data_lost"] = line["data_lost"]
    out = [
        "| fault or attack | path | trials | survived | data lost | seconds |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for (fault, path), row in rows.items():
        out.append(
            f"| {fault} | {path} | {row['trials']} | {row['survived']} | {row['data_lost']} "
            f"| {float(str(row['seconds'])):.0f} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.exists():
        print(f"{path}: no results (was PYRECOVER_CHAOS_RESULTS set?)", file=sys.stderr)
        return 1
    lines = [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
    print(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
