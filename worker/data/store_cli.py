"""``pyrecover data tokenize``: build a token store, or check cheaply whether one is current.

Exit codes: 0 the store is fresh (built now, or already); with ``--check`` 1 when it is missing,
stale or unfinished (the message says which: the signal for a preparatory job to build it);
3 when the dataset, tokenizer or ``--out`` cannot be used (nothing was changed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from worker.data.files import DataError
from worker.data.store_build import DEFAULT_SHARD_MB, build_store, check_out_dir
from worker.data.store_manifest import BUILD_DIRNAME, MANIFEST_NAME, read_manifest, stale_reason

EXIT_STALE = 1
EXIT_BAD_INPUT = 3
PROG = "pyrecover data tokenize"


def _cpus() -> int:
    """CPUs this process may run on (a SLURM allocation's, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tokenize",
        help="pre-tokenize Parquet into a memory-mapped token store that training reads directly",
        description=(
            "Tokenize the Parquet files DATASET names (a file, a directory or a glob, as for training) "
            "into a token store in DIR: shards of uint16/uint32 tokens, a documents index and a manifest "
            "(tokenizer fingerprint, source sizes and checksums, counts). Train on it with --dataset DIR: "
            "the batches are the same as streaming the Parquet, and no rank tokenizes. A fresh store is "
            "left alone, a stale one rebuilt, an interrupted build continued."
        ),
        epilog="Then: pyrecover train --dataset DIR --tokenizer-name-or-path TOKENIZER ...",
    )
    p.add_argument("--dataset", required=True, help="Parquet file, directory or glob (column 'text')")
    p.add_argument("--tokenizer-name-or-path", required=True, help="tokenizer directory (or cached hub name)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the store's directory")
    p.add_argument(
        "--workers",
        type=int,
        default=_cpus(),
        help=f"tokenizer processes, one core each (default: the CPUs available, here {_cpus()})",
    )
    p.add_argument(
        "--shard-mb",
        type=float,
        default=DEFAULT_SHARD_MB,
        help=f"MB of text (uncompressed) per shard, whole row groups (default: {DEFAULT_SHARD_MB:g})",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only say whether DIR is a fresh store of DATASET for this tokenizer (exit 0) or not (exit 1); "
        "reads the sources' footers, not their data",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also compare the sources' whole-file checksums (reads every byte) when deciding freshness",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the store is fresh")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _progress(quiet: bool) -> tuple[Callable[[int], Callable[[int], None]] | None, Callable[[], None]]:
    """A progress-bar factory for build_store (None when quiet or stderr is no terminal) and its stop."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("tokenizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )

    def start(total: int) -> Callable[[int], None]:
        bar.start()
        task = bar.add_task("tokenize", total=total)
        return lambda n: bar.advance(task, n)

    return start, bar.stop


def check(args: argparse.Namespace) -> int:
    """``--check``: one line on stdout; 0 fresh, 1 missing/stale/unfinished."""
    from worker.data.files import resolve_parquet_files
    from worker.data.store_manifest import tokenizer_fingerprint
    from worker.data.tokenizer import load_tokenizer

    files = [f.resolve() for f in resolve_parquet_files(args.dataset)]
    fingerprint = tokenizer_fingerprint(load_tokenizer(args.tokenizer_name_or_path))
    out: Path = args.out
    check_out_dir(out)  # a directory that is something else is bad input, not a store to build
    if not (out / MANIFEST_NAME).exists():
        state = "unfinished: an interrupted build" if (out / BUILD_DIRNAME).is_dir() else "missing: no store"
        print(f"{state} in {out}")
        return EXIT_STALE
    try:
        manifest = read_manifest(out)
        reason = stale_reason(manifest, files=files, fingerprint=fingerprint, verify=args.verify)
    except DataError as exc:
        reason = str(exc)
    if reason:
        print(f"stale: {out}: {reason}")
        return EXIT_STALE
    counts = manifest["counts"]
    print(
        f"fresh: {out} ({counts['tokens']:,} tokens, {counts['documents']:,} documents, "
        f"{counts['shards']} shards)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.check:
            return check(args)
        start, stop = _progress(args.quiet)
        try:
            result = build_store(
                args.dataset,
                args.tokenizer_name_or_path,
                args.out,
                workers=args.workers,
                shard_mb=args.shard_mb,
                force=args.force,
                verify=args.verify,
                progress=start,
            )
        finally:
            stop()
    except DataError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.quiet:
        counts = result.manifest["counts"]
        what = (
            "already fresh"
            if result.built == 0
            else f"built {result.built} shards"
            + (f" (kept {result.reused} of an interrupted build)" if result.reused else "")
        )
        if result.stale:
            print(f"{PROG}: the store was stale ({result.stale}): rebuilt", file=sys.stderr)
        print(
            f"{PROG}: {args.out}: {what}; {counts['tokens']:,} tokens in {counts['documents']:,} documents, "
            f"{counts['shards']} shards of {result.manifest['token_dtype']}",
            file=sys.stderr,
        )
    return 0
