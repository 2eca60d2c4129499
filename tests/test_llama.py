"""Tests for companion.nn.llama, companion.nn.moe and companion.interop.llama: our modern decoder against
transformers' Llama and Mixtral with random weights (float64 to 1e-10), its KV cache, generation, training."""

import pytest
import torch
from test_hf import batch_and_masks  # a batch of 3 with no padding, right padding and left padding
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM, MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from companion.analysis.memory import kv_cache_table
from companion.inference.generation import generate, kv_cache_bytes
from companion.interop.llama import llama_config_from_hf, llama_from_hf, llama_to_hf
from companion.nn import KVCache, LayerKVCache, Llama, LlamaConfig
from companion.nn.attention import MultiHeadAttention
from companion.nn.moe import MixtureOfExperts, load_balancing_loss
from companion.nn.positional import RotaryEmbedding
from companion.training.checkpoint import load_pretrained, save_checkpoint
from companion.training.trainer import TrainConfig, train

SHAPES = [  # (n_layers, n_heads, n_kv_heads, d_model, d_ff, vocab_size, rope_theta, tie)
    (1, 4, 4, 32, 64, 37, 10000.0, False),  # multi-head attention
    (2, 4, 2, 32, 48, 61, 500.0, True),  # 2 query heads per K/V head, tied head
    (2, 8, 2, 64, 96, 50, 1e6, False),  # 4 per K/V head
    (2, 4, 1, 32, 64, 29, 10000.0, True),  # multi-query attention
]
BLOCK = 32


def hf_config(shape, n_experts=0, **extra):
    n_layers, n_heads, n_kv, d_model, d_ff, vocab, theta, tie = shape
    kw = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=BLOCK,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=None,
        **extra,
    )
    if not n_experts:
        return HFLlamaConfig(**kw)
    # transformers' default grouped_mm kernel takes no float64: the plain loop over experts does
    return MixtralConfig(**kw, num_local_experts=n_experts, experts_implementation="eager")


