"""The causal-vs-masked experiment of chapter 6: its measurements and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from companion.experiments import blank_filling as blanks
from companion.experiments import clm_vs_mlm as exp


class Oracle(torch.nn.Module):
    """Knows the test windows: returns one-hot logits of the characters to recover."""

    def __init__(self, windows: torch.Tensor, vocab_size: int):
        super().__init__()
        self.logits = F.one_hot(windows[:, 1:], vocab_size).float() * 10  # (n, T, V)

    def forward(self, idx):
        return SimpleNamespace(logits=self.logits)


def test_blank_test_is_fixed_and_about_15_percent():
    val = torch.arange(5000) % 60
    w1, h1 = blanks.blank_test(val, block_size=32, n_windows=200, seed=3)
    w2, h2 = blanks.blank_test(val, block_size=32, n_windows=200, seed=3)
    assert w1.shape == (200, 33) and h1.shape == (200, 32)
    assert torch.equal(w1, w2) and torch.equal(h1, h2)  # the same test for every model and step
    assert abs(h1.float().mean().item() - 0.15) < 0.02


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_fill_blanks_aligns_predictions_with_the_hidden_characters(kind):
    val = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0))
    windows, hide = blanks.blank_test(val, block_size=16, n_windows=64)
    acc, ce = blanks.fill_blanks(Oracle(windows, 21), kind, windows, hide, mask_id=20)
    assert acc == 1.0 and ce < 1e-3
    shifted = Oracle(torch.roll(windows, 1, dims=1), 21)  # off by one position: mostly wrong
    assert blanks.fill_blanks(shifted, kind, windows, hide, mask_id=20)[0] < 0.2


def test_fill_blanks_rejects_an_unknown_kind():
    windows, hide = blanks.blank_test(torch.arange(100) % 7, block_size=8, n_windows=4)
    with pytest.raises(ValueError, match="kind must be 'clm' or 'mlm'"):
        blanks.fill_blanks(Oracle(windows, 8), "seq2seq", windows, hide, mask_id=7)


def test_sinusoidal_start_copies_the_scaled_table():
    from companion.nn.positional import sinusoidal_encoding

    emb = torch.nn.Embedding(16, 8)
    exp.sinusoidal_start(emb, scale=0.5)
    assert torch.allclose(emb.weight, 0.5 * sinusoidal_encoding(16, 8))


@pytest.mark.slow
def test_tiny_run_writes_a_complete_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without --out the run writes ./objectives_tiny.json, never the committed file
    committed_before = exp.committed(exp.NAME).read_bytes()
    assert exp.main(["--preset", "tiny", "--threads", "1"]) == 0
    out = tmp_path / "objectives_tiny.json"
    assert exp.default_out(exp.NAME, "tiny") == Path("objectives_tiny.json") and out.is_file()
    assert exp.committed(exp.NAME).read_bytes() == committed_before
    result = exp.load_result(out)
    cfg = exp.PRESETS["tiny"]
    assert result["command"].endswith("--preset tiny --threads 1")
    assert result["seeds"] == list(cfg.seeds) and sorted(result["runs"]) == [str(s) for s in cfg.seeds]
    assert result["config"] == cfg.to_dict()
    n = result["hidden_characters"]
    for seed in cfg.seeds:
        runs = result["runs"][str(seed)]
        for kind in ("clm", "mlm"):
            run = runs[kind]
            assert run["step"] == list(range(0, cfg.steps + 1, cfg.eval_interval))
            assert len(run["fill_accuracy"]) == len(run["step"]) == len(run["fill_cross_entropy"])
            assert all(0.0 <= a <= 1.0 for a in run["fill_accuracy"])
            assert run["val_loss"][-1] < run["val_loss"][0]  # both learn something in 20 steps
        assert runs["mlm"]["parameters"] > runs["clm"]["parameters"]  # the MLM head
        paired = runs["paired"]
        assert paired["step"] == runs["mlm"]["step"]
        for i in range(len(paired["step"])):  # the 2 x 2 table covers every item and matches both accuracies
            both, m, c, neither = (paired[k][i] for k in ("both", "mlm_only", "clm_only", "neither"))
            assert both + m + c + neither == n
            assert abs((both + m) / n - runs["mlm"]["fill_accuracy"][i]) < 1e-4
            assert abs((both + c) / n - runs["clm"]["fill_accuracy"][i]) < 1e-4
    assert result["runs"]["0"]["clm"]["val_loss"] != result["runs"]["1"]["clm"]["val_loss"]  # seeds differ
    summary = exp.summarize(result)
    assert len(summary["diff"]["mean"]) == len(summary["step"]) and summary["seeds"] == len(cfg.seeds)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a companion-objectives file"):
        exp.load_result(bad)


def _fake_result(per_seed_tables: list[tuple[int, int, int, int]]) -> dict:
    """A result with one measurement per seed, from its 2 x 2 table (both, mlm_only, clm_only, neither)."""
    runs = {}
    for seed, (both, m, c, neither) in enumerate(per_seed_tables):
        n = both + m + c + neither
        runs[str(seed)] = {
            "mlm": {"step": [0], "fill_accuracy": [(both + m) / n]},
            "clm": {"step": [0], "fill_accuracy": [(both + c) / n]},
            "paired": {"step": [0], "both": [both], "mlm_only": [m], "clm_only": [c], "neither": [neither]},
        }
    return {"seeds": list(range(len(per_seed_tables))), "hidden_characters": n, "runs": runs}


def test_summarize_standard_errors():
    tables = [(400, 60, 40, 500), (400, 70, 40, 490), (400, 50, 40, 510)]  # n = 1000 each
    s = exp.summarize(_fake_result(tables))
    diffs = torch.tensor([0.02, 0.03, 0.01], dtype=torch.float64)
    assert s["diff"]["mean"][0] == pytest.approx(0.02)
    assert s["diff"]["se_seeds"][0] == pytest.approx(diffs.std().item() / 3**0.5)
    discordant = (100 + 110 + 90) / 3 / 1000
    assert s["diff"]["se_test"][0] == pytest.approx(((discordant - 0.02**2) / 1000) ** 0.5)
    assert s["diff"]["se"][0] == pytest.approx((s["diff"]["se_seeds"][0] ** 2 + s["diff"]["se_test"][0] ** 2) ** 0.5)
    p = (0.46 + 0.47 + 0.45) / 3
    assert s["mlm"]["mean"][0] == pytest.approx(p)
    assert s["mlm"]["se_binomial"][0] == pytest.approx((p * (1 - p) / 1000) ** 0.5)
    one = exp.summarize(_fake_result(tables[:1]))
    assert one["diff"]["se_seeds"] == [0.0] and one["diff"]["se"][0] == pytest.approx(one["diff"]["se_test"][0])


def test_config_checks_its_seeds():
    with pytest.raises(ValueError, match="seeds must be distinct"):
        exp.ObjectivesConfig("bad", seeds=(0, 0))
    with pytest.raises(ValueError, match="seeds must be distinct"):
        exp.ObjectivesConfig("bad", seeds=())
    cfg = exp.ObjectivesConfig("ok", seeds=[3, 4])
    assert cfg.seeds == (3, 4) and cfg.train_config().seed == 3 and cfg.train_config(4).seed == 4


def test_committed_full_result_is_complete():
    result = exp.load_result()
    cfg = exp.PRESETS["full"]
    assert result["config"] == cfg.to_dict()  # made by the preset as it is now
    assert result["command"].startswith("python -m companion.experiments.clm_vs_mlm")
    assert "--out src/companion/results/objectives.json" in result["command"]
    assert result["seeds"] == list(cfg.seeds) and len(cfg.seeds) >= 3
    for seed in cfg.seeds:
        runs = result["runs"][str(seed)]
        for kind in ("clm", "mlm"):
            assert runs[kind]["step"][-1] == cfg.steps
            assert set(runs[kind]["sentences"]) == set(blanks.SENTENCES)
        assert runs["paired"]["step"] == runs["mlm"]["step"]


def test_answers_fill_the_sentences():
    for sentence, answer in zip(blanks.SENTENCES, blanks.ANSWERS, strict=True):
        assert all(s in ("_", a) for s, a in zip(sentence, answer, strict=True))
        assert blanks.blanks_right(answer, sentence, answer) == (sentence.count("_"),) * 2
    assert blanks.blanks_right("The kang is dead; long live the king!", blanks.SENTENCES[0], blanks.ANSWERS[0]) == (
        1,
        2,
    )
    with pytest.raises(ValueError, match="differ in length"):
        blanks.blanks_right("The king", blanks.SENTENCES[0], blanks.ANSWERS[0])
