"""Tests for companion.inference.generation: filters, sampling statistics, the KV-cache loop, and
agreement with `transformers` (logits warpers and `generate`)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from companion.inference.generation import (
    generate,
    kv_cache_bytes,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from companion.nn.kv_cache import KVCache, LayerKVCache

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- helpers


def _draws(logits: torch.Tensor, n: int, seed: int, **kw) -> torch.Tensor:
    """n independent draws from one row of logits (V,), using one batched call."""
    g = torch.Generator().manual_seed(seed)
    batch = logits.expand(n, -1)  # (n, V)
    return sample_next_token(batch, generator=g, **kw).squeeze(1)  # (n,)


def _chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness-of-fit p-value of samples against probs, over probs' support."""
    support = probs > 0
    counts = torch.bincount(samples, minlength=probs.numel()).double()[support]
    assert counts.sum() == samples.numel()  # no draw fell outside the support
    expected = probs.double()[support]
    expected = expected / expected.sum() * samples.numel()  # exact sum for scipy's check
    return float(chisquare(counts.numpy(), expected.numpy()).pvalue)


@pytest.fixture(scope="module")
def row_logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(30, generator=g) * 1.5  # (V,), a spread-out distribution


@pytest.fixture(scope="module")
def tiny_gpt():
    from companion.nn import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=24, n_layers=2, n_heads=2, d_model=32)
    model = GPT(cfg)
    with torch.no_grad():  # larger weights than the default init: decisive, varied logits
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


# ----------------------------------------------------------------------------- filters


def test_top_k_keeps_exactly_the_k_largest(row_logits):
    out = top_k_filter(row_logits, 5)
    kept = torch.isfinite(out)
    assert int(kept.sum()) == 5
    assert set(kept.nonzero().flatten().tolist()) == set(row_logits.topk(5).indices.tolist())
    assert torch.equal(out[kept], row_logits[kept])  # kept logits unchanged
    assert torch.equal(top_k_filter(row_logits, 30), row_logits)  # k = V keeps all
    assert torch.equal(top_k_filter(row_logits, 1000), row_logits)  # k > V keeps all


def test_top_p_keeps_the_smallest_set_reaching_p(row_logits):
    probs = row_logits.softmax(-1)
    for p in [0.05, 0.3, 0.5, 0.9, 0.99]:
        kept = torch.isfinite(top_p_filter(row_logits, p))
        n = int(kept.sum())
        top = probs.sort(descending=True).values
        assert top[:n].sum() >= p - 1e-6  # the set reaches p ...
        assert n == 1 or top[: n - 1].sum() < p  # ... and one fewer token would not
        assert set(kept.nonzero().flatten().tolist()) == set(probs.topk(n).indices.tolist())


def test_top_p_always_keeps_the_top_token_and_p1_keeps_all(row_logits):
    out = top_p_filter(row_logits, 1e-9)
    assert torch.isfinite(out).sum() == 1 and torch.isfinite(out[row_logits.argmax()])
    assert torch.equal(top_p_filter(row_logits, 1.0), row_logits)


@pytest.mark.parametrize("k", [1, 3, 10, 99])
def test_top_k_matches_transformers_warper(k):
    scores = torch.randn(64, 100, generator=torch.Generator().manual_seed(k))
    ref = TopKLogitsWarper(top_k=k)(None, scores)
    assert torch.equal(top_k_filter(scores, k), ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 0.95])
