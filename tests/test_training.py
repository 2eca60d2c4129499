"""Tests for the trainer, checkpoints, batching (companion.training) and loss plots (companion.analysis.plotting)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.training.batching import BlockSampler, get_batch
from companion.training.checkpoint import META_FILE, MODEL_FILE, STATE_FILE, load_checkpoint
from companion.training.evaluation import evaluate
from companion.training.objectives import MaskedLM
from companion.training.schedule import lr_at
from companion.training.trainer import History, TrainConfig, param_groups, train


@dataclass
class ToyConfig:
    vocab_size: int = 12
    block_size: int = 8
    d_model: int = 16
    dropout: float = 0.1


class ToyOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor | None


class Toy(nn.Module):
    """A tiny causal model (token + position embedding, one MLP): enough to train and resume."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.block_size, config.d_model)
        self.prev = nn.Embedding(config.vocab_size, config.d_model)  # sees the previous token
        self.norm = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        h = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        h = h + self.prev(F.pad(idx[:, :-1], (1, 0)))  # token t-1 (0 before the start)
        h = h + self.drop(torch.relu(self.fc(self.norm(h))))
        logits = self.head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return ToyOutput(logits, loss)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and least disturbed by a busy machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_data(n: int = 400, period: int = 7) -> torch.Tensor:
    return torch.arange(n) % period  # next token is a function of the current one


def toy_model(seed: int = 0, **kw) -> Toy:
    torch.manual_seed(seed)
    return Toy(ToyConfig(**kw))


def cfg(**kw) -> TrainConfig:
    base = dict(
        steps=20,
        batch_size=4,
        block_size=8,
        lr=3e-2,
        min_lr=3e-3,
        warmup_steps=3,
        eval_interval=5,
        eval_steps=2,
        device="cpu",
        log_interval=5,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- schedule and optimizer


def test_lr_schedule_warmup_then_cosine():
    c = dict(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(0, **c) == pytest.approx(0.1)
    assert lr_at(4, **c) == pytest.approx(0.5)
    assert lr_at(9, **c) == pytest.approx(1.0)  # end of warm-up: the peak
    assert lr_at(10, **c) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, **c) == pytest.approx(0.55)  # half-way: (lr + min_lr) / 2
    assert lr_at(110, **c) == pytest.approx(0.1)
    assert lr_at(500, **c) == pytest.approx(0.1)
    decay = [lr_at(s, **c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(35, lr=1.0, warmup_steps=10, decay_steps=60) == pytest.approx(0.5)
    assert lr_at(60, lr=1.0, warmup_steps=10, decay_steps=60) == 0.0
    with pytest.raises(ValueError, match="min_lr"):
        lr_at(0, lr=1.0, min_lr=2.0, decay_steps=10)


def test_train_follows_the_schedule_of_its_config():
    from companion.nn import GPT, GPTConfig

    cfg = TrainConfig(steps=6, batch_size=2, block_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=2, decay_steps=4)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layers=1, n_heads=1, d_model=8))
    data = torch.arange(200) % 11
    history = train(model, data, None, cfg, progress=False)
    expected = [lr_at(s, lr=1e-2, min_lr=1e-3, warmup_steps=2, decay_steps=4) for s in range(6)]
    assert history.lr == pytest.approx(expected)


def test_param_groups_exclude_bias_norm_embedding_and_count_tied_once():
    m = toy_model()
    m.head.weight = m.tok.weight  # tie (vocab, d_model) matrices as GPT does
    decay, keep = param_groups(m, 0.1)
    assert {id(p) for p in decay["params"]} == {id(m.fc.weight)}
    assert {id(p) for p in keep["params"]} == {
        id(m.tok.weight),
        id(m.pos.weight),
        id(m.prev.weight),
        id(m.norm.weight),
        id(m.norm.bias),
        id(m.fc.bias),
    }
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp16")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)


# ---------------------------------------------------------------- batches


def test_block_sampler_windows_are_contiguous_and_resumable():
    data = torch.arange(100)
    s = BlockSampler(data, batch_size=5, length=9, seed=3)
    first = s.next()
    assert first.shape == (5, 9)
    assert torch.equal(first - first[:, :1], torch.arange(9).expand(5, 9))
    state = s.state_dict()
    a, b = s.next(), s.next()
    s2 = BlockSampler(data, batch_size=5, length=9, seed=99)
    s2.load_state_dict(state)
    assert torch.equal(s2.next(), a) and torch.equal(s2.next(), b)
    assert s2.batches_drawn == 3
    x, y = get_batch(data, 3, 4, torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1)


# ---------------------------------------------------------------- training


def test_training_learns_a_deterministic_sequence():
    m = toy_model(dropout=0.0)
    h = train(m, toy_data(), toy_data(100), cfg(steps=60), progress=False)
    assert len(h.train_loss) == 60 and h.step == list(range(1, 61))
    assert h.train_loss[0] > 2.0  # about log(12) = 2.48 at the start
    assert h.val_loss[-1] < 0.3 * h.val_loss[0]
    assert h.eval_step == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    assert all(t > 0 for t in h.tokens_per_s)
    assert h.lr[:3] == pytest.approx([0.01, 0.02, 0.03])


def test_resume_gives_identical_losses(tmp_path):
    """20 steps straight == 10 steps, stop, resume for 10 more (dropout on: RNG must be restored)."""
    straight = train(toy_model(), toy_data(), toy_data(100), cfg(), progress=False)
    first = train(
        toy_model(),
        toy_data(),
        toy_data(100),
        cfg(out_dir=str(tmp_path)),
        progress=False,
        callback=lambda step, h: step == 10,
    )
    assert len(first.train_loss) == 10
    resumed = train(
        toy_model(seed=123), toy_data(), toy_data(100), cfg(out_dir=str(tmp_path)), progress=False, resume_from=tmp_path
    )
    assert resumed.step == list(range(1, 21))
    assert resumed.train_loss == straight.train_loss  # exact
    assert resumed.lr == straight.lr
    assert resumed.val_loss[-1] == straight.val_loss[-1]


def test_keyboard_interrupt_stops_cleanly_and_resumes(tmp_path):
    straight = train(toy_model(), toy_data(), toy_data(100), cfg(), progress=False)

    def stop_at_7(step, history):
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    h = train(
        toy_model(),
        toy_data(),
        toy_data(100),
        cfg(out_dir=str(out), ckpt_interval=5),
        progress=False,
        callback=stop_at_7,
    )
    assert h.interrupted and len(h.train_loss) == 7
    assert h.train_loss == straight.train_loss[:7]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["step"] == 7  # the interrupt saved the state after step 7, not the step-5 one
    resumed = train(
        toy_model(seed=5), toy_data(), toy_data(100), cfg(out_dir=str(out)), progress=False, resume_from=out
    )
    assert not resumed.interrupted
    assert resumed.train_loss == straight.train_loss


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    m = toy_model()
    train(m, toy_data(), None, cfg(steps=4, out_dir=str(tmp_path)), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_FILE, STATE_FILE, META_FILE])
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["model_config"] == {"vocab_size": 12, "block_size": 8, "d_model": 16, "dropout": 0.1}
    assert meta["train_config"]["steps"] == 4 and meta["step"] == 4
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / STATE_FILE))
    n_params = len(list(m.parameters()))
    assert sum(k.endswith(".exp_avg") for k in state) == n_params
    # optimizer state restores exactly
    m2 = toy_model(seed=9)
    opt = torch.optim.AdamW(param_groups(m2, 0.1))
    load_checkpoint(tmp_path, m2, opt)
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    moments = [opt.state[p]["exp_avg_sq"] for p in m2.parameters()]
    assert all(float(v.abs().sum()) > 0 for v in moments)


