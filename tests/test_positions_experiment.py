"""The positional-encoding experiment of chapter 2: its models (and ALiBi), measurements and a tiny run."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from companion.analysis.metrics import mean_se
from companion.experiments import position_models as models
from companion.experiments import positions as exp
from companion.nn.gpt import GPTConfig
from companion.nn.positional import alibi_bias, alibi_slopes

SHAPE = GPTConfig(vocab_size=11, block_size=8, n_layers=2, n_heads=2, d_model=16)


@pytest.mark.parametrize("position", models.POSITIONS)
def test_models_are_causal_and_shaped(position):
    torch.manual_seed(0)
    model = models.PositionalGPT(SHAPE, position).eval()
    idx = torch.randint(0, 11, (3, 8))
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 8, 11) and out.loss.ndim == 0
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11  # the future must not change the past
    assert torch.allclose(model(changed).logits[:, :5], out.logits[:, :5], atol=1e-6)


def test_only_the_learned_table_is_bounded_by_block_size():
    idx = torch.randint(0, 11, (2, 20))
    for position in models.POSITIONS:
        model = models.PositionalGPT(SHAPE, position)
        if position == "learned":
            with pytest.raises(ValueError, match="learned position table has 8 rows"):
                model(idx)
        else:
            assert model(idx).logits.shape == (2, 20, 11)


def test_without_positions_one_layer_sees_a_set():
    # NoPE, one layer: the last position's output depends on itself and the *set* of earlier tokens
    # (with more layers the earlier positions' own prefixes differ, which is how NoPE learns order).
    one_layer = dataclasses.replace(SHAPE, n_layers=1)
    idx = torch.tensor([[1, 2, 3, 4, 5, 6]])
    shuffled = torch.tensor([[3, 1, 5, 2, 4, 6]])  # same earlier tokens, same last token
    gaps = {}
    for position in ("none", "rotary"):
        torch.manual_seed(0)
        model = models.PositionalGPT(one_layer, position).eval()
        with torch.no_grad():
            for p in model.parameters():  # large random weights: sharp attention, visible effects
                p.normal_()
        gaps[position] = (model(idx).logits[0, -1] - model(shuffled).logits[0, -1]).abs().max().item()
    assert gaps["none"] < 1e-4 and gaps["rotary"] > 1e-2


def test_alibi_bias_is_a_causal_linear_distance_penalty():
    slopes = alibi_slopes(4)
    assert torch.allclose(slopes, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    bias = alibi_bias(slopes, 5)  # (4, 5, 5)
    assert bias.shape == (4, 5, 5)
    assert torch.isinf(bias[:, 0, 1:]).all() and (bias[:, 0, 1:] < 0).all()  # no looking ahead
    assert bias[1, 4, 1].item() == pytest.approx(-slopes[1].item() * 3)  # -m_h (i - j)
    assert torch.equal(bias[:, range(5), range(5)], torch.zeros(4, 5))
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)


def test_alibi_attention_matches_the_explicit_formula():
    torch.manual_seed(0)
    model = models.PositionalGPT(SHAPE, "alibi").eval()
    wrapper = model.blocks[0].attn
    x = torch.randn(2, 6, 16)
    attn = wrapper.attn
    q, k, v = (proj(x).view(2, 6, 2, 8).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8) + alibi_bias(wrapper.slopes, 6)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16)
    assert torch.allclose(wrapper(x, is_causal=True).out, attn.out_proj(y), atol=1e-5)
    with pytest.raises(ValueError, match="causal self-attention only"):
        wrapper(x)


def test_sliding_losses_score_each_position_from_the_last_block_size_tokens():
    torch.manual_seed(0)
    model = models.PositionalGPT(SHAPE, "rotary").eval()
    windows = torch.randint(0, 11, (4, 13))  # L = 12
    full = exp.position_losses(model, windows)  # (4, 12)
    sliding = exp.sliding_losses(model, windows, block_size=8)  # (4, 4): positions 8..11
    assert full.shape == (4, 12) and sliding.shape == (4, 4)
    for p in range(8, 12):  # predict token p + 1 from tokens p - 7 .. p
        expected = exp.position_losses(model, windows[:, p - 7 : p + 2])[:, -1]
        assert torch.allclose(sliding[:, p - 8], expected, atol=1e-5)
    with pytest.raises(ValueError, match="block_size must be in"):
        exp.sliding_losses(model, windows, block_size=12)


def test_eval_windows_and_window_standard_error():
    val = torch.arange(100)
    w = exp.eval_windows(val, length=9, max_windows=50)
    assert w.shape == (10, 10) and torch.equal(w[1], torch.arange(10, 20))
    assert exp.eval_windows(val, 9, 3).shape == (3, 10)
    with pytest.raises(ValueError, match="fewer than 2 windows"):
        exp.eval_windows(val, 60, 10)
    mean, se = exp.mean_and_window_se(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
    assert mean == pytest.approx(3.0) and se == pytest.approx(1.0)  # window means 2 and 4


def test_summaries_and_paired_differences():
    result = {
        "config": {"positions": ["a", "b"]},
        "runs": [
            {"position": "a", "seed": s, "within": 2.0 + 0.1 * s, "beyond": None, "beyond_sliding": 2.5}
            for s in range(3)
        ]
        + [
            {"position": "b", "seed": s, "within": 2.2 + 0.1 * s, "beyond": 2.4 + s, "beyond_sliding": 2.6}
            for s in range(3)
        ],
    }
    summary = exp.summarize(result)
    mean, se, n = summary["a"]["within"]
    assert (mean, n) == (pytest.approx(2.1), 3) and se == pytest.approx(0.1 / math.sqrt(3))
    assert summary["a"]["beyond"] is None and summary["b"]["beyond"][0] == pytest.approx(3.4)
    diff, diff_se, n = exp.paired_difference(result, "b", "a", "within")
    assert diff == pytest.approx(0.2) and diff_se == pytest.approx(0.0, abs=1e-12) and n == 3
    assert exp.paired_difference(result, "b", "b", "beyond", "beyond_sliding")[0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no seed has both"):
        exp.paired_difference(result, "a", "b", "beyond")
    with pytest.raises(ValueError, match="metric must be one of"):
        exp.paired_difference(result, "a", "b", "loss")
    assert mean_se([3.0]) == (3.0, 0.0)


def test_config_rejects_unknown_positions():
    with pytest.raises(ValueError, match="positions must be"):
        exp.PositionsConfig("bad", positions=("learned", "xpos"))
    with pytest.raises(ValueError, match="unknown position"):
        models.PositionalGPT(SHAPE, "xpos")


@pytest.mark.slow
def test_tiny_run_writes_a_complete_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exp.main(["--preset", "tiny", "--threads", "1", "--quiet"]) == 0
    out = tmp_path / "positions_tiny.json"  # the default: never the committed result
    result = exp.load_result(out)
    cfg = exp.PRESETS["tiny"]
    assert result["command"] == "python -m companion.experiments.positions --preset tiny --threads 1 --quiet"
    assert len(result["runs"]) == len(cfg.seeds) * len(cfg.positions)
    T = cfg.block_size
    for run in result["runs"]:
        learned = run["position"] == "learned"
        assert len(run["curve"]) == (T if learned else cfg.eval_factor * T)
        assert (run["beyond"] is None) == learned
        assert all(math.isfinite(run[m]) for m in ("within", "beyond_sliding", "final_train_loss"))
        assert run["final_train_loss"] < math.log(result["data"]["vocab_size"])  # it learned something
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a companion-positions file"):
        exp.load_result(bad)


def test_committed_full_result_is_complete():
    result = exp.load_result()
    cfg = exp.PRESETS["full"]
    assert result["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))  # made by the preset as it is now
    assert result["command"].startswith("python -m companion.experiments.positions --preset full")
    assert len(cfg.seeds) >= 3
    assert {(r["position"], r["seed"]) for r in result["runs"]} == {(p, s) for p in cfg.positions for s in cfg.seeds}
    summary = exp.summarize(result)
    assert summary["learned"]["beyond"] is None
    assert all(summary[p]["beyond"][2] == len(cfg.seeds) for p in cfg.positions if p != "learned")
