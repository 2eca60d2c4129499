"""The chapter-9 experiment (`python -m companion.experiments.pretraining_pays`): the tiny preset runs end to
end and writes a well-formed JSON; the committed full result has the promised shape."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from companion.experiments.pretraining_pays import METHODS, PRESETS, labelled_subset
from companion.experiments.pretraining_report import DEFAULT_OUT, load_result, results_table

ROOT = Path(__file__).resolve().parents[1]


def test_labelled_subset_is_balanced_seeded_and_complete_at_zero():
    labels = [0] * 60 + [1] * 40
    a = labelled_subset(100, labels, 20, seed=0)
    assert len(a) == 20 == len(set(a)) and sum(labels[i] for i in a) == 10
    assert a == labelled_subset(100, labels, 20, seed=0) != labelled_subset(100, labels, 20, seed=1)
    assert labelled_subset(100, labels, 0, seed=0) == list(range(100))
    assert labelled_subset(100, labels, 500, seed=3) == list(range(100))
    odd = labelled_subset(100, labels, 7, seed=2)
    assert len(odd) == 7 and sum(labels[i] for i in odd) in (3, 4)


def _check_result(result: dict, n_seeds_min: int) -> None:
    assert result["command"].startswith("python -m companion.experiments.pretraining_pays")
    assert result["metadata"]["wall_seconds"] > 0
    counts = result["label_counts"]
    assert counts == sorted(counts) and all(0 < n <= result["train_size"] for n in counts)
    assert set(result["results"]) == set(result["methods"]) and set(result["methods"]) <= set(METHODS)
    seeds = result["config"]["seeds"]
    assert len(seeds) >= n_seeds_min
    for method, per_n in result["results"].items():
        assert set(per_n) == {str(n) for n in counts}, method
        for r in per_n.values():
            accs = r["accuracy"]
            assert len(accs) == len(seeds) and all(0.0 <= a <= 1.0 for a in accs)
            assert len(r["macro_f1"]) == len(seeds)
            mean = sum(accs) / len(accs)
            std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
            assert r["mean"] == pytest.approx(mean, abs=1e-4) and r["std"] == pytest.approx(std, abs=1e-4)
            # accuracies are multiples of 1 / test_size (stored rounded to 4 decimals)
            assert all(abs(a * result["test_size"] - round(a * result["test_size"])) < 0.05 for a in accs)
    table = results_table(result)
    assert table.count("\n") == len(result["methods"]) + 1


@pytest.mark.slow
def test_tiny_preset_runs_and_writes_json(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, "-m", "companion.experiments.pretraining_pays", "--preset", "tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    _check_result(result, n_seeds_min=2)
    assert result["preset"] == "tiny" and result["label_counts"] == list(PRESETS["tiny"].label_counts)
    assert result["test_size"] == PRESETS["tiny"].test_limit
    pre = result["pretraining"]
    assert pre["val_loss"][-1] < pre["val_loss"][0], "pre-training did not lower the validation loss"
    assert 0 < result["oov"]["40"] < 1 and result["oov"]["80"] <= result["oov"]["40"]
    assert "wrote" in proc.stdout and "| method |" in proc.stdout


def test_committed_full_result():
    if not DEFAULT_OUT.exists():
        pytest.skip("the full result has not been committed yet")
    result = load_result()
    _check_result(result, n_seeds_min=3)
    assert result["preset"] == "full" and result["test_size"] == 852
    assert result["label_counts"][-1] == result["train_size"] and 100 in result["label_counts"]
    assert set(result["methods"]) == set(METHODS)
    meta = result["metadata"]
    assert meta["cpu_seconds"] < 40 * 60, "the full run should stay within about half an hour of CPU time"
    assert {"pretrain", "scratch", "finetune_full", "minilm_embeddings"} <= set(meta["phase_seconds"])
    assert DEFAULT_OUT.stat().st_size < 50_000
