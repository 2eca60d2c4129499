"""The ablation ladder and the GPT-2-vs-modern race: the rungs, the measurements, the paired test and a tiny run."""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import pytest
import torch
from scipy.stats import ttest_rel

from companion.experiments import committed
from companion.experiments import ladder as exp
from companion.experiments import ladder_models as models
from companion.experiments import ladder_report as report
from companion.nn.gpt import GPT
from companion.nn.llama import Llama
from companion.scaling.counting import count_parameters, gpt_parameters, llama_parameters
from companion.training.evaluation import evaluate_full

matplotlib.use("Agg")

SHAPE = models.gpt_config(vocab_size=11, block_size=8, n_layers=2, n_heads=2, d_model=16)


def _build(rung, seed=0, shape=SHAPE):
    torch.manual_seed(seed)
    return models.build_rung(rung, shape)


def _shapes(model):
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


@pytest.mark.parametrize("rung", models.RUNGS)
def test_every_rung_is_a_causal_language_model(rung):
    model = _build(rung).eval()
    idx = torch.randint(0, 11, (3, 8))
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 8, 11) and out.loss.ndim == 0 and math.isfinite(out.loss.item())
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11  # the future must not change the past
    assert torch.allclose(model(changed).logits[:, :5], out.logits[:, :5], atol=1e-6)
    with pytest.raises(ValueError, match="out of range for vocab_size"):
        model(torch.full((1, 4), 11))
    with pytest.raises(ValueError, match="targets shape"):
        model(idx, targets=idx[:, :4])


def test_each_rung_adds_one_part():
    shapes = {rung: _shapes(_build(rung)) for rung in models.RUNGS}
    added = {}
    for below, above in zip(models.RUNGS[1:-2], models.RUNGS[2:-1]):  # embed .. gpt2
        assert set(shapes[below]) <= set(shapes[above])
        new = set(shapes[above]) - set(shapes[below])  # e.g. blocks.0.attn.q_proj.weight, ln_f.weight
        added[above] = {name.split(".")[2] if name.startswith("blocks.") else name.split(".")[0] for name in new}
        assert all(shapes[below][name] == shapes[above][name] for name in shapes[below])
    assert added == {
        "attention": {"attn"},
        "heads": set(),  # same matrices, cut into n_heads heads
        "ffn": {"ffn"},
        "residual": set(),  # same matrices, added back to their input
        "gpt2": {"ln_attn", "ln_ffn", "ln_f"},
    }
    assert _build("attention").blocks[0].attn.n_heads == 1 and _build("heads").blocks[0].attn.n_heads == 2
    assert shapes["bigram"] == {"table.weight": (11, 11)}
    assert not any("blocks" in name for name in shapes["embed"])


def test_the_residual_rung_is_gpt_without_its_layernorms():
    ladder, gpt = _build("residual", seed=3), _build("gpt2", seed=3)
    assert isinstance(gpt, GPT)
    gpt_state, ladder_state = gpt.state_dict(), ladder.state_dict()
    norms = {name for name in gpt_state if "ln_" in name}
    assert set(gpt_state) - norms == set(ladder_state)
    assert all(torch.equal(ladder_state[name], gpt_state[name]) for name in ladder_state)  # the same draws
    assert count_parameters(gpt) - count_parameters(ladder) == sum(gpt_state[n].numel() for n in norms)


