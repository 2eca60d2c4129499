"""Group Relative Policy Optimisation (GRPO): PPO's clipped objective with a group mean as the baseline.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300; used for DeepSeek-R1's reasoning) drops PPO's value network.
For each prompt it samples a group of G completions o_1..o_G, scores them with a reward r_i, and gives every token
of completion i the same advantage, the reward standardised within its group:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

(trl's convention, followed here: the unbiased std, with Bessel's correction, and eps = 1e-4; a group whose rewards
are all equal gets A = 0, so it teaches nothing). Per token, with the ratio rho = pi(o_t) / pi_old(o_t) to the policy
that sampled the group, the objective is PPO's clipped surrogate (Schulman et al. 2017) minus a KL penalty:

    J_t = min(rho A_i, clip(rho, 1 - eps_c, 1 + eps_c) A_i) - beta KL_t,
    KL_t = pi_ref/pi - log(pi_ref/pi) - 1 = exp(ref - logp) - (ref - logp) - 1,

the "k3" estimator of KL(pi || pi_ref): unbiased on samples from pi, and never negative. The loss is -J averaged
over the completion tokens; `loss_type` says how:

* "grpo"     DeepSeekMath's (1/G) sum_i (1/|o_i|) sum_t: a mean over each sequence's tokens, then over sequences
             (long and short answers weigh the same, so each token of a long one counts less),
* "dapo"     trl's default: sum over all tokens / number of tokens (each token weighs the same; equal to trl's
             "bnpo" for one batch on one device),
* "dr_grpo"  Dr. GRPO: sum over all tokens / (number of sequences * the padded length T), a constant.

With logp == old_logp (the first step on a fresh group) rho = 1 and the clip is inactive; if the policy also
equals the reference (the first step of training), the KL's gradient is 0 too, and the gradient is REINFORCE
with a baseline, -sum_i A_i grad log pi(o_i), normalised as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from companion.inference.generation import generate
from companion.posttraining.preference import token_logprobs
from companion.training.objectives import IGNORE_INDEX

__all__ = [
    "GRPOStepOutput",
    "check_rewards",
    "completion_logprobs",
    "grpo_loss",
    "grpo_step",
    "group_advantages",
    "sample_completions",
]

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def check_rewards(rewards: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Return `rewards` unchanged if every value is a number in [low, high]; raise ValueError otherwise."""
    if low > high:
        raise ValueError(f"the reward range is empty: low {low} > high {high}")
    if rewards.numel() == 0:
        raise ValueError("no rewards: the tensor is empty")
    nan = torch.isnan(rewards)
    if bool(nan.any()):
        first = int(nan.reshape(-1).nonzero()[0])
        raise ValueError(f"{int(nan.sum())} of {rewards.numel()} rewards are NaN (the first at flat index {first})")
    outside = (rewards < low) | (rewards > high)
    if bool(outside.any()):
        value = float(rewards[outside][0])
        raise ValueError(f"reward {value} is outside its declared range [{low}, {high}]")
    return rewards


def group_advantages(rewards: Tensor, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """(n_groups, G) rewards -> (n_groups, G) advantages (r - group mean) / (group std + eps), trl's convention.

    The std is the unbiased one (divides by G - 1), as trl's `nanstd` (which rounds Bessel's factor G / (G - 1) to
    float32, so trl's advantages differ from these by about 1e-8 relative); ``scale=False`` keeps r - mean (trl's
    ``scale_rewards="none"``, Dr. GRPO's choice).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (n_groups, G), got shape {tuple(rewards.shape)}")
    if rewards.size(1) < 2:
        raise ValueError(f"a group of {rewards.size(1)} completion has no baseline: GRPO needs G >= 2 per prompt")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite (check_rewards says which one is not)")
    if scale and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be > 0 when scaling (a zero-variance group would give 0/0), got {eps}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (n_groups, G)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)  # std: correction=1 (unbiased)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
) -> Tensor:
    """GRPO's loss, -(clipped surrogate - beta KL_k3), averaged over the completion tokens as `loss_type` says.

    logps, old_logps, ref_logps, mask: (B, T) per completion token (mask 1 = a real token); advantages: (B,).
    old_logps and ref_logps are constants (detached here); ref_logps may be None when beta == 0.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be >= 0, got {beta}")
    if logps.dim() != 2:
        raise ValueError(f"logps must be (B, T), got shape {tuple(logps.shape)}")
    others = {"old_logps": old_logps, "mask": mask} | ({} if ref_logps is None else {"ref_logps": ref_logps})
    for name, t in others.items():
        if t.shape != logps.shape:
            raise ValueError(f"{name} {tuple(t.shape)} disagrees with logps {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logps.size(0)},), got {tuple(advantages.shape)}")
    if ref_logps is None and beta != 0:
        raise ValueError(f"beta = {beta} penalises KL to a reference: pass ref_logps (or set beta = 0)")
    keep = mask.bool()  # (B, T)
    lengths = keep.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError(f"completion {int((lengths == 0).nonzero()[0])} has no token in mask: nothing to score")

    adv = advantages.to(logps.dtype).unsqueeze(1)  # (B, 1): one advantage for every token of a completion
    ratio = torch.exp(logps - old_logps.detach())  # (B, T)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    if beta != 0:
        log_r = ref_logps.detach() - logps  # log pi_ref / pi
        per_token = per_token + beta * (torch.exp(log_r) - log_r - 1)
    per_token = torch.where(keep, per_token, torch.zeros_like(per_token))  # padding may hold anything, even inf

    if loss_type == "grpo":
        return (per_token.sum(dim=1) / lengths).mean()
    if loss_type == "dapo":
        return per_token.sum() / lengths.sum()
    return per_token.sum() / per_token.numel()  # dr_grpo: B * T, the padded length a constant


# ----------------------------------------------------------------------------- one step on a model


def completion_logprobs(model: nn.Module, prompt_ids: Tensor, completion_ids: Tensor, mask: Tensor) -> Tensor:
    """log pi(o_t | prompt, o_<t) of each completion token -> (B, L), 0 where mask is 0.

    prompt_ids (B, P), completion_ids (B, L), mask (B, L); `model(idx).logits` is (B, P + L - 1, V) for the book's
    decoders and Hugging Face causal LMs alike.
    """
    P = prompt_ids.size(1)
    full = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P + L)
    logits = model(full[:, :-1]).logits[:, P - 1 :]  # (B, L, V): position P - 1 + t predicts completion token t
    targets = completion_ids.masked_fill(~mask.bool(), IGNORE_INDEX)  # (B, L)
    return token_logprobs(logits, targets)


