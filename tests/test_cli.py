"""Tests for the `companion` command line (companion.cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from companion.cli import main

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. "
    "resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
)
TINY = [
    "--block-size",
    "16",
    "--n-layers",
    "1",
    "--n-heads",
    "2",
    "--d-model",
    "32",
    "--batch-size",
    "4",
    "--eval-interval",
    "10",
    "--eval-steps",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--quiet",
]


pytestmark = pytest.mark.usefixtures("restore_threads")  # the scripts call torch.set_num_threads


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    return path


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sample", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: companion" in out and "examples:" in out
    if argv[0] == "train":
        assert "--block-size" in out and "(default: 64)" in out and "--resume" in out
    if argv[0] == "sample":
        assert "--top-p" in out and "(default: 0.8)" in out


def test_train_then_sample_then_resume(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(["train", "--text", str(text_file), "--steps", "20", "--out", str(out)] + TINY) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "tokenizer.json",
        "model.safetensors",
        "training_state.safetensors",
        "checkpoint.json",
        "history.json",
    } <= names
    history = json.loads((out / "history.json").read_text())
    assert history["step"][-1] == 20 and history["val_loss"][-1] < history["val_loss"][0]

    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(out),
                "--prompt",
                "First",
                "--max-new-tokens",
                "30",
                "--seed",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("First") and len(text) == len("First") + 30
    assert set(text) <= set(TEXT)  # only characters of the training text
    # the same seed gives the same text
    main(
        ["sample", "--ckpt", str(out), "--prompt", "First", "--max-new-tokens", "30", "--seed", "1", "--device", "cpu"]
    )
    assert capsys.readouterr().out.rstrip("\n") == text

    assert main(["train", "--text", str(text_file), "--steps", "30", "--out", str(out), "--resume"] + TINY) == 0
    resumed = json.loads((out / "history.json").read_text())
    assert resumed["step"] == list(range(1, 31))
    assert resumed["train_loss"][:20] == history["train_loss"]


def test_bpe_tokenizer_run(tmp_path, text_file, capsys):
    out = tmp_path / "bpe"
    assert (
        main(
            [
                "train",
                "--text",
                str(text_file),
                "--tokenizer",
                "bpe",
                "--vocab-size",
                "270",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
            + TINY
        )
        == 0
    )
    assert json.loads((out / "tokenizer.json").read_text())["vocab_size"] == 270
    assert json.loads((out / "checkpoint.json").read_text())["model_config"]["vocab_size"] == 270
    assert main(["sample", "--ckpt", str(out), "--prompt", "All:", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("All:")


def test_muon_run_and_a_resume_with_the_wrong_optimizer(tmp_path, text_file, capsys):
    out = tmp_path / "muon"
    assert (
        main(
            [
                "train",
                "--text",
                str(text_file),
                "--steps",
                "4",
                "--optimizer",
                "muon",
                "--activation",
                "gelu",
                "--out",
                str(out),
            ]
            + TINY
        )
        == 0
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["train_config"]["optimizer"] == "muon" and meta["model_config"]["activation"] == "gelu"
    assert main(["train", "--text", str(text_file), "--steps", "6", "--out", str(out), "--resume"] + TINY) == 2
    assert "trained with optimizer 'muon'" in capsys.readouterr().err
    assert (
        main(
            ["train", "--text", str(text_file), "--steps", "6", "--out", str(out), "--resume", "--optimizer", "muon"]
            + TINY
        )
        == 0
    )


def test_llama_arch_trains_samples_and_resumes(tmp_path, text_file, capsys):
    """--arch llama: grouped (here multi-query) attention and a mixture of 2 experts, 1 per token."""
    out = tmp_path / "llama"
    llama = ["--arch", "llama", "--n-kv-heads", "1", "--n-experts", "2", "--experts-per-token", "1", "--d-ff", "48"]
    assert main(["train", "--text", str(text_file), "--steps", "20", "--out", str(out)] + llama + TINY) == 0
    assert "Llama with" in capsys.readouterr().err
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["model_class"] == "companion.nn.llama.Llama"
    cfg = meta["model_config"]
    assert (cfg["n_heads"], cfg["n_kv_heads"], cfg["n_experts"], cfg["n_experts_per_token"], cfg["d_ff"]) == (
        2,
        1,
        2,
        1,
        48,
    )
    history = json.loads((out / "history.json").read_text())
    assert history["val_loss"][-1] < history["val_loss"][0]

    sample = ["sample", "--ckpt", str(out), "--prompt", "First", "--max-new-tokens", "30", "--device", "cpu"]
    assert main(sample) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("First") and len(text) == len("First") + 30 and set(text) <= set(TEXT)

    # the model's class and shape come from the checkpoint: --arch need not be repeated
    assert main(["train", "--text", str(text_file), "--steps", "30", "--out", str(out), "--resume"] + TINY) == 0
    resumed = json.loads((out / "history.json").read_text())
    assert resumed["step"] == list(range(1, 31)) and resumed["train_loss"][:20] == history["train_loss"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--n-kv-heads", "1"], "--n-kv-heads: only for --arch llama"),
        (["--n-experts", "4"], "--n-experts: only for --arch llama"),
        (["--arch", "llama", "--activation", "relu"], "--activation is for --arch gpt"),
        (["--arch", "llama", "--n-kv-heads", "3"], "n_kv_heads 3 does not divide n_heads 2"),
        (["--arch", "llama", "--n-experts", "2", "--experts-per-token", "3"], "n_experts_per_token must be"),
    ],
)
def test_llama_option_errors(tmp_path, text_file, capsys, options, message):
    assert main(["train", "--text", str(text_file), "--steps", "2", "--out", str(tmp_path)] + options + TINY) == 2
    assert message in capsys.readouterr().err


def test_clear_errors(tmp_path, text_file, capsys):
    assert main(["train", "shakespeare", "--text", str(text_file), "--out", str(tmp_path)]) == 2
    assert "either a corpus name" in capsys.readouterr().err
    assert main(["train", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["train", "--text", str(text_file), "--steps", "2", "--out", str(tmp_path / "r"), "--resume"] + TINY) == 2
    )
    assert "train without --resume first" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("abc" * 10)
    assert main(["train", "--text", str(short), "--steps", "2", "--out", str(tmp_path / "s")] + TINY) == 2
    assert "fewer than block_size+1 = 17" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path)]) == 2
    assert "tokenizer.json" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    res = subprocess.run([sys.executable, "-m", "companion", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "companion train" in res.stdout


@pytest.mark.slow
def test_train_under_torchrun_equals_one_process(tmp_path, text_file):
    """`torchrun --nproc_per_node=2 -m companion train` = one process with 2 micro-batches."""
    common = ["train", "--text", str(text_file), *TINY, "--steps", "4", "--warmup", "1"]
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "companion",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("finished step 4") == 1  # only rank 0 reports
    assert main([*common, "--grad-accum-steps", "2", "--out", str(tmp_path / "one")]) == 0
    ddp, one = (load_file(tmp_path / d / "model.safetensors") for d in ("ddp", "one"))
    assert ddp.keys() == one.keys()
    assert max((ddp[k] - one[k]).abs().max().item() for k in ddp) < 1e-6
    h_ddp, h_one = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("ddp", "one"))
    assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-6)
