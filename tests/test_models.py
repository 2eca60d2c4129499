"""Tests for companion.nn: blocks, GPT, the BERT-style encoder and the encoder-decoder."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.nn import (
    GPT,
    Encoder,
    EncoderConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    FeedForward,
    GPTConfig,
    KVCache,
    TransformerBlock,
    mean_pool,
)


def small_gpt(**kw) -> GPT:
    cfg = dict(vocab_size=61, block_size=24, n_layers=2, n_heads=4, d_model=32)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg)).eval()


def small_encoder_config(**kw) -> EncoderConfig:
    cfg = dict(vocab_size=50, block_size=20, n_layers=2, n_heads=4, d_model=32, dropout=0.0)
    cfg.update(kw)
    return EncoderConfig(**cfg)


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize(
    "activation, ref",
    [("gelu", lambda x: F.gelu(x)), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")), ("relu", F.relu)],
)
def test_feed_forward_matches_formula(activation, ref):
    torch.manual_seed(0)
    ffn = FeedForward(8, 20, activation=activation)
    x = torch.randn(2, 5, 8)
    want = ref(x @ ffn.fc_in.weight.T + ffn.fc_in.bias) @ ffn.fc_out.weight.T + ffn.fc_out.bias
    torch.testing.assert_close(ffn(x), want)


def test_gelu_variants_differ():
    x = torch.linspace(-3, 3, 101)
    exact, tanh = FeedForward(1, 1, activation="gelu").act(x), FeedForward(1, 1, activation="gelu_tanh").act(x)
    assert 1e-5 < (exact - tanh).abs().max() < 1e-2  # close but not the same function


def test_bad_activation_and_norm_raise():
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(4, 8, activation="swishy")
    with pytest.raises(ValueError, match="norm must be 'pre' or 'post'"):
        GPTConfig(norm="middle")
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(d_model=30, n_heads=4)


def _copy_into_torch_layer(ours: TransformerBlock, theirs: nn.Module) -> None:
    """Copy our block's weights into nn.TransformerEncoderLayer / nn.TransformerDecoderLayer."""
    with torch.no_grad():
        for our_attn, their_attn in [(ours.attn, theirs.self_attn)] + (
            [(ours.cross_attn, theirs.multihead_attn)] if ours.cross_attn is not None else []
        ):
            their_attn.in_proj_weight.copy_(
                torch.cat([our_attn.q_proj.weight, our_attn.k_proj.weight, our_attn.v_proj.weight])
            )
            their_attn.in_proj_bias.copy_(torch.cat([our_attn.q_proj.bias, our_attn.k_proj.bias, our_attn.v_proj.bias]))
            their_attn.out_proj.weight.copy_(our_attn.out_proj.weight)
            their_attn.out_proj.bias.copy_(our_attn.out_proj.bias)
        theirs.linear1.load_state_dict(ours.ffn.fc_in.state_dict())
        theirs.linear2.load_state_dict(ours.ffn.fc_out.state_dict())
        theirs.norm1.load_state_dict(ours.ln_attn.state_dict())
        if ours.cross_attn is not None:
            theirs.norm2.load_state_dict(ours.ln_cross.state_dict())
            theirs.norm3.load_state_dict(ours.ln_ffn.state_dict())
        else:
            theirs.norm2.load_state_dict(ours.ln_ffn.state_dict())


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_equals_torch_encoder_layer(norm, causal):
    torch.manual_seed(1)
    d, h, ff = 32, 4, 48
    ours = TransformerBlock(d, h, ff, norm=norm, activation="gelu", layer_norm_eps=1e-5).eval()
    for p in ours.parameters():  # LayerNorm gains/biases away from 1/0 so a misplaced LN shows
        nn.init.normal_(p, std=0.3)
    theirs = nn.TransformerEncoderLayer(
        d, h, dim_feedforward=ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=(norm == "pre")
    ).eval()
    _copy_into_torch_layer(ours, theirs)
    x = torch.randn(3, 7, d)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 5:] = False
    keep[2, 3:] = False
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None  # torch: True = may NOT attend
    with torch.no_grad():
        want = theirs(x, src_mask=mask, src_key_padding_mask=~keep, is_causal=causal)  # True = pad there
        got = ours(x, key_padding_mask=keep, is_causal=causal)
    real = keep.unsqueeze(-1).expand_as(got)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cross_attention_block_equals_torch_decoder_layer(norm):
    torch.manual_seed(2)
    d, h, ff = 32, 4, 64
    ours = TransformerBlock(d, h, ff, norm=norm, activation="relu", cross_attention=True).eval()
    for p in ours.parameters():
        nn.init.normal_(p, std=0.3)
    theirs = nn.TransformerDecoderLayer(
        d, h, dim_feedforward=ff, dropout=0.0, activation="relu", batch_first=True, norm_first=(norm == "pre")
    ).eval()
    _copy_into_torch_layer(ours, theirs)
    x, memory = torch.randn(2, 6, d), torch.randn(2, 9, d)
    src_keep = torch.ones(2, 9, dtype=torch.bool)
    src_keep[1, 4:] = False
    with torch.no_grad():
        want = theirs(
            x,
            memory,
            tgt_mask=nn.Transformer.generate_square_subsequent_mask(6),
            memory_key_padding_mask=~src_keep,
            tgt_is_causal=True,
        )
        got = ours(x, context=memory, is_causal=True, context_padding_mask=src_keep)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_block_context_errors():
    plain = TransformerBlock(16, 2)
    with pytest.raises(ValueError, match="without cross_attention"):
        plain(torch.randn(1, 3, 16), context=torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="pass the encoder output"):
        TransformerBlock(16, 2, cross_attention=True)(torch.randn(1, 3, 16))


