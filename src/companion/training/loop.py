r"""One optimisation step, and the loop over in-memory batches that every small training run uses.

A step of gradient descent is always the same five moves: set the scheduled learning rate,
clear the old gradients, compute the loss and its gradient (`loss.backward()`), clip the
gradient's norm, and let the optimizer move the parameters. `set_lr` and `clip_and_check` are
the shared pieces; `run_steps` is the loop over batches held in memory, which fine-tuning
(`companion.training.finetune.fit`) and word vectors (`companion.text.word_vectors`) go through.
`companion.training.trainer.train` uses the same pieces inside its loop over a token stream,
which adds what long runs need (evaluation, checkpoints that resume, micro-batches, DDP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from companion.threads import policy as thread_policy

__all__ = ["clip_and_check", "run_steps", "set_lr"]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the rate lr * its "lr_scale" (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def clip_and_check(params: Iterable[Tensor], grad_clip: float, loss: float, step: int, lr: float) -> float:
    """Clip the gradient norm to grad_clip (0: no clipping) and return the norm before clipping (NaN
    when not clipped); raise FloatingPointError if the loss is not finite, before any update."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at step {step + 1}: lower lr (now {lr:.2e}) or check the data and model"
        )
    if grad_clip <= 0:
        return float("nan")
    return float(nn.utils.clip_grad_norm_(list(params), grad_clip))


def run_steps(
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[int], Tensor],
    steps: int,
    schedule: Callable[[int], float],
    *,
    grad_clip: float = 0.0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Take `steps` optimizer steps; step t minimises `batch_loss(t)` at the rate `schedule(t)`.

    `batch_loss(t)` computes the loss of the t-th batch (the caller decides what a batch is);
    `callback(t + 1, loss)` runs after each step. Returns the loss of every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    for step in range(steps):
        thread_policy.check()  # fewer threads while other processes keep the CPUs busy
        lr = schedule(step)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(step)  # a scalar tensor
        loss.backward()
        value = loss.item()
        clip_and_check(params, grad_clip, value, step, lr)
        optimizer.step()
        losses.append(value)
        if callback is not None:
            callback(step + 1, value)
    return losses
