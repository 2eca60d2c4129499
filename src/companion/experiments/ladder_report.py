"""The ablation ladder's result read back (``companion.experiments.ladder``): its table and its two plots."""

from __future__ import annotations

from typing import Any

from companion.analysis.metrics import mean_se
from companion.experiments.ladder_models import INIT_NAMES


def ladder_table(result: dict[str, Any]) -> str:
    """A Markdown table of the ladder: rung, parameters, bits per character and the step from the rung before
    (bits saved), each mean +- standard error over the seeds."""
    rows = ["| rung | parameters | bits per character | step (bits saved) |", "|---|---:|---:|---:|"]
    for r in result["ladder"]:
        step = "" if r["gain"] is None else f"{r['gain']:+.3f} ± {r['gain_se']:.3f}"
        rows.append(f"| {r['label']} | {r['parameters']:,} | {r['bits']:.3f} ± {r['se']:.3f} | {step} |")
    seeds = result["ladder"][0]["n"]
    return "\n".join(rows) + f"\n\n(n = {seeds} seed{'s' * (seeds > 1)})"


def plot_ladder(result: dict[str, Any], ax: Any = None, title: str | None = None):
    """Bits per character of every rung, mean with +-1 standard error bars, parameters written above; the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    ladder = result["ladder"]
    x = range(len(ladder))
    bits, se = [r["bits"] for r in ladder], [r["se"] for r in ladder]
    ax.errorbar(x, bits, yerr=se, marker="o", capsize=4, linestyle="-", color="C0", label="trained, this budget")
    for i, r in enumerate(ladder):
        label = f"{r['parameters'] / 1000:.1f}k"
        ax.annotate(label, (i, r["bits"]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    race, shown = result["race"], [r["rung"] for r in ladder]
    if race is not None and race["init"] != result["config"]["init"] and set(race["pair"]) <= set(shown):
        # the race trained the same two rungs with the models' own initialisation: show them too
        stats = [mean_se([row[rung] for row in race["per_seed"]]) for rung in race["pair"]]
        xs, means, ses = [shown.index(rung) for rung in race["pair"]], [m for m, _ in stats], [e for _, e in stats]
        label = f"{INIT_NAMES[race['init']]} (the race, {len(race['seeds'])} seeds)"
        style = {"marker": "s", "mfc": "none", "capsize": 4, "linestyle": "none", "color": "C2"}
        ax.errorbar(xs, means, yerr=ses, label=label, **style)
    counted = result["reference"]["bigram_counts_bits"]
    ax.axhline(counted, color="C1", linestyle="--", linewidth=1, label=f"bigram from counts ({counted:.2f})")
    ax.set_xticks(list(x), [r["label"].replace(" (", "\n(") for r in ladder], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("validation bits per character")
    ax.margins(y=0.12)  # room for the parameter counts
    cfg = result["config"]
    seeds = len(cfg["seeds"])
    runs = f"{cfg['steps']} steps, {seeds} seed{'s' * (seeds > 1)}, {INIT_NAMES[cfg['init']]}, ±1 SE"
    ax.set_title(title or f"The ablation ladder ({runs})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_race(result: dict[str, Any], ax: Any = None, title: str | None = None):
    """The race seed by seed: one line per seed from the GPT-2 block to the modern block, the means +-1 SE; the axes."""
    import matplotlib.pyplot as plt

    race = result["race"]
    if race is None:
        raise ValueError("this result has no race (its race_seeds are empty)")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    a, b = race["pair"]
    for row in race["per_seed"]:
        ax.plot([0, 1], [row[a], row[b]], color="grey", alpha=0.6, marker=".")
    for i, rung in enumerate((a, b)):
        mean, se = mean_se([row[rung] for row in race["per_seed"]])
        ax.errorbar([i], [mean], yerr=[se], marker="o", capsize=5, color=f"C{i}", markersize=8)
    lr = race["lr"]
    ax.set_xticks([0, 1], [f"GPT-2 block\n(lr {lr[a]:g})", f"modern block\n(lr {lr[b]:g})"], fontsize=9)
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel("validation bits per character")
    d, se, p = race["mean_difference"], race["se_difference"], race["p_value"]
    ax.set_title(title or f"{race['verdict']}: GPT-2 − modern = {d:+.3f} ± {se:.3f} bits (p = {p:.2g})", fontsize=9)
    ax.grid(alpha=0.3)
    return ax
