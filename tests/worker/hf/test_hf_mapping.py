"""The name and shape correspondence between our Transformer and transformers' LlamaForCausalLM."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker.hf.mapping import (
    MappingError,
    args_from_hf_config,
    args_from_record,
    expected_shapes,
    from_hf_name,
    hf_config_dict,
    model_record,
    to_hf_name,
)
from worker.model import PRESETS, Transformer, model_args


def test_every_parameter_maps_to_llama_and_back() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    args = model_args("tiny", vocab_size=300, seq_len=64)
    ours = Transformer(args).state_dict()
    config = hf_config_dict(args, dtype="float32", bos_token_id=1, eos_token_id=2)
    hf = LlamaForCausalLM(LlamaConfig(**config)).state_dict()
    assert {to_hf_name(name) for name in ours} == set(hf)
    for name, tensor in ours.items():
        assert from_hf_name(to_hf_name(name)) == name
        assert tuple(hf[to_hf_name(name)].shape) == tuple(tensor.shape)
    assert expected_shapes(args) == {k: tuple(v.shape) for k, v in ours.items()}


def test_names_without_a_counterpart_are_refused() -> None:
    with pytest.raises(MappingError, match="bias"):
        from_hf_name("model.layers.0.self_attn.q_proj.bias")
    with pytest.raises(MappingError, match="Llama"):
        to_hf_name("layers.0.attention.rotary.weight")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_survives_the_trip_through_a_llama_config(preset: str) -> None:
    from transformers import LlamaConfig

    args = model_args(preset, vocab_size=1000, seq_len=256)
    config = hf_config_dict(args, dtype="bfloat16", bos_token_id=None, eos_token_id=None)
    # What transformers itself makes of the file (rope base included), read back into our arguments.
    reread = LlamaConfig(**config).to_dict()
    assert args_from_hf_config(reread, vocab_size=1000, seq_len=256).ffn_hidden_dim == args.ffn_hidden_dim
    back = args_from_hf_config(reread, vocab_size=1000, seq_len=256)
    assert (back.dim, back.n_layers, back.n_heads, back.kv_heads) == (
        args.dim,
        args.n_layers,
        args.n_heads,
        args.kv_heads,
    )
    assert (back.norm_eps, back.rope_theta, back.seq_len) == (args.norm_eps, args.rope_theta, 256)
    assert args_from_record(model_record(args)) == args


@pytest.mark.parametrize("dim", [64, 96, 128, 768, 2048])
@pytest.mark.parametrize("ffn", [32, 100, 160, 171, 172, 256, 2730, 5632, 8192])
def test_any_intermediate_size_is_represented_exactly(dim: int, ffn: int) -> None:
    config = _llama(hidden_size=dim, intermediate_size=ffn)
    assert args_from_hf_config(config, vocab_size=100, seq_len=16).ffn_hidden_dim == ffn


def _llama(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000.0,
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    ("overrides", "seq_len", "field"),
    [
        ({"model_type": "mistral"}, 16, "model_type"),
        ({"architectures": ["LlamaModel"]}, 16, "architectures"),
        ({"vocab_size": 101}, 16, "vocab_size"),
        ({"num_attention_heads": 3}, 16, "num_attention_heads"),
        ({"num_key_value_heads": 3}, 16, "num_key_value_heads"),
        ({"head_dim": 32}, 16, "head_dim"),
        ({}, 129, "max_position_embeddings"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 16, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, 16, "rope_scaling"),
        ({"attention_bias": True}, 16, "attention_bias"),
        ({"mlp_bias": True}, 16, "mlp_bias"),
        ({"hidden_act": "gelu"}, 16, "hidden_act"),
        ({"attention_dropout": 0.1}, 16, "attention_dropout"),
        ({"rms_norm_eps": 0}, 16, "rms_norm_eps"),
        ({"num_hidden_layers": "2"}, 16, "num_hidden_layers"),
        ({"rope_theta": 1.0}, 16, "rope_theta"),
    ],
)
def test_a_config_our_model_cannot_be_is_refused_naming_the_field(
    overrides: dict[str, Any], seq_len: int, field: str
) -> None:
    with pytest.raises(MappingError, match=field):
        args_from_hf_config(_llama(**overrides), vocab_size=100, seq_len=seq_len)


def test_rope_base_is_read_from_either_spelling() -> None:
    v5 = _llama(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    del v5["rope_theta"]
    assert args_from_hf_config(v5, vocab_size=100, seq_len=16).rope_theta == 500000.0
    assert args_from_hf_config(_llama(), vocab_size=100, seq_len=16).rope_theta == 50000.0


def test_layernorm_models_have_no_llama_config() -> None:
    args = dataclasses.replace(model_args("tiny", vocab_size=10, seq_len=8), norm_type="layernorm")
    with pytest.raises(MappingError, match="norm_type"):
        hf_config_dict(args, dtype="float32", bos_token_id=None, eos_token_id=None)


def test_config_keeps_a_longer_context_than_the_training_length() -> None:
    args = model_args("tiny", vocab_size=10, seq_len=8)
    config = hf_config_dict(
        args, dtype="float32", bos_token_id=0, eos_token_id=1, max_position_embeddings=4096
    )
    assert config["max_position_embeddings"] == 4096
    assert config["tie_word_embeddings"] is False
    assert config["dtype"] == config["torch_dtype"] == "float32"
