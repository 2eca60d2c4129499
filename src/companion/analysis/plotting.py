"""Plots shared by the chapters: loss curves of a training run."""

from __future__ import annotations

from typing import Any

import numpy as np


def smooth(values: Any, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start), same length as `values`."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_history(
    history: Any,
    ax: Any = None,
    *,
    label: str | None = None,
    smooth_window: int = 25,
    color: str | None = None,
    raw: bool = True,
):
    """Draw training loss (raw and smoothed) and validation loss against step; return the axes.

    `history` is a `companion.training.trainer.History` or its `to_dict()`. Call it several times on
    the same `ax` (with `label`) to compare runs.
    """
    import matplotlib.pyplot as plt

    h = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    name = f"{label}: " if label else ""
    steps, loss = h.get("step", []), h.get("train_loss", [])
    if len(loss):
        (line,) = ax.plot(steps, smooth(loss, smooth_window), color=color, linewidth=1.5, label=f"{name}train")
        color = line.get_color()
        if raw and smooth_window > 1:  # the noisy per-step losses, faint, in the same colour
            ax.plot(steps, loss, color=color, alpha=0.2, linewidth=0.8)
    if h.get("val_loss"):
        ax.plot(h["eval_step"], h["val_loss"], "o--", color=color, markersize=4, label=f"{name}validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Training curves" if label is None else ax.get_title() or "Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
