"""Tests for companion.training.objectives: cross-entropy, causal-LM pairs and BERT's masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.training.objectives import (
    IGNORE_INDEX,
    CausalLM,
    MaskedLM,
    causal_lm_pairs,
    cross_entropy,
    lm_loss,
    mask_tokens,
    resolve_objective,
)


def test_cross_entropy_worked_example():
    # one position, vocabulary of 3: logits (2, 1, 0), target 0
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    z = math.exp(2) + math.exp(1) + math.exp(0)
    expected = -math.log(math.exp(2) / z)  # = log(1 + e^-1 + e^-2) = 0.4076
    assert expected == pytest.approx(0.40760596, abs=1e-7)
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected, abs=1e-6)
    # target 2: the least likely class costs more
    assert cross_entropy(logits, torch.tensor([2])).item() == pytest.approx(2 + expected, abs=1e-6)


def test_cross_entropy_equals_torch_with_ignored_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    targets = torch.randint(11, (3, 5), generator=g)
    targets[0, :2] = IGNORE_INDEX
    targets[2, 4] = IGNORE_INDEX
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(logits, targets), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(lm_loss(logits, targets), ref, rtol=0, atol=1e-6)
    keep = targets != IGNORE_INDEX  # only the kept positions count, and the mean is over them
    manual = -logits.log_softmax(-1)[keep].gather(1, targets[keep][:, None]).mean()
    torch.testing.assert_close(ref, manual, rtol=0, atol=1e-6)


def test_cross_entropy_gradient_is_p_minus_onehot():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 7, generator=g, requires_grad=True)
    targets = torch.tensor([0, 3, 6, 2])
    cross_entropy(logits, targets).backward()
    expected = (logits.detach().softmax(-1) - F.one_hot(targets, 7)) / 4
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=1e-6)


def test_cross_entropy_errors():
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no position has a target"):
        cross_entropy(torch.zeros(2, 5), torch.full((2,), IGNORE_INDEX))


def test_causal_lm_pairs_shift_by_one():
    w = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    x, y = causal_lm_pairs(w)
    assert x.tolist() == [[5, 6, 7], [1, 2, 3]] and y.tolist() == [[6, 7, 8], [2, 3, 4]]
    assert CausalLM().window_length(64) == 65 and MaskedLM(0, 10).window_length(64) == 64
    with pytest.raises(ValueError, match=r"\(B, T\+1\)"):
        causal_lm_pairs(torch.tensor([[1]]))


def test_masking_proportions_follow_bert():
    """15% chosen; of those 80% [MASK], 10% random, 10% unchanged (within 4 standard errors)."""
    vocab, mask_id = 1000, 999
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 998, (200, 500), generator=g)  # 100,000 positions
    inputs, labels = mask_tokens(
        ids, mask_token_id=mask_id, vocab_size=vocab, generator=torch.Generator().manual_seed(1)
    )
    chosen = labels != IGNORE_INDEX
    n, k = ids.numel(), int(chosen.sum())

    def close(count, total, p):
        return abs(count / total - p) < 4 * math.sqrt(p * (1 - p) / total)

    assert close(k, n, 0.15)
    assert torch.equal(labels[chosen], ids[chosen])  # the label is the original token
    assert torch.equal(inputs[~chosen], ids[~chosen])  # positions not chosen are untouched
    masked = int((inputs[chosen] == mask_id).sum())
    kept = int((inputs[chosen] == ids[chosen]).sum())
    random = k - masked - kept
    pool = vocab - 1  # a random replacement is any non-special id; 1/pool of them equal the original
    assert close(masked, k, 0.8)
    assert close(kept, k, 0.1 + 0.1 / pool)
    assert close(random, k, 0.1 * (1 - 1 / pool))
    assert int((inputs == mask_id).sum()) == masked  # [MASK] appears only where chosen


def test_special_tokens_are_never_masked_nor_drawn():
    vocab, mask_id, cls_id, sep_id = 8, 7, 5, 6
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (50, 40), generator=g)
    ids[:, 0], ids[:, -1] = cls_id, sep_id
    inputs, labels = mask_tokens(
        ids, mask_token_id=mask_id, vocab_size=vocab, special_ids=[cls_id, sep_id], mask_prob=0.5, generator=g
    )
    assert (labels[:, 0] == IGNORE_INDEX).all() and (labels[:, -1] == IGNORE_INDEX).all()
    assert torch.equal(inputs[:, 0], ids[:, 0]) and torch.equal(inputs[:, -1], ids[:, -1])
    chosen = labels != IGNORE_INDEX
    replaced = inputs[chosen & (inputs != ids) & (inputs != mask_id)]
    assert replaced.numel() > 0
    assert not torch.isin(replaced, torch.tensor([cls_id, sep_id, mask_id])).any()


def test_masking_is_seeded_and_never_empty():
    ids = torch.arange(40).reshape(4, 10) % 9
    a = mask_tokens(ids, mask_token_id=9, vocab_size=10, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, mask_token_id=9, vocab_size=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    one = torch.tensor([[1, 2]])  # tiny input: at least one target even when the dice say none
    for seed in range(20):
        _, labels = mask_tokens(
            one, mask_token_id=9, vocab_size=10, mask_prob=0.01, generator=torch.Generator().manual_seed(seed)
        )
        assert (labels != IGNORE_INDEX).sum() >= 1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mask_tokens(ids, mask_token_id=10, vocab_size=10)
    with pytest.raises(ValueError, match="every position is a special token"):
        mask_tokens(torch.tensor([[3, 3]]), mask_token_id=9, vocab_size=10, special_ids=[3])


def test_masked_lm_loss_counts_only_masked_positions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (2, 30), generator=g)
    inputs, labels = MaskedLM(mask_token_id=20, vocab_size=21)(ids, g)
    logits = torch.randn(2, 30, 21, generator=g)
    chosen = labels != IGNORE_INDEX
    manual = F.cross_entropy(logits[chosen], ids[chosen])
    torch.testing.assert_close(lm_loss(logits, labels), manual, rtol=0, atol=1e-6)


def test_resolve_objective():
    assert isinstance(resolve_objective("clm"), CausalLM)

    class Cfg:
        mask_token_id, vocab_size = 4, 5

    class M:
        config = Cfg()

    obj = resolve_objective("mlm", M())
    assert isinstance(obj, MaskedLM) and obj.mask_token_id == 4
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_objective("mlm", object())
    with pytest.raises(ValueError, match="objective must be"):
        resolve_objective("bce")
