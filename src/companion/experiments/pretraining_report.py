"""The result of the pre-training experiment (``pretraining_pays``) read back: its table and the plots of chapter 9."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from companion.experiments import committed

DEFAULT_OUT = committed("finetune")  # the full run the chapter reads (written only with --out)
SHORT_NAMES = {
    "bow": "bag of\nwords",
    "scratch": "GPT from\nscratch",
    "minilm_probe": "MiniLM\nprobe",
    "finetune_head": "pre-trained GPT,\nhead only",
    "finetune_full": "pre-trained GPT,\nfully fine-tuned",
}


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a result JSON (default: the committed full run)."""
    return json.loads(Path(path or DEFAULT_OUT).read_text())


def results_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per method, one column per label count, 'mean ± std' in %."""
    counts = result["label_counts"]
    head = "| method | " + " | ".join(f"n = {n:,}" for n in counts) + " |"
    rows = [head, "|" + "---|" * (len(counts) + 1)]
    for m, per_n in result["results"].items():
        cells = [f"{100 * per_n[str(n)]['mean']:.1f} ± {100 * per_n[str(n)]['std']:.1f}" for n in counts]
        rows.append(f"| {result['methods'][m]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_learning_curves(result: dict[str, Any], ax=None, title: str | None = None):
    """Test accuracy (mean ± std over seeds) against the number of labelled examples, log x-axis."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    counts = result["label_counts"]
    for i, (m, per_n) in enumerate(result["results"].items()):
        mean = np.array([per_n[str(n)]["mean"] for n in counts]) * 100
        std = np.array([per_n[str(n)]["std"] for n in counts]) * 100
        shift = 1.03 ** (i - 2)  # small horizontal offsets keep the error bars apart
        ax.errorbar(np.array(counts) * shift, mean, yerr=std, marker="o", capsize=3, label=result["methods"][m])
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{n:,}" for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("labelled training sentences (log scale)")
    ax.set_ylabel("test accuracy (%)")
    seeds = len(result["config"]["seeds"])
    ax.set_title(title or f"Rotten Tomatoes: accuracy vs labels ({seeds} seed{'s' * (seeds > 1)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_accuracy_bars(result: dict[str, Any], n: int | None = None, ax=None, title: str | None = None):
    """Bar chart of test accuracy per method at one label count (default: the largest), with std error bars."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    n = n or max(result["label_counts"])
    methods = list(result["results"])
    mean = [100 * result["results"][m][str(n)]["mean"] for m in methods]
    std = [100 * result["results"][m][str(n)]["std"] for m in methods]
    ax.bar(range(len(methods)), mean, yerr=std, capsize=4, color=[f"C{i}" for i in range(len(methods))])
    for i, (m_, s_) in enumerate(zip(mean, std)):
        ax.text(i, m_ + s_ + 0.5, f"{m_:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(methods)), [SHORT_NAMES[m] for m in methods], fontsize=8)
    ax.set_ylim(min(45, min(mean) - 5), max(mean) + max(std) + 5)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"Rotten Tomatoes test accuracy, n = {n:,} labels")
    return ax
