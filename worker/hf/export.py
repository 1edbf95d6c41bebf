"""Export a committed checkpoint as a Hugging Face ``LlamaForCausalLM`` directory.

``OUT_DIR`` receives ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards and
``model.safetensors.index.json`` past ``max_shard_bytes``), ``config.json`` and the run's tokenizer
(``save_pretrained``). ``transformers.LlamaForCausalLM.from_pretrained(OUT_DIR)`` loads it without
custom code and computes our logits.

Nothing is written unless everything can be: the checkpoint is verified against its manifest and
the tokenizer loaded first, the files go into a hidden sibling of ``OUT_DIR``, which is renamed
into place only when complete. An existing non-empty ``OUT_DIR`` is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.checkpoint.manifest import fsync_dir
from worker.checkpoint.types import CheckpointError

from .checkpoint_model import CheckpointModel, read_checkpoint_model
from .mapping import MappingError, hf_config_dict, to_hf_name

log = logging.getLogger("pyrecover.worker.hf")

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class ExportError(Exception):
    """The export was refused or failed; nothing was left at the destination. The message says why."""


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    step: int
    files: list[str]
    num_params: int
    dtype: str


def hf_state_dict(model: CheckpointModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under Llama's names, contiguous, optionally cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.tensors.items():
        value = tensor if dtype is None else tensor.to(dtype)
        out[to_hf_name(name)] = value.contiguous()
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple[int, int, str]:
    """Embedding, layers in numeric order, final norm, head: the order readers stream them in."""
    parts = name.split(".")
    if name.startswith("model.layers."):
        return (1, int(parts[2]), name)
    return (0 if "embed_tokens" in name else 2, 0, name)


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_weights(tmp: Path, tensors: dict[str, torch.Tensor], max_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    shards = _shards(tensors, max_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [*names, INDEX_FILE]


def _load_tokenizer(spec: str | None, model: CheckpointModel) -> Any:
    from worker.data import DataError, load_tokenizer

    source = spec or model.run_config.get("tokenizer_name_or_path")
    if not source:
        raise ExportError(f"{model.path}: the manifest names no tokenizer; pass --tokenizer DIR")
    try:
        tokenizer = load_tokenizer(str(source))
    except DataError as exc:
        hint = "" if spec else " (the run's tokenizer; pass --tokenizer DIR if it lives elsewhere here)"
        raise ExportError(f"tokenizer {source!r}: {exc}{hint}") from None
    if len(tokenizer) != model.args.vocab_size:
        raise ExportError(
            f"tokenizer {source!r} has {len(tokenizer)} tokens but the model has {model.args.vocab_size} "
            "embeddings: not the run's tokenizer"
        )
    return tokenizer


def _check_destination(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: exists and is not empty (nothing was overwritten)")


def export_hf(
    checkpoint: Path,
    out_dir: Path,
    *,
    tokenizer: str | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> ExportResult:
    """Write ``checkpoint`` (committed, any format/world size/parallelism) to ``out_dir`` in HF format.

    ``dtype`` (``fp32``/``bf16``/``fp16``) casts the weights; None keeps the dtype they were saved in.
    Raises ExportError (or CheckpointError for a checkpoint that is not committed or not intact).
    """
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"dtype: must be one of {sorted(DTYPES)} (got {dtype!r})")
    if max_shard_bytes <= 0:
        raise ExportError(f"max_shard_bytes: must be > 0 (got {max_shard_bytes})")
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    model = read_checkpoint_model(Path(checkpoint))
    tok = _load_tokenizer(tokenizer, model)
    try:
        tensors = hf_state_dict(model, DTYPES[dtype] if dtype else None)
        saved = {t.dtype for t in tensors.values()}
        if len(saved) != 1 or next(iter(saved)) not in _HF_DTYPE_NAMES:
            raise ExportError(f"{checkpoint}: weights in {sorted(map(str, saved))}; pass --dtype")
        torch_dtype = next(iter(saved))
        config = hf_config_dict(
            model.args,
            dtype=_HF_DTYPE_NAMES[torch_dtype],
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            max_position_embeddings=model.max_position_embeddings,
        )
    except MappingError as exc:
        raise ExportError(f"{checkpoint}: {exc}") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.export-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        files = _write_weights(tmp, tensors, max_shard_bytes)
        (tmp / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        tok.save_pretrained(str(tmp))
        _fsync_tree(tmp)
        _check_destination(out_dir)  # nobody filled it meanwhile
        if out_dir.is_dir():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (step %d) to %s: %s", checkpoint, model.step, out_dir, ", ".join(files))
    return ExportResult(
        out_dir=out_dir,
        step=model.step,
        files=files,
        num_params=sum(t.numel() for t in tensors.values()),
        dtype=config["dtype"],
    )


def _fsync_tree(root: Path) -> None:
    """Durable before the rename makes it visible: a crash never leaves a half-written export in place."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)


__all__ = ["DTYPES", "CheckpointError", "ExportError", "ExportResult", "export_hf", "hf_state_dict"]