def sample_completions(
    model: nn.Module,
    prompt_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample one completion per row of prompt_ids (B, P) -> (completion_ids (B, L), mask (B, L)).

    `companion.inference.generation.generate` does the sampling; mask is 1 up to and including a row's first
    `eos_id` (the tokens after it are padding), and 1 everywhere without eos_id.
    """
    out = generate(model, prompt_ids, max_new_tokens, temperature=temperature, seed=seed, eos_id=eos_id)
    completion = out[:, prompt_ids.size(1) :]  # (B, L)
    if eos_id is None:
        return completion, torch.ones_like(completion, dtype=torch.bool)
    is_eos = (completion == eos_id).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # strictly after the first eos
    return completion, ~after_eos


class GRPOStepOutput(NamedTuple):
    """What one GRPO step returns: the last inner loss, and the group's rewards and advantages, each (N,)."""

    loss: float
    rewards: Tensor
    advantages: Tensor
    completion_ids: Tensor
    mask: Tensor


def grpo_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    prompt_ids: Tensor,
    sample_fn: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]],
    reward_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    *,
    group_size: int = 8,
    ref_model: nn.Module | None = None,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    inner_steps: int = 1,
    loss_type: str = "grpo",
    reward_range: tuple[float, float] = (0.0, 1.0),
) -> GRPOStepOutput:
    """Sample `group_size` completions per prompt, score them, and take `inner_steps` gradient steps on GRPO's loss.

    prompt_ids (n_prompts, P), one prompt per row. ``sample_fn(model, prompts (N, P)) -> (completion_ids (N, L),
    mask (N, L))`` samples (e.g. `sample_completions`), N = n_prompts * group_size, the G rows of a prompt adjacent.
    ``reward_fn(prompts, completion_ids, mask) -> (N,)`` scores, each reward within `reward_range`.
    `ref_model` (frozen) is needed when beta > 0. The first inner step is on-policy (ratio 1: use a model without
    dropout, as the book's models are by default); later ones reuse the same samples, the ratio to the sampling
    policy clipped.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (the baseline is the group's mean), got {group_size!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")
    if beta != 0 and ref_model is None:
        raise ValueError(f"beta = {beta} penalises KL to a reference: pass ref_model (or set beta = 0)")
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be (n_prompts, P), got shape {tuple(prompt_ids.shape)}")
    n_prompts = prompt_ids.size(0)
    prompts = prompt_ids.repeat_interleave(group_size, dim=0)  # (N, P): G copies of each prompt, adjacent

    with torch.no_grad():
        completion_ids, mask = sample_fn(model, prompts)  # (N, L), (N, L)
        rewards = torch.as_tensor(reward_fn(prompts, completion_ids, mask), dtype=torch.float32)
        if rewards.shape != (prompts.size(0),):
            raise ValueError(
                f"reward_fn must return one reward per completion, ({prompts.size(0)},), got {tuple(rewards.shape)}"
            )
        check_rewards(rewards, *reward_range)
        advantages = group_advantages(rewards.view(n_prompts, group_size)).view(-1)  # (N,)
        advantages = advantages.to(completion_ids.device)
        old_logps = completion_logprobs(model, prompts, completion_ids, mask)  # (N, L): the sampling policy
        ref_logps = None if beta == 0 else completion_logprobs(ref_model, prompts, completion_ids, mask)

    for _ in range(inner_steps):
        logps = completion_logprobs(model, prompts, completion_ids, mask)  # (N, L), with gradient
        loss = grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps, beta, loss_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return GRPOStepOutput(loss.item(), rewards, advantages, completion_ids, mask)
