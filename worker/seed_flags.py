"""The PyRecover seed scripts' flags that have no field of their own, accepted as documented aliases.

Each is parsed beside the worker's own flags and, once the command line is read, either sets the
field that replaced it or changes nothing because what it chose is now always true. Either way
the worker logs one line per flag given, saying which (``apply_seed_flags``), so a seed command
line runs unchanged and says what each of its old flags means today.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

KEEP_LAST_K_MIN = 2
"""``keep_last_k``'s lower bound: the newest checkpoint and the one resumed from."""


@dataclass(frozen=True)
class SeedFlag:
    flags: tuple[str, ...]
    dest: str
    takes: type | None
    """The value's type, or None for an on/off switch."""
    help: str


SEED_FLAGS: tuple[SeedFlag, ...] = (
    SeedFlag(
        ("--distributed",),
        "seed_distributed",
        None,
        "Seed alias, implied: the worker uses torch.distributed whenever torchrun or srun started it.",
    ),
    SeedFlag(
        ("--verify-checkpoints", "--verify_checkpoints"),
        "seed_verify_checkpoints",
        None,
        "Seed alias, always on: every checkpoint's manifest (sizes, CRC32s) is verified before a resume.",
    ),
    SeedFlag(
        ("--max-kept-checkpoints", "--max_kept_checkpoints"),
        "seed_max_kept_checkpoints",
        int,
        "Seed alias of --keep-last-k (at least 2).",
    ),
    SeedFlag(
        ("--default-iter-time", "--default_iter_time"),
        "seed_default_iter_time",
        float,
        "Seed alias, not needed: the time-aware stop measures the step time from the first steps.",
    ),
    SeedFlag(
        ("--default-ckpt-time", "--default_ckpt_time"),
        "seed_default_ckpt_time",
        float,
        "Seed alias, not needed: the save time is estimated from a write-bandwidth probe, then measured.",
    ),
    SeedFlag(
        ("--use_flash_attention", "--use-flash-attention"),
        "seed_use_flash_attention",
        None,
        "Seed alias, always on where possible: attention is torch's scaled_dot_product_attention, "
        "which picks the flash kernel when the GPU and dtype allow it.",
    ),
)


def add_seed_flags(parser: argparse.ArgumentParser) -> None:
    """Add the seed's flags; a flag not given leaves no attribute (``argparse.SUPPRESS``)."""
    group = parser.add_argument_group("the seed scripts' flags (accepted, each explained in the log)")
    for flag in SEED_FLAGS:
        if flag.takes is None:
            group.add_argument(
                *flag.flags, dest=flag.dest, action="store_true", default=argparse.SUPPRESS, help=flag.help
            )
        else:
            metavar = "N" if flag.takes is int else "SECONDS"
            group.add_argument(
                *flag.flags,
                dest=flag.dest,
                type=flag.takes,
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=flag.help,
            )


def apply_seed_flags(args: argparse.Namespace) -> list[str]:
    """Set the fields the given seed flags map to; one log line per flag given, in flag order."""
    given: dict[str, Any] = vars(args)
    notes: list[str] = []
    for flag in SEED_FLAGS:
        if flag.dest not in given:
            continue
        value = given.pop(flag.dest)
        name = flag.flags[0]
        if flag.dest == "seed_max_kept_checkpoints":
            kept = max(int(value), KEEP_LAST_K_MIN)
            args.keep_last_k = kept
            clamped = f" (raised from {value}: the newest and the resumed-from are always kept)"
            notes.append(f"{name} {value} → --keep-last-k {kept}" + (clamped if kept != value else ""))
        elif flag.takes is None:
            notes.append(f"{name}: accepted ({flag.help.removeprefix('Seed alias, ')})")
        else:
            notes.append(f"{name} {value}: accepted and ignored ({flag.help.removeprefix('Seed alias, ')})")
    return notes
