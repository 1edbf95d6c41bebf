"""The Llama-style decoder the worker trains: pre-norm blocks, RoPE, grouped-query attention, SwiGLU.

The structure and names follow the seed's ``model.py`` (``TransformerModelArgs``, ``RMSNorm``,
``precompute_freqs_cis`` / ``reshape_for_broadcast`` / ``apply_rotary_emb``, ``Attention``,
``FeedForward``, ``TransformerBlock``, ``Transformer``), so its checkpoints' parameter names
(``tok_embeddings``, ``layers.<i>.attention.wq`` …, ``norm``, ``output``) carry over. Two deliberate
changes: RoPE is real-valued (cos/sin tables instead of complex multiplication: no complex dtypes,
which are slower on CPU and unsupported by some backends), and ``init_weights()`` gives a documented,
seeded initialisation instead of PyTorch's per-layer defaults. The shape and the presets live in
``shared.model_shapes`` (torch-free, so the controller can plan memory from them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from shared.model_shapes import NORM_TYPES, PRESETS, TransformerModelArgs, model_args

__all__ = [
    "NORM_TYPES",
    "PRESETS",
    "Attention",
    "FeedForward",
    "RMSNorm",
    "Transformer",
    "TransformerBlock",
    "TransformerModelArgs",
    "apply_rotary_emb",
    "build_norm",
    "model_args",
    "precompute_freqs_cis",
    "reshape_for_broadcast",
]


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight, computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upcast for the statistics (bf16 sums of squares lose precision); no-ops in fp32.
        return F.rms_norm(x.float(), (self.dim,), eps=self.eps).type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def build_norm(norm_type: str, dim: int, eps: float) -> RMSNorm | nn.LayerNorm:
    if norm_type == "rmsnorm":
        return RMSNorm(dim, eps)
    if norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=False)
    raise ValueError(f"norm_type: must be one of {NORM_TYPES} (got {norm_type!r})")


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """RoPE table for positions [0, end): shape [end, 2, dim] holding cos (index 0) and sin (index 1).

    Frequency i (of dim/2) is theta^(-2i/dim); both halves of the head use the same frequencies
    ("rotate half" layout: element j is paired with element j + dim/2). Always fp32.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def reshape_for_broadcast(freqs_cis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a [S, head_dim] table so it broadcasts over ``x`` of shape [B, S, H, head_dim]."""
    if x.ndim != 4 or freqs_cis.shape != (x.shape[1], x.shape[-1]):
        raise ValueError(f"RoPE table {tuple(freqs_cis.shape)} does not fit input {tuple(x.shape)}")
    return freqs_cis.view(1, x.shape[1], 1, x.shape[-1])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys ([B, S, H, head_dim]) by their position; ``freqs_cis`` is [S, 2, head_dim].

    Afterwards q_m·k_n depends on the positions only through m - n. Computed in fp32 (as the seed
    did), returned in the input dtype.
    """
    cos = reshape_for_broadcast(freqs_cis[:, 0], xq)
    sin = reshape_for_broadcast(freqs_cis[:, 1], xq)
    q, k = xq.float(), xk.float()
    q_out = q * cos + _rotate_half(q) * sin
    k_out = k * cos + _rotate_half(k) * sin
    return q_out.type_as(xq), k_out.type_as(xk)


class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads, through ``scaled_dot_product_attention``."""

    def __init__(self, args: TransformerModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        q, k, v = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)
        # SDPA shares each K/V head among its query group itself (``enable_gqa``, no mask: the
        # flash kernels on GPU and CPU take it). Expanding K/V beforehand, as upstream did, copies
        # them n_rep times and costs ~20 % of an attention layer's forward + backward on CPU.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_rep > 1)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, layer_id: int, args: TransformerModelArgs) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = build_norm(args.norm_type, args.dim, args.norm_eps)
        self.ffn_norm = build_norm(args.norm_type, args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token ids [B, S] -> logits [B, S, vocab_size] (S <= args.seq_len)."""

    def __init__(self, args: TransformerModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A ModuleDict keyed "0", "1", … as in the seed, so parameter names match its checkpoints.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm = build_norm(args.norm_type, args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        # Not persistent: derived from args, so checkpoints neither carry nor depend on it.
        self.register_buffer("freqs_cis", self._freqs(), persistent=False)
        self.activation_checkpointing = False
        """Recompute each block in the backward pass instead of keeping its activations: autograd
        keeps only the block's input. The recomputation runs the same kernels on the same inputs, so
        losses and gradients are bit-identical to training without it (on a deterministic device)."""

    def _freqs(self) -> torch.Tensor:
        table = precompute_freqs_cis(self.args.head_dim, self.args.seq_len, self.args.rope_theta)
        return table.to(self.tok_embeddings.weight.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seqlen = tokens.shape[1]
        if seqlen > self.args.seq_len:
            raise ValueError(f"sequence of {seqlen} tokens is longer than seq_len={self.args.seq_len}")
        freqs = self.freqs_cis[:seqlen]
        if freqs.dtype != torch.float32:  # e.g. after model.to(torch.bfloat16): keep RoPE exact
            freqs = freqs.float()
        h = self.tok_embeddings(tokens)
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for layer in self.layers.values():
            # Non-reentrant checkpointing: works with DDP, with FSDP's per-block hooks (the block's
            # parameters are gathered again for the recomputation) and under torch.compile.
            h = checkpoint(layer, h, freqs, use_reentrant=False) if recompute else layer(h, freqs)
        return self.output(self.norm(h))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Reinitialise every parameter from the torch RNG (deterministic under ``torch.manual_seed``).

        - token embeddings: N(0, 1) (the first norm rescales them);
        - every projection into a head (wq, wk, wv, w1, w3): truncated N(0, 0.02²) at ±2σ;
        - projections back into the residual stream (wo, w2): std 0.02 / sqrt(2 * n_layers), so
          the residual stream's variance does not grow with depth (GPT-2's scaled init);
        - output head: truncated N(0, 1/dim) at ±3σ, so initial logits are O(1);
        - norm weights: 1.
        The order is fixed (embedding, blocks in order, norm, output), so the same seed always
        gives the same weights. Also recomputes the RoPE table (e.g. after building on ``meta``).
        """
        std = 0.02
        out_std = std / math.sqrt(2 * self.args.n_layers)
        nn.init.normal_(self.tok_embeddings.weight)
        for layer in self.layers.values():
            assert isinstance(layer, TransformerBlock)
            for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.trunc_normal_(layer.attention.wo.weight, std=out_std, a=-2 * out_std, b=2 * out_std)
            for lin in (layer.feed_forward.w1, layer.feed_forward.w3):
                nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.trunc_normal_(layer.feed_forward.w2.weight, std=out_std, a=-2 * out_std, b=2 * out_std)
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        head_std = self.args.dim**-0.5
        nn.init.trunc_normal_(self.output.weight, std=head_std, a=-3 * head_std, b=3 * head_std)
        self.freqs_cis = self._freqs()
