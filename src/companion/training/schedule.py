r"""The learning-rate schedule every training loop of the book uses: linear warm-up, then cosine decay.

$\eta_t = \eta_{max} (t+1)/W$ for $t < W$; then with $r = (t-W)/(D-W)$,
$\eta_t = \eta_{min} + \tfrac12 (\eta_{max}-\eta_{min})(1+\cos \pi r)$; and $\eta_{min}$ from step $D$ on.
It takes plain numbers, so `train` (from its `TrainConfig`) and fine-tuning (from its
`FinetuneConfig`) call the same function.
"""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, *, lr: float, min_lr: float = 0.0, warmup_steps: int = 0, decay_steps: int) -> float:
    """Learning rate at `step` (0-based): linear warm-up to `lr`, cosine decay to `min_lr` at `decay_steps`."""
    if step < 0 or warmup_steps < 0 or decay_steps < 1:
        raise ValueError(
            f"need step, warmup_steps >= 0 and decay_steps >= 1, got {step}, {warmup_steps}, {decay_steps}"
        )
    if lr <= 0 or not 0 <= min_lr <= lr:
        raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr}, min_lr={min_lr}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
