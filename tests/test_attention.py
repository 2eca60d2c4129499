"""companion.nn.attention checked against PyTorch's own attention, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.nn.attention import (
    AttentionOutput,
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from companion.nn.kv_cache import LayerKVCache

DT = torch.float64
TOL = dict(atol=1e-10, rtol=0.0)


def _qkv(*batch, L=5, S=7, d_k=8, d_v=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, L, d_k, generator=g, dtype=DT)
    k = torch.randn(*batch, S, d_k, generator=g, dtype=DT)
    v = torch.randn(*batch, S, d_v, generator=g, dtype=DT)
    return q, k, v


def _random_bool_mask(*shape, seed=1):
    """A random keep-mask with at least one True per query row (no fully masked rows)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(*shape, generator=g) > 0.4
    m[..., 0] = True
    return m


# ------------------------------------------------------------------------------------ masks


def test_causal_mask_square_is_lower_triangular():
    assert causal_mask(4).dtype == torch.bool
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


@pytest.mark.parametrize("L,S", [(1, 5), (3, 7), (6, 6)])
def test_causal_mask_is_bottom_right_aligned(L, S):
    m = causal_mask(L, S)
    assert m.shape == (L, S)
    for i in range(L):
        for j in range(S):
            assert bool(m[i, j]) == (j <= i + S - L)
    assert m[-1].all()  # the last query sees every key


def test_causal_mask_matches_pytorch_lower_right_bias():
    bias = pytest.importorskip("torch.nn.attention.bias")
    for L, S in [(3, 7), (5, 5), (1, 4)]:
        ref = bias.causal_lower_right(L, S)._materialize()
        assert torch.equal(causal_mask(L, S), ref)


def test_padding_mask_from_attention_mask_and_lengths():
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    m = padding_mask(am)
    assert m.shape == (2, 1, 1, 4) and m.dtype == torch.bool
    assert torch.equal(m[:, 0, 0], am.bool())
    assert torch.equal(padding_mask([3, 2], max_len=4), m)
    assert torch.equal(padding_mask(torch.tensor([3, 2])), m[..., :3])


def test_padding_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="0 and 1"):
        padding_mask(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="exceeds max_len"):
        padding_mask([5], max_len=3)
    with pytest.raises(ValueError, match="shape"):
        padding_mask(torch.ones(1, 1, 3))


# ------------------------------------------------------------- scaled dot-product attention


def test_sdpa_no_mask_equals_pytorch():
    q, k, v = _qkv(2, 3)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), **TOL)


def test_sdpa_written_out_by_hand():
    q, k, v = _qkv(L=3, S=4, d_k=2, d_v=2)
    by_hand = torch.softmax(q @ k.T / math.sqrt(2), dim=-1) @ v
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), by_hand, **TOL)


def test_sdpa_square_causal_equals_pytorch():
    q, k, v = _qkv(2, 4, L=6, S=6)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)
    mask = causal_mask(6)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), ours, **TOL)


@pytest.mark.parametrize("L,S", [(3, 7), (1, 9), (4, 5)])
def test_sdpa_is_causal_with_different_lengths(L, S):
    """PyTorch's is_causal is top-left aligned; ours is bottom-right, so compare via the mask."""
    q, k, v = _qkv(2, 3, L=L, S=S)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(L, S))
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (2, 1, 1, 7)])
def test_sdpa_boolean_mask_equals_pytorch(mask_shape):
    q, k, v = _qkv(2, 3, L=5, S=7)
    mask = _random_bool_mask(*mask_shape)
    ours = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)


def test_sdpa_additive_mask_equals_pytorch():
    q, k, v = _qkv(2, 3, L=5, S=7)
    g = torch.Generator().manual_seed(3)
    add = torch.randn(2, 3, 5, 7, generator=g, dtype=DT)  # an arbitrary bias (like ALiBi)
    add = add.masked_fill(~_random_bool_mask(2, 3, 5, 7), -math.inf)  # and some -inf
    ours = scaled_dot_product_attention(q, k, v, add)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=add), **TOL)


def test_sdpa_causal_combined_with_padding_mask():
    q, k, v = _qkv(2, 3, L=6, S=6)
    pad = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))
    ours = scaled_dot_product_attention(q, k, v, pad, is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=pad & causal_mask(6))
    torch.testing.assert_close(ours, ref, **TOL)


def test_sdpa_weights_are_a_distribution_and_give_the_output():
    q, k, v = _qkv(2, 3, L=5, S=7)
    mask = _random_bool_mask(5, 7)
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert w.shape == (2, 3, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5, dtype=DT), **TOL)
    assert (w[..., ~mask] == 0).all()
    assert (w >= 0).all()
    torch.testing.assert_close(w @ v, out, **TOL)


def test_sdpa_fully_masked_row_is_zero_and_finite():
    q, k, v = _qkv(2, L=4, S=5)
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    mask = _random_bool_mask(4, 5)
    mask[2] = False  # query 2 may attend to nothing
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[:, 2] == 0).all() and (w[:, 2] == 0).all()
    rows = [0, 1, 3]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out[:, rows], ref[:, rows], **TOL)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, 2] == 0).all()  # the dead row depends on nothing