# ----------------------------------------------------------------------------- GPT


def test_gpt_shapes_loss_and_init_scale():
    model = small_gpt(vocab_size=61)
    idx, targets = torch.randint(0, 61, (2, 3, 10))
    out = model(idx, targets=targets)
    assert out.logits.shape == (3, 10, 61) and out.hidden_states.shape == (3, 10, 32) and out.kv_cache is None
    torch.testing.assert_close(out.logits, model.lm_head(out.hidden_states))  # the head's input
    # at initialisation the prediction is close to uniform: loss ~ log(vocab_size)
    assert abs(out.loss.item() - math.log(61)) < 0.1
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 61), targets.reshape(-1)))


def test_gpt_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, block_size=64, n_layers=8, n_heads=4, d_model=128))
    std_resid = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if name.endswith(("out_proj.weight", "fc_out.weight")):
            assert abs(p.std().item() - std_resid) < 0.15 * std_resid, name
        elif name.endswith("proj.weight") or name.endswith("fc_in.weight") or name.endswith("emb.weight"):
            assert abs(p.std().item() - 0.02) < 0.003, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name


def test_gpt_ignore_index():
    model = small_gpt()
    idx = torch.randint(0, 61, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -100
    out = model(idx, targets=targets)
    want = F.cross_entropy(out.logits[:, 4:].reshape(-1, 61), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, want)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_gpt_is_causal(norm):
    model = small_gpt(norm=norm)
    a = torch.randint(0, 61, (1, 12))
    b = a.clone()
    b[0, 7:] = torch.randint(0, 61, (5,))
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :7], lb[:, :7])
    assert not torch.allclose(la[:, 7:], lb[:, 7:])