@torch.no_grad()
def perturb(model) -> None:
    """Norm gains away from 1 and block matrices of O(1) gain (std 1/sqrt(fan_in)), so that every part shows."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.add_(0.1 * torch.randn_like(p))
        elif p.dim() >= 2 and ("layers." in name or "blocks." in name):
            p.normal_(0.0, p.shape[-1] ** -0.5)


def hf_model(shape, dtype=torch.float64, n_experts=0, seed=0, **extra):
    torch.manual_seed(seed)
    cls = MixtralForCausalLM if n_experts else LlamaForCausalLM
    model = cls(hf_config(shape, n_experts, **extra)).eval()
    perturb(model)
    return model.to(dtype)


def assert_real_close(ours, theirs, mask, atol):
    real = slice(None) if mask is None else mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=atol, rtol=0)


# ----------------------------------------------------------------------------- logits against transformers


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_llama_from_hf_matches_logits(shape, dtype, atol):
    theirs = hf_model(shape, dtype)
    ours = llama_from_hf(theirs)
    assert not ours.training and next(ours.parameters()).dtype == dtype
    assert (ours.lm_head.weight is ours.tok_emb.weight) == shape[-1]
    idx, masks = batch_and_masks(shape[5])
    with torch.no_grad():
        for mask in masks:
            mine, hf = ours(idx, attention_mask=mask).logits, theirs(idx, attention_mask=mask).logits
            assert_real_close(mine, hf, mask, atol)


@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_llama_to_hf_matches_logits_and_round_trips(shape):
    n_layers, n_heads, n_kv, d_model, d_ff, vocab, theta, tie = shape
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=vocab,
        block_size=BLOCK,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_model=d_model,
        d_ff=d_ff,
        rope_theta=theta,
        tie_embeddings=tie,
    )
    ours = Llama(config).double().eval()
    perturb(ours)
    theirs = llama_to_hf(ours).eval()
    assert isinstance(theirs, LlamaForCausalLM) and (theirs.lm_head.weight is theirs.model.embed_tokens.weight) == tie
    idx, masks = batch_and_masks(vocab)
    with torch.no_grad():
        for mask in masks:
            mine, hf = ours(idx, attention_mask=mask).logits, theirs(idx, attention_mask=mask).logits
            assert_real_close(mine, hf, mask, 1e-10)
    back = llama_from_hf(theirs)
    assert back.config == config
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k


def test_loss_matches_hf_labels():
    theirs = hf_model(SHAPES[2])
    ours = llama_from_hf(theirs)
    idx, _ = batch_and_masks(SHAPES[2][5])
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts its labels inside
    with torch.no_grad():  # transformers computes its loss in float32
        torch.testing.assert_close(ours(idx, targets).loss.float(), theirs(idx, labels=idx).loss, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- grouped-query attention


@pytest.mark.parametrize("n_kv_heads", [1, 2, 8])
@pytest.mark.parametrize("use_sdpa", [True, False], ids=["sdpa", "explicit"])
def test_gqa_equals_mha_with_repeated_key_value_heads(n_kv_heads, use_sdpa):
    """Grouped-query attention is multi-head attention whose K/V heads come in identical groups;
    with n_kv_heads = n_heads it is ordinary multi-head attention. Both paths, with masks and a cache."""
    torch.manual_seed(0)
    d, h, rep = 32, 8, 8 // n_kv_heads
    rope = RotaryEmbedding(d // h, 500.0)
    gqa = MultiHeadAttention(d, h, n_kv_heads=n_kv_heads, rotary=rope, bias=False, use_sdpa=use_sdpa).double()
    mha = MultiHeadAttention(d, h, rotary=rope, bias=False, use_sdpa=use_sdpa).double()
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
        for name in ("k_proj", "v_proj"):  # K/V head j serves query heads j*rep .. (j+1)*rep - 1
            w = getattr(gqa, name).weight.view(n_kv_heads, d // h, d).repeat_interleave(rep, dim=0)
            getattr(mha, name).weight.copy_(w.reshape(d, d))
    x = torch.randn(3, 10, d, dtype=torch.float64)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :3] = 0
    for kw in ({"is_causal": True}, {"is_causal": True, "key_padding_mask": mask}, {}):
        torch.testing.assert_close(gqa(x, **kw).out, mha(x, **kw).out, atol=1e-12, rtol=0)
    explicit = MultiHeadAttention(d, h, n_kv_heads=n_kv_heads, rotary=rope, bias=False, use_sdpa=False).double()
    explicit.load_state_dict(gqa.state_dict())
    outs = []
    for layer in (gqa, explicit):  # a cached prefill of 6 positions, then one step at position 6
        cache = LayerKVCache(3, n_kv_heads, 10, d // h, torch.float64)
        prefill = layer(x[:, :6], is_causal=True, kv_cache=cache).out
        outs.append(torch.cat([prefill, layer(x[:, 6:7], kv_cache=cache).out], dim=1))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(outs[0], gqa(x[:, :7], is_causal=True).out, atol=1e-12, rtol=0)


def test_kv_cache_holds_n_kv_heads_and_continues_the_rotary_positions():
    theirs = hf_model(SHAPES[2])
    ours = llama_from_hf(theirs)
    c = ours.config
    idx, _ = batch_and_masks(c.vocab_size)
    cache = KVCache.for_model(ours, batch_size=3)
    assert len(cache) == c.n_layers
    assert cache[0].k.shape == cache[0].v.shape == (3, c.n_kv_heads, BLOCK, c.d_head) == (3, 2, BLOCK, 8)
    n_bytes = sum(t.numel() * t.element_size() for layer in cache for t in (layer.k, layer.v))
    assert n_bytes == kv_cache_bytes(c.n_layers, BLOCK, c.d_model, 3, 8, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads)
    assert n_bytes * c.n_heads // c.n_kv_heads == kv_cache_bytes(c.n_layers, BLOCK, c.d_model, 3, 8)
    with torch.no_grad():
        ours(idx[:, :8], kv_cache=cache)
        step = ours(idx[:, 8:9], kv_cache=cache).logits  # rotary position 8 continues after the cache
        torch.testing.assert_close(step[:, 0], theirs(idx[:, :9]).logits[:, 8], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"kv_cache holds \(B, n_kv_heads, S, d_head\) = \(3, 8, S, 8\)"):
        gpt_shaped = KVCache([LayerKVCache(3, c.n_heads, BLOCK, c.d_head, torch.float64)] * c.n_layers)
        ours(idx[:, :1], kv_cache=gpt_shaped)


def test_kv_cache_bytes_of_grouped_query_attention():
    """Llama-2-70B (Touvron et al. 2023): 64 query heads share 8 K/V heads, so its cache is 8 times smaller."""
    big = LlamaConfig(d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672)
    shape = {"n_layers": big.n_layers, "d_model": big.d_model, "n_heads": big.n_heads, "n_kv_heads": big.n_kv_heads}
    row = kv_cache_table([4096], {"Llama-2-70B": shape}, bytes_per_value=2)[0]
    per_token = 2 * big.n_layers * big.n_kv_heads * big.d_head * 2  # K and V, 80 layers, 8 heads of 128, bf16
    assert row["bytes"] == 4096 * per_token == kv_cache_bytes(80, 4096, 8192, 1, 2, n_heads=64, n_kv_heads=8)
    assert 8 * row["bytes"] == kv_cache_bytes(80, 4096, 8192, 1, 2) and per_token == 320 * 1024
    with pytest.raises(ValueError, match="give both n_heads and n_kv_heads"):
        kv_cache_bytes(80, 4096, 8192, n_heads=64)
    with pytest.raises(ValueError, match=r"n_kv_heads 3 \| n_heads 64"):
        kv_cache_bytes(80, 4096, 8192, n_heads=64, n_kv_heads=3)


@pytest.mark.parametrize("n_experts", [0, 4], ids=["dense", "experts"])
def test_cached_greedy_decoding_writes_transformers_tokens(n_experts):
    theirs = hf_model(SHAPES[1], n_experts=n_experts)
    ours = llama_from_hf(theirs)
    prompt = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    mine = generate(ours, prompt, 20, temperature=0)
    hf_out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert hf_out.shape == (2, 25) and torch.equal(mine, hf_out)


@pytest.mark.parametrize("n_experts", [0, 4], ids=["dense", "experts"])
def test_exported_model_saved_and_reloaded_generates_our_tokens(tmp_path, n_experts):
    """llama_to_hf -> save_pretrained -> from_pretrained -> generate writes what generate writes (float32)."""
    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=23, block_size=BLOCK, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_ff=48, n_experts=n_experts
    )
    ours = Llama(config).eval()
    perturb(ours)
    llama_to_hf(ours).save_pretrained(tmp_path)
    theirs = (MixtralForCausalLM if n_experts else LlamaForCausalLM).from_pretrained(tmp_path).eval()
    assert llama_config_from_hf(theirs.config) == config
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    mine = generate(ours, prompt, 20, temperature=0)
    hf_out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert hf_out.shape == (1, 25) and torch.equal(mine, hf_out)


# ----------------------------------------------------------------------------- mixture of experts


@pytest.mark.parametrize("k", [1, 2, 3])
def test_moe_block_matches_mixtral_sparse_moe_block(k):
    theirs = hf_model(SHAPES[0], n_experts=4, num_experts_per_tok=k, seed=k)
    ours = llama_from_hf(theirs)
    moe, hf_moe = ours.blocks[0].ffn, theirs.model.layers[0].mlp
    assert isinstance(moe, MixtureOfExperts) and moe.top_k == k
    h = torch.randn(3, 12, 32, dtype=torch.float64)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 7:] = 0
    with torch.no_grad():
        out = moe(h, mask)
        hf_logits = hf_moe.gate(h.reshape(-1, 32))[0]
        torch.testing.assert_close(out.router_logits, hf_logits, atol=1e-12, rtol=0)
        torch.testing.assert_close(out.out, hf_moe(h), atol=1e-10, rtol=0)
        for m in (None, mask):  # the Switch / Mixtral load-balancing loss, padding left out
            want = load_balancing_loss_func((hf_logits,), 4, k, m)
            torch.testing.assert_close(load_balancing_loss(hf_logits, k, m), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.aux_loss, load_balancing_loss_func((hf_logits,), 4, k, mask), atol=1e-6, rtol=0)
        logits, gates, chosen = moe.route(h.reshape(-1, 32))  # the sparse and the dense mix agree
        assert torch.allclose(gates.sum(-1), torch.ones(36)) and chosen.shape == (36, k)
        sparse, dense = (
            moe.mix_sparse(h.reshape(-1, 32), gates, chosen),
            moe.mix_dense(h.reshape(-1, 32), gates, chosen),
        )
        torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=0)


def test_load_balancing_loss_is_k_when_balanced_and_grows_with_collapse():
    uniform = torch.zeros(8, 4)  # every expert equally likely: P_i = 1/4; top-2 ties pick two
    balanced = torch.log(torch.tensor([[4.0, 4.0, 1.0, 1.0], [1.0, 1.0, 4.0, 4.0]])).repeat(4, 1)
    collapsed = torch.log(torch.tensor([[4.0, 4.0, 1.0, 1.0]])).repeat(8, 1)
    assert torch.isclose(load_balancing_loss(balanced, 2), torch.tensor(2.0))  # f_i = 1/2, P_i = 1/4
    assert load_balancing_loss(collapsed, 2) > load_balancing_loss(balanced, 2)
    assert load_balancing_loss(uniform, 1) == pytest.approx(1.0)


def test_mixtral_from_hf_logits_aux_and_loss():
    theirs = hf_model(SHAPES[2], n_experts=4, output_router_logits=True, router_aux_loss_coef=0.02)
    ours = llama_from_hf(theirs)
    assert (ours.config.n_experts, ours.config.n_experts_per_token, ours.config.aux_loss_coef) == (4, 2, 0.02)
    idx, masks = batch_and_masks(SHAPES[2][5])
    with torch.no_grad():
        for mask in masks:
            mine, hf = ours(idx, attention_mask=mask), theirs(idx, attention_mask=mask)
            assert_real_close(mine.logits, hf.logits, mask, 1e-10)
            per_layer = [load_balancing_loss_func((r,), 4, 2, mask) for r in hf.router_logits]
            torch.testing.assert_close(ours.aux_loss, torch.stack(per_layer).mean(), atol=1e-6, rtol=0)
        one_layer = hf_model(SHAPES[0], n_experts=4, output_router_logits=True, router_aux_loss_coef=0.02)
        idx, _ = batch_and_masks(SHAPES[0][5])
        targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)
        want = one_layer(idx, labels=idx).loss  # cross-entropy + 0.02 * aux in float32, as ours for one layer
        torch.testing.assert_close(llama_from_hf(one_layer)(idx, targets).loss.float(), want, atol=1e-6, rtol=0)


def test_mixtral_to_hf_matches_logits():
    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=41, block_size=BLOCK, n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, d_ff=40, n_experts=3
    )
    ours = Llama(config).double().eval()
    perturb(ours)
    theirs = llama_to_hf(ours).eval()
    theirs.set_experts_implementation("eager")  # float64
    idx, _ = batch_and_masks(41)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, theirs(idx).logits, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- training, checkpoints


def tiny(**kw) -> LlamaConfig:
    return LlamaConfig(**{**dict(vocab_size=12, block_size=16, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32), **kw})


@pytest.mark.parametrize("n_experts", [0, 4], ids=["dense", "experts"])
def test_training_lowers_the_loss_and_checkpoints_round_trip(tmp_path, n_experts):
    torch.manual_seed(0)
    model = Llama(tiny(n_experts=n_experts))
    data = torch.arange(12).repeat(60)  # 0 1 2 ... 11 0 1 2 ...: next token is determined
    cfg = TrainConfig(steps=30, batch_size=8, block_size=16, lr=1e-2, warmup_steps=5, eval_interval=10, eval_steps=2)
    history = train(model, data, data[:200], cfg, progress=False)
    assert history.val_loss[-1] < 0.5 * history.val_loss[0]
    assert (model.aux_loss is None) == (n_experts == 0)
    save_checkpoint(tmp_path, model)
    back = load_pretrained(tmp_path)
    assert type(back) is Llama and back.config == model.config
    idx = data[:16].view(1, 16)
    with torch.no_grad():
        assert torch.equal(back(idx).logits, model.eval()(idx).logits)


def test_bad_configs_and_refusals():
    with pytest.raises(ValueError, match="n_kv_heads 3 does not divide n_heads 4"):
        tiny(n_kv_heads=3)
    with pytest.raises(ValueError, match="even d_head"):
        tiny(d_model=12, n_heads=4)
    with pytest.raises(ValueError, match=r"n_experts_per_token must be an int in \[1, n_experts=2\]"):
        tiny(n_experts=2, n_experts_per_token=3)
    with pytest.raises(ValueError, match="rope_theta > 1"):
        tiny(rope_theta=0.5)
    with pytest.raises(ValueError, match="only plain rotary positions"):
        llama_config_from_hf(HFLlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}))
    with pytest.raises(ValueError, match="biases"):
        llama_config_from_hf(HFLlamaConfig(attention_bias=True))
    with pytest.raises(ValueError, match="rotary positions are for self-attention"):
        MultiHeadAttention(8, 2, rotary=RotaryEmbedding(4))(torch.zeros(1, 2, 8), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="n_kv_heads must be an int >= 1 that divides n_heads=4"):
        MultiHeadAttention(8, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="token id 12 out of range"):
        Llama(tiny())(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        Llama(tiny())(torch.zeros(1, 17, dtype=torch.long))
