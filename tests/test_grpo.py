"""Tests for companion.posttraining.grpo: group advantages, the clipped GRPO loss with k3 KL, and one GRPO step.

The references are trl 1.16's GRPOTrainer. Its advantages are inline code in `_generate_and_score_completions`
(grpo_trainer.py, lines 2763-2787 for the default multi_objective_aggregation="sum_then_normalize": nanmean and
trl.trainer.utils.nanstd per group, then (r - mean) / (std + 1e-4)); the test below re-runs those lines with trl's own
`nanstd`. Its loss is `GRPOTrainer._compute_loss(self, model, inputs)`, called unbound with a SimpleNamespace
``self`` carrying the attributes it reads and a stand-in for `_get_per_token_logps_and_entropies` that returns our
per-token log-probabilities.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from companion.nn import GPT, GPTConfig
from companion.posttraining.grpo import (
    LOSS_TYPES,
    check_rewards,
    completion_logprobs,
    group_advantages,
    grpo_loss,
    grpo_step,
    sample_completions,
)


def _batch(seed: int = 0, B: int = 4, T: int = 6, spread: float = 0.25):
    """Per-token logps, old and ref logps far enough apart that some ratios leave [0.8, 1.2]; a ragged mask."""
    g = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = logps + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logps + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    mask[2, -4:] = 0
    return logps, old, ref, adv, mask


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_equal_a_float64_hand_computation():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 8, generator=g, dtype=torch.float64)
    got = group_advantages(rewards)
    for i, row in enumerate(rewards.tolist()):
        mean, std = statistics.fmean(row), statistics.stdev(row)  # stdev: the unbiased (n - 1) one
        for j, r in enumerate(row):
            assert abs(float(got[i, j]) - (r - mean) / (std + 1e-4)) < 1e-12
    unscaled = group_advantages(rewards, scale=False)
    torch.testing.assert_close(unscaled, rewards - rewards.mean(dim=1, keepdim=True), rtol=0, atol=1e-15)


def test_group_advantages_equal_trls_inline_computation():
    pytest.importorskip("trl")
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(1)
    n_groups, G = 6, 4
    rewards = torch.rand(n_groups * G, generator=g, dtype=torch.float64)  # trl's flat layout, a group adjacent
    rewards[:G] = 0.5  # one zero-variance group
    # trl/trainer/grpo_trainer.py, scale_rewards="group" (the default) and "none":
    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    trl_group = torch.nan_to_num((rewards - mean_grouped) / (std_rewards + 1e-4), nan=0.0)
    trl_none = rewards - mean_grouped
    ours = group_advantages(rewards.view(n_groups, G)).view(-1)
    # trl's nanstd computes Bessel's factor count / (count - 1) from int64 counts, which PyTorch divides in float32:
    # 4/3 rounds to 1.3333333731, so trl's std is 1.5e-8 too large (relative) even in float64. Within that, equal:
    assert float(((ours - trl_group) / trl_group.abs().clamp(min=1e-12)).abs().max()) < 2e-8  # measured 1.5e-8
    # and with that one rounding undone, equal to float64 precision (a biased std would be off by sqrt(4/3)):
    float32_factor = float(torch.tensor(G, dtype=torch.long) / torch.tensor(G - 1, dtype=torch.long))
    exact_std = std_rewards * math.sqrt((G / (G - 1)) / float32_factor)
    trl_exact = torch.nan_to_num((rewards - mean_grouped) / (exact_std + 1e-4), nan=0.0)
    assert float((ours - trl_exact).abs().max()) < 1e-12  # measured 4e-16
    assert float((group_advantages(rewards.view(n_groups, G), scale=False).view(-1) - trl_none).abs().max()) < 1e-15


def test_zero_variance_groups_give_zero_advantage():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    adv = group_advantages(rewards)
    assert bool(torch.isfinite(adv).all())
    assert float(adv[0].abs().max()) == 0.0
    assert float(adv[1].abs().max()) < 1e-9  # 0.3 is not exact in binary: the mean can differ by an ulp
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # std of (0, 1, 0, 1) with n - 1 = 3: sqrt(1/3)
    torch.testing.assert_close(adv[2], torch.tensor([-1, 1, -1, 1], dtype=torch.float64) * expected)


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="no baseline"):
        group_advantages(torch.rand(3, 1))
    with pytest.raises(ValueError, match=r"must be \(n_groups, G\)"):
        group_advantages(torch.rand(8))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="eps must be > 0"):
        group_advantages(torch.rand(2, 4), eps=0.0)


def test_check_rewards():
    ok = torch.tensor([0.0, 0.5, 1.0])
    assert check_rewards(ok) is ok
    with pytest.raises(ValueError, match=r"reward 1.5 is outside its declared range \[0.0, 1.0\]"):
        check_rewards(torch.tensor([0.2, 1.5]))
    with pytest.raises(ValueError, match=r"reward -2.0 is outside its declared range \[-1.0, 1.0\]"):
        check_rewards(torch.tensor([0.2, -2.0]), low=-1.0, high=1.0)
    with pytest.raises(ValueError, match="NaN"):
        check_rewards(torch.tensor([0.2, float("nan")]))
    with pytest.raises(ValueError, match="range is empty"):
        check_rewards(ok, low=1.0, high=0.0)


# ----------------------------------------------------------------------------- the loss


def _hand_loss(logps, old, ref, adv, mask, eps, beta, loss_type):
    """GRPO's loss written out with Python floats, one token at a time."""
    B, T = logps.shape
    per_seq, total, n_tokens = [], 0.0, 0
    for i in range(B):
        seq = 0.0
        length = int(mask[i].sum())
        for t in range(T):
            if not mask[i, t]:
                continue
            lp, a = float(logps[i, t]), float(adv[i])
            rho = math.exp(lp - float(old[i, t]))
            surrogate = min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
            d = float(ref[i, t]) - lp
            seq += -(surrogate - beta * (math.exp(d) - d - 1))
        per_seq.append(seq / length)
        total += seq
        n_tokens += length
    return {"grpo": sum(per_seq) / B, "dapo": total / n_tokens, "dr_grpo": total / (B * T)}[loss_type]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_equals_a_float64_hand_computation(loss_type):
    for seed in range(3):
        logps, old, ref, adv, mask = _batch(seed)
        for eps, beta in [(0.2, 0.04), (0.1, 0.0), (0.3, 1.0)]:
            got = grpo_loss(logps, old, ref, adv, mask, clip_eps=eps, beta=beta, loss_type=loss_type)
            assert abs(float(got) - _hand_loss(logps, old, ref, adv, mask, eps, beta, loss_type)) < 1e-12


