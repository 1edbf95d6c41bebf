"""``pyrecover export hf CHECKPOINT OUT_DIR``: a committed checkpoint as a Hugging Face Llama directory.

Exit codes: 0 = exported; 1 = refused or failed (not a committed or intact checkpoint, a shape
with no Llama equivalent, a tokenizer that cannot be loaded, a non-empty OUT_DIR), with nothing
written at OUT_DIR; 2 = usage. Runs in one process, without a process group or a GPU.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

OK, FAILED, USAGE = 0, 1, 2
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?B?)$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}
_UNITS |= {"T": 10**12, "TB": 10**12}


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``1000000`` → bytes (decimal units, as Hugging Face writes them)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a size such as 5GB or 500MB: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyrecover export",
        description="Export a committed pyrecover checkpoint to another ecosystem's format.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  pyrecover export hf checkpoints/my-run/step-2000 exported/my-run\n"
        "  pyrecover export hf checkpoints/my-run/step-2000 exported/bf16 --dtype bf16\n\n"
        "Exit codes: 0 exported, 1 refused or failed (nothing written), 2 usage error.",
    )
    sub = p.add_subparsers(dest="format", required=True, metavar="{hf}")
    hf = sub.add_parser(
        "hf",
        help="Hugging Face transformers (LlamaForCausalLM)",
        description="Write CHECKPOINT (a committed step-<N> directory: DCP of any world size and "
        "parallelism, or vanilla) to OUT_DIR as safetensors, config.json and the run's tokenizer, "
        "so that transformers.LlamaForCausalLM.from_pretrained(OUT_DIR) loads it without custom code. "
        "The checkpoint is verified against its manifest first; OUT_DIR must not exist or be empty.",
    )
    hf.add_argument("checkpoint", type=Path, help="a committed checkpoint directory (step-<N>)")
    hf.add_argument("out_dir", type=Path, help="the directory to create")
    hf.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory to copy (default: the run's, as recorded in the checkpoint's manifest)",
    )
    hf.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="cast the weights (default: as saved)"
    )
    hf.add_argument(
        "--max-shard-size",
        type=parse_size,
        default="5GB",
        help="largest safetensors file; bigger models are split with an index (default 5GB)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else USAGE
    from worker.checkpoint.types import CheckpointError

    from .export import ExportError, export_hf

    try:
        result = export_hf(
            args.checkpoint,
            args.out_dir,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            max_shard_bytes=args.max_shard_size,
        )
    except (ExportError, CheckpointError) as exc:
        print(f"pyrecover export hf: error: {exc}", file=sys.stderr)
        return FAILED
    print(
        f"exported step {result.step} ({result.num_params / 1e6:.2f}M parameters, {result.dtype}) to "
        f"{result.out_dir}: {', '.join(result.files)}, config.json, tokenizer"
    )
    return OK
