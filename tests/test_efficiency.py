"""Tests of the efficiency modules of companion.analysis (quantization, memory, attention_cost, measure,
distillation, energy) against PyTorch's own quantiser and attention."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.analysis.attention_cost import (
    ATTENTION_PATHS,
    attention_call,
    attention_cost,
    attention_inputs,
    online_softmax,
    tiled_attention,
)
from companion.analysis.distillation import DistillationModel, distillation_loss
from companion.analysis.energy import training_footprint
from companion.analysis.measure import best_time, profiler_peak_bytes, time_call
from companion.analysis.memory import MODEL_SHAPES, kv_cache_table, model_size_bytes
from companion.analysis.quantization import dequantize, qparams, quantize, quantize_dynamic_int8
from companion.inference.generation import kv_cache_bytes
from companion.nn import GPT, GPTConfig, KVCache
from companion.nn.attention import scaled_dot_product_attention


def torch_observer_qparams(x, symmetric, per_channel=False):
    import warnings

    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if per_channel:
            obs = PerChannelMinMaxObserver(
                ch_axis=0,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
            )
        else:
            obs = MinMaxObserver(
                dtype=torch.qint8, qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
            )
        obs(x)
        return obs.calculate_qparams()


@pytest.mark.parametrize("symmetric", [True, False])
def test_qparams_and_integers_match_pytorch(symmetric):
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.02
    scale, zp = torch_observer_qparams(x, symmetric)
    p = qparams(x, symmetric=symmetric)
    assert torch.allclose(p.scale, scale.reshape(()), rtol=1e-6)
    assert int(p.zero_point) == int(zp)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_tensor(x, float(scale), int(zp), torch.qint8)
    assert torch.equal(quantize(x, p), ref.int_repr())
    assert torch.allclose(dequantize(quantize(x, p), p), ref.dequantize(), atol=1e-7)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_qparams_match_pytorch(symmetric):
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.01, 1, 16)[:, None]
    scale, zp = torch_observer_qparams(x, symmetric, per_channel=True)
    p = qparams(x, symmetric=symmetric, axis=0)
    assert torch.allclose(p.scale, scale, rtol=1e-6)
    assert torch.equal(p.zero_point, zp.to(torch.int64))


@pytest.mark.parametrize("n_bits", [8, 4])
def test_error_bound_half_scale(n_bits):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    for symmetric in (True, False):
        p = qparams(x, n_bits=n_bits, symmetric=symmetric)
        err = (x - dequantize(quantize(x, p), p)).abs()
        assert err.max() <= p.scale / 2 * (1 + 1e-5)


def test_zero_is_exact_and_bad_input():
    x = torch.tensor([0.0, 0.3, 1.7, 2.5])  # all positive: range widened to include 0
    p = qparams(x, symmetric=False)
    assert dequantize(quantize(torch.zeros(1), p), p).item() == 0.0
    with pytest.raises(ValueError, match="n_bits"):
        qparams(x, n_bits=3)
    with pytest.raises(ValueError, match="floating-point"):
        qparams(torch.arange(4))


def small_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, block_size=32, n_layers=2, n_heads=2, d_model=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_quantize_dynamic_int8_weights_and_outputs():
    model = small_gpt()
    q = quantize_dynamic_int8(model)
    assert q is not model and isinstance(model.blocks[0].ffn.fc_in, nn.Linear)  # original untouched
    W = model.blocks[0].ffn.fc_in.weight.detach()
    Wq = q.blocks[0].ffn.fc_in.weight()
    assert torch.equal(Wq.int_repr(), quantize(W, qparams(W)))
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(idx).logits, q(idx).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert (a - b).abs().max() > 0  # really quantised


def test_model_size_bytes():
    model = small_gpt()
    n = sum(p.numel() for p in model.parameters())  # tied weight counted once
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_size_bytes(model) == 4 * n + buffers
    q = quantize_dynamic_int8(model)
    assert model_size_bytes(q) < 0.45 * model_size_bytes(model)
    lin = nn.Linear(100, 50)
    assert model_size_bytes(lin) == 4 * (100 * 50 + 50)


def test_kv_cache_formula_matches_model_cache():
    model = small_gpt()
    with torch.no_grad():
        cache = model(torch.zeros(3, 20, dtype=torch.long), kv_cache=KVCache.for_model(model, 3, max_len=20)).kv_cache
    measured = sum(t.numel() * t.element_size() for layer in cache for t in layer.keys_values())
    assert measured == kv_cache_bytes(2, 20, 32, batch_size=3, bytes_per_value=4)


def test_kv_cache_table_gpt3():
    rows = kv_cache_table([2048], bytes_per_value=2)
    gpt3 = next(r for r in rows if r["model"] == "GPT-3 175B")
    assert gpt3["bytes"] == 2 * 96 * 2048 * 12288 * 2  # about 9 GiB
    assert len(rows) == len(MODEL_SHAPES)


def test_online_softmax():
    x = torch.randn(4, 7, 103, generator=torch.Generator().manual_seed(3)) * 20
    for b in (1, 10, 103, 500):
        assert torch.allclose(online_softmax(x, b), torch.softmax(x, dim=-1), atol=1e-6)
    with pytest.raises(ValueError, match="block_size"):
        online_softmax(x, 0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block", [1, 16, 33, 200])
def test_tiled_attention_matches_pytorch(causal, block):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(tiled_attention(q, k, v, block, is_causal=causal), ref, atol=1e-5)


def test_tiled_attention_rectangular_causal_and_value_width():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 7, 8, generator=g)  # 7 new queries after 13 cached keys
    k = torch.randn(2, 20, 8, generator=g)
    v = torch.randn(2, 20, 5, generator=g)
    ref = scaled_dot_product_attention(q, k, v, is_causal=True)
    out = tiled_attention(q, k, v, 6, is_causal=True)
    assert out.shape == (2, 7, 5) and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        tiled_attention(q, k[..., :4], v)


def test_distillation_loss():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    tau = 3.0
    p_t = torch.softmax(t / tau, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / tau, -1))).sum(-1).mean()
    assert torch.allclose(distillation_loss(s, t, tau), kl * tau**2, atol=1e-6)
    assert distillation_loss(t, t, tau).abs() < 1e-6
    y = torch.randint(0, 11, (3, 5), generator=g)
    mixed = distillation_loss(s, t, tau, y, alpha=0.25)
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    assert torch.allclose(mixed, 0.25 * kl * tau**2 + 0.75 * ce, atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(s, t, tau, alpha=0.5)


def test_distillation_model_trains_student_only():
    teacher, student = small_gpt(0), small_gpt(1)
    wrapper = DistillationModel(student, teacher, temperature=2.0)
    idx = torch.randint(0, 40, (2, 16))
    out = wrapper(idx, idx)
    assert out.logits.shape == (2, 16, 40) and wrapper(idx).loss is None
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    wrapper.train()
    assert student.training and not teacher.training


def test_training_footprint_gpt3():
    f = training_footprint(3.14e23, peak_flops_per_s=312e12, utilisation=0.4, power_w=400, pue=1.1, kg_co2_per_kwh=0.4)
    hours = 3.14e23 / (312e12 * 0.4) / 3600
    assert math.isclose(f["gpu_hours"], hours)
    assert math.isclose(f["kwh"], hours * 0.4 * 1.1)
    assert math.isclose(f["tonnes_co2"], hours * 0.4 * 1.1 * 0.4 / 1000)
    with pytest.raises(ValueError, match="utilisation"):
        training_footprint(1e20, utilisation=1.5)


def test_time_call():
    assert time_call(lambda: None, repeats=3) >= 0
    with pytest.raises(ValueError):
        time_call(lambda: None, repeats=0)


# --------------------------------------------------------------------------- attention cost


@pytest.mark.parametrize("causal", [False, True])
def test_attention_call_paths_agree(causal):
    q, k, v = attention_inputs(40, batch=2, n_heads=3, d_head=8, seed=1)
    assert q.shape == (2, 3, 40, 8) and not torch.equal(q, k)
    explicit, fused = (attention_call(p, causal)(q, k, v) for p in ATTENTION_PATHS)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown attention path"):
        attention_call("flash")
    with pytest.raises(ValueError, match="positive"):
        attention_inputs(0)


def test_best_time_is_per_call_and_validates():
    calls = []
    assert 0 <= best_time(lambda: calls.append(1), repeats=2, min_time=0.01) < 0.01
    assert len(calls) > 3  # warm-up, then short calls looped within each round
    with pytest.raises(ValueError, match="repeats"):
        best_time(lambda: None, repeats=0)


def test_profiler_peak_bytes_sees_the_attention_matrices():
    q, k, v = attention_inputs(256, n_heads=2, d_head=16)
    matrix = 2 * 256 * 256 * 4  # one (1, 2, 256, 256) float32 matrix
    explicit = profiler_peak_bytes(lambda: attention_call("explicit")(q, k, v))
    fused = profiler_peak_bytes(lambda: attention_call("fused")(q, k, v))
    assert 1.9 * matrix < explicit < 2.5 * matrix  # scores and weights live at the same time
    assert fused < 0.5 * matrix  # the fused kernel never stores an (L, L) matrix
    assert profiler_peak_bytes(lambda: None) == 0


@pytest.mark.usefixtures("restore_threads")
def test_attention_cost_rows_and_threads_restored():
    before, seen = torch.get_num_threads(), []
    rows = attention_cost([16, 32], n_heads=2, d_head=8, repeats=1, min_time=0.001, threads=1, on_row=seen.append)
    assert torch.get_num_threads() == before
    assert [(r["seq_len"], r["path"]) for r in rows] == [
        (16, "explicit"),
        (16, "fused"),
        (32, "explicit"),
        (32, "fused"),
    ]
    assert seen == rows
    assert all(r["seconds"] > 0 and r["gflops_per_s"] > 0 for r in rows)
    assert rows[2]["matrix_bytes"] == 2 * 32 * 32 * 4
    with pytest.raises(ValueError, match="lengths"):
        attention_cost([])
    with pytest.raises(ValueError, match="lengths"):
        attention_cost([16, 0])
