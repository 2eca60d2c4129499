"""Tests for companion.interop.hf: our GPT/Encoder against transformers' GPT-2 and BERT (real MiniLM weights)."""

import time

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from companion.interop import hf
from companion.interop.hf import (
    encoder_from_hf,
    gpt_config_from_hf,
    gpt_from_hf,
    gpt_to_hf,
    load_gpt2_from_hub,
    load_minilm,
)
from companion.nn import GPT, GPTConfig, KVCache, mean_pool

SHAPES = [  # (n_layers, n_heads, d_model, d_ff, vocab_size, block_size, tie)
    (1, 1, 16, None, 37, 16, True),
    (2, 4, 32, None, 101, 24, True),
    (3, 6, 48, 100, 64, 32, False),
    (4, 2, 64, None, 257, 20, True),
]


def hf_gpt2(n_layers, n_heads, d_model, d_ff, vocab, block, tie, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=block,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_inner=d_ff,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(cfg).eval()
    perturb(model)
    return model


@torch.no_grad()
def perturb(model) -> None:
    """Make every difference visible: LayerNorms and biases away from 1 / 0, and block matrices
    of O(1) gain (std 1/sqrt(fan_in)), so that pre-activations are O(1) and, e.g., the exact and
    the tanh GELU give logits that differ by far more than the tolerance."""
    for name, p in model.named_parameters():
        if "ln_" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
        elif p.dim() == 2 and ("blocks." in name or ".h." in name):
            p.normal_(0.0, min(p.shape) ** -0.5)


def batch_and_masks(vocab, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (3, T), generator=g)
    right = torch.ones(3, T, dtype=torch.long)
    right[1, T - 5 :] = 0
    left = torch.ones(3, T, dtype=torch.long)
    left[2, :4] = 0
    left[0, :1] = 0
    return idx, [None, right, left]


def assert_logits_close(ours, theirs, mask):
    if mask is None:
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    else:
        real = mask.bool()
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_gpt_from_hf_matches_logits(shape):
    theirs = hf_gpt2(*shape)
    ours = gpt_from_hf(theirs)
    assert not ours.training
    idx, masks = batch_and_masks(shape[4])
    with torch.no_grad():
        for mask in masks:
            assert_logits_close(ours(idx, attention_mask=mask).logits, theirs(idx, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("shape", SHAPES)
def test_gpt_to_hf_matches_logits(shape):
    n_layers, n_heads, d_model, d_ff, vocab, block, tie = shape
    torch.manual_seed(3)
    ours = GPT(
        GPTConfig(
            vocab_size=vocab,
            block_size=block,
            n_layers=n_layers,
            n_heads=n_heads,
            d_model=d_model,
            d_ff=d_ff,
            tie_weights=tie,
        )
    ).eval()
    perturb(ours)
    theirs = gpt_to_hf(ours).eval()
    assert (theirs.lm_head.weight is theirs.transformer.wte.weight) == tie
    idx, masks = batch_and_masks(vocab)
    with torch.no_grad():
        for mask in masks:
            assert_logits_close(ours(idx, attention_mask=mask).logits, theirs(idx, attention_mask=mask).logits, mask)


def test_gpt_loss_matches_hf_labels():
    """HF shifts labels inside the model; ours takes next-token targets, -100 at the end."""
    theirs = hf_gpt2(*SHAPES[1])
    ours = gpt_from_hf(theirs)
    idx, _ = batch_and_masks(101)
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -100)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, targets).loss, theirs(idx, labels=idx).loss, atol=1e-5, rtol=0)


def test_gpt_kv_cache_matches_hf():
    theirs = hf_gpt2(*SHAPES[1])
    ours = gpt_from_hf(theirs)
    idx, _ = batch_and_masks(101)
    with torch.no_grad():
        cache = KVCache.for_model(ours, batch_size=idx.shape[0])
        ours(idx[:, :8], kv_cache=cache)
        step = ours(idx[:, 8:9], kv_cache=cache).logits  # position 8 continues after the cache
        torch.testing.assert_close(step[:, 0], theirs(idx[:, :9]).logits[:, 8], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_exact(dtype):
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=16, tie_weights=False))
    ours = ours.to(dtype)
    with torch.no_grad():  # float64 weights that float32 cannot hold: no rounding on the way
        ours.lm_head.weight.add_(1e-12 * torch.randn_like(ours.lm_head.weight))
    back = gpt_from_hf(gpt_to_hf(ours))
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b), k


