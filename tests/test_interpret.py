"""Tests of companion.analysis.interpret: tracing, head scores, logit lens, probes, WEAT, memorisation."""

import pytest
import torch
import torch.nn.functional as F

from companion.analysis.baselines import fit_linear_probe
from companion.analysis.interpret import (
    continuation_match,
    induction_scores,
    logit_lens,
    previous_token_scores,
    sequence_losses,
    trace,
    weat_bootstrap_ci,
    weat_effect_size,
    weat_permutation_test,
)
from companion.analysis.metrics import accuracy
from companion.nn import GPT, Encoder, EncoderConfig, GPTConfig


def small_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=30, block_size=32, n_layers=3, n_heads=2, d_model=16)).eval()


def test_trace_gpt_matches_model_and_weights():
    model = small_gpt()
    idx = torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    tr = trace(model, idx)
    assert tr.residuals.shape == (4, 2, 12, 16)
    assert tr.attentions.shape == (3, 2, 2, 12, 12)
    with torch.no_grad():
        ref = model(idx).logits
    assert torch.allclose(tr.output.logits, ref, atol=1e-6)
    # residual stream: embeddings first, final LN of the last one gives the logits
    with torch.no_grad():
        emb = model.tok_emb(idx) + model.pos_emb(torch.arange(12))
        assert torch.allclose(tr.residuals[0], emb)
        assert torch.allclose(model.lm_head(model.ln_f(tr.residuals[-1])), ref, atol=1e-6)
    # weights: rows sum to 1, causal, and equal to the explicit attention of block 0
    assert torch.allclose(tr.attentions.sum(-1), torch.ones(3, 2, 2, 12))
    assert tr.attentions.triu(1).abs().max() == 0
    with torch.no_grad():
        w0 = model.blocks[0].attn(model.blocks[0].ln_attn(emb), is_causal=True, need_weights=True).weights
    assert torch.allclose(tr.attentions[0], w0, atol=1e-6)
    # hooks are removed
    assert not model.blocks[0].attn._forward_pre_hooks and not model.blocks[0]._forward_hooks


def test_trace_encoder_with_padding():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(vocab_size=30, block_size=16, n_layers=2, n_heads=2, d_model=16)).eval()
    idx = torch.randint(0, 30, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    tr = trace(enc, idx, attention_mask=mask)
    assert torch.allclose(tr.output, enc(idx, attention_mask=mask), atol=1e-6)
    assert tr.attentions[:, 1, :, :, 5:].abs().max() == 0  # padding gets no weight
    with pytest.raises(ValueError, match="blocks"):
        trace(torch.nn.Linear(3, 3), idx)


def test_previous_token_and_induction_scores():
    T, P = 10, 4
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    assert previous_token_scores(prev).item() == pytest.approx(1.0)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    assert previous_token_scores(uniform).item() == pytest.approx((1 / torch.arange(2, T + 1)).mean().item())
    ind = torch.zeros(T, T)
    ind[:, 0] = 1
    t = torch.arange(P, T)
    ind[t] = 0
    ind[t, t - P + 1] = 1
    assert induction_scores(ind, P).item() == pytest.approx(1.0)
    assert induction_scores(prev, P).item() == pytest.approx(0.0)
    batched = torch.stack([prev, ind])[None]  # (1, 2, T, T)
    assert previous_token_scores(batched).shape == (1, 2)
    with pytest.raises(ValueError):
        induction_scores(ind, 1)
    with pytest.raises(ValueError):
        previous_token_scores(torch.zeros(3, 4))


def test_logit_lens_last_layer_is_model_loss():
    model = small_gpt()
    idx = torch.randint(0, 30, (3, 13), generator=torch.Generator().manual_seed(1))
    tr = trace(model, idx[:, :-1])
    lens = logit_lens(model, tr.residuals, idx[:, 1:])
    assert lens.shape == (4,)
    with torch.no_grad():
        assert torch.isclose(lens[-1], model(idx[:, :-1], idx[:, 1:]).loss, atol=1e-6)
    with pytest.raises(ValueError):
        logit_lens(model, tr.residuals, idx)


def test_linear_probe_learns_separable_and_not_random():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 10, generator=g)
    y = (x[:, 3] + 0.5 * x[:, 7] > 0).long()
    probe = fit_linear_probe(x[:300], y[:300], l2=1e-3)
    assert accuracy(probe(x[300:]).argmax(-1), y[300:]) > 0.93
    y_rand = torch.randint(0, 2, (400,), generator=g)
    assert accuracy(fit_linear_probe(x[:300], y_rand[:300], l2=1e-3)(x[300:]).argmax(-1), y_rand[300:]) < 0.65
    with pytest.raises(ValueError, match="n_classes"):
        fit_linear_probe(x, y, n_classes=1)


