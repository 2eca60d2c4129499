"""Tests for companion.scaling.counting: formulas against numel() of built models and against transformers."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM
from transformers import LlamaConfig as HFLlamaConfig

from companion.nn import GPT, GPTConfig, Llama, LlamaConfig, TransformerBlock
from companion.nn.blocks import swiglu_hidden_size
from companion.scaling.counting import (
    block_parameters,
    count_parameters,
    forward_flops_per_token,
    gpt_parameters,
    kaplan_parameters,
    llama_forward_flops_per_token,
    llama_parameters,
    non_embedding_parameters,
)

CONFIGS = [
    dict(vocab_size=101, block_size=32, n_layers=3, n_heads=4, d_model=64),
    dict(vocab_size=101, block_size=32, n_layers=3, n_heads=4, d_model=64, tie_weights=False),
    dict(vocab_size=65, block_size=16, n_layers=2, n_heads=2, d_model=24, d_ff=50, bias=False),
    dict(vocab_size=65, block_size=16, n_layers=5, n_heads=2, d_model=24, norm="post"),
    dict(vocab_size=1000, block_size=128, n_layers=1, n_heads=8, d_model=128, tie_weights=False, bias=False),
]


def meta_gpt(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only, no memory
        return GPT(config)


@pytest.mark.parametrize("kw", CONFIGS)
def test_formula_equals_numel(kw):
    config = GPTConfig(**kw)
    counts = gpt_parameters(config)
    model = GPT(config)
    assert counts.total == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert counts.non_embedding == non_embedding_parameters(model)
    assert counts.per_block == sum(p.numel() for p in model.blocks[0].parameters())
    assert counts.total == (
        counts.non_embedding + counts.token_embedding + counts.position_embedding + counts.output_head
    )
    assert counts.output_head == (0 if config.tie_weights else config.vocab_size * config.d_model)


def test_tied_and_untied_differ_by_one_matrix():
    tied, untied = GPTConfig(**CONFIGS[0]), GPTConfig(**CONFIGS[1])
    assert gpt_parameters(untied).total - gpt_parameters(tied).total == 101 * 64
    assert gpt_parameters(untied).non_embedding == gpt_parameters(tied).non_embedding


def test_block_parameters_against_module():
    for d, ff, bias in [(16, 64, True), (48, 100, False), (768, 3072, True)]:
        block = TransformerBlock(d, 4, ff, bias=bias)
        assert block_parameters(d, ff, bias) == sum(p.numel() for p in block.parameters())


# published sizes: Radford et al. 2019 (GPT-2), as counted by transformers' GPT2LMHeadModel
GPT2_FAMILY = {  # name: (n_layers, d_model, n_heads, exact count)
    "gpt2": (12, 768, 12, 124_439_808),
    "gpt2-medium": (24, 1024, 16, 354_823_168),
    "gpt2-large": (36, 1280, 20, 774_030_080),
    "gpt2-xl": (48, 1600, 25, 1_557_611_200),
}


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium"])
def test_gpt2_counts_equal_transformers(name):
    n_layers, d_model, n_heads, exact = GPT2_FAMILY[name]
    ours = GPTConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    with torch.device("meta"):
        theirs = GPT2LMHeadModel(GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads))
    assert gpt_parameters(ours).total == theirs.num_parameters() == exact
    assert count_parameters(meta_gpt(ours)) == exact


def test_gpt2_family_and_gpt3():
    for n_layers, d_model, n_heads, exact in GPT2_FAMILY.values():
        assert gpt_parameters(GPTConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads)).total == exact
    gpt3 = GPTConfig(block_size=2048, n_layers=96, d_model=12288, n_heads=96)  # Brown et al. 2020, Table 2.1
    total = gpt_parameters(gpt3).total
    assert abs(total - 175e9) / 175e9 < 0.01
    assert abs(kaplan_parameters(gpt3) - 12 * 96 * 12288**2) == 0


def test_kaplan_approximation_is_close():
    config = GPTConfig()  # GPT-2 small
    exact = gpt_parameters(config).non_embedding
    assert kaplan_parameters(config) == 12 * 12 * 768**2
    assert 0 < exact - kaplan_parameters(config) < 0.01 * exact  # only biases and LayerNorms differ


def test_forward_flops_against_flop_counter():
    """Measured matmul FLOPs of one forward pass = T * (2 N + 2 V d) + 4 n_layers T^2 d.

    Kaplan et al.'s C_forward = 2 N + 2 n_layers n_ctx d leaves out the unembedding (2 V d) and
    counts half of the 4 n_layers T^2 d / T attention term (the causal average)."""
    config = GPTConfig(vocab_size=101, block_size=32, n_layers=3, n_heads=4, d_model=64)
    model = GPT(config).eval()
    for block in model.blocks:
        block.attn.use_sdpa = False  # the explicit path's matmuls are visible to the counter
    T, V, d, L = 32, 101, 64, 3
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, V, (1, T)))
    N = kaplan_parameters(config)
    assert counter.get_total_flops() == T * (2 * N + 2 * V * d) + 4 * L * T * T * d
    assert forward_flops_per_token(config) == 2 * N + 2 * L * T * d
    assert forward_flops_per_token(config, n_ctx=8) == 2 * N + 2 * L * 8 * d


# ----------------------------------------------------------------------------- the modern block

LLAMA_CONFIGS = [
    dict(vocab_size=101, block_size=32, n_layers=3, n_heads=4, d_model=64, d_ff=96),  # multi-head
    dict(vocab_size=101, block_size=32, n_layers=2, n_heads=8, n_kv_heads=2, d_model=64, d_ff=96),  # grouped
    dict(vocab_size=65, block_size=16, n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, tie_embeddings=True),
    dict(vocab_size=65, block_size=16, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_ff=40, n_experts=4),
    dict(vocab_size=50, block_size=16, n_layers=1, n_heads=2, d_model=32, d_ff=24, n_experts=3, n_experts_per_token=1),
]


@pytest.mark.parametrize("kw", LLAMA_CONFIGS)
def test_llama_formula_equals_numel(kw):
    config = LlamaConfig(**kw)
    counts = llama_parameters(config)
    model = Llama(config)
    assert counts.total == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert counts.non_embedding == non_embedding_parameters(model)
    assert counts.per_block == sum(p.numel() for p in model.blocks[0].parameters())
    assert counts.output_head == (0 if config.tie_embeddings else config.vocab_size * config.d_model)
    # a token uses every parameter except the experts it is not routed to
    unused = 0
    if config.n_experts:
        expert = sum(p.numel() for p in model.blocks[0].ffn.experts[0].parameters())
        unused = config.n_layers * (config.n_experts - config.n_experts_per_token) * expert
    assert counts.total - counts.active == unused
    assert counts.per_block - counts.active_per_block == unused // config.n_layers


@pytest.mark.parametrize("kw", [LLAMA_CONFIGS[1], LLAMA_CONFIGS[3]], ids=["grouped", "experts"])
def test_llama_forward_flops_against_flop_counter(kw):
    """Measured matmul FLOPs of one forward pass = T (2 N_active + 2 V d) + 4 n_layers T^2 d, N_active
    without the norm gains: the counter sees each token pass through its k experts only."""
    config = LlamaConfig(**kw)
    model = Llama(config).eval()
    for block in model.blocks:
        block.attn.use_sdpa = False  # the explicit path's matmuls are visible to the counter
    T, V, d, L = 16, config.vocab_size, config.d_model, config.n_layers
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, V, (1, T)))
    matrices = llama_parameters(config).active_non_embedding - (2 * L + 1) * d  # less the RMSNorm gains
    assert counter.get_total_flops() == T * (2 * matrices + 2 * V * d) + 4 * L * T * T * d
    n_active = llama_parameters(config).active_non_embedding
    assert llama_forward_flops_per_token(config, n_ctx=T) == 2 * n_active + 2 * L * T * d


def hf_count(cls, config) -> int:
    with torch.device("meta"):  # shapes only, no memory
        return cls(config).num_parameters()


def our_count(config: LlamaConfig) -> int:
    with torch.device("meta"):
        return count_parameters(Llama(config))


def test_llama_2_sizes_from_their_configs():
    """Llama-2-7B and -70B (Touvron et al. 2023), counted from the config, by our model and by transformers'."""
    seven = LlamaConfig()  # the defaults are Llama-2-7B: d_ff from Llama's rule, 8/3 * 4096 rounded to 256
    assert seven.d_ff == swiglu_hidden_size(4096) == 11008
    hf_seven = HFLlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)
    total = llama_parameters(seven).total
    assert total == hf_count(LlamaForCausalLM, hf_seven) == our_count(seven) == 6_738_415_616
    seventy = LlamaConfig(d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672)
    hf_seventy = HFLlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    )
    total = llama_parameters(seventy).total
    assert total == hf_count(LlamaForCausalLM, hf_seventy) == our_count(seventy)
    assert abs(total - 68.98e9) < 0.01e9
    # grouped-query attention: K and V take 2 * 8192 * 1024 per layer instead of 2 * 8192^2
    mha = llama_parameters(LlamaConfig(d_model=8192, n_layers=80, n_heads=64, d_ff=28672)).total
    assert mha - total == 80 * 2 * 8192 * (8192 - 1024)


def test_mixtral_8x7b_total_and_active():
    """Mixtral 8x7B (Jiang et al. 2024): about 47B parameters, about 13B used per token."""
    config = LlamaConfig(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336, n_experts=8)
    hf = MixtralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
    )
    counts = llama_parameters(config)
    assert counts.total == hf_count(MixtralForCausalLM, hf) == our_count(config)
    assert abs(counts.total - 46.7e9) < 0.05e9 and abs(counts.active - 12.9e9) < 0.05e9
    assert counts.total - counts.active == 32 * 6 * 3 * 4096 * 14336  # six unused SwiGLU experts per layer
    dense = llama_forward_flops_per_token(LlamaConfig(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336))
    routed = 32 * (3 * 4096 * 14336 + 4096 * 8)  # per layer: a second expert and the router
    assert llama_forward_flops_per_token(config) == dense + 2 * routed
