"""Preference optimisation: the log-probability of a response, and Direct Preference Optimisation (DPO).

A preference pair is a prompt x with two answers, the chosen y_w and the rejected y_l. The Bradley-Terry model
(Bradley & Terry 1952) says how likely a person prefers y_w, given a hidden reward r(x, y):

    p(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)).

RLHF (Ouyang et al. 2022) fits r to the pairs, then maximises it while staying near a reference model:

    max_pi  E_{y ~ pi}[r(x, y)] - beta KL(pi(.|x) || pi_ref(.|x)),

whose optimum is pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), with Z(x) = sum_y pi_ref(y|x) exp(r(x, y)/beta).
Solving for the reward gives

    r(x, y) = beta log pi*(y|x) / pi_ref(y|x) + beta log Z(x),

and the intractable Z(x) cancels in the difference r(x, y_w) - r(x, y_l) that Bradley-Terry needs. Putting the
policy in place of pi* turns reward modelling into a classification loss on the policy itself (Rafailov et al.
2023, arXiv:2305.18290):

    L_DPO = -log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]),

averaged over the pairs. beta (log pi - log pi_ref) is the policy's *implicit reward*. log pi(y|x) is the sum of the
response tokens' log-probabilities, the prompt's positions ignored as in SFT masking (`sequence_logprobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from companion.training.objectives import IGNORE_INDEX

__all__ = ["PreferencePair", "dpo_loss", "implicit_reward", "sequence_logprobs", "token_logprobs"]


@dataclass(frozen=True)
class PreferencePair:
    """One preference: a prompt, the answer people chose and the one they rejected."""

    prompt: str
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"PreferencePair.{name} must be a str, got {type(value).__name__}")
        if self.chosen == self.rejected:
            raise ValueError(
                "a preference pair with identical answers teaches nothing: chosen == rejected == "
                f"{self.chosen[:60]!r} (prompt {self.prompt[:60]!r})"
            )


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position log softmax(logits)[target], 0 where the target is IGNORE_INDEX: (B, T, V), (B, T) -> (B, T)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: targets must be (B, T)"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    keep = targets != IGNORE_INDEX  # (B, T)
    vocab = logits.size(-1)
    bad = keep & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        raise ValueError(f"target id {int(targets[bad][0])} is outside the vocabulary [0, {vocab}) (and not -100)")
    if logits.dtype in (torch.float16, torch.bfloat16):  # sums of half-precision log-probs round badly
        logits = logits.float()
    log_probs = logits.log_softmax(dim=-1)  # (B, T, V)
    picked = log_probs.gather(-1, targets.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked.masked_fill(~keep, 0.0)  # masked_fill, not a product: 0 * -inf would be NaN


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(response | prompt) per row: the sum of log softmax(logits)[target] over targets != -100 -> (B,).

    logits (B, T, V) and targets (B, T) are aligned: the logits at position t score targets[:, t] (the next-token
    targets of causal LM). A row with no target at all raises: its log-probability would be a meaningless 0.
    """
    picked = token_logprobs(logits, targets)  # (B, T)
    empty = ~(targets != IGNORE_INDEX).any(dim=1)  # (B,)
    if bool(empty.any()):
        raise ValueError(
            f"row {int(empty.nonzero()[0])} has no target (every target is {IGNORE_INDEX}): an empty response"
        )
    return picked.sum(dim=1)


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0 (the KL penalty's strength), got {beta!r}")


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta (log pi(y|x) - log pi_ref(y|x)), up to the prompt's beta log Z(x)."""
    _check_beta(beta)
    if policy_logps.shape != ref_logps.shape:
        raise ValueError(f"policy {tuple(policy_logps.shape)} and reference {tuple(ref_logps.shape)} logps disagree")
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss -log sigma(beta * margin), mean over the pairs; also each pair's implicit rewards (detached).

    Each argument is (B,): a summed response log-probability (`sequence_logprobs`). Returns (loss (), chosen_rewards
    (B,), rejected_rewards (B,)); the rewards are for logging, detached as in trl. F.logsigmoid keeps the loss finite
    for any margin (log(sigmoid(z)) would underflow to log 0 = -inf for z below about -100 in float32).
    """
    _check_beta(beta)
    args = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    shapes = {name: tuple(t.shape) for name, t in args.items()}
    if len(set(shapes.values())) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"the four log-probabilities must be 1-D of one length B, got shapes {shapes}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)  log pi(y_w|x) / pi_ref(y_w|x)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # (B,)
    chosen_rewards = implicit_reward(policy_chosen_logps, ref_chosen_logps, beta).detach()
    rejected_rewards = implicit_reward(policy_rejected_logps, ref_rejected_logps, beta).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