def test_config_translation_and_refusals():
    cfg = gpt_config_from_hf(GPT2Config())  # GPT-2 small
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_ff) == (
        50257,
        1024,
        12,
        12,
        768,
        3072,
    )
    assert cfg.activation == "gelu_tanh" and cfg.tie_weights and cfg.norm == "pre"
    with pytest.raises(ValueError, match="pre-LN with biases"):
        gpt_to_hf(GPT(GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=1, d_model=8, norm="post")))
    with pytest.raises(ValueError, match="attention scaling"):
        gpt_config_from_hf(GPT2Config(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="one dropout rate"):
        gpt_config_from_hf(GPT2Config(attn_pdrop=0.0))


# ----------------------------------------------------------------------------- MiniLM (real weights)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "A cheetah chases its prey across a field, and the dust rises behind them.",
    "Hi.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm(return_hf=True)


def test_minilm_hidden_states_match_transformers(minilm):
    encoder, tokenizer, bert = minilm
    assert not encoder.training and encoder.config.n_layers == 6 and encoder.config.d_model == 384
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    with torch.no_grad():
        theirs = bert(**batch).last_hidden_state
        ours = encoder(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_minilm_sentence_embeddings(minilm):
    encoder, tokenizer, bert = minilm
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = encoder(batch["input_ids"], attention_mask=batch["attention_mask"])
        ours = F.normalize(mean_pool(h, batch["attention_mask"]), dim=-1)
        ht = bert(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        theirs = F.normalize((ht * m).sum(1) / m.sum(1), dim=-1)  # sentence-transformers' recipe
        # each sentence alone (no padding) gives the same vector as inside the padded batch
        alone = tokenizer(SENTENCES[4], return_tensors="pt")
        single = F.normalize(mean_pool(encoder(alone["input_ids"]), None), dim=-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(single[0], ours[4], atol=1e-5, rtol=0)
    sims = ours @ ours.T
    assert sims[0, 1] > sims[0, 2] + 0.3  # two sentences about eating are much closer


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder, tokenizer, _ = minilm
    reference = st.SentenceTransformer(str(hf.minilm_dir()), device="cpu", local_files_only=True)
    want = reference.encode(SENTENCES, convert_to_tensor=True)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = F.normalize(
            mean_pool(encoder(batch["input_ids"], attention_mask=batch["attention_mask"]), batch["attention_mask"]),
            dim=-1,
        )
    torch.testing.assert_close(ours, want.cpu(), atol=1e-4, rtol=0)


def test_encoder_from_hf_refuses_relative_positions(minilm):
    _, _, bert = minilm
    bert.config.position_embedding_type = "relative_key"
    try:
        with pytest.raises(ValueError, match="absolute position"):
            encoder_from_hf(bert)
    finally:
        bert.config.position_embedding_type = "absolute"


# ----------------------------------------------------------------------------- the hub, offline


def test_load_gpt2_from_hub_offline_fails_fast(monkeypatch):
    """Not in the cache and HF_HUB_OFFLINE=1: a clear RuntimeError, quickly, no download attempt."""

    def not_cached(*args, **kwargs):
        assert kwargs.get("local_files_only") is True, "tried the network"
        raise OSError("not in cache")

    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", not_cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="needs a network connection to huggingface.co"):
        load_gpt2_from_hub("gpt2")
    assert time.perf_counter() - start < 5.0


def test_hub_check_respects_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf._hub_reachable() is False


def _exported(tmp_path, **special):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=23, block_size=32, n_layers=2, n_heads=2, d_model=16)).eval()
    perturb(ours)
    gpt_to_hf(ours, **special).save_pretrained(tmp_path)
    return ours, GPT2LMHeadModel.from_pretrained(tmp_path).eval()


def test_export_declares_no_special_tokens_unless_given(tmp_path):
    _, theirs = _exported(tmp_path)
    for cfg in (theirs.config, theirs.generation_config):
        assert cfg.bos_token_id is None and cfg.eos_token_id is None
    _, theirs = _exported(tmp_path / "b", bos_token_id=0, eos_token_id=1)
    assert (theirs.generation_config.bos_token_id, theirs.generation_config.eos_token_id) == (0, 1)
    with pytest.raises(ValueError, match=r"eos_token_id must be None or an int in \[0, 23\)"):
        gpt_to_hf(GPT(GPTConfig(vocab_size=23, block_size=8, n_layers=1, n_heads=1, d_model=8)), eos_token_id=23)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_exported_model_generates_our_tokens(tmp_path, sampled):
    """save_pretrained -> from_pretrained -> generate writes what companion.inference.generation.generate writes."""
    from companion.inference.generation import generate

    ours, theirs = _exported(tmp_path)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    n = 20
    if sampled:
        mine = generate(ours, prompt, n, temperature=1.0, seed=7)
        torch.manual_seed(7)  # transformers draws from the global generator
        hf_out = theirs.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
        )
    else:
        mine = generate(ours, prompt, n, temperature=0)
        hf_out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False)
    assert hf_out.shape == (1, 5 + n)  # no early stop at an ordinary token
    assert torch.equal(mine, hf_out)
