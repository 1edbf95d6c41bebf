"""worker.model: shapes, grouped-query attention, RoPE, causality, validation, seeded init, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from worker.metrics import num_params
from worker.model import (
    PRESETS,
    RMSNorm,
    Transformer,
    TransformerModelArgs,
    apply_rotary_emb,
    model_args,
    precompute_freqs_cis,
    reshape_for_broadcast,
)

VOCAB = 97


def tiny(**changes: object) -> TransformerModelArgs:
    return dataclasses.replace(model_args("tiny", vocab_size=VOCAB, seq_len=32), **changes)  # type: ignore[arg-type]


def build(args: TransformerModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args)
    model.init_weights()
    return model


def test_forward_shapes_and_gqa_projection_sizes() -> None:
    args = tiny()
    model = build(args)
    tokens = torch.randint(0, VOCAB, (3, 20))
    assert model(tokens).shape == (3, 20, VOCAB)
    attn = model.layers["0"].attention
    head = args.dim // args.n_heads
    assert attn.wq.weight.shape == (args.n_heads * head, args.dim)
    assert attn.wk.weight.shape == (2 * head, args.dim)  # 2 KV heads serve 4 query heads
    assert attn.wv.weight.shape == (2 * head, args.dim)


def test_gqa_equals_multi_head_attention_with_shared_kv_heads() -> None:
    """GQA with 2 KV heads = MHA whose K/V projections repeat each KV head for its query group."""
    gqa = build(tiny())
    mha = Transformer(tiny(n_kv_heads=None))
    state = gqa.state_dict()
    head = gqa.args.head_dim
    for name in list(state):
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            w = state[name].view(gqa.args.kv_heads, head, -1)
            state[name] = w.repeat_interleave(gqa.args.n_heads // gqa.args.kv_heads, dim=0).reshape(
                -1, w.shape[-1]
            )
    mha.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 24))
    torch.testing.assert_close(gqa(tokens), mha(tokens), rtol=1e-5, atol=1e-5)


def test_rope_dot_product_depends_only_on_relative_position() -> None:
    head_dim, seq = 16, 64
    freqs = precompute_freqs_cis(head_dim, seq, theta=10000.0)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=gen).expand(1, seq, 1, head_dim).contiguous()
    k = torch.randn(head_dim, generator=gen).expand(1, seq, 1, head_dim).contiguous()
    rq, rk = apply_rotary_emb(q, k, freqs)
    scores = rq[0, :, 0] @ rk[0, :, 0].T  # scores[m, n] = q_m · k_n

    for offset in (0, 1, 5, 17):
        diagonal = torch.diagonal(scores, offset=-offset)  # all (m, n) with m - n = offset
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), rtol=1e-4, atol=1e-4)
    # …and it really does depend on the offset (a no-op rotation would pass the check above too).
    assert not torch.allclose(scores[5, 2], scores[5, 4])
    # Rotation keeps norms, and position 0 is not rotated at all.
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rq[0, 0], q[0, 0])


def test_reshape_for_broadcast_rejects_a_table_that_does_not_fit() -> None:
    x = torch.zeros(2, 8, 4, 16)
    assert reshape_for_broadcast(torch.zeros(8, 16), x).shape == (1, 8, 1, 16)
    with pytest.raises(ValueError, match="does not fit"):
        reshape_for_broadcast(torch.zeros(9, 16), x)


def test_model_is_causal() -> None:
    model = build(tiny())
    tokens = torch.randint(0, VOCAB, (1, 16))
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 1) % VOCAB
    a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_init_is_deterministic_under_the_seed_and_forward_is_bit_exact() -> None:
    a, b, c = build(tiny(), seed=1), build(tiny(), seed=1), build(tiny(), seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name
    tokens = torch.randint(0, VOCAB, (2, 32))
    assert torch.equal(a(tokens), b(tokens))


def test_init_weights_follows_its_documented_scales() -> None:
    args = dataclasses.replace(model_args("small", vocab_size=1000, seq_len=64), n_layers=2)
    model = build(args)
    block = model.layers["1"]
    assert abs(model.tok_embeddings.weight.std().item() - 1.0) < 0.01
    assert abs(block.attention.wq.weight.std().item() - 0.02 * 0.88) < 0.002  # truncation at 2σ
    assert block.attention.wo.weight.abs().max().item() <= 2 * 0.02 / 2.0 + 1e-7  # std 0.02/sqrt(2·2)
    assert abs(model.output.weight.std().item() - args.dim**-0.5) < 0.003
    assert torch.equal(block.ffn_norm.weight, torch.ones(args.dim))


def test_backward_reaches_every_parameter() -> None:
    model = build(tiny())
    tokens = torch.randint(0, VOCAB, (2, 16))
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rmsnorm_matches_its_formula() -> None:
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16  # the pure-bf16 mode stays bf16


def test_layernorm_variant_and_sequence_limit() -> None:
    model = build(tiny(norm_type="layernorm"))
    assert isinstance(model.norm, torch.nn.LayerNorm)
    assert model(torch.randint(0, VOCAB, (1, 32))).shape == (1, 32, VOCAB)
    with pytest.raises(ValueError, match="longer than seq_len=32"):
        model(torch.randint(0, VOCAB, (1, 33)))


def test_rope_table_is_not_in_the_checkpoint_and_survives_meta_init() -> None:
    with torch.device("meta"):
        model = Transformer(tiny())
    assert "freqs_cis" not in model.state_dict()
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.freqs_cis, precompute_freqs_cis(16, 32))
    assert torch.isfinite(model(torch.randint(0, VOCAB, (1, 8)))).all()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dim": 66}, "dim"),
        ({"n_heads": 7, "n_kv_heads": None}, "dim"),
        ({"dim": 12, "n_heads": 4, "n_kv_heads": None}, "n_heads"),  # head size 3: RoPE needs pairs
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"n_kv_heads": 0}, "n_kv_heads"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"seq_len": -1}, "seq_len"),
        ({"norm_type": "batchnorm"}, "norm_type"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"ffn_dim_multiplier": -1.0}, "ffn_dim_multiplier"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        tiny(**changes)


def test_presets() -> None:
    assert set(PRESETS) >= {"tiny", "small", "llama3-1b", "llama3-8b"}
    args = model_args("llama3-8b", vocab_size=128256, seq_len=4096)
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads) == (4096, 32, 32, 8)
    assert (args.multiple_of, args.ffn_dim_multiplier, args.rope_theta) == (1024, 1.3, 500000.0)
    assert args.ffn_hidden_dim == 14336 and args.seq_len == 4096
    with torch.device("meta"):
        assert round(num_params(Transformer(args)) / 1e9, 2) == 8.03  # Llama 3 8B
        small = Transformer(model_args("small", vocab_size=32000, seq_len=1024))
    # The checkpoint bench needs >= 1 GB of fp32 weights + AdamW moments (12 bytes/parameter).
    assert num_params(small) * 12 >= 1e9
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        model_args("huge", vocab_size=10, seq_len=10)
