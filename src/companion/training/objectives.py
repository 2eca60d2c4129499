"""Pre-training objectives: causal (next-token) and masked language modelling.

Both are multi-class classification over the vocabulary, trained with the cross-entropy

    L = -(1/N) sum_i log softmax(z_i)[y_i],

averaged over the N positions that carry a target (targets equal to -100 are ignored,
PyTorch's convention). An objective turns a window of consecutive tokens into
(inputs, targets): for causal LM the targets are the inputs shifted by one; for masked LM
15% of the positions are corrupted (80% -> [MASK], 10% -> a random token, 10% unchanged)
and only those positions have targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean multi-class cross-entropy over positions whose target is not `ignore_index`.

    logits (..., V), targets (...) of ints. Written out (log-softmax, pick the target's
    log-probability, average) to show the formula; equals `F.cross_entropy`.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
            f"disagree: logits must be targets' shape plus a vocabulary axis"
        )
    log_probs = logits.float().log_softmax(dim=-1)  # (..., V)
    keep = targets != ignore_index  # (...)
    n = int(keep.sum())
    if n == 0:
        raise ValueError("no position has a target: every target equals ignore_index")
    safe = targets.masked_fill(~keep, 0)
    picked = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...)  log p(y_i | ...)
    return -(picked * keep).sum() / n


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (..., V) logits against (...) targets, ignoring -100 targets.

    Equal to ``F.cross_entropy(..., ignore_index=-100)``, except that a batch whose targets are
    all ignored gives a loss of 0 with zero gradients (a batch with nothing to learn from)
    instead of PyTorch's 0/0 = NaN. No host synchronisation: the count stays on the device.
    """
    flat = targets.reshape(-1)
    if logits.dtype in (torch.float16, torch.bfloat16):  # a half-precision loss would round away learning
        logits = logits.float()
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (flat != IGNORE_INDEX).sum().clamp(min=1)


def causal_lm_pairs(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a (B, T+1) window into inputs x[:, :-1] and next-token targets x[:, 1:], (B, T) each."""
    if window.dim() != 2 or window.size(1) < 2:
        raise ValueError(f"a causal-LM window must be (B, T+1) with T >= 1, got {tuple(window.shape)}")
    return window[:, :-1], window[:, 1:]


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    special_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: return (inputs, labels) for masked-LM training.

    Each position that is not a special token is chosen with probability `mask_prob`. A chosen
    position gets label = its original id and its input is replaced by `mask_token_id` (80%),
    by a uniformly random non-special token (10%) or left unchanged (10%). Labels are -100
    at every position that was not chosen. If no position was chosen at all, one eligible
    position is chosen so that the loss is defined.
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
    special = torch.tensor(sorted({int(s) for s in special_ids} | {mask_token_id}), dtype=torch.long)
    eligible = ~torch.isin(ids, special.to(ids.device))  # (B, T) may be chosen
    if not bool(eligible.any()):
        raise ValueError("every position is a special token: nothing can be masked")
    rand = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = (rand < mask_prob) & eligible
    if not bool(chosen.any()):  # make sure the loss has at least one target
        first = int(eligible.flatten().nonzero()[0])
        chosen.view(-1)[first] = True
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)

    action = torch.rand(ids.shape, generator=generator).to(ids.device)  # one draw decides 80/10/10
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1)  # ids a random replacement may take
    random_ids = pool[torch.randint(len(pool), ids.shape, generator=generator)].to(ids.device)

    inputs = ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


class Objective:
    """Turns a window of consecutive tokens into (inputs, targets) for one training step."""

    name = "objective"
    extra_tokens = 0  # window length = block_size + extra_tokens

    def window_length(self, block_size: int) -> int:
        """How many consecutive tokens one training example needs."""
        return block_size + self.extra_tokens

    def __call__(
        self, window: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_vocab(self, vocab_size: int) -> None:
        """Raise if the objective's special ids do not fit a model of this vocabulary size."""


class CausalLM(Objective):
    """Next-token prediction (GPT): predict token t+1 from tokens 1..t at every position."""

    name = "clm"
    extra_tokens = 1

    def __call__(self, window, generator=None):
        return causal_lm_pairs(window)


class MaskedLM(Objective):
    """Masked language modelling (BERT): recover the 15% of tokens that were corrupted."""

    name = "mlm"
    extra_tokens = 0

    def __init__(
        self, mask_token_id: int, vocab_size: int, mask_prob: float = 0.15, special_ids: Sequence[int] = ()
    ) -> None:
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        self.mask_prob = mask_prob
        self.special_ids = tuple(int(s) for s in special_ids)

    def __call__(self, window, generator=None):
        return mask_tokens(
            window,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            mask_prob=self.mask_prob,
            special_ids=self.special_ids,
            generator=generator,
        )

    def check_vocab(self, vocab_size: int) -> None:
        if self.vocab_size > vocab_size:
            raise ValueError(
                f"the MLM objective draws random tokens from {self.vocab_size} ids "
                f"but the model's vocab_size is {vocab_size}"
            )


class FunctionObjective(Objective):
    """Wrap a plain function `fn(window (B, block_size+1), generator) -> (inputs, targets)`."""

    extra_tokens = 1

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def __call__(self, window, generator=None):
        return self.fn(window, generator)


def resolve_objective(objective: Any, model: Any = None) -> Objective:
    """Turn "clm", "mlm", an Objective or a function into an Objective.

    "mlm" reads `mask_token_id` and `vocab_size` from `model.config`; pass `MaskedLM(...)`
    when the model's config does not hold them.
    """
    if isinstance(objective, Objective):
        return objective
    if objective == "clm":
        return CausalLM()
    if objective == "mlm":
        cfg = getattr(model, "config", None)
        mask_id = getattr(cfg, "mask_token_id", None)
        vocab = getattr(cfg, "vocab_size", None)
        if mask_id is None or vocab is None:
            raise ValueError(
                'objective="mlm" needs model.config.mask_token_id and vocab_size; '
                "pass objective=MaskedLM(mask_token_id=..., vocab_size=...) instead"
            )
        special = getattr(cfg, "special_token_ids", None) or ()
        return MaskedLM(int(mask_id), int(vocab), special_ids=special)
    if callable(objective):
        return FunctionObjective(objective)
    raise ValueError(f'objective must be "clm", "mlm", an Objective or a function, got {objective!r}')
