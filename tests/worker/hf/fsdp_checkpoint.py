"""One rank of a 2-rank FSDP2 (fully_shard) job that commits a DCP checkpoint of a tiny model, untrained.

Usage (per rank, with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set): ``python fsdp_checkpoint.py
ROOT TOKENIZER VOCAB [HF_DIR]``. Rank 0 also saves the whole initial weights as ``ROOT/reference.pt``:
every rank initialises the same weights from the seed before they are sharded, so they are what the
checkpoint holds. With HF_DIR the model takes that config's shape and, once sharded, its weights
(``worker.hf.pretrained.load_pretrained`` into DTensor parameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState
from worker.hf.mapping import args_from_hf_config, model_record
from worker.hf.pretrained import load_pretrained, read_hf_config
from worker.model import Transformer, model_args


def main(root: Path, tokenizer: str, vocab: int, hf: Path | None) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(5)
    if hf is None:
        args = model_args("tiny", vocab_size=vocab, seq_len=32)
    else:
        args = args_from_hf_config(read_hf_config(hf), vocab_size=vocab, seq_len=32)
    model = Transformer(args)
    model.init_weights()
    if rank == 0 and hf is None:
        torch.save(model.state_dict(), root / "reference.pt")
    for layer in model.layers.values():
        fully_shard(layer)
    fully_shard(model)
    if hf is not None:
        load_pretrained(model, hf)
    optimizer = torch.optim.AdamW(model.parameters())
    state = TrainState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        progress={"step": 1, "tokens_seen": 0, "data_cursor": {}},
    )
    run_config = {"tokenizer_name_or_path": tokenizer, "model": model_record(args), "parallelism": "fsdp"}
    manager = CheckpointManager(
        CheckpointConfig(root=root, run_name="fsdp", format="dcp"),
        rank=rank,
        world_size=world,
        run_config=run_config,
    )
    manager.save(1, state, final=True)
    manager.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