def test_sdpa_fully_masked_row_with_additive_mask():
    q, k, v = _qkv(L=3, S=4)
    add = torch.zeros(3, 4, dtype=DT)
    add[1] = -math.inf
    out = scaled_dot_product_attention(q, k, v, add)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


def test_sdpa_gradcheck():
    q, k, v = _qkv(1, 2, L=3, S=4, d_k=3, d_v=2)
    mask = _random_bool_mask(3, 4)
    mask[1] = False
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask), inputs)


def test_sdpa_dropout_is_reproducible_and_unbiased():
    q, k, v = _qkv(L=4, S=6)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(7))
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
    clean = scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(a, clean)
    g = torch.Generator().manual_seed(0)
    mean = sum(scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=g) for _ in range(4000)) / 4000
    torch.testing.assert_close(mean, clean, atol=0.1, rtol=0.0)  # inverted dropout keeps the mean


def test_sdpa_shape_errors_name_the_shapes():
    q = torch.zeros(2, 4, 10, 64, dtype=DT)
    k = torch.zeros(2, 4, 12, 32, dtype=DT)
    with pytest.raises(ValueError) as e:
        scaled_dot_product_attention(q, k, k)
    assert str(e.value) == "q has d_k=64 but k has d_k=32: q (2, 4, 10, 64), k (2, 4, 12, 32)"
    k = torch.zeros(2, 4, 12, 64, dtype=DT)
    with pytest.raises(ValueError, match=r"k has 12 keys but v has 11 values: k \(2, 4, 12, 64\), v \(2, 4, 11, 64\)"):
        scaled_dot_product_attention(q, k, torch.zeros(2, 4, 11, 64, dtype=DT))
    with pytest.raises(ValueError, match=r"do not broadcast: q \(2, 4, 10, 64\), k \(3, 4, 12, 64\)"):
        scaled_dot_product_attention(q, torch.zeros(3, 4, 12, 64, dtype=DT), torch.zeros(3, 4, 12, 64, dtype=DT))
    with pytest.raises(ValueError, match=r"mask of shape \(10, 11\) does not broadcast .*\(2, 4, 10, 12\)"):
        scaled_dot_product_attention(q, k, k, torch.ones(10, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, k, dropout_p=1.0)


# --------------------------------------------------------------------- multi-head attention


def _pair(d_model=16, n_heads=4, bias=True, seed=0):
    """Our layer and torch.nn.MultiheadAttention with the same weights."""
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True, dtype=DT)
    with torch.no_grad():  # give the biases non-zero values so they are tested too
        if bias:
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    ours = MultiHeadAttention(d_model, n_heads, bias=bias).to(DT)
    W, d = ref.in_proj_weight, d_model
    with torch.no_grad():
        for i, lin in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            lin.weight.copy_(W[i * d : (i + 1) * d])
            if bias:
                lin.bias.copy_(ref.in_proj_bias[i * d : (i + 1) * d])
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        if bias:
            ours.out_proj.bias.copy_(ref.out_proj.bias)
    return ours.eval(), ref.eval()


def _x(B=2, T=6, d=16, seed=5):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_self_attention_equals_pytorch(use_sdpa, bias):
    ours, ref = _pair(bias=bias)
    ours.use_sdpa = use_sdpa
    x = _x()
    expected, expected_w = ref(x, x, x, average_attn_weights=False)
    got = ours(x, need_weights=True)
    assert isinstance(got, AttentionOutput)
    torch.testing.assert_close(got.out, expected, **TOL)
    torch.testing.assert_close(got.weights, expected_w, **TOL)
    torch.testing.assert_close(ours(x).out, expected, **TOL)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_mha_padding_and_causal_equal_pytorch(use_sdpa):
    ours, ref = _pair()
    ours.use_sdpa = use_sdpa
    x = _x()
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # HF: 1 = real token
    # nn.MultiheadAttention: True = *ignore* (the opposite convention) for both masks
    expected, _ = ref(x, x, x, key_padding_mask=am == 0)
    torch.testing.assert_close(ours(x, key_padding_mask=am).out, expected, **TOL)
    torch.testing.assert_close(ours(x, key_padding_mask=am.bool()).out, expected, **TOL)

    not_allowed = ~causal_mask(6)
    expected, _ = ref(x, x, x, attn_mask=not_allowed)
    torch.testing.assert_close(ours(x, is_causal=True).out, expected, **TOL)
    torch.testing.assert_close(ours(x, attn_mask=causal_mask(6)).out, expected, **TOL)

    expected, _ = ref(x, x, x, attn_mask=not_allowed, key_padding_mask=am == 0)
    torch.testing.assert_close(ours(x, key_padding_mask=am, is_causal=True).out, expected, **TOL)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_mha_cross_attention_equals_pytorch(use_sdpa):
    ours, ref = _pair()
    ours.use_sdpa = use_sdpa
    x, ctx = _x(T=4), _x(T=9, seed=6)
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    expected, w = ref(x, ctx, ctx, key_padding_mask=am == 0, average_attn_weights=False)
    got = ours(x, ctx, key_padding_mask=am, need_weights=True)
    torch.testing.assert_close(got.out, expected, **TOL)
    torch.testing.assert_close(got.weights, w, **TOL)
    assert got.weights.shape == (2, 4, 4, 9)


