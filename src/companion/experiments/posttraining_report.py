"""Chapter 10's experiment read back (``companion.experiments.posttraining``): summary over seeds, table, plots.

For each stage and test, the mean accuracy over the seeds and its standard error (sample std / sqrt(seeds)); for
each comparison of two stages, the paired difference seed by seed (to - from), its mean and standard error, and
with three seeds or more a paired t-test (scipy.stats.ttest_rel). The summary makes many comparisons at once (every
pair of stages on both tests), so the p-values are adjusted with Holm's step-down method (Holm 1979), which keeps
the chance of *any* false "better"/"worse" below 0.05. The verdict is "better" or "worse" only when the adjusted
p < 0.05, otherwise "no detectable difference": a stage that does not help is reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy.stats import ttest_rel

from companion.analysis.metrics import mean_se

__all__ = ["P_THRESHOLD", "holm", "paired_difference", "plot_hacking", "plot_test_time", "stage_table", "summarize"]

P_THRESHOLD = 0.05
TESTS = ("seen", "held_out")
CURVES = ("reward", "accuracy", "reply_chars", "ended")


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    """after - before seed by seed: the differences, their mean and standard error, t and p (ttest_rel, >= 3 seeds)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need the same seeds on both sides, got {len(before)} and {len(after)} values")
    diffs = [b - a for a, b in zip(before, after)]
    mean, se = mean_se(diffs)
    t = p = None
    if len(diffs) >= 3:
        if se > 1e-12:
            t, p = (float(v) for v in ttest_rel(after, before))
        else:  # every seed gave the same difference (up to rounding): no spread to test against
            t, p = (math.copysign(math.inf, mean), 0.0) if mean else (0.0, 1.0)
    if p is None:
        verdict = "not tested (fewer than 3 seeds)"
    elif p < P_THRESHOLD:
        verdict = "better" if mean > 0 else "worse"
    else:
        verdict = "no detectable difference"
    return {
        "per_seed": [_r(d) for d in diffs],
        "mean": _r(mean),
        "se": _r(se),
        "t": None if t is None or math.isinf(t) else _r(t, 3),
        "p_value": _r(p, 5),
        "verdict": verdict,
    }


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None): the i-th smallest of m is multiplied by m - i + 1,
    then made non-decreasing in that order and capped at 1."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    if any(not 0 <= p <= 1 for p, _ in tested):
        raise ValueError(f"p-values must lie in [0, 1], got {[p for p, _ in tested]}")
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def _with_holm(differences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The differences with Holm-adjusted p-values, and verdicts taken on those."""
    for d, adjusted in zip(differences, holm([d["p_value"] for d in differences])):
        d["p_holm"] = _r(adjusted, 5)
        if adjusted is not None:
            better = d["mean"] > 0
            d["verdict"] = ("better" if better else "worse") if adjusted < P_THRESHOLD else "no detectable difference"
    return differences


def _sweep(runs: list[dict[str, Any]], section: str, key: str, values_key: str) -> list[dict[str, Any]]:
    """Mean +- SE over seeds of each swept setting's accuracies and sampled KL (DPO's betas, GRPO's lrs)."""
    rows = []
    for i, value in enumerate(entry[key] for entry in runs[0][section][values_key]):
        row: dict[str, Any] = {key: value}
        for test in ("seen", "held_out", "val"):
            accs = [r[section][values_key][i][test]["accuracy"] for r in runs]
            row[test] = dict(zip(("mean", "se"), map(_r, mean_se(accs))))
        row["kl"] = dict(zip(("mean", "se"), map(_r, mean_se([r[section][values_key][i]["kl"]["mean"] for r in runs]))))
        rows.append(row)
    return rows


def _stage_summary(runs: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    """Mean and standard error over the runs of one stage's accuracy on each test, and per family (held-out)."""
    out: dict[str, Any] = {}
    for test in TESTS:
        accs = [r["stages"][stage][test]["accuracy"] for r in runs]
        mean, se = mean_se(accs)
        out[test] = {"mean": _r(mean), "se": _r(se), "per_seed": accs}
    families = runs[0]["stages"][stage]["held_out"]["per_family"]
    out["held_out_per_family"] = {
        f: _r(sum(r["stages"][stage]["held_out"]["per_family"][f]["accuracy"] for r in runs) / len(runs))
        for f in families
    }
    return out


def _mean_curve(curves: list[list[float]]) -> list[float]:
    """The step-by-step mean of equal-length curves."""
    return [_r(sum(values) / len(values)) for values in zip(*curves)]


def summarize(runs: list[dict[str, Any]], stages: Sequence[str], comparisons: Sequence[tuple[str, str]]) -> dict:
    """The summary of per-seed records: stages, paired differences, DPO's beta sweep, test-time compute, GRPO curves."""
    if not runs:
        raise ValueError("no runs to summarise")
    differences = []
    for a, b in comparisons:
        for test in TESTS:
            before = [r["stages"][a][test]["accuracy"] for r in runs]
            after = [r["stages"][b][test]["accuracy"] for r in runs]
            differences.append({"from": a, "to": b, "test": test} | paired_difference(before, after))
    ttc = [r["test_time"] for r in runs]
    return {
        "seeds": [r["seed"] for r in runs],
        "stages": {s: _stage_summary(runs, s) for s in stages},
        "differences": _with_holm(differences),
        "dpo_betas": _sweep(runs, "dpo", "beta", "betas"),
        "dpo_selected_betas": [r["dpo"]["selected_beta"] for r in runs],
        "grpo_lrs": _sweep(runs, "grpo", "lr", "lrs"),
        "grpo_selected_lrs": [r["grpo"]["selected_lr"] for r in runs],
        "test_time": {
            "k": ttc[0]["k"],
            "majority": [dict(zip(("mean", "se"), map(_r, mean_se(v)))) for v in zip(*(t["majority"] for t in ttc))],
            "pass_at_k": [dict(zip(("mean", "se"), map(_r, mean_se(v)))) for v in zip(*(t["pass_at_k"] for t in ttc))],
        },
        "grpo_reward_curve": _mean_curve([r["grpo"]["curves"]["reward"] for r in runs]),
        "hack": {
            run: {key: _mean_curve([r["reward_hacking"][run][key] for r in runs]) for key in CURVES}
            for run in ("curves", "fix_curves")
        },
        "rule": (
            f"verdict 'better'/'worse' only when the paired t-test over seeds, Holm-adjusted over all "
            f"{len(differences)} comparisons, gives p < {P_THRESHOLD}"
        ),
    }


def stage_table(result: dict[str, Any]) -> str:
    """A Markdown table: each stage's accuracy on the seen-wording and held-out-wording tests, mean +- SE."""
    summary = result["summary"]
    n = len(summary["seeds"])
    rows = ["| stage | seen wordings | held-out wordings |", "|---|---:|---:|"]
    for stage, s in summary["stages"].items():
        cells = [f"{100 * s[t]['mean']:.1f} ± {100 * s[t]['se']:.1f} %" for t in TESTS]
        rows.append(f"| {result['stage_labels'].get(stage, stage)} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + f"\n\n(accuracy, mean ± standard error over {n} seed{'s' * (n > 1)})"


def plot_hacking(result: dict[str, Any], axes: Any = None):
    """Reward hacking, mean over seeds: the reward each run optimised, the exact checker's accuracy on the same
    samples, and the reply length, step by step, for the flawed reward and its fix; the two axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    hack = result["summary"]["hack"]
    for run, label, color in (("curves", "flawed reward (recall)", "C3"), ("fix_curves", "exact checker", "C0")):
        c = hack[run]
        steps = range(1, len(c["reward"]) + 1)
        axes[0].plot(steps, c["reward"], color=color, label=f"{label}: its reward")
        axes[0].plot(steps, c["accuracy"], color=color, linestyle="--", label=f"{label}: true accuracy")
        axes[1].plot(steps, c["reply_chars"], color=color, label=label)
    axes[0].set_ylabel("mean over the step's samples")
    axes[1].set_ylabel("reply length (characters)")
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return axes


def plot_test_time(result: dict[str, Any], ax: Any = None):
    """Accuracy of the final model on the held-out test against the k sampled replies per prompt: majority
    voting (no checker) and best-of-k with the checker (pass@k), mean +- SE over seeds; the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ttc = result["summary"]["test_time"]
    for key, label in (("majority", "majority vote"), ("pass_at_k", "best of k (checker), pass@k")):
        means, ses = [v["mean"] for v in ttc[key]], [v["se"] for v in ttc[key]]
        ax.errorbar(ttc["k"], means, yerr=ses, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ttc["k"], [str(k) for k in ttc["k"]])
    ax.set_xlabel("samples per prompt k")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
