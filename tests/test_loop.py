"""The package's one optimisation step and its loop over in-memory batches."""

import math

import pytest
import torch

from companion.training.loop import clip_and_check, run_steps, set_lr


def test_run_steps_follows_the_schedule_and_equals_a_hand_written_loop():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    rates = [0.1 / (1 + t) for t in range(6)]
    opt_a = torch.optim.SGD(a.parameters(), lr=1.0)
    seen = []
    losses = run_steps(
        opt_a,
        lambda t: torch.nn.functional.mse_loss(a(x[t * 4 : t * 4 + 4]), y[t * 4 : t * 4 + 4]),
        6,
        lambda t: rates[t],
        grad_clip=0.5,
        callback=lambda step, loss: seen.append((step, opt_a.param_groups[0]["lr"])),
    )
    opt_b = torch.optim.SGD(b.parameters(), lr=1.0)
    for t in range(6):
        opt_b.param_groups[0]["lr"] = rates[t]
        opt_b.zero_grad()
        loss = torch.nn.functional.mse_loss(b(x[t * 4 : t * 4 + 4]), y[t * 4 : t * 4 + 4])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
        opt_b.step()
        assert losses[t] == pytest.approx(loss.item(), abs=1e-7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert seen == [(t + 1, rates[t]) for t in range(6)]


def test_set_lr_scales_each_group():
    w1, w2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [w1]}, {"params": [w2], "lr_scale": 10.0}], lr=1.0)
    set_lr(opt, 3e-4)
    assert [g["lr"] for g in opt.param_groups] == [3e-4, pytest.approx(3e-3)]


def test_a_non_finite_loss_stops_before_the_update():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        run_steps(opt, lambda t: (w * float("nan")).sum(), 3, lambda t: 0.1)
    assert torch.equal(w.detach(), torch.ones(2))  # not moved
    with pytest.raises(ValueError, match="steps must be >= 1"):
        run_steps(opt, lambda t: w.sum(), 0, lambda t: 0.1)


def test_clip_and_check_returns_the_norm_before_clipping():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    assert clip_and_check([w], 1.0, 0.5, 0, 1e-3) == pytest.approx(5.0)
    assert torch.allclose(w.grad.norm(), torch.tensor(1.0))
    assert math.isnan(clip_and_check([w], 0.0, 0.5, 0, 1e-3))
