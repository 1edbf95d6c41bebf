"""The model's shape (``TransformerModelArgs``) and the size presets, torch-free.

The worker builds its ``worker.model.Transformer`` from these; the controller reads the same shapes
to count parameters and plan memory (``shared.memory_plan``) without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

NORM_TYPES = ("rmsnorm", "layernorm")


@dataclass(kw_only=True)
class TransformerModelArgs:
    """Shape of the model. ``vocab_size`` comes from the tokenizer, ``seq_len`` from the data."""

    dim: int = 4096
    """Width of the residual stream."""
    n_layers: int = 32
    """Number of transformer blocks."""
    n_heads: int = 32
    """Query heads; the head size is dim // n_heads (must be even for RoPE)."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None means n_heads (plain multi-head)."""
    multiple_of: int = 256
    """The SwiGLU hidden size is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Scales the SwiGLU hidden size (2/3 * 4 * dim) before rounding; None means 1."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_type: str = "rmsnorm"
    """'rmsnorm' (Llama) or 'layernorm' (without bias)."""
    seq_len: int = 2048
    """Longest sequence the RoPE tables cover."""
    vocab_size: int
    """Tokenizer vocabulary size (embedding rows and output logits)."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        for name in ("dim", "n_layers", "n_heads", "multiple_of", "seq_len", "vocab_size"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if self.dim % self.n_heads:
            raise bad("dim", f"must be divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise bad("n_heads", f"head size dim/n_heads={self.dim // self.n_heads} must be even for RoPE")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise bad("n_kv_heads", f"must be > 0 and divide n_heads={self.n_heads}")
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise bad("ffn_dim_multiplier", "must be > 0 or None")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise bad("norm_eps", "must be a finite number > 0")
        if not self.rope_theta > 1:
            raise bad("rope_theta", "must be > 1")
        if self.norm_type not in NORM_TYPES:
            raise bad("norm_type", f"must be one of {NORM_TYPES}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def block_parameters(self) -> int:
        """Parameters of one transformer block: wq, wo (dim²), wk, wv (dim × kv width), w1, w2, w3
        (dim × ffn hidden) and the two norm weights."""
        d, kv = self.dim, self.kv_heads * self.head_dim
        return 2 * d * d + 2 * d * kv + 3 * d * self.ffn_hidden_dim + 2 * d

    @property
    def num_parameters(self) -> int:
        """All parameters: the token embedding and the output head (untied: vocab × dim each), the
        blocks and the final norm. Equal to ``worker.metrics.num_params`` of the built model."""
        return 2 * self.vocab_size * self.dim + self.n_layers * self.block_parameters + self.dim

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's rule: 2/3 of 4*dim, times the multiplier, rounded up to ``multiple_of``."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


PRESETS: dict[str, TransformerModelArgs] = {
    # Fast unit tests: a few thousand parameters besides the embeddings.
    "tiny": TransformerModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, seq_len=256, vocab_size=32000
    ),
    # ~125M parameters at a 32k vocabulary: benchmarkable on a CPU, and its fp32 weights plus AdamW
    # moments (12 bytes/parameter) exceed 1 GB, which the checkpoint bench needs.
    "small": TransformerModelArgs(
        dim=768, n_layers=12, n_heads=12, n_kv_heads=4, multiple_of=256, seq_len=1024, vocab_size=32000
    ),
    # Llama 3.2 1B's shape (without its tied embeddings).
    "llama3-1b": TransformerModelArgs(
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        multiple_of=256,
        ffn_dim_multiplier=1.5,
        rope_theta=500000.0,
        seq_len=2048,
        vocab_size=128256,
    ),
    # The seed's training configuration (Llama 3 8B).
    "llama3-8b": TransformerModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        multiple_of=1024,
        ffn_dim_multiplier=1.3,
        rope_theta=500000.0,
        seq_len=2048,
        vocab_size=128256,
    ),
}


def model_args(preset: str, *, vocab_size: int, seq_len: int) -> TransformerModelArgs:
    """The preset's shape with the tokenizer's vocabulary and the data's sequence length."""
    if preset not in PRESETS:
        raise ValueError(f"model_preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], vocab_size=vocab_size, seq_len=seq_len)
