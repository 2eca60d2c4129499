"""The models' forward passes trace into one graph: no graph breaks, so no host synchronisation."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from companion.nn import (
    GPT,
    Encoder,
    EncoderConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    GPTConfig,
    Llama,
    LlamaConfig,
)

pytestmark = pytest.mark.slow


def explain(model, *args, **kwargs):
    dynamo.reset()
    return dynamo.explain(model)(*args, **kwargs)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    return idx, mask


def describe(e) -> str:
    return "; ".join(
        f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}" for b in e.break_reasons
    )


def test_gpt_forward_has_no_graph_breaks(batch):
    idx, mask = batch
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=16)).eval()
    for kwargs in ({"targets": idx}, {"attention_mask": mask}):
        e = explain(model, idx, **kwargs)
        assert e.graph_break_count == 0 and e.graph_count == 1, describe(e)


@pytest.mark.parametrize("n_experts", [0, 4], ids=["dense", "experts"])
def test_llama_forward_has_no_graph_breaks(batch, n_experts):
    """The modern decoder, with grouped-query attention and rotary positions, and with a mixture of
    experts (traced, it takes the dense mix: no shape depends on the routing)."""
    idx, mask = batch
    shape = dict(vocab_size=50, block_size=16, n_layers=2, n_heads=4, n_kv_heads=2, d_model=16, d_ff=24)
    model = Llama(LlamaConfig(**shape, n_experts=n_experts)).eval()
    for kwargs in ({"targets": idx}, {"attention_mask": mask}, {"targets": idx, "attention_mask": mask}):
        e = explain(model, idx, **kwargs)
        assert e.graph_break_count == 0 and e.graph_count == 1, describe(e)


def test_encoder_and_encoder_decoder_have_no_graph_breaks(batch):
    idx, mask = batch
    enc = Encoder(EncoderConfig(vocab_size=50, block_size=16, n_layers=1, n_heads=2, d_model=16)).eval()
    e = explain(enc, idx, attention_mask=mask)
    assert e.graph_break_count == 0, describe(e)
    s2s = EncoderDecoder(
        EncoderDecoderConfig(
            src_vocab_size=50,
            tgt_vocab_size=50,
            block_size=16,
            n_encoder_layers=1,
            n_decoder_layers=1,
            n_heads=2,
            d_model=16,
        )
    ).eval()
    e = explain(s2s, idx, idx, decoder_idx=idx, attention_mask=mask)
    assert e.graph_break_count == 0, describe(e)


def test_eager_cpu_still_checks_values(batch):
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layers=1, n_heads=2, d_model=16))
    with pytest.raises(ValueError, match="token id 50 out of range"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]]))