def test_weat_effect_size_and_permutation():
    g = torch.Generator().manual_seed(3)
    a_dir, b_dir = torch.zeros(20), torch.zeros(20)
    a_dir[0], b_dir[1] = 1, 1
    A = a_dir + 0.1 * torch.randn(6, 20, generator=g)
    B = b_dir + 0.1 * torch.randn(6, 20, generator=g)
    X = a_dir + 0.5 * torch.randn(8, 20, generator=g)
    Y = b_dir + 0.5 * torch.randn(8, 20, generator=g)
    d = weat_effect_size(X, Y, A, B)
    assert d > 1.0 and weat_effect_size(Y, X, A, B) == pytest.approx(-d)
    assert weat_permutation_test(X, Y, A, B, 2000) < 0.01
    assert weat_permutation_test(Y, X, A, B, 2000) > 0.9

    # hand computation of d
    def s(w):
        w, a, b = (F.normalize(t, dim=-1) for t in (w, A, B))
        return (w @ a.T).mean(1) - (w @ b.T).mean(1)

    sx, sy = s(X), s(Y)
    assert d == pytest.approx(((sx.mean() - sy.mean()) / torch.cat([sx, sy]).std()).item(), rel=1e-5)
    with pytest.raises(ValueError):
        weat_effect_size(X, Y[:, :5], A, B)


def test_weat_bootstrap_ci():
    g = torch.Generator().manual_seed(5)
    a_dir, b_dir = torch.zeros(20), torch.zeros(20)
    a_dir[0], b_dir[1] = 1, 1
    A = a_dir + 0.1 * torch.randn(6, 20, generator=g)
    B = b_dir + 0.1 * torch.randn(6, 20, generator=g)
    X = a_dir + 0.5 * torch.randn(8, 20, generator=g)
    Y = b_dir + 0.5 * torch.randn(8, 20, generator=g)
    d = weat_effect_size(X, Y, A, B)
    lo, hi = weat_bootstrap_ci(X, Y, A, B, n_boot=500, seed=0)
    assert 0 < lo < d < hi  # a strong association: the interval excludes 0 and holds the estimate
    assert (lo, hi) == weat_bootstrap_ci(X, Y, A, B, n_boot=500, seed=0)  # deterministic under its seed
    lo_t, hi_t = weat_bootstrap_ci(X, Y, A, B, n_boot=500, seed=0, resample_attributes=False)
    assert lo_t < d < hi_t
    # targets with no association: the interval holds 0
    X0, Y0 = (0.5 * torch.randn(8, 20, generator=g) + a_dir + b_dir for _ in range(2))
    lo0, hi0 = weat_bootstrap_ci(X0, Y0, A, B, n_boot=500, seed=1)
    assert lo0 < 0 < hi0
    # with every word resampled, a 0.8 interval is narrower than a 0.95 one
    lo8, hi8 = weat_bootstrap_ci(X, Y, A, B, n_boot=500, ci=0.8, seed=0)
    assert lo <= lo8 and hi8 <= hi
    with pytest.raises(ValueError):
        weat_bootstrap_ci(X, Y, A, B, n_boot=0)
    with pytest.raises(ValueError):
        weat_bootstrap_ci(X, Y, A, B, ci=1.5)
    with pytest.raises(ValueError):
        weat_bootstrap_ci(X, Y[:, :5], A, B)


def test_memorisation_helpers():
    model = small_gpt()
    data = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(4))
    exact, chars = continuation_match(model, data, [0, 50, 100], prefix_len=8, cont_len=8)
    assert 0 <= exact <= chars <= 1
    # a sequence that IS the model's own greedy continuation is matched exactly
    from companion.inference.generation import generate

    own = generate(model, data[:8], 8, temperature=0.0)
    assert continuation_match(model, own, [0], 8, 8) == (1.0, 1.0)
    losses = sequence_losses(model, data, [0, 10], 16)
    with torch.no_grad():
        ref = model(data[:16][None], data[1:17][None]).loss
    assert losses.shape == (2,) and torch.isclose(losses[0], ref, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        continuation_match(model, data, [195], 8, 8)