def test_top_p_matches_transformers_warper(p):
    scores = torch.randn(64, 100, generator=torch.Generator().manual_seed(7)) * 2
    ref = TopPLogitsWarper(top_p=p)(None, scores)
    ours = top_p_filter(scores, p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    assert torch.equal(ours[torch.isfinite(ours)], ref[torch.isfinite(ref)])


def test_full_sampling_distribution_matches_transformers_pipeline():
    """temperature -> top-k -> top-p, as transformers' sampling applies them."""
    scores = torch.randn(16, 50, generator=torch.Generator().manual_seed(3)) * 2
    t, k, p = 0.7, 12, 0.85
    ref = scores
    for warper in (TemperatureLogitsWarper(t), TopKLogitsWarper(k), TopPLogitsWarper(p)):
        ref = warper(None, ref)
    ours = top_p_filter(top_k_filter(scores / t, k), p)
    torch.testing.assert_close(ours.softmax(-1), ref.softmax(-1))


# ----------------------------------------------------------------------------- sampling statistics

N_DRAWS = 40_000


def test_top_k_samples_stay_in_set_and_follow_renormalised_probs(row_logits):
    k = 6
    samples = _draws(row_logits, N_DRAWS, seed=0, top_k=k)
    allowed = set(row_logits.topk(k).indices.tolist())
    assert set(samples.unique().tolist()) <= allowed  # never outside the top-k set
    assert set(samples.unique().tolist()) == allowed  # and every member is drawn
    target = top_k_filter(row_logits, k).softmax(-1)  # p_i / sum_{V_k} p_j
    assert _chi2_pvalue(samples, target) > 1e-3
    # the test has power: the unfiltered distribution, restricted to the same support,
    # but *not* renormalised, does not fit (its expected counts sum to less than N)
    wrong = row_logits.softmax(-1) * (target > 0)
    counts = torch.bincount(samples, minlength=30).double()
    rel_err = ((counts - wrong * N_DRAWS).abs().max() / N_DRAWS).item()
    assert rel_err > 0.02


def test_top_p_samples_stay_in_nucleus_and_follow_renormalised_probs(row_logits):
    p = 0.7
    samples = _draws(row_logits, N_DRAWS, seed=1, top_p=p)
    target = top_p_filter(row_logits, p).softmax(-1)
    nucleus = set((target > 0).nonzero().flatten().tolist())
    assert 1 < len(nucleus) < 30
    assert set(samples.unique().tolist()) <= nucleus
    assert _chi2_pvalue(samples, target) > 1e-3
    # power check: the same draws are clearly rejected against the temperature-2 distribution
    other = top_p_filter(row_logits / 2, p).softmax(-1)
    other = other * (target > 0) / (other * (target > 0)).sum()
    assert _chi2_pvalue(samples, other) < 1e-6


def test_temperature_sampling_follows_scaled_softmax(row_logits):
    for t in (0.5, 2.0):
        samples = _draws(row_logits, N_DRAWS, seed=2, temperature=t)
        assert _chi2_pvalue(samples, (row_logits / t).softmax(-1)) > 1e-3


def test_temperature_zero_is_argmax(row_logits):
    batch = torch.stack([row_logits, -row_logits])
    assert sample_next_token(batch, temperature=0).squeeze(1).tolist() == [
        int(row_logits.argmax()),
        int((-row_logits).argmax()),
    ]


def test_sampling_is_reproducible_with_a_generator(row_logits):
    a = _draws(row_logits, 500, seed=5, top_p=0.9, temperature=0.8)
    b = _draws(row_logits, 500, seed=5, top_p=0.9, temperature=0.8)
    c = _draws(row_logits, 500, seed=6, top_p=0.9, temperature=0.8)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- generate


def test_cached_and_uncached_greedy_are_identical(tiny_gpt):
    prompt = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    a = generate(tiny_gpt, prompt, 15, temperature=0, use_cache=True)
    b = generate(tiny_gpt, prompt, 15, temperature=0, use_cache=False)
    assert a.shape == (2, 20)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)
    assert len(set(a[0, 5:].tolist())) > 2  # not a degenerate constant sequence


def test_greedy_equals_a_naive_loop(tiny_gpt):
    """The loop in its plainest form: argmax of the last logits, append, repeat."""
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        for _ in range(10):
            nxt = tiny_gpt(idx).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    assert torch.equal(generate(tiny_gpt, [3, 1, 4, 1, 5], 10, temperature=0), idx[0])


def test_cache_matches_uncached_past_block_size(tiny_gpt):
    """Past block_size (24) both paths slide a window; the tokens must agree."""
    prompt = list(range(10, 30))  # 20 tokens, then 30 more: 26 beyond the context
    a = generate(tiny_gpt, prompt, 30, temperature=0, use_cache=True)
    b = generate(tiny_gpt, prompt, 30, temperature=0, use_cache=False)
    assert a.shape == (50,) and torch.equal(a, b)
    # the last token was predicted from the window of the 24 tokens before it
    with torch.no_grad():
        window = a[49 - 24 : 49].unsqueeze(0)  # (1, 24)
        assert int(tiny_gpt(window).logits[0, -1].argmax()) == int(a[49])


