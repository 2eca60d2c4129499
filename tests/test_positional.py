"""Tests of companion.nn.positional: sinusoidal, learned and rotary position information."""

from __future__ import annotations

import math

import pytest
import torch

from companion.nn.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
)

# ---------------------------------------------------------------- sinusoidal


def test_sinusoidal_matches_the_formula_entry_by_entry():
    pe = sinusoidal_encoding(50, 16, dtype=torch.float64)
    assert pe.shape == (50, 16) and pe.dtype == torch.float64
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 8, dtype=torch.float64))


def test_sinusoidal_odd_width_and_dtype():
    pe = sinusoidal_encoding(10, 7)
    assert pe.shape == (10, 7) and pe.dtype == torch.float32
    for i in range(4):  # 4 sine columns, 3 cosine columns
        assert pe[3, 2 * i].item() == pytest.approx(math.sin(3 / 10000 ** (2 * i / 7)), abs=1e-6)
        if i < 3:
            assert pe[3, 2 * i + 1].item() == pytest.approx(math.cos(3 / 10000 ** (2 * i / 7)), abs=1e-6)


def test_sinusoidal_shift_is_a_linear_map():
    """PE(pos + k) = M_k PE(pos) with M_k independent of pos: relative positions are linear."""
    pe = sinusoidal_encoding(200, 32, dtype=torch.float64)
    for k in (1, 5, 37):
        m = sinusoidal_shift_matrix(k, 32)
        assert torch.allclose(pe[:-k] @ m.T, pe[k:], atol=1e-10)
        assert torch.allclose(m @ m.T, torch.eye(32, dtype=torch.float64), atol=1e-12)  # rotation


def test_sinusoidal_dot_product_depends_on_offset_only():
    pe = sinusoidal_encoding(300, 64, dtype=torch.float64)
    k = 11
    dots = (pe[:-k] * pe[k:]).sum(-1)
    assert torch.allclose(dots, dots[0].expand_as(dots), atol=1e-10)


def test_sinusoidal_module_returns_the_encoding_not_x_plus_encoding():
    module = SinusoidalPositionalEncoding(block_size=64, d_model=8)
    assert torch.equal(module(10), sinusoidal_encoding(64, 8)[:10])
    assert torch.equal(module(4, offset=60), sinusoidal_encoding(64, 8)[60:])
    assert list(module.parameters()) == [] and "pe" not in module.state_dict()
    with pytest.raises(ValueError, match="sequence length 65 exceeds block_size 64"):
        module(65)
    with pytest.raises(ValueError, match="sequence length 5 at offset 60 exceeds block_size 64"):
        module(5, offset=60)


# ---------------------------------------------------------------- learned


def test_learned_positions_lookup_and_gradient():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(block_size=16, d_model=8)
    assert emb.weight.shape == (16, 8) and emb.weight.std().item() < 0.05
    out = emb(5, offset=3)
    assert out.shape == (5, 8) and torch.equal(out, emb.weight[3:8])
    out.sum().backward()
    used = emb.weight.grad.abs().sum(-1) > 0
    assert used.tolist() == [False] * 3 + [True] * 5 + [False] * 8


def test_learned_positions_error_beyond_block_size():
    emb = LearnedPositionalEmbedding(block_size=256, d_model=4)
    with pytest.raises(ValueError, match="sequence length 300 exceeds block_size 256"):
        emb(300)
    with pytest.raises(ValueError, match="non-negative"):
        emb(-1)


# ---------------------------------------------------------------- rotary


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_score_depends_only_on_offset(interleaved):
    """<R(m) q, R(n) k> is the same for every (m, n) with the same m - n."""
    g = torch.Generator().manual_seed(0)
    rope = RotaryEmbedding(d_head=64, interleaved=interleaved)
    q = torch.randn(64, dtype=torch.float64, generator=g)
    k = torch.randn(64, dtype=torch.float64, generator=g)

    def score(m: int, n: int) -> float:
        rq = rope.apply_rotary(q[None], torch.tensor([m]))[0]
        rk = rope.apply_rotary(k[None], torch.tensor([n]))[0]
        return float(rq @ rk)

    for offset in (-40, -3, 0, 1, 17, 500):
        scores = [score(n + offset, n) for n in (0, 1, 2, 10, 99, 1000, 4321)]
        assert max(scores) - min(scores) < 1e-9 * max(1.0, abs(scores[0])), (offset, scores)
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # ... and does depend on the offset


def test_rope_preserves_norms_and_is_identity_at_zero():
    rope = RotaryEmbedding(d_head=32)
    x = torch.randn(2, 3, 50, 32, dtype=torch.float64)  # (B, n_heads, T, d_head)
    y = rope.apply_rotary(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12)
    assert torch.equal(y[..., 0, :], x[..., 0, :])
    assert not torch.allclose(y[..., 1, :], x[..., 1, :])


def test_rope_interleaved_is_complex_multiplication():
    """RoFormer layout: pairs (2i, 2i+1) as complex numbers times exp(j m theta_i)."""
    rope = RotaryEmbedding(d_head=16, interleaved=True)
    x = torch.randn(7, 16, dtype=torch.float64)
    positions = torch.arange(7)
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    z = torch.view_as_complex(x.reshape(7, 8, 2).contiguous())
    expected = torch.view_as_real(
        z * torch.polar(torch.ones(7, 8, dtype=torch.float64), positions[:, None] * theta)
    ).reshape(7, 16)
    assert torch.allclose(rope.apply_rotary(x, positions), expected, atol=1e-12)


def test_rope_layouts_differ_by_a_permutation():
    half, inter = RotaryEmbedding(8), RotaryEmbedding(8, interleaved=True)
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # half layout -> interleaved layout
    x = torch.randn(10, 8, dtype=torch.float64)
    assert torch.allclose(half.apply_rotary(x)[:, perm], inter.apply_rotary(x[:, perm]), atol=1e-12)


@pytest.mark.slow  # importing transformers takes a few seconds
def test_rope_matches_hugging_face_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    hf_rope = LlamaRotaryEmbedding(config)
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 40, 16), torch.randn(2, 4, 40, 16)  # (B, n_heads, T, d_head)
    position_ids = torch.arange(40)[None].expand(2, 40)
    cos, sin = hf_rope(q, position_ids)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_q, ours_k = RotaryEmbedding(16)(q, k)
    assert torch.allclose(ours_q, hf_q, atol=2e-5) and torch.allclose(ours_k, hf_k, atol=2e-5)


def test_rope_positions_shape_checks_and_batched_positions():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="expected d_head 8"):
        rope.apply_rotary(torch.randn(5, 6))
    with pytest.raises(ValueError, match="4 positions for a sequence of length 5"):
        rope.apply_rotary(x, torch.arange(4))
    with pytest.raises(ValueError, match="d_head must be even"):
        RotaryEmbedding(7)
    pos = torch.tensor([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]])  # per-sequence positions (B, T)
    y = rope.apply_rotary(x, pos)
    assert torch.allclose(y[1], rope.apply_rotary(x[1], torch.arange(10, 15)))