@pytest.mark.parametrize("residual", [False, True])
def test_ladder_block_formula(residual):
    torch.manual_seed(0)
    block = models.LadderBlock(SHAPE, ffn=True, residual=residual).eval()
    x = torch.randn(2, 5, 16)
    h = block.attn(x, is_causal=True).out
    h = x + h if residual else h
    expected = h + block.ffn(h) if residual else block.ffn(h)
    assert torch.allclose(block(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="ffn and residual need attention"):
        models.LadderModel(SHAPE, attention=False, ffn=True)


def test_the_modern_rung_matches_the_gpt2_rung_in_parameters():
    for shape in (SHAPE, models.gpt_config(65, 64, 2, 4, 64), models.gpt_config(65, 128, 4, 4, 128)):
        gpt, modern = _build("gpt2", shape=shape), _build("modern", shape=shape)
        assert isinstance(modern, Llama) and not any(name.endswith(".bias") for name, _ in modern.named_parameters())
        llama = modern.config
        assert (llama.d_model, llama.n_layers, llama.n_heads, llama.block_size) == (
            shape.d_model,
            shape.n_layers,
            shape.n_heads,
            shape.block_size,
        )
        n_gpt, n_modern = count_parameters(gpt), count_parameters(modern)
        assert n_gpt == gpt_parameters(shape).total and n_modern == llama_parameters(llama).total
        assert abs(n_modern - n_gpt) / n_gpt < 0.02
        for other in (llama.d_ff - 1, llama.d_ff + 1):  # the width chosen is the closest there is
            n_other = llama_parameters(dataclasses.replace(llama, d_ff=other)).total
            assert abs(n_other - n_gpt) >= abs(n_modern - n_gpt)
    with pytest.raises(ValueError, match="unknown rung"):
        models.build_rung("mamba", SHAPE)
    with pytest.raises(ValueError, match="unknown init"):
        models.build_rung("gpt2", SHAPE, init="xavier")


@pytest.mark.parametrize("rung", ["ffn", "gpt2", "modern"])
def test_pytorch_init_redraws_every_layer_with_its_default(rung):
    torch.manual_seed(0)
    small, default = models.build_rung(rung, SHAPE), models.build_rung(rung, SHAPE, init="pytorch")
    torch.manual_seed(0)
    models.build_rung(rung, SHAPE)
    again = models.build_rung(rung, SHAPE, init="pytorch")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), again.state_dict().values()))
    assert small.tok_emb.weight.std() < 0.03 and 0.8 < default.tok_emb.weight.std() < 1.2  # N(0, 0.02) -> N(0, 1)
    for module in default.modules():
        if isinstance(module, torch.nn.Linear):  # kaiming-uniform: |w| <= 1 / sqrt(fan_in)
            assert module.weight.abs().max() <= 1 / math.sqrt(module.in_features) + 1e-7
        if hasattr(module, "weight") and "Norm" in type(module).__name__:
            assert torch.equal(module.weight, torch.ones_like(module.weight))