def test_cached_and_uncached_sampling_agree_with_same_seed(tiny_gpt):
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, seed=11)
    a = generate(tiny_gpt, [5, 6, 7], 20, use_cache=True, **kw)
    b = generate(tiny_gpt, [5, 6, 7], 20, use_cache=False, **kw)
    assert torch.equal(a, b)


def test_seeded_sampling_is_reproducible(tiny_gpt):
    a = generate(tiny_gpt, [1, 2, 3], 20, temperature=1.0, seed=123)
    b = generate(tiny_gpt, [1, 2, 3], 20, temperature=1.0, seed=123)
    c = generate(tiny_gpt, [1, 2, 3], 20, temperature=1.0, seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prompt_forms(tiny_gpt):
    as_list = generate(tiny_gpt, [4, 5, 6], 4, temperature=0)
    as_1d = generate(tiny_gpt, torch.tensor([4, 5, 6]), 4, temperature=0)
    as_2d = generate(tiny_gpt, torch.tensor([[4, 5, 6]]), 4, temperature=0)
    assert as_list.shape == as_1d.shape == (7,) and as_2d.shape == (1, 7)
    assert torch.equal(as_list, as_1d) and torch.equal(as_1d, as_2d[0])
    assert as_list.dtype == torch.long
    assert torch.equal(generate(tiny_gpt, [4, 5, 6], 0), torch.tensor([4, 5, 6]))


def test_batch_rows_are_independent(tiny_gpt):
    both = generate(tiny_gpt, torch.tensor([[1, 2, 3], [7, 8, 9]]), 12, temperature=0)
    assert torch.equal(both[1], generate(tiny_gpt, [7, 8, 9], 12, temperature=0))


def test_eos_stops_generation(tiny_gpt):
    full = generate(tiny_gpt, [1, 2, 3], 12, temperature=0)
    eos = int(full[6])  # the 4th generated token
    first = 3 + full[3:].tolist().index(eos)  # its first occurrence among the new tokens
    out = generate(tiny_gpt, [1, 2, 3], 12, temperature=0, eos_id=eos)
    assert torch.equal(out, full[: first + 1])
    # in a batch, a finished row is padded with eos until the other row stops
    other = [5, 5, 5]
    batch = generate(tiny_gpt, torch.tensor([[1, 2, 3], other]), 12, temperature=0, eos_id=eos)
    assert torch.equal(batch[0, : first + 1], full[: first + 1])
    assert (batch[0, first + 1 :] == eos).all()


def test_model_mode_is_restored(tiny_gpt):
    tiny_gpt.train()
    try:
        generate(tiny_gpt, [1, 2], 3)
        assert tiny_gpt.training
    finally:
        tiny_gpt.eval()
    generate(tiny_gpt, [1, 2], 3)
    assert not tiny_gpt.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(eos_id=61), "eos_id"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_arguments_raise(tiny_gpt, kwargs, message):
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(tiny_gpt, [1, 2, 3], **args)


def test_bad_prompts_raise(tiny_gpt):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_gpt, [], 3)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_gpt, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="prompt length 25 exceeds block_size 24"):
        generate(tiny_gpt, list(range(25)), 3)
    with pytest.raises(ValueError, match="token id 61 .* vocab_size 61"):
        generate(tiny_gpt, [1, 61], 3)
    with pytest.raises(ValueError, match="token id -1"):
        generate(tiny_gpt, [-1, 2], 3)
    with pytest.raises(ValueError, match="integer"):
        generate(tiny_gpt, torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="shape"):
        generate(tiny_gpt, torch.zeros(1, 2, 3, dtype=torch.long), 3)


