"""Tests for companion.training.optim: Newton-Schulz orthogonalisation, Muon, and its AdamW part."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from companion.nn import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig
from companion.training.optim import Muon, hidden_matrices, muon_param_groups, newton_schulz
from companion.training.trainer import TrainConfig, train


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layers=2, n_heads=2, d_model=32, **kw))


@pytest.mark.parametrize("shape", [(32, 32), (64, 16), (16, 64), (3, 24, 8)])
def test_newton_schulz_keeps_directions_and_flattens_singular_values(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    X = newton_schulz(G, dtype=torch.float32)
    assert X.shape == G.shape
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.6 and s.max() < 1.25  # every singular value close to 1 ...
    # ... along G's own singular vectors: U^T X V is (nearly) diagonal
    inner = U.mT @ X @ Vh.mT
    diag = torch.diagonal(inner, dim1=-2, dim2=-1)
    assert (inner - torch.diag_embed(diag)).abs().max() < 1e-3
    cos = (X * (U @ Vh)).sum((-2, -1)) / (X.norm(dim=(-2, -1)) * (U @ Vh).norm(dim=(-2, -1)))
    assert (cos > 0.97).all()


def test_newton_schulz_needs_a_matrix():
    with pytest.raises(ValueError, match="needs a matrix"):
        newton_schulz(torch.ones(5))


def test_adamw_part_equals_torch_adamw():
    """Groups with use_muon=False take exactly torch.optim.AdamW's steps."""
    ours, ref = tiny_gpt(), tiny_gpt()
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    opt = Muon([{"params": list(ours.parameters()), "use_muon": False, "weight_decay": 0.1}], **kw)
    ref_opt = torch.optim.AdamW(ref.parameters(), weight_decay=0.1, **kw)
    torch.manual_seed(1)
    for _ in range(5):
        x = torch.randint(0, 16, (4, 16))
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x, x).loss.backward()
            o.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_muon_step_by_hand():
    """W <- (1 - lr wd) W - lr sqrt(max(1, m/n)) orth(mu B + (1 - mu) G), with B = (1 - mu) G at step 1."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(48, 16))
    W0 = W.detach().clone()
    G = torch.randn(48, 16)
    W.grad = G.clone()
    lr, mu, wd = 0.05, 0.9, 0.1
    Muon([W], lr=lr, momentum=mu, weight_decay=wd, ns_dtype=torch.float32).step()
    buf = (1 - mu) * G
    update = newton_schulz(G + mu * (buf - G), dtype=torch.float32)  # Nesterov: G.lerp(B, mu)
    expected = (1 - lr * wd) * W0 - lr * math.sqrt(48 / 16) * update
    torch.testing.assert_close(W.detach(), expected)
    assert not torch.equal(W.detach(), W0)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_muon_step_equals_torch_optim_muon(shape):
    """Our Muon (bf16 Newton-Schulz, Nesterov, decoupled decay) against PyTorch's own, 5 steps."""
    torch.manual_seed(0)
    ours, ref = nn.Parameter(torch.randn(shape)), nn.Parameter(torch.zeros(shape))
    ref.data.copy_(ours.data)
    opt = Muon([ours], lr=0.02, momentum=0.95, weight_decay=0.1)
    ref_opt = torch.optim.Muon([ref], lr=0.02, momentum=0.95, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(shape)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(ours.data, ref.data, rtol=0, atol=1e-6)


def test_muon_rejects_a_vector_in_a_muon_group():
    b = nn.Parameter(torch.zeros(4))
    b.grad = torch.ones(4)
    with pytest.raises(ValueError, match="updates matrices"):
        Muon([b]).step()


def test_hidden_matrices_of_gpt_are_the_block_linears_only():
    model = tiny_gpt()
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = sorted(names[id(p)] for p in hidden_matrices(model))
    per_layer = ["attn.k_proj", "attn.out_proj", "attn.q_proj", "attn.v_proj", "ffn.fc_in", "ffn.fc_out"]
    assert hidden == sorted(f"blocks.{i}.{m}.weight" for i in range(2) for m in per_layer)
    groups = muon_param_groups(model, weight_decay=0.1, lr_scale=4.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert groups[0]["use_muon"] and groups[0]["lr_scale"] == 4.0
    assert not any(g["use_muon"] for g in groups[1:])


def test_an_untied_output_head_stays_with_adamw():
    model = tiny_gpt(tie_weights=False)
    assert id(model.lm_head.weight) not in {id(p) for p in hidden_matrices(model)}
    enc = EncoderForMaskedLM(EncoderConfig(vocab_size=20, block_size=8, n_layers=1, n_heads=2, d_model=16))
    vocab_out = [m.weight for m in enc.modules() if isinstance(m, nn.Linear) and m.out_features == 20]
    assert vocab_out and not {id(p) for p in vocab_out} & {id(p) for p in hidden_matrices(enc)}


def muon_cfg(**kw) -> TrainConfig:
    base = dict(
        steps=30,
        batch_size=8,
        block_size=16,
        lr=3e-3,
        warmup_steps=5,
        eval_interval=10,
        eval_steps=2,
        device="cpu",
        optimizer="muon",
        muon_lr=0.02,
    )
    return TrainConfig(**{**base, **kw})


def test_trainer_with_muon_learns_and_schedules_both_learning_rates(tmp_path):
    from companion.training.checkpoint import read_meta

    data = torch.arange(3000) % 13
    history = train(tiny_gpt(), data, data[:400], muon_cfg(out_dir=str(tmp_path)), progress=False)
    assert history.val_loss[-1] < history.val_loss[0] - 1.0
    groups = read_meta(tmp_path)["optimizer_param_groups"]  # as saved after the last step
    lrs = {bool(g["use_muon"]): g["lr"] for g in groups}
    assert lrs[False] == pytest.approx(history.lr[-1])
    assert lrs[True] == pytest.approx(history.lr[-1] * 0.02 / 3e-3)  # muon_lr on the same schedule


def test_make_optimizer_starts_each_group_at_its_own_peak_rate():
    """Used outside train(), the matrices must not step at AdamW's rate."""
    from companion.training.optim import make_optimizer

    opt = make_optimizer(tiny_gpt(), muon_cfg(lr=3e-3, muon_lr=0.02), torch.device("cpu"))
    assert sorted((g["use_muon"], g["lr"]) for g in opt.param_groups) == [(False, 3e-3), (True, 0.02)]


def test_muon_run_resumes_exactly(tmp_path):
    data = torch.arange(3000) % 13
    straight = train(tiny_gpt(), data, data[:400], muon_cfg(steps=12), progress=False)
    train(
        tiny_gpt(),
        data,
        data[:400],
        muon_cfg(steps=12, out_dir=str(tmp_path)),
        progress=False,
        callback=lambda step, h: step == 5,
    )
    resumed = train(tiny_gpt(seed=9), data, data[:400], muon_cfg(steps=12), progress=False, resume_from=tmp_path)
    assert resumed.train_loss == straight.train_loss  # momentum buffers and Adam moments restored


def test_config_rejects_unknown_optimizer_and_bad_muon_settings():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="muon_lr"):
        TrainConfig(optimizer="muon", muon_lr=0.0)
