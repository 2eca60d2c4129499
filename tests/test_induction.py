"""Tests of companion.analysis.induction: the copying task, the attention-only model, its training and head scores."""

import math

import pytest
import torch
import torch.nn.functional as F

from companion.analysis.induction import (
    AttentionOnlyTransformer,
    InductionConfig,
    ablate_head,
    copy_losses,
    hand_built_induction,
    head_scores,
    repeated_tokens,
    train_induction,
)
from companion.nn.attention import MultiHeadAttention

SMALL = dict(vocab_size=16, min_period=4, max_period=12, block_size=24, d_model=32, batch_size=32, lr=2e-2)


def test_repeated_tokens_rows_are_distinct_tokens_repeated():
    g = torch.Generator().manual_seed(0)
    tokens, periods = repeated_tokens(200, 30, 20, (3, 9), g)
    assert tokens.shape == (200, 30) and periods.shape == (200,)
    assert periods.min() == 3 and periods.max() == 9  # 200 rows draw every period of the range
    for row, n in zip(tokens, periods.tolist()):
        assert len(set(row[:n].tolist())) == n  # the first copy: n distinct tokens
        assert torch.equal(row[n:], row[:-n])  # and then the same again, period n
    assert tokens.min() >= 0 and tokens.max() < 20
    again, _ = repeated_tokens(200, 30, 20, (3, 9), torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)  # seeded
    fixed, p = repeated_tokens(4, 10, 20, 5)
    assert (p == 5).all() and torch.equal(fixed[:, :5], fixed[:, 5:])


@pytest.mark.parametrize(
    "call",
    [
        lambda: repeated_tokens(4, 10, 8, 9),  # more distinct tokens than the vocabulary has
        lambda: repeated_tokens(4, 10, 8, 1),  # a period of one repeats a single token
        lambda: repeated_tokens(4, 10, 8, (5, 4)),
        lambda: repeated_tokens(0, 10, 8, 4),
        lambda: repeated_tokens(4, 10, 8, (2, 3, 4)),
        lambda: repeated_tokens(4, 10, 8, 4.0),
        lambda: InductionConfig(seed=-1),
        lambda: hand_built_induction(8, 16, sharpness=float("inf")),
        lambda: InductionConfig(max_period=40, vocab_size=32, block_size=80),
        lambda: InductionConfig(block_size=40),  # < 2 * max_period
        lambda: InductionConfig(d_model=30, n_heads=4),
        lambda: InductionConfig(steps=0),
        lambda: InductionConfig(lr=0.0),
        lambda: hand_built_induction(1, 8),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_model_is_attention_only_and_checks_its_input():
    config = InductionConfig(**SMALL)
    model = AttentionOnlyTransformer(config)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "LayerNorm" not in kinds and "FeedForward" not in kinds
    assert sum(isinstance(m, MultiHeadAttention) for m in model.modules()) == config.n_layers
    idx, _ = repeated_tokens(3, 24, 16, 6)
    out = model(idx[:, :-1], idx[:, 1:])
    assert out.logits.shape == (3, 23, 16) and out.hidden_states.shape == (3, 23, 32)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits.transpose(1, 2), idx[:, 1:]))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.full((1, 4), 16))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError):
        head_scores(model, period=13)  # two copies of 13 do not fit 24 positions
    with pytest.raises(ValueError):
        copy_losses(model, idx, period=5)  # rows of 24 are not [r, r] with n = 5


@pytest.mark.parametrize("period", [4, 7, 12])
def test_hand_built_circuit_scores_exactly(period):
    """The scores of the hand-built heads have a known answer.

    Layer 0 looks at the previous token: score 1. Layer 1 attends from t to t - n + 1, except at
    t = n: token 0 has no predecessor, so layer 0 fills position 0's slot with token 0 itself and
    the query at n splits its weight between positions 0 and 1; the score is 1 - 1/(2n).
    """
    model = hand_built_induction(vocab_size=16, block_size=24, sharpness=25.0)
    scores = head_scores(model, period, n_seqs=8)
    assert scores.attentions.shape == (2, 8, 1, 2 * period, 2 * period)
    assert scores.previous_token[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert scores.induction[1, 0].item() == pytest.approx(1 - 1 / (2 * period), abs=1e-6)
    assert scores.induction[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    losses = copy_losses(model, scores.tokens, period)
    assert losses.per_position.shape == (2 * period - 1,)
    assert losses.per_position[period + 1 :].max() < 1e-6  # after the split query every token is copied
    split = -math.log(math.exp(12.5) / (2 * math.exp(12.5) + 14))  # logit 25 / 2 on two tokens, 0 on 14 others
    assert losses.per_position[period].item() == pytest.approx(split, abs=1e-6)  # the split query
    assert losses.first > math.log(16)  # the copying head has nothing to copy and favours tokens already seen


def test_training_is_seeded():
    config = InductionConfig(**{**SMALL, "steps": 15})
    _, a = train_induction(config)
    _, b = train_induction(config)
    assert a == b
    _, c = train_induction(InductionConfig(**{**SMALL, "steps": 15, "seed": 1}))
    assert a != c


def test_small_model_learns_previous_token_and_induction_heads():
    steps = []
    model, losses = train_induction(InductionConfig(**SMALL, steps=800), callback=lambda s, _: steps.append(s))
    assert steps == list(range(1, 801)) and len(losses) == 800
    scores = head_scores(model)  # rows [r, r] with n = score_period = 6
    losses = copy_losses(model, scores.tokens, 6)
    assert scores.previous_token[0].max() > 0.8  # a layer-0 previous-token head
    assert scores.induction[1].max() > 0.7  # a layer-1 induction head
    assert scores.induction[0].max() < 0.2  # and no induction head in layer 0
    assert losses.second < 0.3 < 2.5 < losses.first < math.log(16) + 0.3  # copying: second copy easy, first not


def test_ablate_head_removes_one_head_and_keeps_the_model():
    model = hand_built_induction(vocab_size=16, block_size=24, sharpness=25.0)
    tokens, _ = repeated_tokens(8, 12, 16, 6, torch.Generator().manual_seed(0))
    intact = copy_losses(model, tokens, 6).second
    for layer in range(2):
        assert copy_losses(ablate_head(model, layer, 0), tokens, 6).second > math.log(2)  # no copying without it
    assert copy_losses(model, tokens, 6).second == intact  # the model itself is unchanged
    trained = AttentionOnlyTransformer(InductionConfig(**SMALL))
    bare = ablate_head(ablate_head(trained, 0, 0), 0, 1)
    bare = ablate_head(ablate_head(bare, 1, 0), 1, 1)
    with torch.no_grad():  # with every head removed only the direct path from the embeddings is left
        direct = trained.lm_head(trained.tok_emb(tokens) + trained.pos_emb(12))
        assert torch.allclose(bare(tokens).logits, direct)
    with pytest.raises(ValueError, match="no head"):
        ablate_head(trained, 2, 0)
