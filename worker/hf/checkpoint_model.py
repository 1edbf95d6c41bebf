"""The model inside a committed checkpoint, read in one process: whole tensors (our names) and the shape.

Written against the checkpoint's on-disk keys (``worker/checkpoint/state.py``): the ``model``
entries are keyed by parameter fqn whatever wrapped the model when it was saved (DDP, FSDP,
``torch.compile``). A DCP checkpoint's metadata gives every entry's global shape, so the tensors
are read whole from any number of shards, with no process group, and the optimizer state is never
read. A vanilla checkpoint holds whole tensors already (memory-mapped, not copied).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from shared.paths import MANIFEST_NAME
from worker.checkpoint import manifest as mf
from worker.checkpoint import storage
from worker.checkpoint.restore import problems_of
from worker.checkpoint.types import CheckpointError, CommittedCheckpoint
from worker.model import TransformerModelArgs, model_args

from .mapping import args_from_record, expected_shapes

_MODEL_PREFIX = "model."


@dataclass(frozen=True, kw_only=True)
class CheckpointModel:
    """A checkpoint's model weights and everything needed to describe them elsewhere."""

    path: Path
    step: int
    args: TransformerModelArgs
    tensors: dict[str, torch.Tensor]
    """Our parameter names → whole CPU tensors, in the dtype they were saved in."""
    run_config: dict[str, Any]
    """The resolved training config recorded in the manifest (tokenizer, dataset, ...)."""
    max_position_embeddings: int | None
    """The context length of the Hugging Face model the run started from, if it did."""


def committed(path: Path) -> CommittedCheckpoint:
    """``path`` as a committed, intact checkpoint; CheckpointError saying why it is not one."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    if not (path / MANIFEST_NAME).exists():
        inside = mf.list_committed(path)
        if inside:
            raise CheckpointError(
                f"{path} is a run's checkpoint directory; pass one of its checkpoints, e.g. the latest: "
                f"{inside[-1].path}"
            )
    manifest = mf.read_manifest(path)  # "no manifest.json (not a committed checkpoint)" and kin
    ckpt = CommittedCheckpoint(path=path, step=int(manifest["step"]), manifest=manifest)
    problems = problems_of(ckpt)
    if problems:
        raise CheckpointError(f"{path} does not match its {MANIFEST_NAME}: " + "; ".join(problems[:5]))
    return ckpt


def _dcp_model_tensors(directory: Path) -> dict[str, torch.Tensor]:
    metadata = FileSystemReader(directory).read_metadata()
    wanted = {
        fqn: torch.empty(md.size, dtype=md.properties.dtype)
        for fqn, md in metadata.state_dict_metadata.items()
        if fqn.startswith(_MODEL_PREFIX) and isinstance(md, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled, )?unavailable")
        dcp_load(wanted, storage_reader=FileSystemReader(directory), no_dist=True)
    return {fqn.removeprefix(_MODEL_PREFIX): tensor for fqn, tensor in wanted.items()}


def model_tensors(ckpt: CommittedCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's model entries as whole CPU tensors keyed by our parameter names."""
    fmt = ckpt.manifest["format"]
    if fmt == "dcp":
        return _dcp_model_tensors(ckpt.path)
    if fmt == "vanilla":
        model = storage.vanilla_load(ckpt.path)["model"]
        return {name: tensor for name, tensor in model.items() if isinstance(tensor, torch.Tensor)}
    raise CheckpointError(f"{ckpt.path}: unknown checkpoint format {fmt!r}")


def _shape_of(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TransformerModelArgs:
    """The recorded shape (``model`` in the manifest's config), else the preset's at the run's length."""
    record = config.get("model")
    if isinstance(record, dict):
        return args_from_record(record)
    embedding = tensors.get("tok_embeddings.weight")
    if embedding is None or "model_preset" not in config or "sequence_length" not in config:
        raise CheckpointError("the manifest records neither the model's shape nor its preset")
    return model_args(
        config["model_preset"], vocab_size=int(embedding.shape[0]), seq_len=int(config["sequence_length"])
    )


def read_checkpoint_model(path: Path) -> CheckpointModel:
    """Verify ``path`` (refusing anything not committed or not intact) and read its model."""
    ckpt = committed(path)
    config = dict(ckpt.manifest.get("config") or {})
    tensors = model_tensors(ckpt)
    try:
        args = _shape_of(config, tensors)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot tell the model's shape: {exc}") from None
    want = expected_shapes(args)
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != want:
        missing = sorted(want.keys() - got.keys())
        extra = sorted(got.keys() - want.keys())
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        detail = "; ".join(
            [f"missing {missing[:3]}"] * bool(missing)
            + [f"unexpected {extra[:3]}"] * bool(extra)
            + [f"{k}: {got[k]} != {want[k]}" for k in wrong[:3]]
        )
        raise CheckpointError(f"{path}: the model's tensors do not fit its shape ({detail})")
    record = config.get("model")
    context = record.get("max_position_embeddings") if isinstance(record, dict) else None
    return CheckpointModel(
        path=path,
        step=ckpt.step,
        args=args,
        tensors=tensors,
        run_config=config,
        max_position_embeddings=int(context) if isinstance(context, int) else None,
    )
