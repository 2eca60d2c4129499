"""The scaling sweep: its plan, the tiny preset end to end, and the committed full result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from companion.experiments import scaling_sweep as sweep
from companion.experiments.scaling_sweep import PRESETS, SweepConfig, main, plan_runs

COMMITTED = Path(sweep.__file__).resolve().parents[1] / "results" / "scaling_sweep.json"
RUN_KEYS = {
    "key",
    "budget",
    "n_layers",
    "d_model",
    "n_heads",
    "d_ff",
    "n_params",
    "n_params_total",
    "tokens",
    "steps",
    "flops",
    "flops_with_attention",
    "flops_total_params",
    "lr",
    "warmup_steps",
    "val_loss",
    "final_train_loss",
    "train_seconds",
    "train_cpu_seconds",
    "tokens_per_second",
    "curve",
}
META_KEYS = {
    "command",
    "preset",
    "date_utc",
    "torch_version",
    "python_version",
    "platform",
    "cpu_count",
    "torch_threads",
    "train_tokens",
    "val_tokens",
    "chars_per_token",
    "unigram_entropy",
    "wall_seconds",
}


def check_schema(result: dict) -> None:
    """Everything chapter 8 reads from a sweep JSON is there and consistent."""
    assert result["format"] == "companion-scaling-sweep" and result["version"] == 1
    cfg = SweepConfig(
        **{
            k: tuple(map(tuple, v)) if k == "shapes" else tuple(v) if isinstance(v, list) else v
            for k, v in result["config"].items()
        }
    )
    assert META_KEYS <= set(result["metadata"]), META_KEYS - set(result["metadata"])
    assert result["metadata"]["command"].startswith("python -m companion.experiments.scaling_sweep")
    runs = result["runs"]
    assert [r["key"] for r in runs] == [p.key for p in plan_runs(cfg)][: len(runs)]
    tokens_per_step = cfg.batch_size * cfg.block_size
    for r in runs:
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["tokens"] == r["steps"] * tokens_per_step
        assert r["flops"] == 6 * r["n_params"] * r["tokens"]
        assert r["flops_with_attention"] > r["flops"]
        assert r["flops"] == pytest.approx(r["budget"], rel=0.5 / r["steps"] + 1e-9)  # steps rounded
        assert r["n_params_total"] > r["n_params"] > 0
        assert 0 < r["val_loss"] < np.log(cfg.vocab_size) + 1  # finite, and it learned something
        curve = r["curve"]
        assert len(curve["tokens"]) == len(curve["train_loss"]) <= cfg.curve_points
        assert curve["tokens"][-1] == r["tokens"] and np.all(np.diff(curve["tokens"]) > 0)


def best_by_budget(result: dict) -> dict[float, float]:
    best: dict[float, float] = {}
    for r in result["runs"]:
        best[r["budget"]] = min(best.get(r["budget"], np.inf), r["val_loss"])
    return best


def test_plan_follows_d_equals_c_over_6n():
    cfg = PRESETS["full"]
    plans = plan_runs(cfg)
    assert len(plans) == len(cfg.budgets) * cfg.sizes_per_budget
    for p in plans:
        d = p.steps * cfg.batch_size * cfg.block_size
        assert 6 * p.n_params * d == pytest.approx(p.budget, rel=0.5 / p.steps)
    # the brief of the experiment: >= 7 sizes spanning >= 30x at each of >= 3 budgets
    assert len(cfg.budgets) >= 3
    for budget in cfg.budgets:
        sizes = sorted({p.n_params for p in plans if p.budget == budget})
        assert len(sizes) >= 7 and sizes[-1] / sizes[0] >= 30, (budget, sizes)
    assert len({p.key for p in plans}) == len(plans)


def test_config_errors():
    with pytest.raises(ValueError, match="2 budgets but 1 windows"):
        SweepConfig(name="x", shapes=((1, 16),), budgets=(1e9, 2e9), windows=(0,), sizes_per_budget=1)
    with pytest.raises(ValueError, match="runs past the 2 shapes"):
        SweepConfig(name="x", shapes=((1, 16), (1, 32)), budgets=(1e9,), windows=(1,), sizes_per_budget=2)
    with pytest.raises(ValueError, match="budgets must be positive"):
        SweepConfig(name="x", shapes=((1, 16),), budgets=(0.0,), windows=(0,), sizes_per_budget=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sweep") / "tiny.json"
    main(["--preset", "tiny", "--out", str(out), "--quiet"])
    return out, json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_sweep_schema(tiny):
    _, result = tiny
    assert result["complete"] is True
    check_schema(result)
    assert len(result["runs"]) == 6
    # the best model of the larger budget beats the unigram baseline (token frequencies alone)
    best = best_by_budget(result)
    assert best[max(best)] < result["metadata"]["unigram_entropy"]
    assert result["metadata"]["command"].endswith("--quiet")


@pytest.mark.slow
def test_tiny_sweep_loss_falls_with_compute(tiny):
    _, result = tiny
    best = best_by_budget(result)
    budgets = sorted(best)
    assert all(best[b] > best[c] for b, c in zip(budgets, budgets[1:])), best
    by_shape: dict[tuple, list] = {}
    for r in result["runs"]:
        by_shape.setdefault((r["n_layers"], r["d_model"]), []).append((r["budget"], r["val_loss"]))
    for shape, points in by_shape.items():  # the same model trained on more tokens does better
        losses = [loss for _, loss in sorted(points)]
        assert all(a > b for a, b in zip(losses, losses[1:])), (shape, points)


@pytest.mark.slow
def test_resume_reuses_finished_runs(tiny, monkeypatch):
    out, result = tiny

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "run_one", no_training)
    again = main(["--preset", "tiny", "--out", str(out), "--resume", "--quiet"])
    assert again["runs"] == result["runs"]
    assert again["metadata"]["command"] == result["metadata"]["command"]  # how it was started
    assert again["metadata"]["resumed"][-1]["command"].endswith("--resume --quiet")


@pytest.mark.skipif(not COMMITTED.exists(), reason="the full sweep's JSON is not committed yet")
def test_committed_full_sweep():
    """The result chapter 8 plots: complete, consistent, small, and loss falls with compute."""
    assert COMMITTED.stat().st_size < 200_000
    result = json.loads(COMMITTED.read_text())
    assert result["complete"] is True and result["config"]["name"] == "full"
    check_schema(result)
    assert len(result["runs"]) == len(plan_runs(PRESETS["full"]))
    assert result["config"] == json.loads(json.dumps(PRESETS["full"].to_dict()))
    best = best_by_budget(result)
    budgets = sorted(best)
    assert all(best[b] > best[c] for b, c in zip(budgets, budgets[1:])), best