def test_checkpoint_config_mismatch_is_a_clear_error(tmp_path):
    train(toy_model(), toy_data(), None, cfg(steps=2, out_dir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match=r"d_model: checkpoint 16 vs model 32"):
        train(toy_model(d_model=32), toy_data(), None, cfg(steps=4), progress=False, resume_from=tmp_path)


def test_clear_errors_for_bad_data():
    with pytest.raises(ValueError, match=r"train data has 50 tokens, fewer than block_size\+1 = 65"):
        train(toy_model(block_size=64), torch.arange(50) % 12, None, cfg(block_size=64), progress=False)
    with pytest.raises(ValueError, match="token id 12 but the model's vocab_size is 12"):
        train(toy_model(), torch.arange(100) % 13, None, cfg(), progress=False)

    class Tok:
        vocab_size = 20

    with pytest.raises(ValueError, match="tokenizer has 20 tokens but the model's vocab_size is 12"):
        train(toy_model(), toy_data(), None, cfg(), progress=False, tokenizer=Tok())
    with pytest.raises(ValueError, match="block_size 16 exceeds the model's block_size 8"):
        train(toy_model(), toy_data(), None, cfg(block_size=16), progress=False)
    with pytest.raises(ValueError, match="integer token ids"):
        train(toy_model(), torch.rand(100), None, cfg(), progress=False)


def test_nan_loss_raises():
    m = toy_model()
    with torch.no_grad():
        m.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        train(m, toy_data(), None, cfg(), progress=False)


def test_masked_lm_objective_trains():
    torch.manual_seed(0)
    mask_id = 11
    obj = MaskedLM(mask_token_id=mask_id, vocab_size=12)
    data = toy_data(period=7)  # ids 0..6: a masked token is predictable from its left neighbour
    m = toy_model(dropout=0.0)
    h = train(m, data, toy_data(100), cfg(steps=60, batch_size=8), objective=obj, progress=False)
    assert h.val_loss[-1] < 0.5 * h.val_loss[0]


def test_custom_batch_function_and_bf16():
    def reverse(window, generator):  # predict the previous token instead of the next
        return window[:, 1:], window[:, :-1]

    h = train(
        toy_model(dropout=0.0),
        toy_data(),
        toy_data(100),
        cfg(steps=30, dtype="bf16"),
        objective=reverse,
        progress=False,
    )
    assert h.val_loss[-1] < h.val_loss[0]


def test_evaluate_is_deterministic_and_matches_manual_loss():
    m = toy_model().eval()
    c = cfg(eval_steps=3, eval_batch_size=2)
    val = toy_data(100)
    a, b = evaluate(m, val, c), evaluate(m, val, c)
    assert a == b
    from companion.training.batching import BlockSampler

    s = BlockSampler(val, 2, 9, seed=c.seed + 1)
    manual = []
    with torch.no_grad():
        for _ in range(3):
            w = s.next()
            manual.append(F.cross_entropy(m(w[:, :-1]).logits.flatten(0, 1), w[:, 1:].flatten()).item())
    assert a == pytest.approx(sum(manual) / 3, abs=1e-6)


def test_history_json_roundtrip_and_plot(tmp_path):
    h = train(toy_model(), toy_data(), toy_data(100), cfg(steps=6), progress=False)
    h.save_json(tmp_path / "h.json")
    h2 = History.load_json(tmp_path / "h.json")
    assert h2 == h and "6 steps" in repr(h2)
    assert math.isfinite(h.best_val_loss)
    import matplotlib

    matplotlib.use("Agg")
    from companion.analysis.plotting import plot_history, smooth

    ax = plot_history(h)
    assert ax.get_xlabel() == "step" and len(ax.get_lines()) == 3
    smoothed, raw, val = ax.get_lines()
    assert smoothed.get_color() == raw.get_color() == val.get_color()  # one colour per run
    assert list(val.get_ydata()) == h.val_loss
    assert smooth([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_progress_bar_runs(capsys):
    train(toy_model(), toy_data(), toy_data(100), cfg(steps=5), progress=True)
    assert "tok/s" in capsys.readouterr().err


# ---------------------------------------------------------------- the book's models


def test_gpt_trains_and_resumes_exactly(tmp_path):
    from companion.nn import GPT, GPTConfig

    def gpt(seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=16, block_size=16, n_layers=1, n_heads=2, d_model=32, dropout=0.1))

    data = torch.arange(2000) % 13
    c = cfg(steps=16, block_size=16, lr=1e-2, eval_interval=8)
    straight = train(gpt(0), data, data[:300], c, progress=False)
    assert straight.val_loss[-1] < straight.val_loss[0] - 0.5
    first = train(
        gpt(0),
        data,
        data[:300],
        cfg(**{**c.to_dict(), "out_dir": str(tmp_path)}),
        progress=False,
        callback=lambda step, h: step == 5,
    )
    assert len(first.step) == 5
    resumed = train(gpt(1), data, data[:300], c, progress=False, resume_from=tmp_path)
    assert resumed.train_loss == straight.train_loss
    from companion.training.checkpoint import load_pretrained

    model = load_pretrained(tmp_path)  # rebuilt from checkpoint.json (the step-5 weights)
    assert isinstance(model, GPT) and model.config.n_layers == 1 and not model.training


def test_encoder_trains_with_masked_lm():
    """BERT-style model: targets are the original tokens at masked positions, the loss covers only those."""
    from companion.nn import EncoderConfig, EncoderForMaskedLM
    from companion.training.trainer import model_loss

    torch.manual_seed(0)
    enc = EncoderForMaskedLM(
        EncoderConfig(vocab_size=16, block_size=16, n_layers=1, n_heads=2, d_model=32, dropout=0.0)
    )
    obj = MaskedLM(mask_token_id=15, vocab_size=16)
    data = torch.arange(2000) % 13
    x, y = obj(data[:64].view(4, 16), torch.Generator().manual_seed(0))
    chosen = y != -100
    manual = F.cross_entropy(enc(x).logits[chosen], y[chosen])
    torch.testing.assert_close(model_loss(enc, x, y), manual, rtol=0, atol=1e-6)
    h = train(
        enc, data, data[:300], cfg(steps=40, block_size=16, lr=1e-2, eval_interval=20), objective=obj, progress=False
    )
    # from log(16) = 2.77 (uniform) towards log(13) = 2.56 (the 13 ids that occur) in 40 steps
    assert h.val_loss[0] > 2.7 and h.val_loss[-1] < 2.62