def test_filter_argument_errors(row_logits):
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(row_logits, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(row_logits, 0.0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(row_logits, 1.01)
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(row_logits[None], temperature=-1)


def test_kv_cache_bytes():
    # GPT-2 small, 1024 tokens, float32: 2 * 12 * 1024 * 768 * 4 bytes = 72 MiB
    assert kv_cache_bytes(12, 1024, 768) == 2 * 12 * 1024 * 768 * 4 == 72 * 2**20
    assert kv_cache_bytes(6, 512, 384, batch_size=3, bytes_per_value=2) == 2 * 6 * 512 * 384 * 3 * 2
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes(6, -1, 384)


def test_kv_cache_bytes_equals_the_real_cache(tiny_gpt):
    cache = KVCache.for_model(tiny_gpt, batch_size=2, max_len=10)
    with torch.no_grad():
        tiny_gpt(torch.zeros(2, 10, dtype=torch.long), kv_cache=cache)
    n_values = sum(t.numel() for layer in cache for t in layer.keys_values())
    assert cache.length == 10 and n_values * 4 == kv_cache_bytes(2, 10, 32, batch_size=2)


def test_layer_kv_cache_appends_in_place_like_cat():
    g = torch.Generator().manual_seed(0)
    cache = LayerKVCache(2, 3, 10, 4)
    pieces_k, pieces_v = [], []
    for t in (4, 1, 1, 3):  # a prefill of 4 positions, then single steps, then 3 at once
        k, v = torch.randn(2, 3, t, 4, generator=g), torch.randn(2, 3, t, 4, generator=g)
        pieces_k.append(k)
        pieces_v.append(v)
        k_all, v_all = cache.update(k, v)
        assert torch.equal(k_all, torch.cat(pieces_k, dim=2))
        assert torch.equal(v_all, torch.cat(pieces_v, dim=2))
        assert k_all.data_ptr() == cache.k.data_ptr()  # a view of the buffer, not a copy
    k_read, v_read = cache.keys_values()
    assert cache.length == 9 and k_read.shape == (2, 3, 9, 4) and torch.equal(v_read, torch.cat(pieces_v, dim=2))
    with pytest.raises(ValueError, match="holds 10 positions.*9 \\+ 2 = 11"):
        cache.update(torch.zeros(2, 3, 2, 4), torch.zeros(2, 3, 2, 4))
    with pytest.raises(ValueError, match=r"holds \(B, n_heads, S, d_head\) = \(2, 3, S, 4\) keys, got \(1, 3, 1, 4\)"):
        cache.update(torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))


def test_kv_cache_for_model_shapes_and_bytes(tiny_gpt):
    cache = KVCache.for_model(tiny_gpt, batch_size=3)
    cfg = tiny_gpt.config
    assert len(cache) == cfg.n_layers and cache.length == 0 and cache.batch_size == 3
    assert cache[0].k.shape == (3, cfg.n_heads, cfg.block_size, cfg.d_model // cfg.n_heads)
    n_bytes = sum(t.numel() * t.element_size() for layer in cache for t in (layer.k, layer.v))
    assert n_bytes == kv_cache_bytes(cfg.n_layers, cfg.block_size, cfg.d_model, batch_size=3)


def test_kv_cache_is_written_in_place_and_gives_the_uncached_logits(tiny_gpt):
    """The model appends to the cache's own buffers (same storage, length advancing), and the
    cached logits equal the uncached ones."""
    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    cache = KVCache.for_model(tiny_gpt, 1)
    buffers = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache]
    with torch.no_grad():
        full = tiny_gpt(idx).logits
        first = tiny_gpt(idx[:, :5], kv_cache=cache)
        assert cache.length == 5
        torch.testing.assert_close(first.logits, full[:, :5])
        steps = [tiny_gpt(idx[:, t : t + 1], kv_cache=cache).logits for t in range(5, 8)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 5:], atol=1e-5, rtol=1e-5)
    assert cache.length == 8 and all(layer.length == 8 for layer in cache)
    assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache] == buffers  # never re-allocated
    k, _ = cache[0].keys_values()
    assert k.data_ptr() == cache[0].k.data_ptr() and k.shape[2] == 8


def test_generate_appends_to_the_preallocated_cache(tiny_gpt, monkeypatch):
    """generate's KV cache path: every layer's update runs once for the prompt and once per new
    token, and each returns views of the cache's buffers (no concatenation, no new cache)."""
    calls = []
    update = LayerKVCache.update

    def counting_update(self, k_new, v_new):
        k_all, v_all = update(self, k_new, v_new)
        calls.append((k_new.shape[2], self.length, k_all.data_ptr() == self.k.data_ptr()))
        return k_all, v_all

    monkeypatch.setattr(LayerKVCache, "update", counting_update)
    n_layers, prompt, n_new = tiny_gpt.config.n_layers, [5, 6, 7], 6
    cached = generate(tiny_gpt, prompt, n_new, temperature=0, use_cache=True)
    # the prefill (3 positions), then one position for each new token but the last
    assert len(calls) == n_layers * n_new
    assert calls[:n_layers] == [(3, 3, True)] * n_layers
    assert calls[-n_layers:] == [(1, len(prompt) + n_new - 1, True)] * n_layers
    calls.clear()
    assert torch.equal(generate(tiny_gpt, prompt, n_new, temperature=0, use_cache=False), cached)
    assert calls == []  # without the cache, nothing is cached