def test_mha_both_paths_agree_with_every_mask():
    ours, _ = _pair()
    x = _x()
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]])
    bias = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(2), dtype=DT)  # per-head additive
    kwargs = dict(attn_mask=bias, key_padding_mask=am, is_causal=True)
    fused = ours(x, **kwargs).out
    ours.use_sdpa = False
    explicit = ours(x, **kwargs).out
    torch.testing.assert_close(fused, explicit, **TOL)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_mha_fully_masked_row_is_finite(use_sdpa):
    ours, _ = _pair()
    ours.use_sdpa = use_sdpa
    x = _x().requires_grad_(True)
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # left padding
    res = ours(x, key_padding_mask=am, is_causal=True, need_weights=not use_sdpa)
    assert torch.isfinite(res.out).all()
    # batch 1, queries 0 and 1 see only padding: the heads give zeros, so out = out_proj.bias
    torch.testing.assert_close(res.out[1, :2], ours.out_proj.bias.expand(2, -1), **TOL)
    if res.weights is not None:
        assert (res.weights[1, :, :2] == 0).all()
    res.out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_token_by_token_equals_full_causal_pass(use_sdpa):
    ours, _ = _pair()
    ours.use_sdpa = use_sdpa
    x = _x(T=7)
    full = ours(x, is_causal=True).out
    cache, outs = LayerKVCache(2, 4, 7, 4, dtype=DT), []
    for t in range(7):
        outs.append(ours(x[:, t : t + 1], is_causal=True, kv_cache=cache).out)
    assert cache.length == 7 and cache.keys_values()[0].shape == (2, 4, 7, 4)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
    # a prompt of 3 tokens, then the rest one at a time
    cache = LayerKVCache(2, 4, 7, 4, dtype=DT)
    outs = [ours(x[:, :3], is_causal=True, kv_cache=cache).out]
    for t in range(3, 7):
        outs.append(ours(x[:, t : t + 1], is_causal=True, kv_cache=cache).out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)


def test_kv_cache_with_padding_mask_over_all_keys():
    ours, _ = _pair()
    x = _x(T=5)
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]])
    full = ours(x, key_padding_mask=am, is_causal=True).out
    cache = LayerKVCache(2, 4, 5, 4, dtype=DT)
    ours(x[:, :4], key_padding_mask=am[:, :4], is_causal=True, kv_cache=cache)
    last = ours(x[:, 4:], key_padding_mask=am, is_causal=True, kv_cache=cache).out
    torch.testing.assert_close(last, full[:, 4:], **TOL)


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    drop = MultiHeadAttention(16, 4, dropout=0.5).to(DT)
    clean = MultiHeadAttention(16, 4).to(DT)
    clean.load_state_dict(drop.state_dict())
    x = _x()
    drop.eval()
    for use_sdpa in (True, False):
        drop.use_sdpa = clean.use_sdpa = use_sdpa
        torch.testing.assert_close(drop(x).out, clean(x).out, **TOL)
    drop.train()
    assert not torch.allclose(drop(x).out, clean(x).out)
    drop.use_sdpa = False
    assert not torch.allclose(drop(x).out, clean(x).out)


def test_mha_constructor_and_shape_errors():
    with pytest.raises(ValueError, match=r"d_model=10 .* n_heads=3"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(16, 4)
    assert [n for n, _ in mha.named_children()] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    with pytest.raises(ValueError, match=r"\(B, T, d_model=16\), got \(2, 6, 8\)"):
        mha(torch.zeros(2, 6, 8))
    with pytest.raises(ValueError, match=r"context must be .* got \(3, 5, 16\)"):
        mha(torch.zeros(2, 6, 16), torch.zeros(3, 5, 16))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, S_total\) = \(2, 6\)"):
        mha(torch.zeros(2, 6, 16), key_padding_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 5\)"):
        mha(torch.zeros(2, 6, 16), attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_cache must be a LayerKVCache"):
        mha(torch.zeros(2, 1, 16), kv_cache=(torch.zeros(2, 4, 3, 4), torch.zeros(2, 4, 3, 4)))
    with pytest.raises(ValueError, match=r"kv_cache holds .* \(2, 4, S, 8\) keys; this layer needs \(2, 4, S, 4\)"):
        mha(torch.zeros(2, 1, 16), kv_cache=LayerKVCache(2, 4, 3, 8))


def test_split_and_merge_heads_round_trip():
    x = _x()
    h = split_heads(x, 4)
    assert h.shape == (2, 4, 6, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8], atol=0.0, rtol=0.0)  # head 1 = features 4..7
    torch.testing.assert_close(merge_heads(h), x, atol=0.0, rtol=0.0)
