"""Validation loss: on a fixed sample of batches (during training) or over every token of a text.

`evaluate` draws `eval_steps` batches with a fixed seed, so every call scores the same batches and
the curve of a run is not noisy from the sampling; `evaluate_full` cuts the whole text into
non-overlapping windows, so it has no sampling noise at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from companion.training.batching import BlockSampler, as_token_tensor
from companion.training.objectives import Objective, resolve_objective
from companion.training.trainer import TrainConfig, model_loss, precision_context

__all__ = ["evaluate", "evaluate_full"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    cfg: TrainConfig,
    objective: Objective | str = "clm",
    device: torch.device | None = None,
) -> float:
    """Mean loss over `cfg.eval_steps` batches drawn with a fixed seed (same batches every call)."""
    obj = resolve_objective(objective, model)
    device = device or next(model.parameters()).device
    sampler = BlockSampler(
        data,
        cfg.eval_batch_size or cfg.batch_size,
        obj.window_length(cfg.block_size),
        seed=cfg.seed + 1,
        name="val data",
    )
    was_training = model.training
    model.eval()
    total = 0.0
    for _ in range(cfg.eval_steps):
        x, y = obj(sampler.next(), sampler.generator)
        with precision_context(device, cfg):
            total += model_loss(model, x.to(device), y.to(device)).item()
    model.train(was_training)
    return total / cfg.eval_steps


@torch.no_grad()
def evaluate_full(
    model: nn.Module, data: Any, block_size: int, batch_size: int = 64, cfg: TrainConfig | None = None
) -> float:
    """Next-token loss over ALL of `data`, cut into non-overlapping windows (no sampling noise).

    Every token after the first of each window is predicted once, from the tokens before it in
    its window; the mean is over all predicted tokens.
    """
    data = as_token_tensor(data, "data")
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"data has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}")
    device = next(model.parameters()).device
    cfg = cfg or TrainConfig(dtype="fp32")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_windows)) * block_size
        idx = rows[:, None] + torch.arange(block_size + 1)[None, :]  # (b, T+1)
        window = data[idx].to(device)
        with precision_context(device, cfg):
            loss = model_loss(model, window[:, :-1], window[:, 1:])
        total += loss.item() * rows.numel() * block_size
        count += rows.numel() * block_size
    model.train(was_training)
    return total / count
