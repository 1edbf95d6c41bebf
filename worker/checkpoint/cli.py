"""``pyrecover checkpoint list | verify | compare``: inspect checkpoints from a shell script.

Exit codes: 0 = ok / equal; 1 = corrupt / different; 2 = usage (bad arguments, a path that is
not there or not a checkpoint). Everything runs in one process without a process group.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.paths import MANIFEST_NAME, QUARANTINE_PREFIX, TMP_PREFIX, parse_step

from . import manifest as mf
from . import storage
from .types import CheckpointError

OK, BAD, USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyrecover checkpoint",
        description="List, verify and compare pyrecover checkpoints (DCP and vanilla).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  pyrecover checkpoint list checkpoints/my-run\n"
        "  pyrecover checkpoint verify checkpoints/my-run/step-200\n"
        "  pyrecover checkpoint compare checkpoints/a/step-200 checkpoints/b/step-200\n\n"
        "Exit codes: 0 ok/equal, 1 corrupt/different, 2 usage error.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,verify,compare}")
    ls = sub.add_parser(
        "list",
        help="list the checkpoints of one run",
        description="List a run's checkpoint directory (<checkpoint-dir>/<experiment-name>): step, format, "
        "size, world size, creation time and whether the files match the manifest. Temporaries and "
        "directories without a manifest are shown as not committed. Exit 1 if a committed one is corrupt.",
    )
    ls.add_argument("dir", type=Path, help="a run's checkpoint directory, holding step-<N>/ directories")
    ls.add_argument("--no-verify", action="store_true", help="skip reading files for checksums (fast)")
    vf = sub.add_parser(
        "verify",
        help="check one checkpoint against its manifest",
        description="Check that every file listed in PATH/manifest.json exists with the recorded size "
        "and CRC-32. Exit 0 if intact, 1 if corrupt or not committed, 2 if PATH is not a directory.",
    )
    vf.add_argument("path", type=Path, help="a checkpoint directory (step-<N>)")
    cmp = sub.add_parser(
        "compare",
        help="compare the model weights of two checkpoints",
        description="Load both checkpoints into plain CPU tensors (any format, any world size, saved with "
        "or without DDP / torch.compile wrappers) and compare the model weights key by key. Exit 0 if "
        "equal within the tolerance, 1 if not (printing the max abs difference per differing tensor).",
    )
    cmp.add_argument("a", type=Path, help="first checkpoint directory")
    cmp.add_argument("b", type=Path, help="second checkpoint directory")
    cmp.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest allowed absolute difference per element (default 0: bit-exact)",
    )
    cmp.add_argument("--optimizer", action="store_true", help="also compare the optimizer state tensors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse: 0 after --help, 2 on bad usage
        return int(e.code) if isinstance(e.code, int) else USAGE
    if args.command == "list":
        return _list(args.dir, verify=not args.no_verify)
    if args.command == "verify":
        return _verify(args.path)
    if args.tolerance < 0:
        print("--tolerance must be >= 0", file=sys.stderr)
        return USAGE
    return _compare(args.a, args.b, tolerance=args.tolerance, optimizer=args.optimizer)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _list(run_dir: Path, *, verify: bool) -> int:
    if not run_dir.is_dir():
        print(f"{run_dir}: not a directory", file=sys.stderr)
        return USAGE
    committed = mf.list_committed(run_dir)
    print(f"{'step':>10}  {'format':7}  {'size':>10}  {'world':>5}  {'created':25}  status")
    corrupt = 0
    for c in committed:
        m = c.manifest
        status = "not checked"
        if verify:
            problems = mf.verify(c.path, m)
            corrupt += bool(problems)
            status = "ok" if not problems else f"CORRUPT: {problems[0]}"
        size = _size(int(m.get("size_bytes") or sum(f.get("size", 0) for f in m["files"].values())))
        created = m.get("created_at", "?")
        print(f"{c.step:>10}  {m['format']:7}  {size:>10}  {m['world_size']:>5}  {created:25}  {status}")
    steps = {c.path.name for c in committed}
    for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):
        quarantined = entry.name.startswith(QUARANTINE_PREFIX)
        named_like_ckpt = (
            quarantined or entry.name.startswith(TMP_PREFIX) or parse_step(entry.name) is not None
        )
        if entry.is_dir() and entry.name not in steps and named_like_ckpt:
            stamp = _dt.datetime.fromtimestamp(entry.stat().st_mtime, _dt.UTC).isoformat(timespec="seconds")
            what = "quarantined (failed verification; kept)" if quarantined else "not committed"
            print(f"{'-':>10}  {'-':7}  {'-':>10}  {'-':>5}  {stamp:25}  {what}: {entry.name}")
    if not committed:
        print(f"(no committed checkpoint in {run_dir})")
    return BAD if corrupt else OK


def _verify(path: Path) -> int:
    if not path.is_dir():
        print(f"{path}: not a directory", file=sys.stderr)
        return USAGE
    problems = mf.verify(path)
    if problems:
        print(f"{path}: CORRUPT")
        for p in problems:
            print(f"  {p}")
        return BAD
    man = mf.read_manifest(path)
    files = len(man["files"])
    print(f"{path}: ok (step {man['step']}, {man['format']}, {files} files, world size {man['world_size']})")
    return OK


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_dir():
        print(f"{path}: not a directory", file=sys.stderr)
        return None
    fmt = None
    if (path / MANIFEST_NAME).is_file():
        try:
            fmt = str(mf.read_manifest(path)["format"])
        except CheckpointError as e:
            print(f"warning: {e}", file=sys.stderr)
    try:
        return storage.load_plain(path, fmt)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{path}: cannot load: {e}", file=sys.stderr)
        return None


def _tensors(sd: dict[str, Any], section: str) -> dict[str, torch.Tensor]:
    return {f"{section}.{k}": v for k, v in sd.get(section, {}).items() if isinstance(v, torch.Tensor)}


def _compare(a: Path, b: Path, *, tolerance: float, optimizer: bool) -> int:
    sa, sb = _load(a), _load(b)
    if sa is None or sb is None:
        return USAGE
    sections = ["model", "optim"] if optimizer else ["model"]
    ta = {k: v for s in sections for k, v in _tensors(sa, s).items()}
    tb = {k: v for s in sections for k, v in _tensors(sb, s).items()}
    differences: list[str] = []
    for key in sorted(ta.keys() - tb.keys()):
        differences.append(f"{key}: only in {a}")
    for key in sorted(tb.keys() - ta.keys()):
        differences.append(f"{key}: only in {b}")
    for key in sorted(ta.keys() & tb.keys()):
        x, y = ta[key], tb[key]
        if x.shape != y.shape:
            differences.append(f"{key}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
            continue
        if x.numel() == 0:
            continue
        diff = (x.double() - y.double()).abs().max().item()
        if diff > tolerance or diff != diff:  # NaN never compares equal
            differences.append(f"{key}: max abs diff {diff:.6g}")
    if differences:
        print(
            f"DIFFERENT: {len(differences)} of {len(ta.keys() | tb.keys())} tensors (tolerance {tolerance:g})"
        )
        for line in differences:
            print(f"  {line}")
        return BAD
    print(f"EQUAL: {len(ta)} tensors within tolerance {tolerance:g}")
    return OK


if __name__ == "__main__":  # python -m worker.checkpoint.cli ...: the same as pyrecover checkpoint ...
    sys.exit(main())
