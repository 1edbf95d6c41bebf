"""Small random Llama models saved locally, and our model evaluated on fixed token ids (fp32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker.hf.checkpoint_model import read_checkpoint_model
from worker.model import Transformer

SEQ = 32


def tiny_llama(
    directory: Path, *, vocab_size: int, seed: int = 0, **overrides: Any
) -> dict[str, torch.Tensor]:
    """Save a random ``LlamaForCausalLM`` (GQA, non-default RoPE base and norm eps, norms not all ones)
    to ``directory``; returns its state dict as saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000.0,
        "tie_word_embeddings": False,
    }
    fields.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # a norm of ones would hide a swapped or missing norm weight
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def token_ids(vocab_size: int, *, batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1234))


def our_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids)


def checkpoint_logits(checkpoint: Path, ids: torch.Tensor) -> torch.Tensor:
    """Our model, built from the checkpoint's recorded shape and weights, on ``ids``."""
    cm = read_checkpoint_model(checkpoint)
    model = Transformer(cm.args)
    model.load_state_dict({k: v.float() for k, v in cm.tensors.items()})
    return our_logits(model, ids)


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def save_checkpoint(
    model: Transformer, root: Path, *, fmt: str, tokenizer: Path, step: int = 1, **record: Any
) -> Path:
    """Commit ``model`` (untrained) as ``root/run/step-<step>`` the way the worker does, with the
    manifest recording the tokenizer and the model's shape; returns the step directory."""
    from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState
    from worker.hf.mapping import model_record

    optimizer = torch.optim.AdamW(model.parameters())
    state = TrainState(
        model=model,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        progress={"step": step, "tokens_seen": 0, "data_cursor": {}},
    )
    run_config = {"tokenizer_name_or_path": str(tokenizer), "model": model_record(model.args, **record)}
    manager = CheckpointManager(
        CheckpointConfig(root=root, run_name="run", format=fmt), run_config=run_config
    )
    result = manager.save(step, state, final=True)
    manager.close()
    assert result is not None
    return result.path
