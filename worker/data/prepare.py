"""``pyrecover data prepare``: the offline sample corpus and BPE tokenizer.

Compute nodes cannot download data or tokenizers, so the default ones are made here from what
every Python installation has: the docstrings of the standard library (real English prose about
programming). The corpus goes to ``DIR/sample.parquet`` (column ``text``, several row groups) and
a byte-level BPE tokenizer trained on it to ``DIR/tokenizer/`` (loadable with
``transformers.AutoTokenizer.from_pretrained``). Same Python and library versions → the same
bytes, run after run. Both land atomically (written beside, then renamed), so a crash or a
concurrent run never leaves a half-written file where a reader looks.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sysconfig
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

PARQUET_NAME = "sample.parquet"
TOKENIZER_DIRNAME = "tokenizer"
DEFAULT_VOCAB_SIZE = 8192
MIN_DOC_CHARS = 100
ROWS_PER_GROUP = 512
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Skipped parts of the stdlib: test suites (code, not prose), third-party packages, and
# pydoc_data (one huge generated dict of help texts that costs more to parse than it gives).
_SKIP_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files (minus tests and third-party code), sorted by relative path."""
    base = root or Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in base.rglob("*.py") if not _SKIP_PARTS & set(p.relative_to(base).parts))
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def file_docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one file in source order (none if it does not parse)."""
    try:
        with warnings.catch_warnings():
            # Old escape sequences warn; under -W error they would drop the file and change the corpus.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    docs: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:  # depth-first over statement bodies only: far cheaper than ast.walk
        node = stack.pop()
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
        children: list[ast.AST] = [c for c in getattr(node, "body", ()) if isinstance(c, ast.stmt)]
        for attr in ("orelse", "finalbody", "handlers"):
            children += [c for c in getattr(node, attr, ()) if isinstance(c, ast.AST)]
        stack.extend(reversed(children))
    return docs


def collect_docstrings(files: Iterable[Path], *, min_chars: int = MIN_DOC_CHARS) -> list[str]:
    """Distinct docstrings of at least ``min_chars`` characters, in file order then source order."""
    # Serial on purpose: parsing the stdlib takes ~3 s, and a process pool measured no faster
    # (spawning helpers costs what the second core saves).
    seen: set[str] = set()
    docs: list[str] = []
    for path in files:
        for doc in file_docstrings(path):
            if len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)
    return docs


def write_corpus(texts: list[str], path: Path, *, rows_per_group: int = ROWS_PER_GROUP) -> None:
    """Write ``texts`` as a one-column (``text``) Parquet file with row groups of ``rows_per_group``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": pa.array(texts, type=pa.string())})
    pq.write_table(table, path, row_group_size=rows_per_group, compression="zstd")


def train_tokenizer(texts: list[str], out_dir: Path, *, vocab_size: int) -> None:
    """Train a byte-level BPE on ``texts`` and save it as a PreTrainedTokenizerFast into ``out_dir``.

    Special tokens: <|bos|> (id 0), <|eos|> (1), <|pad|> (2). Encoding with special tokens (the
    ``transformers`` default) prepends <|bos|>, like Llama's tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1 << 30
    )
    fast.save_pretrained(str(out_dir))


def _is_prepared(out: Path) -> bool:
    return (out / PARQUET_NAME).is_file() and (out / TOKENIZER_DIRNAME / "tokenizer.json").is_file()


def prepare(
    out: Path, *, vocab_size: int = DEFAULT_VOCAB_SIZE, force: bool = False, console: Console | None = None
) -> tuple[Path, Path]:
    """Build the sample data in ``out`` (kept if present unless ``force``); returns (parquet, tokenizer)."""
    say = console or Console(quiet=True)
    parquet, tok_dir = out / PARQUET_NAME, out / TOKENIZER_DIRNAME
    if _is_prepared(out) and not force:
        say.print(f"[green]✓[/] sample data already in {out} (use --force to rebuild)")
        return parquet, tok_dir
    out.mkdir(parents=True, exist_ok=True)
    with say.status("collecting standard-library docstrings…"):
        sources = stdlib_sources()
        texts = collect_docstrings(sources)
    if not texts:
        raise RuntimeError("found no docstrings in the Python standard library (is it installed?)")
    say.print(
        f"[green]✓[/] {len(texts)} docstrings ({sum(map(len, texts)) / 1e6:.1f} MB) from {len(sources)} files"
    )
    with tempfile.TemporaryDirectory(dir=out, prefix=".prepare-") as tmp:
        tmp_parquet, tmp_tok = Path(tmp) / PARQUET_NAME, Path(tmp) / TOKENIZER_DIRNAME
        with say.status("writing Parquet…"):
            write_corpus(texts, tmp_parquet)
        with say.status(f"training BPE tokenizer (vocab {vocab_size})…"):
            train_tokenizer(texts, tmp_tok, vocab_size=vocab_size)
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        os.replace(tmp_tok, tok_dir)
        os.replace(tmp_parquet, parquet)  # last: _is_prepared() sees both or neither as new
    say.print(f"[green]✓[/] corpus  {parquet}  ({parquet.stat().st_size / 1e6:.1f} MB)")
    say.print(f"[green]✓[/] tokenizer {tok_dir}")
    return parquet, tok_dir


def ensure_sample_data(directory: str | Path) -> tuple[Path, Path]:
    """The sample (parquet path, tokenizer dir) in ``directory``, built quietly first if missing."""
    return prepare(Path(directory))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrecover data",
        description="Offline data for pyrecover: a sample corpus and a tokenizer made without network, "
        "and token stores (Parquet tokenized once, read by training without tokenizing).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  pyrecover data prepare\n"
        "  pyrecover data tokenize --dataset 'corpus/*.parquet' --tokenizer-name-or-path tok --out store\n"
        "  pyrecover data tokenize --dataset corpus --tokenizer-name-or-path tok --out store --check",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    prep = sub.add_parser(
        "prepare",
        help="build the sample corpus (stdlib docstrings as Parquet) and train a BPE tokenizer on it",
        description=(
            "Gather the Python standard library's docstrings (real English text) into DIR/sample.parquet "
            "(column 'text') and train a byte-level BPE tokenizer on them into DIR/tokenizer/, loadable with "
            "transformers.AutoTokenizer.from_pretrained. Deterministic; skipped if already present."
        ),
        epilog="Then: pyrecover train --dataset DIR/sample.parquet --tokenizer-name-or-path DIR/tokenizer",
    )
    prep.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: ./data)")
    prep.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        help=f"BPE vocabulary size, special tokens included (default: {DEFAULT_VOCAB_SIZE})",
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if the data is already there")
    from worker.data import store_cli

    store_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tokenize":
        from worker.data import store_cli

        return store_cli.run(args)
    if args.command != "prepare":
        parser.print_help()
        return 2
    if args.vocab_size < 300:
        parser.error(
            f"--vocab-size: must be >= 300 (256 byte symbols + special tokens), got {args.vocab_size}"
        )
    prepare(args.out, vocab_size=args.vocab_size, force=args.force, console=Console(stderr=True))
    return 0
