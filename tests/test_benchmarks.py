"""The benchmark scripts run end to end in tiny configurations (their figures are not tested here:
performance targets are met in the benchmarks themselves, on a quiet machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is "
    "the sun.\n\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
) * 40


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_threads")  # the scripts call torch.set_num_threads


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_time_to_quality_on_any_text_file(text_file, tmp_path, capsys):
    out = tmp_path / "ttq.json"
    result = load_benchmark("time_to_quality").main(
        [
            "--text",
            str(text_file),
            "--target",
            "3.5",
            "--n-layers",
            "1",
            "--d-model",
            "32",
            "--n-heads",
            "2",
            "--block-size",
            "16",
            "--batch-size",
            "8",
            "--steps",
            "60",
            "--eval-interval",
            "10",
            "--eval-steps",
            "2",
            "--dtype",
            "fp32",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert result["reached"] and result["full_val_loss"] <= 3.5
    assert result["corpus"] == str(text_file)
    assert json.loads(out.read_text())["step"] == result["step"]
    assert "<= 3.5 after" in capsys.readouterr().out


def test_train_throughput_prints_every_mode(text_file, capsys):
    result = load_benchmark("train_throughput").main(
        ["--text", str(text_file), "--modes", "fp32,fp32+fused", "--steps", "3", "--warmup", "1", "--threads", "1"]
    )
    assert [r["mode"] for r in result["results"]] == ["fp32", "fp32+fused"]
    assert all(r["tokens_per_s"] > 0 for r in result["results"])
    assert "fastest:" in capsys.readouterr().out


@pytest.mark.slow
def test_generation_benchmark_checks_identical_tokens(capsys):
    result = load_benchmark("generation").main(
        ["--prompt-len", "8", "--new-tokens", "8", "--repeats", "1", "--threads", "1"]
    )
    text = capsys.readouterr().out
    assert "same tokens: True" in text and "same tokens: False" not in text
    assert result is not None
