r"""Evaluation metrics for classifiers: accuracy, confusion matrix, F1, and mean ± std over seeds.

With predictions $\hat y_i$ and labels $y_i$ for $i = 1..N$ and classes $0..K-1$:
accuracy $= \frac1N \sum_i [\hat y_i = y_i]$; the confusion matrix $C_{ab}$ counts examples of
true class $a$ predicted as $b$; per class $c$, precision $P_c = C_{cc} / \sum_a C_{ac}$,
recall $R_c = C_{cc} / \sum_b C_{cb}$ and $F1_c = 2 P_c R_c / (P_c + R_c)$; macro-F1 averages
$F1_c$ over classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["accuracy", "check_labels", "classification_report", "confusion_matrix", "f1_scores", "macro_f1", "mean_std"]


def check_labels(labels: Any, n_classes: int, name: str = "labels") -> torch.Tensor:
    """Return labels as a 1-D int64 tensor; raise ValueError if empty or outside 0..n_classes-1."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    try:
        t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a sequence of integer class indices, got {type(labels).__name__}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: the dataset has no examples")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    bad = ((t < 0) | (t >= n_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {int(t[i])} is outside the classes 0..{n_classes - 1}")
    return t


def _pair(predictions: Any, labels: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = check_labels(labels, n_classes, "labels")
    p = check_labels(predictions, n_classes, "predictions")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    return p, y


def accuracy(predictions: Any, labels: Any, n_classes: int = 2) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(predictions, labels, n_classes)
    return float((p == y).float().mean())


def confusion_matrix(predictions: Any, labels: Any, n_classes: int = 2) -> torch.Tensor:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    p, y = _pair(predictions, labels, n_classes)
    return torch.bincount(y * n_classes + p, minlength=n_classes * n_classes).view(n_classes, n_classes)


def f1_scores(predictions: Any, labels: Any, n_classes: int = 2) -> torch.Tensor:
    """Per-class F1 (n_classes,); a class never predicted and never present gets F1 = 0."""
    c = confusion_matrix(predictions, labels, n_classes).double()
    tp = c.diag()
    denom = c.sum(0) + c.sum(1)  # predicted + true = 2 TP + FP + FN
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def macro_f1(predictions: Any, labels: Any, n_classes: int = 2) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(f1_scores(predictions, labels, n_classes).mean())


def classification_report(predictions: Any, labels: Any, n_classes: int = 2) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix (as nested lists) in one JSON-friendly dict."""
    return {
        "accuracy": accuracy(predictions, labels, n_classes),
        "macro_f1": macro_f1(predictions, labels, n_classes),
        "confusion_matrix": confusion_matrix(predictions, labels, n_classes).tolist(),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value) of a list of numbers."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_std of an empty list is undefined")
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