def test_gpt_tied_and_untied():
    tied, untied = small_gpt(), small_gpt(tie_weights=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 61 * 32


def test_gpt_final_norm_only_for_pre_ln():
    assert isinstance(small_gpt(norm="pre").ln_f, nn.LayerNorm)
    assert isinstance(small_gpt(norm="post").ln_f, nn.Identity)


def test_gpt_no_bias():
    model = small_gpt(bias=False)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    model(torch.randint(0, 61, (1, 5)))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_gpt_kv_cache_matches_full_forward(norm):
    model = small_gpt(norm=norm)
    idx = torch.randint(0, 61, (2, 11))
    with torch.no_grad():
        full = model(idx).logits
        cache = KVCache.for_model(model, batch_size=2)
        out = model(idx[:, :6], kv_cache=cache)
        assert out.kv_cache is cache and cache.length == 6
        steps = [out.logits]
        for t in range(6, 11):
            steps.append(model(idx[:, t : t + 1], kv_cache=cache).logits)
    assert cache.length == 11 and cache[0].keys_values()[0].shape == (2, 4, 11, 8)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_gpt_kv_cache_with_padding_mask():
    model = small_gpt()
    idx = torch.randint(0, 61, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding in row 1
    with torch.no_grad():
        full = model(idx, attention_mask=mask).logits
        cache = KVCache.for_model(model, batch_size=2)
        out = model(idx[:, :5], attention_mask=mask[:, :5], kv_cache=cache)
        rest = model(idx[:, 5:], attention_mask=mask, kv_cache=cache).logits
    real = mask.bool()
    got = torch.cat([out.logits, rest], dim=1)
    torch.testing.assert_close(got[real], full[real], atol=1e-5, rtol=1e-5)


def test_gpt_padding_does_not_leak():
    """Changing padded (masked) tokens must not change the logits at real positions."""
    model = small_gpt()
    idx = torch.randint(1, 61, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, :4] = 0
    other = idx.clone()
    other[0, :4] = 0
    with torch.no_grad():
        a = model(idx, attention_mask=mask).logits
        b = model(other, attention_mask=mask).logits
        c = model(other).logits  # without the mask the pads are attended to
    torch.testing.assert_close(a[:, 4:], b[:, 4:])
    assert not torch.allclose(a[:, 4:], c[:, 4:])


def test_gpt_input_errors():
    model = small_gpt(block_size=24, vocab_size=61)
    with pytest.raises(ValueError, match="sequence length 30 exceeds block_size 24"):
        model(torch.zeros(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 61 out of range for vocab_size 61"):
        model(torch.tensor([[1, 61]]))
    with pytest.raises(ValueError, match="token id -1 out of range"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    cache = KVCache.for_model(model, batch_size=1)
    model(torch.zeros(1, 20, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="sequence length 25 exceeds block_size 24"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache has 1 layers"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=KVCache(cache.layers[:1]))
    with pytest.raises(ValueError, match="kv_cache must be a KVCache"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=[(torch.zeros(1, 4, 3, 8), torch.zeros(1, 4, 3, 8))])
    with pytest.raises(ValueError, match=r"kv_cache holds .* \(1, 4, S, 8\) keys; this layer needs \(2, 4, S, 8\)"):
        model(torch.zeros(2, 1, dtype=torch.long), kv_cache=KVCache.for_model(model, batch_size=1))


def test_gpt_message_from_brief():
    model = GPT(GPTConfig(vocab_size=50257, block_size=256, n_layers=1, n_heads=1, d_model=8))
    with pytest.raises(ValueError, match="^sequence length 300 exceeds block_size 256$"):
        model(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match="^token id 70000 out of range for vocab_size 50257$"):
        model(torch.tensor([[70000]]))


def test_gpt_dropout_only_in_training():
    model = small_gpt(dropout=0.5)
    idx = torch.randint(0, 61, (2, 8))
    model.eval()
    torch.testing.assert_close(model(idx).logits, model(idx).logits)
    model.train()
    assert not torch.allclose(model(idx).logits, model(idx).logits)


def test_gpt_learns_a_pattern():
    """A few Adam steps on a repeating sequence drive the loss far below log(vocab_size)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layers=2, n_heads=2, d_model=32))
    seq = torch.arange(17) % 11
    x, y = seq[:-1].unsqueeze(0), seq[1:].unsqueeze(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model(x, y).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.2


# ----------------------------------------------------------------------------- encoder


def test_mean_pool_matches_definition():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    got = mean_pool(h, mask)
    torch.testing.assert_close(got[0], h[0, :2].mean(0))
    torch.testing.assert_close(got[1], h[1].mean(0))
    torch.testing.assert_close(mean_pool(h), h.mean(1))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_is_bidirectional_and_ignores_padding(norm):
    torch.manual_seed(0)
    enc = Encoder(small_encoder_config(norm=norm)).eval()
    idx = torch.randint(1, 50, (1, 8))
    with torch.no_grad():
        h = enc(idx)
        changed = idx.clone()
        changed[0, -1] = (idx[0, -1] % 49) + 1  # change the LAST token
        h2 = enc(changed)
        # the first position sees the last token: bidirectional
        assert not torch.allclose(h[0, 0], h2[0, 0])
        # appending padding (masked) leaves the real positions unchanged
        padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], dim=1).long()
        torch.testing.assert_close(enc(padded, attention_mask=mask)[:, :8], h, atol=1e-5, rtol=1e-5)
    assert isinstance(enc.ln_emb, nn.LayerNorm if norm == "post" else nn.Identity)
    assert isinstance(enc.ln_f, nn.Identity if norm == "post" else nn.LayerNorm)


def test_encoder_token_types_and_errors():
    enc = Encoder(small_encoder_config()).eval()
    idx = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        a = enc(idx)
        b = enc(idx, token_type_ids=torch.ones_like(idx))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="token type id 2 out of range for vocab_size 2"):
        enc(idx, token_type_ids=torch.full_like(idx, 2))
    with pytest.raises(ValueError, match="sequence length 21 exceeds block_size 20"):
        enc(torch.zeros(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 50 out of range"):
        enc(torch.tensor([[50]]))


def test_masked_lm_head():
    torch.manual_seed(0)
    model = EncoderForMaskedLM(small_encoder_config()).eval()
    assert model.decoder.weight is model.encoder.tok_emb.weight
    idx = torch.randint(0, 50, (2, 7))
    targets = torch.full_like(idx, -100)
    targets[:, 2] = idx[:, 2]
    out = model(idx, targets)
    assert out.logits.shape == (2, 7, 50) and out.hidden_states.shape == (2, 7, 32)
    torch.testing.assert_close(out.hidden_states, model.encoder(idx))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[:, 2], idx[:, 2]))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classification(pooling):
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(small_encoder_config(), n_classes=3, pooling=pooling).eval()
    assert (model.pooler is None) == (pooling == "mean")
    idx = torch.randint(0, 50, (4, 9))
    mask = torch.ones_like(idx)
    mask[0, 5:] = 0
    targets = torch.tensor([0, 1, 2, 1])
    out = model(idx, targets, attention_mask=mask)
    assert out.logits.shape == (4, 3) and out.hidden_states.shape == (4, 9, 32)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, targets))
    with pytest.raises(ValueError, match=r"targets must be \(B,\) = \(4,\) class indices, got \(4, 9\)"):
        model(idx, mask)  # a padding mask passed where the targets go
    with pytest.raises(ValueError, match="pooling must be"):
        EncoderForSequenceClassification(small_encoder_config(), 2, pooling="max")


# ----------------------------------------------------------------------------- encoder-decoder


def small_seq2seq(**kw) -> EncoderDecoder:
    cfg = dict(
        src_vocab_size=40,
        tgt_vocab_size=30,
        block_size=16,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=4,
        d_model=32,
    )
    cfg.update(kw)
    torch.manual_seed(0)
    return EncoderDecoder(EncoderDecoderConfig(**cfg)).eval()


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_seq2seq_causal_target_full_source(norm):
    model = small_seq2seq(norm=norm)
    src = torch.randint(0, 40, (1, 10))
    tgt = torch.randint(0, 30, (1, 8))
    with torch.no_grad():
        base = model(src, decoder_idx=tgt).logits
        assert base.shape == (1, 8, 30)
        tgt2 = tgt.clone()
        tgt2[0, 5:] = (tgt[0, 5:] + 1) % 30
        out = model(src, decoder_idx=tgt2).logits
        torch.testing.assert_close(out[:, :5], base[:, :5])  # the target is read causally
        src2 = src.clone()
        src2[0, -1] = (src[0, -1] + 1) % 40
        assert not torch.allclose(model(src2, decoder_idx=tgt).logits[:, 0], base[:, 0])  # every step sees the source


def test_seq2seq_source_padding_and_loss():
    model = small_seq2seq()
    src = torch.randint(1, 40, (1, 6))
    tgt = torch.randint(0, 30, (1, 5))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], 1).long()
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, decoder_idx=tgt, attention_mask=mask).logits,
            model(src, decoder_idx=tgt).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    out = model(src, tgt, decoder_idx=tgt)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[0], tgt[0]))
    assert out.hidden_states.shape == (1, 5, 32)
    torch.testing.assert_close(out.logits, model.lm_head(out.hidden_states))
    assert model.lm_head.weight is model.tgt_emb.weight


def test_seq2seq_errors():
    model = small_seq2seq()
    with pytest.raises(ValueError, match="source token id 40 out of range for vocab_size 40"):
        model(torch.tensor([[40]]), decoder_idx=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="target token id 30 out of range for vocab_size 30"):
        model(torch.tensor([[1]]), decoder_idx=torch.tensor([[30]]))
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long), decoder_idx=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(torch.zeros(2, 3, dtype=torch.long), decoder_idx=torch.zeros(1, 3, dtype=torch.long))
