"""``training.init_from_hf``: start a run from a local Hugging Face checkpoint of a Llama model.

Two moments, both in ``worker.train``'s order of things:

1. ``model_shape`` (while the components are built, every attempt): the model's arguments come
   from the directory's ``config.json`` instead of the preset. Whatever our model cannot be — another
   architecture, biases, scaled RoPE, a vocabulary that is not the tokenizer's, heads that do not
   divide, a sequence length beyond the model's context — is a ``ConfigError`` (exit 3) naming the
   field. Only ``config.json`` is read, so a resume needs the directory but not its weights' bytes.
2. ``load_pretrained`` (after the restore found no committed checkpoint): the weights are copied
   into the freshly built model. A resume continues from the run's own checkpoints and never reads
   them again; an attempt that starts with nothing committed yet (its predecessor died before its
   first checkpoint) is a fresh start and loads them again, so it trains exactly what the first did.

Only safetensors files are read: a pickled ``pytorch_model.bin`` can run code when loaded. Weight
files named by an index must lie in the directory itself. Each rank reads the whole weights once
and copies them into the parameters one at a time, releasing each: whole into a plain, DDP-wrapped
or compiled model, as this rank's shard into an FSDP2-sharded one (DTensor).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from worker.config import ConfigError, TrainConfig
from worker.model import TransformerModelArgs, model_args

from .mapping import (
    HF_IGNORED,
    MappingError,
    args_from_hf_config,
    expected_shapes,
    from_hf_name,
    model_record,
)

log = logging.getLogger("pyrecover.worker.hf")

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PLAIN_FILE = re.compile(r"^[A-Za-z0-9._-]+\.safetensors$")


def _error(directory: Path | str, why: str) -> ConfigError:
    return ConfigError(f"init_from_hf: {directory}: {why}")


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _error(directory, f"no {CONFIG_FILE} (not a Hugging Face checkpoint directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(directory, f"{CONFIG_FILE} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise _error(directory, f"{CONFIG_FILE} is not a JSON object")
    return config


def model_shape(config: TrainConfig, *, vocab_size: int) -> TransformerModelArgs:
    """The model's arguments for this run: the preset's, or the ``init_from_hf`` config's."""
    if config.init_from_hf is None:
        return model_args(config.model_preset, vocab_size=vocab_size, seq_len=config.sequence_length)
    directory = Path(config.init_from_hf)
    try:
        return args_from_hf_config(
            read_hf_config(directory), vocab_size=vocab_size, seq_len=config.sequence_length
        )
    except MappingError as exc:
        raise _error(directory, f"config.json does not fit our model: {exc}") from None


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that owns the parameters under their plain names (FSDP2 shards in place)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(inner, torch.nn.Module):
            model = inner
        else:
            return model


def args_of(model: torch.nn.Module) -> TransformerModelArgs:
    """The arguments the (possibly DDP-wrapped, compiled or sharded) ``Transformer`` was built with."""
    args = getattr(base_model(model), "args", None)
    if not isinstance(args, TransformerModelArgs):
        raise TypeError(f"{type(model).__name__} is not a pyrecover Transformer")
    return args


def model_config_record(config: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """What the checkpoint's manifest records about the model (``worker.hf.mapping.model_record``)."""
    args = args_of(model)
    context = None
    if config.init_from_hf is not None:
        value = read_hf_config(Path(config.init_from_hf)).get("max_position_embeddings")
        context = value if isinstance(value, int) and not isinstance(value, bool) else None
    return model_record(args, max_position_embeddings=context)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (refusing pickles and paths outside it)."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _error(directory, f"{INDEX_FILE} is unreadable: {exc}") from None
        for name in names:
            if not isinstance(name, str) or not _PLAIN_FILE.fullmatch(name) or ".." in name:
                raise _error(
                    directory, f"{INDEX_FILE} names {name!r}, not a .safetensors file in the directory"
                )
        return [directory / name for name in names]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt*")):
        raise _error(
            directory,
            "only pickled weights (*.bin / *.pt) found; pickles can run code when loaded, so only "
            "safetensors are read (convert them: model.save_pretrained(dir, safe_serialization=True))",
        )
    raise _error(directory, f"no {SINGLE_FILE} or {INDEX_FILE}")


def read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every weight of the directory under our parameter names (CPU, the dtype stored)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    if HF_IGNORED.fullmatch(name):
                        continue
                    try:
                        ours = from_hf_name(name)
                    except MappingError as exc:
                        raise _error(directory, str(exc)) from None
                    out[ours] = fh.get_tensor(name)
        except (OSError, SafetensorError) as exc:
            raise _error(directory, f"{path.name}: {exc}") from None
    return out


def _checked(
    directory: Path, tensors: dict[str, torch.Tensor], args: TransformerModelArgs
) -> dict[str, torch.Tensor]:
    """``tensors`` with a tied head materialised, after checking every name and shape against ``args``."""
    want = expected_shapes(args)
    if "output.weight" not in tensors and "tok_embeddings.weight" in tensors:
        # Tied embeddings (tie_word_embeddings): our head is its own tensor, starting as a copy.
        tensors = {**tensors, "output.weight": tensors["tok_embeddings.weight"].clone()}
        log.info("init_from_hf: tied embeddings: the output head starts as a copy of the embedding")
    missing = sorted(want.keys() - tensors.keys())
    if missing:
        raise _error(directory, f"weights missing: {', '.join(missing[:4])}")
    extra = sorted(tensors.keys() - want.keys())
    if extra:
        raise _error(directory, f"weights that config.json does not describe: {', '.join(extra[:4])}")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise _error(directory, f"{name}: shape {tuple(tensors[name].shape)}, the config implies {shape}")
        if not tensors[name].is_floating_point():
            raise _error(directory, f"{name}: {tensors[name].dtype} is not a floating-point weight")
    return tensors


@torch.no_grad()
def _copy_into(param: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, or into this rank's shard of an FSDP2 (DTensor) one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        # Every rank holds the whole tensor: src_data_rank=None cuts the local shard, no communication.
        shard = distribute_tensor(
            whole.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
        )
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(whole)


def load_pretrained(model: torch.nn.Module, directory: Path | str) -> int:
    """Copy the directory's weights into ``model`` (plain, DDP, compiled or FSDP); returns the count.

    Raises ConfigError naming the weight that does not fit. Every rank calls it (each reads the
    files; the page cache shares them on a node); tensors are copied one at a time and dropped.
    """
    directory = Path(directory)
    args = args_of(model)
    tensors = _checked(directory, read_hf_tensors(directory), args)
    params = dict(base_model(model).named_parameters())
    if params.keys() != tensors.keys():  # a wrapper that renames parameters: never load half a model
        unknown = sorted(params.keys() ^ tensors.keys())[:3]
        raise RuntimeError(f"init_from_hf: the model's parameters do not match the checkpoint's: {unknown}")
    for name in list(tensors):
        _copy_into(params[name], tensors.pop(name))
    log.info("init_from_hf: loaded %d tensors from %s", len(params), directory)
    return len(params)