def test_split_windows_score_every_character_once_like_evaluate_full():
    val = torch.arange(100) % 11
    w = exp.split_windows(val, 8)
    assert w.shape == (12, 9) and torch.equal(w[1], val[8:17])
    text = torch.cat([w[0, :1], w[:, 1:].reshape(-1)])  # the targets, in order, after the first character
    assert torch.equal(text, val[:97])
    model = _build("gpt2")
    losses = exp.position_losses(model, w)  # (12, 8)
    assert losses.mean().item() == pytest.approx(evaluate_full(model, val, 8), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than 2 windows"):
        exp.split_windows(val[:12], 8)


def test_mean_and_standard_errors():
    values = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    stats = exp.mean_and_errors(values)
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["se_chars"] == pytest.approx(values.std().item() / 2)
    assert stats["se_windows"] == pytest.approx(1.0)  # window means 2 and 4


def _race_result(gpt_bits, modern_bits, char_gap):
    cfg = dataclasses.replace(exp.PRESETS["tiny"], race_seeds=tuple(range(len(gpt_bits))))
    lrs, race = {"gpt2": 4e-3, "modern": 2e-3}, {}
    for rung, values in zip(exp.RACE, (gpt_bits, modern_bits)):
        for seed, v in enumerate(values):
            record = {"rung": rung, "seed": seed, "init": "gpt2", "lr": lrs[rung], "val_bits": v, "val_se_chars": 0.01}
            losses = torch.linspace(1.0, 2.0, 40).view(10, 4)  # (n, T) nats
            if rung == "modern":
                losses = losses + char_gap * torch.linspace(-1, 1, 40).view(10, 4)
            race[rung, seed, "gpt2", lrs[rung]] = (record, losses)
    sweep = [
        {"rung": rung, "seed": 0, "lr": lr, "final_train_bits": 3 - (lr == lrs[rung]), "val_bits": 3.0}
        for lr in cfg.race_lrs
        for rung in exp.RACE
    ]
    assert exp.best_lrs(cfg, sweep) == lrs
    return exp.race_summary(cfg, lrs, race, sweep, vocab_size=11)


def test_race_summary_is_a_paired_comparison_with_a_verdict():
    gpt, modern = [2.00, 2.10, 2.05, 1.95], [1.90, 2.01, 1.94, 1.86]
    race = _race_result(gpt, modern, char_gap=0.0)
    t, p = ttest_rel(gpt, modern)
    assert race["mean_difference"] == pytest.approx(0.0975) and race["p_value"] == pytest.approx(p)
    assert race["t"] == pytest.approx(t) and race["verdict"] == "modern"  # lower bits, outside the noise
    assert race["se_difference"] == pytest.approx(torch.tensor([0.1, 0.09, 0.11, 0.09]).std().item() / 2)
    assert race["parameter_gap"] < 0.02 and race["test_se"] == {"gpt2": 0.01, "modern": 0.01}
    assert race["test_se_difference_chars"] == 0.0  # identical per-character losses
    assert race["lr"] == {"gpt2": 4e-3, "modern": 2e-3} and race["lr_sweep"]["lrs"] == [2e-3, 4e-3]
    assert race["lr_sweep"]["best_at_edge"] == {"gpt2": True, "modern": True} and len(race["lr_sweep"]["runs"]) == 4
    assert _race_result(modern, gpt, 0.0)["verdict"] == "gpt2"
    noisy = _race_result([2.0, 2.1, 2.0], [2.1, 2.0, 1.9], 0.0)
    assert noisy["p_value"] > 0.05 and noisy["verdict"] == "tie"
    # a significant difference across seeds, but smaller than the test split's own sampling error
    swamped = _race_result(gpt, modern, char_gap=20.0)
    assert swamped["p_value"] < 0.05 and swamped["test_se_difference_chars"] > 0.05 and swamped["verdict"] == "tie"


def test_ladder_summary_steps_are_paired_by_seed():
    cfg = exp.LadderConfig("sum", rungs=("bigram", "embed", "gpt2"), seeds=(0, 1, 2))
    bits = {"bigram": [4.0, 4.5, 5.0], "embed": [3.0, 3.4, 3.8], "gpt2": [2.0, 2.6, 2.5]}
    runs = [
        {"rung": rung, "seed": seed, "init": init, "lr": lr, "val_bits": v + ((init, lr) != ("pytorch", cfg.lr))}
        | {"parameters": len(rung)}  # other inits and learning rates: one bit worse, not the ladder's
        for rung, values in bits.items()
        for seed, v in enumerate(values)
        for init in ("pytorch", "gpt2")
        for lr in (cfg.lr, 1.0)
    ]
    ladder = exp.ladder_summary(runs, cfg)
    assert [r["rung"] for r in ladder] == list(cfg.rungs) and [r["parameters"] for r in ladder] == [6, 5, 4]
    assert ladder[1]["bits"] == pytest.approx(3.4) and ladder[1]["se"] == pytest.approx(0.4 / math.sqrt(3))
    assert ladder[0]["gain"] is None and ladder[1]["gain"] == pytest.approx(1.1)
    assert ladder[1]["gain_se"] == pytest.approx(torch.tensor([1.0, 1.1, 1.2]).std().item() / math.sqrt(3))
    assert ladder[2]["gain"] == pytest.approx(1.0333333)  # paired: 1.0, 0.8, 1.3
    with pytest.raises(ValueError, match="not for all of"):
        exp.ladder_summary(runs, dataclasses.replace(cfg, seeds=(0, 5)))


def test_config_validation():
    with pytest.raises(ValueError, match="rungs must be"):
        exp.LadderConfig("bad", rungs=("gpt2", "bigram"))
    with pytest.raises(ValueError, match="rungs must be"):
        exp.LadderConfig("bad", rungs=("bigram", "mamba"))
    with pytest.raises(ValueError, match="seeds must be distinct"):
        exp.LadderConfig("bad", seeds=(0, 0))
    with pytest.raises(ValueError, match="race_seeds must be"):
        exp.LadderConfig("bad", race_seeds=(0,))
    with pytest.raises(ValueError, match="init must be one of"):
        exp.LadderConfig("bad", init="xavier")
    with pytest.raises(ValueError, match="race_lrs must be"):
        exp.LadderConfig("bad", race_lrs=(1e-3, 0.0))
    cfg = exp.LadderConfig("plan", rungs=("bigram", "gpt2"), seeds=(0, 1), race_seeds=(1, 2), race_lrs=(1e-3, 2e-3))
    assert cfg.ladder_runs() == [(r, s, "pytorch", cfg.lr) for s in (0, 1) for r in ("bigram", "gpt2")]
    assert cfg.sweep_runs() == [(r, 1, "gpt2", lr) for lr in (1e-3, 2e-3) for r in ("gpt2", "modern")]
    lrs = {"gpt2": 2e-3, "modern": 1e-3}
    assert cfg.race_runs(lrs) == [(r, s, "gpt2", lrs[r]) for s in (1, 2) for r in ("gpt2", "modern")]
    assert dataclasses.replace(cfg, race_lrs=(3e-3,)).sweep_runs() == []  # one learning rate: nothing to sweep
    assert exp.best_lrs(dataclasses.replace(cfg, race_lrs=(3e-3,)), []) == {"gpt2": 3e-3, "modern": 3e-3}
    recipe = cfg.train_config(7, lr=4e-3)
    assert (recipe.seed, recipe.steps, recipe.lr) == (7, cfg.steps, 4e-3)
    assert recipe.min_lr == pytest.approx(4e-4)  # the ladder's min_lr / lr ratio
    assert cfg.train_config(7).seed == 7 and cfg.train_config(7).steps == cfg.steps


@pytest.mark.slow
def test_tiny_run_writes_a_complete_result(tmp_path, monkeypatch, restore_threads):
    monkeypatch.chdir(tmp_path)
    assert exp.main(["--preset", "tiny", "--threads", "1", "--quiet"]) == 0
    result = exp.load_result(tmp_path / "ladder_tiny.json")  # the default: never the committed result
    cfg = exp.PRESETS["tiny"]
    assert result["command"] == "python -m companion.experiments.ladder --preset tiny --threads 1 --quiet"
    race = result["race"]
    planned = cfg.ladder_runs() + cfg.sweep_runs() + cfg.race_runs(race["lr"])
    assert sorted((r["rung"], r["seed"], r["init"], r["lr"]) for r in result["runs"]) == sorted(set(planned))
    assert [r["rung"] for r in result["ladder"]] == list(cfg.rungs)
    assert len(race["lr_sweep"]["runs"]) == 2 * len(cfg.race_lrs) and set(race["lr"].values()) <= set(cfg.race_lrs)
    uniform = math.log2(result["data"]["vocab_size"])
    for r in result["runs"]:
        assert 0 < r["val_bits"] < uniform + 1 and 0 < r["val_se_chars"] < 1 and 0 < r["val_se_windows"] < 1
    assert all(row["gpt2"] < uniform for row in race["per_seed"])  # from near uniform, it learned in 12 steps
    assert 0 < result["reference"]["bigram_counts_bits"] < uniform
    assert race["seeds"] == list(cfg.race_seeds) and race["verdict"] in ("tie", "gpt2", "modern")
    assert race["parameters"]["gpt2"] == next(r["parameters"] for r in result["runs"] if r["rung"] == "gpt2")
    assert {r["init"] for r in result["runs"]} == {cfg.init, exp.RACE_INIT}
    assert result["metadata"]["torch_threads"] == 1 and result["metadata"]["wall_seconds"] > 0
    table = report.ladder_table(result)
    assert table.count("\n") == len(cfg.rungs) + 3 and table.endswith("(n = 2 seeds)")
    ax = report.plot_ladder(result)
    assert len(ax.containers) == 2 and "GPT-2's N(0, 0.02) init (the race, 2 seeds)" in [
        t.get_text() for t in ax.get_legend().get_texts()
    ]
    assert len(ax.lines) >= 2 and report.plot_race(result).get_title().startswith(race["verdict"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a companion-ladder file"):
        exp.load_result(bad)


def test_live_runs_a_reduced_ladder_without_a_race():
    tiny = exp.PRESETS["tiny"]
    shape = {f: getattr(tiny, f) for f in ("n_layers", "n_heads", "d_model", "block_size", "batch_size")}
    result = exp.live(rungs=("bigram", "gpt2"), steps=3, warmup_steps=1, corpus_chars=20_000, eval_chars=None, **shape)
    assert [r["rung"] for r in result["ladder"]] == ["bigram", "gpt2"] and result["race"] is None
    assert list(result["config"]["seeds"]) == [0]
    with pytest.raises(ValueError, match="has no race"):
        report.plot_race(result)


@pytest.mark.skipif(not committed("ladder").exists(), reason="the full run is committed by the lead")
def test_committed_full_result_is_complete():
    result = exp.load_result()
    cfg = exp.PRESETS["full"]
    assert result["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))  # made by the preset as it is now
    assert result["command"].startswith("python -m companion.experiments.ladder --preset full")
    assert len(cfg.seeds) >= 3 and len(cfg.race_seeds) >= 3
    race = result["race"]
    planned = cfg.ladder_runs() + cfg.sweep_runs() + cfg.race_runs(race["lr"])
    assert sorted((r["rung"], r["seed"], r["init"], r["lr"]) for r in result["runs"]) == sorted(set(planned))
    assert abs(race["parameter_gap"]) < 0.02 and len(race["per_seed"]) == len(cfg.race_seeds)