def trl_grpo_loss(logps, old, ref, adv, mask, eps, beta, loss_type):
    """trl's GRPOTrainer._compute_loss on given per-token log-probabilities (one device, no accumulation)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, T = logps.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),  # read by "dapo": the tokens of the whole (here: this one) batch
    }
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_loss_and_gradient_equal_trl(loss_type):
    pytest.importorskip("trl")
    worst = 0.0
    for seed in range(3):
        logps, old, ref, adv, mask = _batch(seed)
        for eps, beta in [(0.2, 0.04), (0.2, 0.0), (0.28, 0.5)]:
            x = logps.clone().requires_grad_(True)
            ours = grpo_loss(x, old, ref, adv, mask, clip_eps=eps, beta=beta, loss_type=loss_type)
            (g_ours,) = torch.autograd.grad(ours, [x])
            y = logps.clone().requires_grad_(True)
            theirs = trl_grpo_loss(y, old, ref, adv, mask, eps, beta, loss_type)
            (g_theirs,) = torch.autograd.grad(theirs, [y])
            assert theirs.dtype == torch.float64
            ratio = torch.exp(logps - old)[mask.bool()]
            assert 0 < float(((ratio - 1).abs() > eps).double().mean()) < 1  # tokens both inside and outside the clip
            worst = max(worst, abs(float(ours.detach() - theirs.detach())), float((g_ours - g_theirs).abs().max()))
    assert worst < 1e-12, worst  # measured 0 (the same float64 operations)


def _tiny_gpt(seed: int = 0, vocab: int = 6) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=8, n_layers=1, n_heads=2, d_model=16))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_gradient_is_reinforce_with_a_baseline(loss_type):
    """logps == old == ref: rho = 1, no clipping, zero KL gradient: grad = -sum_i A_i grad log pi(o_i), normalised."""
    model = _tiny_gpt().double()
    g = torch.Generator().manual_seed(2)
    prompts, completions = torch.randint(6, (4, 2), generator=g), torch.randint(6, (4, 5), generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, -3:] = False
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    params = list(model.parameters())

    logps = completion_logprobs(model, prompts, completions, mask)  # (4, 5)
    loss = grpo_loss(logps, logps.detach(), logps.detach(), adv, mask, beta=0.04, loss_type=loss_type)
    grads = torch.autograd.grad(loss, params)

    logps = completion_logprobs(model, prompts, completions, mask)
    weighted = (adv.unsqueeze(1) * logps).masked_fill(~mask, 0)  # A_i log pi(o_i,t)
    norm = {"grpo": mask.sum(1, keepdim=True) * 4, "dapo": mask.sum(), "dr_grpo": mask.numel()}[loss_type]
    reinforce = -(weighted / norm).sum()
    expected = torch.autograd.grad(reinforce, params)
    worst = max(float((a - b).abs().max()) for a, b in zip(grads, expected, strict=True))
    assert worst < 1e-12, worst
    assert max(float(a.abs().max()) for a in grads) > 1e-3  # a real gradient, not zero == zero


def test_clipping_blocks_the_gradient_in_the_right_direction():
    """rho beyond 1 + eps with A > 0, or below 1 - eps with A < 0: no gradient; the other two cases: gradient -A rho."""
    eps = 0.2
    old = torch.zeros(4, 1, dtype=torch.float64)
    logps = torch.tensor([[math.log(1.5)], [math.log(1.5)], [math.log(0.5)], [math.log(0.5)]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    x = logps.clone().requires_grad_(True)
    loss = grpo_loss(x, old, None, adv, torch.ones(4, 1), clip_eps=eps, beta=0.0, loss_type="dapo")
    (grad,) = torch.autograd.grad(loss, [x])
    # d(-rho A)/d logp / 4 tokens = -A rho / 4 where the unclipped term is the minimum
    expected = torch.tensor([[0.0], [1.5 / 4], [-0.5 / 4], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    # inside [1 - eps, 1 + eps] every case has a gradient
    x = torch.full((4, 1), math.log(1.1), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(grpo_loss(x, old, None, adv, torch.ones(4, 1), beta=0.0, loss_type="dapo"), [x])
    assert bool((grad.abs() > 0.1).all())


def test_grpo_loss_ignores_padding_even_if_it_is_inf():
    logps, old, ref, adv, mask = _batch(4)
    poisoned = logps.masked_fill(mask == 0, float("-inf"))
    for loss_type in LOSS_TYPES:
        a = grpo_loss(logps, old, ref, adv, mask, loss_type=loss_type)
        b = grpo_loss(poisoned, old, ref, adv, mask, loss_type=loss_type)
        assert float(a) == float(b)


def test_grpo_loss_rejects_bad_input():
    logps, old, ref, adv, mask = _batch()
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(logps, old, ref, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="old_logps"):
        grpo_loss(logps, old[:, :-1], ref, adv, mask)
    with pytest.raises(ValueError, match=r"advantages must be \(B,\)"):
        grpo_loss(logps, old, ref, adv.unsqueeze(1), mask)
    with pytest.raises(ValueError, match="pass ref_logps"):
        grpo_loss(logps, old, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(logps, old, ref, adv, mask, clip_eps=1.5)
    empty = mask.clone()
    empty[3] = 0
    with pytest.raises(ValueError, match="completion 3 has no token"):
        grpo_loss(logps, old, ref, adv, empty)


# ----------------------------------------------------------------------------- a GRPO step on a toy problem


def test_sample_completions_masks_after_the_first_eos():
    model = _tiny_gpt()
    completions, mask = sample_completions(model, torch.zeros(16, 2, dtype=torch.long), 6, eos_id=0, seed=3)
    assert completions.shape[0] == 16 and mask.shape == completions.shape
    for row, keep in zip(completions.tolist(), mask.tolist(), strict=True):
        first = row.index(0) if 0 in row else len(row)
        assert keep == [True] * min(first + 1, len(row)) + [False] * (len(row) - first - 1)
    assert not bool(mask.all())  # some row did stop early: the check above saw padding


def test_grpo_step_raises_the_reward_on_a_toy_problem():
    """Reward = the share of completion tokens equal to 3; random at first (about 1/6), it climbs within 30 steps."""
    model = _tiny_gpt(seed=0)
    ref_model = _tiny_gpt(seed=0).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompts = torch.tensor([[1, 2], [4, 5]])
    seeds = iter(range(1000))

    def sample_fn(m, p):
        return sample_completions(m, p, max_new_tokens=4, seed=next(seeds))

    def reward_fn(p, completions, mask):
        return ((completions == 3) & mask).sum(1) / mask.sum(1)

    start = time.perf_counter()
    history = []
    for _ in range(30):
        out = grpo_step(model, optimizer, prompts, sample_fn, reward_fn, group_size=8, ref_model=ref_model)
        history.append(float(out.rewards.mean()))
    elapsed = time.perf_counter() - start
    first, last = statistics.fmean(history[:5]), statistics.fmean(history[-5:])
    assert first < 0.35 and last > first + 0.3, (first, last, history)
    assert elapsed < 10, elapsed


def test_grpo_step_rejects_bad_input():
    model = _tiny_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prompts = torch.zeros(2, 2, dtype=torch.long)

    def sample_fn(m, p):
        return sample_completions(m, p, 3, seed=0)

    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        grpo_step(model, opt, prompts, sample_fn, lambda p, c, m: torch.zeros(2), group_size=1, beta=0.0)
    with pytest.raises(ValueError, match="pass ref_model"):
        grpo_step(model, opt, prompts, sample_fn, lambda p, c, m: torch.zeros(16))
    with pytest.raises(ValueError, match=r"reward 2.0 is outside its declared range \[0.0, 1.0\]"):
        grpo_step(model, opt, prompts, sample_fn, lambda p, c, m: torch.full((16,), 2.0), beta=0.0)
    with pytest.raises(ValueError, match="one reward per completion"):
        grpo_step(model, opt, prompts, sample_fn, lambda p, c, m: torch.zeros(3), beta=0.0)
