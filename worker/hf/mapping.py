"""The correspondence between our ``Transformer`` and Hugging Face's ``LlamaForCausalLM``.

Parameter names map one to one (no tensor is transformed): our RoPE uses the "rotate half" layout,
which is Llama's in ``transformers``, so query and key projections need no permutation, and the
SwiGLU projections are ``w1 = gate_proj``, ``w3 = up_proj``, ``w2 = down_proj``. Our output head is
its own tensor (``tie_word_embeddings: false``).

The shape maps field by field, except the SwiGLU width: Llama states ``intermediate_size``, we
derive it from ``multiple_of`` and ``ffn_dim_multiplier``; ``args_from_hf_config`` picks the two so
that the derived width is exactly ``intermediate_size``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from worker.model import TransformerModelArgs

HF_ARCHITECTURE = "LlamaForCausalLM"
HF_MODEL_TYPE = "llama"

_LAYER_PARTS: tuple[tuple[str, str], ...] = (
    ("attention.wq", "self_attn.q_proj"),
    ("attention.wk", "self_attn.k_proj"),
    ("attention.wv", "self_attn.v_proj"),
    ("attention.wo", "self_attn.o_proj"),
    ("feed_forward.w1", "mlp.gate_proj"),
    ("feed_forward.w2", "mlp.down_proj"),
    ("feed_forward.w3", "mlp.up_proj"),
    ("attention_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
)
_TOP: tuple[tuple[str, str], ...] = (
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
)
_OURS_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
_TO_HF = dict(_LAYER_PARTS)
_FROM_HF = {hf: ours for ours, hf in _LAYER_PARTS}

HF_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
"""Buffers older ``transformers`` versions saved with the weights; derived from the config, not weights."""


class MappingError(ValueError):
    """A name, shape or config field has no counterpart on the other side; the message names it."""


def to_hf_name(name: str) -> str:
    """``layers.3.attention.wq.weight`` → ``model.layers.3.self_attn.q_proj.weight``."""
    for ours, hf in _TOP:
        if name == ours:
            return hf
    m = _OURS_LAYER.fullmatch(name)
    if m and m.group(2) in _TO_HF:
        return f"model.layers.{m.group(1)}.{_TO_HF[m.group(2)]}.weight"
    raise MappingError(f"{name}: not a parameter of the Llama architecture")


def from_hf_name(name: str) -> str:
    """``model.layers.3.mlp.gate_proj.weight`` → ``layers.3.feed_forward.w1.weight``."""
    for ours, hf in _TOP:
        if name == hf:
            return ours
    m = _HF_LAYER.fullmatch(name)
    if m and m.group(2) in _FROM_HF:
        return f"layers.{m.group(1)}.{_FROM_HF[m.group(2)]}.weight"
    raise MappingError(f"{name}: not a parameter of our model (a bias, or another architecture?)")


def expected_shapes(args: TransformerModelArgs) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``Transformer(args)`` with its shape (our names), without building it."""
    kv = args.kv_heads * args.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (args.vocab_size, args.dim),
        "norm.weight": (args.dim,),
        "output.weight": (args.vocab_size, args.dim),
    }
    per_layer = {
        "attention.wq": (args.n_heads * args.head_dim, args.dim),
        "attention.wk": (kv, args.dim),
        "attention.wv": (kv, args.dim),
        "attention.wo": (args.dim, args.n_heads * args.head_dim),
        "feed_forward.w1": (args.ffn_hidden_dim, args.dim),
        "feed_forward.w2": (args.dim, args.ffn_hidden_dim),
        "feed_forward.w3": (args.ffn_hidden_dim, args.dim),
        "attention_norm": (args.dim,),
        "ffn_norm": (args.dim,),
    }
    for i in range(args.n_layers):
        for part, shape in per_layer.items():
            shapes[f"layers.{i}.{part}.weight"] = shape
    return shapes


# ------------------------------------------------------------------ shape, both directions