# ----------------------------------------------------------------------------- transformers


def _random_hf_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # no special tokens: transformers then never stops early nor masks an end-of-text token
    # (min_new_tokens would do that, and change the sampling distribution)
    cfg = GPT2Config(
        vocab_size=97,
        n_positions=64,
        n_embd=48,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return GPT2LMHeadModel(cfg).eval()


def test_greedy_equals_transformers_generate_on_converted_weights():
    from companion.interop.hf import gpt_from_hf

    hf = _random_hf_gpt2()
    ours = gpt_from_hf(hf)
    prompt = torch.tensor([[5, 17, 42, 8, 63, 21]])
    n_new = 40
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n_new)
    mine = generate(ours, prompt, n_new, temperature=0)
    assert ref.shape == mine.shape == (1, 6 + n_new)
    assert torch.equal(mine, ref)
    assert len(set(mine[0, 6:].tolist())) > 3  # a varied continuation, not one repeated token


def test_sampling_equals_transformers_generate_with_the_same_rng():
    """Same filters, same order and the same torch.multinomial draws -> the same tokens."""
    from companion.interop.hf import gpt_from_hf

    hf = _random_hf_gpt2(seed=1)
    ours = gpt_from_hf(hf)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    kw = dict(temperature=0.8, top_k=40, top_p=0.9)
    torch.manual_seed(2024)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=30, **kw)
    torch.manual_seed(2024)
    mine = generate(ours, prompt, 30, seed=None, **kw)  # seed=None: the global RNG, like HF
    assert torch.equal(mine, ref)


def test_packed_copy_computes_what_the_model_computes_and_leaves_it_alone(tiny_gpt):
    from companion.inference.packing import PackedLinear, packed_for_inference

    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    fast = packed_for_inference(tiny_gpt)
    assert not any(type(m) is torch.nn.Linear for m in fast.modules())
    assert any(isinstance(m, PackedLinear) for m in fast.modules())
    assert all(type(m) is not PackedLinear for m in tiny_gpt.modules())  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(fast(idx).logits, tiny_gpt.eval()(idx).logits, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in tiny_gpt.state_dict().items())
    for use_cache in (True, False):
        assert torch.equal(
            generate(fast, [1, 2, 3], 6, temperature=0, use_cache=use_cache),
            generate(tiny_gpt, [1, 2, 3], 6, temperature=0, use_cache=use_cache),
        )


class _Banned(torch.nn.Module):
    """A model wrapper whose logits of the token ids `banned` are -inf (constrained decoding)."""

    def __init__(self, model: torch.nn.Module, banned: list[int]):
        super().__init__()
        self.model, self.config, self.banned = model, model.config, torch.tensor(banned)

    def forward(self, idx, **kwargs):
        out = self.model(idx, **kwargs)
        return out._replace(logits=out.logits.index_fill(-1, self.banned, float("-inf")))


def test_minus_inf_logits_ban_tokens_but_a_row_of_only_minus_inf_is_an_error(tiny_gpt):
    free = generate(tiny_gpt, [1, 2, 3], 12, temperature=0)
    top = sorted(set(free[3:].tolist()))
    banned = generate(_Banned(tiny_gpt, top), [1, 2, 3], 12, temperature=0.8, top_k=5, seed=0)
    assert not set(banned[3:].tolist()) & set(top)  # the banned tokens never appear
    greedy = generate(_Banned(tiny_gpt, top), [1, 2, 3], 12, temperature=0)
    assert not set(greedy[3:].tolist()) & set(top)
    with pytest.raises(ValueError, match="no finite logit"):
        generate(_Banned(tiny_gpt, list(range(61))), [1, 2, 3], 2, temperature=0)
