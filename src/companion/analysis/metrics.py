r"""Evaluation metrics: bits per character / byte for language models; classifier accuracy, F1, mean ± std or ± SE.

A language model's total negative log-likelihood of a text, $-\sum_t \ln P(x_t \mid x_{<t})$ in
nats, does not depend on how the text was cut into tokens, so dividing it by a property of the
*text* gives a score that models with different tokenizers share:
bits per character $= (\text{total nats} / \ln 2) / \text{characters}$, and bits per byte the same
over the text's UTF-8 bytes. (Per-token perplexities are comparable only within one tokenizer.)

With predictions $\hat y_i$ and labels $y_i$ for $i = 1..N$ and classes $0..K-1$:
accuracy $= \frac1N \sum_i [\hat y_i = y_i]$; the confusion matrix $C_{ab}$ counts examples of
true class $a$ predicted as $b$; per class $c$, precision $P_c = C_{cc} / \sum_a C_{ac}$,
recall $R_c = C_{cc} / \sum_b C_{cb}$ and $F1_c = 2 P_c R_c / (P_c + R_c)$; macro-F1 averages
$F1_c$ over classes.

Two systems scored on the *same* items are compared item by item. For right/wrong outcomes,
McNemar's exact test looks only at the discordant items: $b$ that A gets right and B wrong, $c$ the
reverse. If A and B were equally good, each discordant item would fall either way with probability
1/2, so $\min(b, c)$ is binomial$(b + c, 1/2)$ and the two-sided p-value is
$\min(1, 2 P[X \le \min(b, c)])$. For any per-item score (a reciprocal rank), the paired bootstrap
resamples the items with replacement and reads a confidence interval of the mean difference off the
resampled means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "accuracy",
    "binomial_se",
    "bits_per_byte",
    "bits_per_character",
    "check_labels",
    "classification_report",
    "confusion_matrix",
    "f1_scores",
    "macro_f1",
    "mcnemar_exact",
    "mcnemar_p",
    "mean_se",
    "mean_std",
    "paired_bootstrap",
]


def _bits_per(total_nats: float, n: int, unit: str) -> float:
    """total_nats / ln 2 / n, after checking both."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of {unit}s must be a positive int (or a non-empty str), got {n!r}")
    total = float(total_nats)
    if not total >= 0.0:  # also rejects NaN
        raise ValueError(f"total_nats must be a non-negative total negative log-likelihood, got {total_nats!r}")
    return total / math.log(2) / n


def bits_per_character(total_nats: float, text_or_n_chars: str | int) -> float:
    """Bits per character: (total NLL in nats / ln 2) / number of characters of the scored text."""
    n = len(text_or_n_chars) if isinstance(text_or_n_chars, str) else text_or_n_chars
    return _bits_per(total_nats, n, "character")


def bits_per_byte(total_nats: float, text_or_n_bytes: str | int) -> float:
    """Bits per UTF-8 byte: (total NLL in nats / ln 2) / number of bytes of the scored text."""
    n = len(text_or_n_bytes.encode("utf-8")) if isinstance(text_or_n_bytes, str) else text_or_n_bytes
    return _bits_per(total_nats, n, "byte")


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


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error, sample std / sqrt(n) (0.0 for a single value), of a list of numbers."""
    if not values:
        raise ValueError("mean_se of an empty list is undefined")
    m, std = mean_std(values)
    return m, std / math.sqrt(len(values))


def binomial_se(p: float, n: int) -> float:
    """The standard error sqrt(p (1 - p) / n) of a proportion p measured on n independent items."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 1 and p in [0, 1], got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)


def _paired(a: Sequence[Any], b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length, non-empty score lists as float64 arrays."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"paired scores must be two non-empty lists of one length, got {x.shape} and {y.shape}")
    return x, y


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)])."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n  # P[X <= min(b, c)], exact
    return min(1.0, 2.0 * tail)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test of two systems right/wrong on the same items: {"b", "c", "p"}.

    b: the items only A gets right; c: the items only B gets right; p: `mcnemar_p(b, c)`.
    """
    x, y = _paired(a_correct, b_correct)
    if not np.isin(x, (0.0, 1.0)).all() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("mcnemar_exact needs right/wrong outcomes (booleans or 0/1)")
    b, c = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return {"b": b, "c": c, "p": mcnemar_p(b, c)}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """mean(a) - mean(b) over paired items and its percentile bootstrap interval: {"diff", "lo", "hi"}."""
    x, y = _paired(a, b)
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    d = x - y  # (n,) per-item differences
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))  # (n_boot, n) resampled items
    means = d[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}