def model_record(args: TransformerModelArgs, *, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """The model's shape as stored in a checkpoint's config (``model``), so an export never guesses it.

    ``max_position_embeddings`` is kept for a model imported from Hugging Face: its context length
    may exceed the length we train at, and an export should give it back.
    """
    record: dict[str, Any] = dataclasses.asdict(args)
    if max_position_embeddings is not None:
        record["max_position_embeddings"] = max_position_embeddings
    return record


def args_from_record(record: Mapping[str, Any]) -> TransformerModelArgs:
    names = {f.name for f in dataclasses.fields(TransformerModelArgs)}
    return TransformerModelArgs(**{k: v for k, v in record.items() if k in names})


def hf_config_dict(
    args: TransformerModelArgs,
    *,
    dtype: str,
    bos_token_id: int | None,
    eos_token_id: int | None,
    max_position_embeddings: int | None = None,
) -> dict[str, Any]:
    """A ``config.json`` that ``LlamaConfig`` reads back as ``args`` (``transformers`` 4 and 5).

    RoPE's base is written both ways: ``rope_parameters`` (``transformers`` ≥ 5) and the older
    top-level ``rope_theta``, which a reader that does not know the new key would otherwise
    replace by its default of 10000, silently changing every logit.
    """
    if args.norm_type != "rmsnorm":
        raise MappingError(f"norm_type: {args.norm_type!r} has no Llama equivalent (Llama uses RMSNorm)")
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": HF_MODEL_TYPE,
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max(max_position_embeddings or 0, args.seq_len),
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def _rope(config: Mapping[str, Any]) -> tuple[str, float]:
    """(rope type, base) from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    theta = config.get("rope_theta", 10000.0)
    kind = "default"
    for source in (scaling, params):
        if isinstance(source, Mapping):
            theta = source.get("rope_theta", theta)
            named = str(source.get("rope_type") or source.get("type") or "default")
            kind = named if kind == "default" else kind  # any non-default type in either spelling counts
    if not isinstance(theta, int | float) or isinstance(theta, bool):
        raise MappingError(f"rope_theta: must be a number (got {theta!r})")
    return kind, float(theta)


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise MappingError(f"{key}: must be a positive integer (got {value!r})")
    return value


def args_from_hf_config(config: Mapping[str, Any], *, vocab_size: int, seq_len: int) -> TransformerModelArgs:
    """Our model arguments for a Llama ``config.json``, or ``MappingError`` naming what differs.

    ``vocab_size`` is the run's tokenizer's (the embedding must have one row per token id it
    produces) and ``seq_len`` the length the run trains at (it must fit the model's context).
    """
    model_type = config.get("model_type")
    if model_type != HF_MODEL_TYPE:
        raise MappingError(
            f"model_type: only Llama checkpoints ('llama') can be imported (got {model_type!r})"
        )
    architectures = config.get("architectures")
    if architectures is not None and HF_ARCHITECTURE not in architectures:
        raise MappingError(f"architectures: expected {HF_ARCHITECTURE} (got {architectures!r})")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        got = config.get(key, want)
        if got != want:
            raise MappingError(f"{key}: our model has {want!r} (got {got!r})")
    dropout = config.get("attention_dropout", 0.0)
    if dropout not in (0, 0.0, None):
        raise MappingError(f"attention_dropout: our model has no attention dropout (got {dropout!r})")
    dim, heads = _int(config, "hidden_size"), _int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise MappingError(f"num_key_value_heads: must divide num_attention_heads={heads} (got {kv_heads!r})")
    if dim % heads:
        raise MappingError(f"num_attention_heads: {heads} heads do not divide hidden_size={dim}")
    head_dim = config.get("head_dim") or dim // heads
    if head_dim != dim // heads:
        raise MappingError(
            f"head_dim: our model has hidden_size / num_attention_heads = {dim // heads} (got {head_dim!r})"
        )
    hf_vocab = _int(config, "vocab_size")
    if hf_vocab != vocab_size:
        raise MappingError(
            f"vocab_size: the checkpoint has {hf_vocab} token embeddings, the run's tokenizer has "
            f"{vocab_size} tokens (use the checkpoint's own tokenizer)"
        )
    context = _int(config, "max_position_embeddings")
    if seq_len > context:
        raise MappingError(
            f"max_position_embeddings: the run's sequence_length {seq_len} is beyond the model's "
            f"context of {context} positions"
        )
    kind, theta = _rope(config)
    if kind != "default":
        raise MappingError(f"rope_scaling: rope type {kind!r} is not supported (only plain RoPE, 'default')")
    eps = config.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, int | float) or not (math.isfinite(eps) and eps > 0):
        raise MappingError(f"rms_norm_eps: must be a finite number > 0 (got {eps!r})")
    ffn = _int(config, "intermediate_size")
    # Our width is multiple_of * ceil(int(mult * int(8 * dim / 3)) / multiple_of): with multiple_of set
    # to the wanted width, any scaled width in [1, ffn] rounds up to exactly ffn.
    base = int(2 * 4 * dim / 3)
    try:
        args = TransformerModelArgs(
            dim=dim,
            n_layers=_int(config, "num_hidden_layers"),
            n_heads=heads,
            n_kv_heads=kv_heads,
            multiple_of=ffn,
            ffn_dim_multiplier=None if base <= ffn else ffn / base,
            norm_eps=float(eps),
            rope_theta=theta,
            norm_type="rmsnorm",
            seq_len=seq_len,
            vocab_size=vocab_size,
        )
    except ValueError as exc:
        raise MappingError(str(exc)) from None
    if args.ffn_hidden_dim != ffn:
        raise MappingError(
            f"intermediate_size: {ffn} cannot be represented (our rule gives {args.ffn_hidden_dim})"
        )
    return args
