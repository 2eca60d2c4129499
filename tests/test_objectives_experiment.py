"""The causal-vs-masked experiment of chapter 5: its measurements and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from companion.experiments import objectives as exp


class Oracle(torch.nn.Module):
    """Knows the test windows: returns one-hot logits of the characters to recover."""

    def __init__(self, windows: torch.Tensor, vocab_size: int):
        super().__init__()
        self.logits = F.one_hot(windows[:, 1:], vocab_size).float() * 10  # (n, T, V)

    def forward(self, idx):
        return SimpleNamespace(logits=self.logits)


def test_blank_test_is_fixed_and_about_15_percent():
    val = torch.arange(5000) % 60
    w1, h1 = exp.blank_test(val, block_size=32, n_windows=200, seed=3)
    w2, h2 = exp.blank_test(val, block_size=32, n_windows=200, seed=3)
    assert w1.shape == (200, 33) and h1.shape == (200, 32)
    assert torch.equal(w1, w2) and torch.equal(h1, h2)  # the same test for every model and step
    assert abs(h1.float().mean().item() - 0.15) < 0.02


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_fill_blanks_aligns_predictions_with_the_hidden_characters(kind):
    val = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0))
    windows, hide = exp.blank_test(val, block_size=16, n_windows=64)
    acc, ce = exp.fill_blanks(Oracle(windows, 21), kind, windows, hide, mask_id=20)
    assert acc == 1.0 and ce < 1e-3
    shifted = Oracle(torch.roll(windows, 1, dims=1), 21)  # off by one position: mostly wrong
    assert exp.fill_blanks(shifted, kind, windows, hide, mask_id=20)[0] < 0.2


def test_fill_blanks_rejects_an_unknown_kind():
    windows, hide = exp.blank_test(torch.arange(100) % 7, block_size=8, n_windows=4)
    with pytest.raises(ValueError, match="kind must be 'clm' or 'mlm'"):
        exp.fill_blanks(Oracle(windows, 8), "seq2seq", windows, hide, mask_id=7)


def test_sinusoidal_start_copies_the_scaled_table():
    from companion.positional import sinusoidal_encoding

    emb = torch.nn.Embedding(16, 8)
    exp.sinusoidal_start(emb, scale=0.5)
    assert torch.allclose(emb.weight, 0.5 * sinusoidal_encoding(16, 8))


@pytest.mark.slow
def test_tiny_run_writes_a_complete_result(tmp_path):
    out = tmp_path / "objectives.json"
    assert exp.main(["--preset", "tiny", "--out", str(out), "--threads", "1"]) == 0
    result = exp.load_result(out)
    cfg = exp.PRESETS["tiny"]
    assert result["command"].endswith(f"--preset tiny --out {out} --threads 1")
    for kind in ("clm", "mlm"):
        run = result["runs"][kind]
        assert run["step"] == list(range(0, cfg.steps + 1, cfg.eval_interval))
        assert len(run["fill_accuracy"]) == len(run["step"]) == len(run["fill_cross_entropy"])
        assert all(0.0 <= a <= 1.0 for a in run["fill_accuracy"])
        assert run["val_loss"][-1] < run["val_loss"][0]  # both learn something in 20 steps
    assert result["runs"]["mlm"]["parameters"] > result["runs"]["clm"]["parameters"]  # MLM head
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a companion-objectives file"):
        exp.load_result(bad)


def test_committed_full_result_is_complete():
    result = exp.load_result()
    cfg = exp.PRESETS["full"]
    assert result["config"] == dataclasses.asdict(cfg)  # made by the preset as it is now
    assert result["command"].startswith("python -m companion.experiments.objectives")
    for kind in ("clm", "mlm"):
        run = result["runs"][kind]
        assert run["step"][-1] == cfg.steps
        assert set(run["sentences"]) == set(exp.SENTENCES)


def test_answers_fill_the_sentences():
    for sentence, answer in zip(exp.SENTENCES, exp.ANSWERS, strict=True):
        assert all(s in ("_", a) for s, a in zip(sentence, answer, strict=True))
        assert exp.blanks_right(answer, sentence, answer) == (sentence.count("_"),) * 2
    assert exp.blanks_right("The kang is dead; long live the king!", exp.SENTENCES[0], exp.ANSWERS[0]) == (1, 2)
    with pytest.raises(ValueError, match="differ in length"):
        exp.blanks_right("The king", exp.SENTENCES[0], exp.ANSWERS[0])
