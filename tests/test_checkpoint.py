"""Checkpoints are written as one unit, load for inference without training state, and fail clearly when damaged."""

from __future__ import annotations

import json

import pytest
import torch

from companion.nn import GPT, GPTConfig
from companion.training import checkpoint
from companion.training.checkpoint import (
    COMMIT_FILE,
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    load_checkpoint,
    load_pretrained,
    read_meta,
)
from companion.training.trainer import TrainConfig, train

CONFIG = GPTConfig(vocab_size=11, block_size=8, n_layers=1, n_heads=2, d_model=16, dropout=0.1)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def data() -> torch.Tensor:
    return torch.arange(300) % 7


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG)


def cfg(out, steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=4,
        block_size=8,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_interval=0,
        eval_steps=1,
        device="cpu",
        out_dir=str(out),
        log_interval=1,
    )


def stop_at(n):
    return lambda step, history: step == n


def test_interrupted_save_keeps_the_previous_checkpoint_exact(tmp_path, monkeypatch):
    """A save that dies after writing the new weights, before the commit, leaves step 6 intact."""
    straight = train(model(), data(), None, cfg(tmp_path / "a", 12), progress=False)
    out = tmp_path / "b"
    train(model(), data(), None, cfg(out, 12), progress=False, callback=stop_at(6))
    assert read_meta(out)["step"] == 6

    def dies(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the training state")

    monkeypatch.setattr(checkpoint, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(out, model(seed=99), step=7)
    assert (out / (MODEL_FILE + ".new")).is_file()  # the half-written new checkpoint is there ...
    monkeypatch.undo()
    assert read_meta(out)["step"] == 6  # ... but readers see the complete old one
    resumed = train(model(seed=5), data(), None, cfg(out, 12), progress=False, resume_from=out)
    assert resumed.train_loss == straight.train_loss  # exact, as if never stopped
    assert not (out / (MODEL_FILE + ".new")).exists()  # the next save cleaned the debris


def test_kill_after_the_commit_point_gives_the_new_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    m = model()
    checkpoint.save_checkpoint(out, model(seed=1), step=1)
    real_replace = checkpoint.os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the commit file is in place; die before renaming the new files
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(out, m, step=2)
    monkeypatch.undo()
    assert (out / COMMIT_FILE).is_file()
    assert read_meta(out)["step"] == 2
    again = load_pretrained(out)
    for p, q in zip(m.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    checkpoint.save_checkpoint(out, m, step=3)  # finishes the old commit, writes the new one
    assert read_meta(out)["step"] == 3 and not (out / COMMIT_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, STATE_FILE, META_FILE])


def test_other_files_in_the_folder_are_kept(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    checkpoint.save_checkpoint(tmp_path, model(), step=1)
    checkpoint.save_checkpoint(tmp_path, model(), step=2)
    assert (tmp_path / "tokenizer.json").read_text() == "{}"


def test_weights_and_config_alone_load_for_inference(tmp_path):
    m = model()
    checkpoint.save_checkpoint(tmp_path, m, step=3)
    (tmp_path / STATE_FILE).unlink()
    again = load_pretrained(tmp_path)
    x = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(again(x).logits, m.eval()(x).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"{STATE_FILE} is missing"):
        load_checkpoint(tmp_path, model())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_weights_name_the_file(tmp_path, damage):
    checkpoint.save_checkpoint(tmp_path, model(), step=1)
    path = tmp_path / MODEL_FILE
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_damaged_json_names_the_file(tmp_path, text):
    checkpoint.save_checkpoint(tmp_path, model(), step=1)
    (tmp_path / META_FILE).write_text(text)
    with pytest.raises(ValueError, match=r"checkpoint\.json"):
        load_pretrained(tmp_path)


def test_save_into_a_file_path_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        checkpoint.save_checkpoint(tmp_path / "f", model())


def test_no_pickle_anywhere(tmp_path):
    checkpoint.save_checkpoint(tmp_path, model(), step=1)
    for p in tmp_path.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{p.name} looks like a pickle / torch.save zip"
    assert json.loads((tmp_path / META_FILE).read_text())["step"] == 1
