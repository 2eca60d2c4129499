"""Tests for companion.posttraining.preference: sequence log-probabilities and the DPO loss, checked against trl.

trl 1.x has no free-standing DPO loss function: the loss is computed inside ``DPOTrainer._compute_loss(self, model,
inputs, return_outputs)``. The tests call that unbound method with a SimpleNamespace ``self`` carrying only the
attributes it reads (beta, loss_types=["sigmoid"], f_divergence_type="reverse_kl", label_smoothing=0, ...), so
trl's own lines compute the loss being compared against.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from companion.posttraining.preference import (
    PreferencePair,
    dpo_loss,
    implicit_reward,
    sequence_logprobs,
    token_logprobs,
)
from companion.training.objectives import IGNORE_INDEX

BETAS = [0.01, 0.1, 0.5, 2.0]


def _trl_self(beta: float, model=None, ref_model=None, precompute: bool = True) -> tuple[SimpleNamespace, list]:
    """The attributes DPOTrainer._compute_loss reads, for the plain sigmoid loss; also the tensors it gathers."""
    gathered: list[torch.Tensor] = []

    def gather(x: torch.Tensor) -> torch.Tensor:
        gathered.append(x)
        return x

    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=gather)
    trainer = SimpleNamespace(
        model=model if model is not None else SimpleNamespace(training=True),
        ref_model=ref_model,
        accelerator=accelerator,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        beta=beta,
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        label_smoothing=0.0,
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        use_weighting=False,
        precompute_ref_logps=precompute,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer, gathered


def trl_dpo_on_logps(pc, pr, rc, rr, beta):
    """trl's DPO sigmoid loss on given sequence log-probabilities -> (loss, chosen_rewards, rejected_rewards).

    A stand-in model returns the policy's sequence log-probabilities as a single completion token per row (the
    batch is [chosen; rejected], as trl concatenates it); the reference's come precomputed.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    B = pc.size(0)
    log_probs = torch.cat([pc, pr]).unsqueeze(1)  # (2B, 1): one completion token per sequence

    def model(**kwargs):
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    ids = torch.zeros(2 * B, 2, dtype=torch.long)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": torch.ones_like(ids),  # shifted by one inside trl: (2B, 1)
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    trainer, gathered = _trl_self(beta)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, gathered[0], gathered[1]  # trl gathers chosen_rewards, then rejected_rewards


def _random_logps(seed: int, B: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-40 * torch.rand(B, generator=g, dtype=torch.float64) for _ in range(4)]


# ----------------------------------------------------------------------------- parity with trl


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_loss_equals_trl_sigmoid_loss(beta):
    pytest.importorskip("trl")
    worst = 0.0
    for seed, B in [(0, 1), (1, 5), (2, 16)]:
        pc, pr, rc, rr = _random_logps(seed, B)
        pc.requires_grad_(True)
        pr.requires_grad_(True)
        loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta)
        (grad_ours,) = torch.autograd.grad(loss, [pc])
        t_loss, t_chosen, t_rejected = trl_dpo_on_logps(pc, pr, rc, rr, beta)
        (grad_trl,) = torch.autograd.grad(t_loss, [pc])
        assert t_loss.dtype == torch.float64
        for ours, theirs in [(loss, t_loss), (chosen, t_chosen), (rejected, t_rejected), (grad_ours, grad_trl)]:
            worst = max(worst, float((ours - theirs).detach().abs().max()))
    assert worst < 1e-12, worst  # measured 0 (the same float64 operations)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_dpo_end_to_end_equals_trl_with_its_fused_lm_head():
    """Real models: trl scores prompt+completion through its fused LM head; we score the logits we are given.

    This checks the conventions around the loss: trl's labels are input_ids masked outside the completion and shifted
    by one, so our (logits[:, :-1], targets = input_ids[:, 1:] masked) must give the same log-probabilities. trl's
    fused head accumulates in float32, hence the float32 tolerance.
    """
    pytest.importorskip("trl")
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=13,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    policy, ref = LlamaForCausalLM(cfg).double(), LlamaForCausalLM(cfg).double()
    g = torch.Generator().manual_seed(1)
    B, T, prompt_len = 3, 9, 4
    ids = torch.randint(13, (2 * B, T), generator=g)  # rows [chosen; rejected], the prompt shared in spirit
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    completion_mask[:, prompt_len:] = 1
    completion_mask[1, -2:] = 0  # a shorter completion, padded

    targets = ids[:, 1:].masked_fill(completion_mask[:, 1:] == 0, IGNORE_INDEX)  # (2B, T-1)
    with torch.no_grad():
        logps = sequence_logprobs(policy(ids).logits[:, :-1], targets)
        ref_logps = sequence_logprobs(ref(ids).logits[:, :-1], targets)
    loss, chosen, rejected = dpo_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:], beta=0.1)

    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref)
    trainer, gathered = _trl_self(0.1, model=policy, ref_model=ref, precompute=False)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion_mask}
    with torch.no_grad():
        t_loss = DPOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False)
    assert abs(float(loss) - float(t_loss)) < 1e-6  # measured 3e-8 (the rewards: 3e-7)
    torch.testing.assert_close(chosen, gathered[0].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(rejected, gathered[1].double(), atol=1e-6, rtol=0)
    assert float((chosen - rejected).abs().max()) > 1e-3  # the two models differ: the check is not vacuous


# ----------------------------------------------------------------------------- sequence log-probabilities


def _logits_and_targets(seed: int = 0, B: int = 3, T: int = 6, V: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(V, (B, T), generator=g)
    targets[:, :2] = IGNORE_INDEX  # the prompt
    targets[1, -1] = IGNORE_INDEX  # padding
    return logits, targets


def test_sequence_logprobs_equals_a_float64_hand_loop():
    logits, targets = _logits_and_targets()
    expected = []
    for b in range(logits.size(0)):
        total = 0.0
        for t in range(logits.size(1)):
            y = int(targets[b, t])
            if y == IGNORE_INDEX:
                continue
            row = [float(z) for z in logits[b, t]]
            total += row[y] - math.log(sum(math.exp(z) for z in row))
        expected.append(total)
    got = sequence_logprobs(logits, targets)
    assert got.dtype == torch.float64
    assert float((got - torch.tensor(expected, dtype=torch.float64)).abs().max()) < 1e-12


def test_sequence_logprobs_equals_trl_selective_log_softmax():
    pytest.importorskip("trl")
    from trl.trainer.utils import selective_log_softmax

    for seed in range(3):
        logits, targets = _logits_and_targets(seed, B=4, T=8, V=11)
        keep = targets != IGNORE_INDEX
        theirs = selective_log_softmax(logits, targets.clamp(min=0), row_mask=keep)  # (B, T), 0 where not kept
        assert float((token_logprobs(logits, targets) - theirs).abs().max()) < 1e-12
        assert float((sequence_logprobs(logits, targets) - theirs.sum(dim=1)).abs().max()) < 1e-12


def test_sequence_logprobs_ignores_prompt_positions_and_survives_minus_inf():
    logits, targets = _logits_and_targets()
    changed = logits.clone()
    changed[:, :2] = float("-inf")  # anything at ignored positions, even -inf logits
    changed[:, :2, 1] = 5.0
    torch.testing.assert_close(sequence_logprobs(changed, targets), sequence_logprobs(logits, targets))


# ----------------------------------------------------------------------------- the loss itself


def test_dpo_gradcheck():
    pc, pr, rc, rr = (t.requires_grad_(True) for t in _random_logps(3, 4))
    for beta in (0.1, 1.5):
        assert torch.autograd.gradcheck(lambda a, b, c, d, s=beta: dpo_loss(a, b, c, d, beta=s)[0], (pc, pr, rc, rr))


def test_dpo_loss_is_log2_when_policy_equals_reference():
    pc, pr, _, _ = _random_logps(4, 6)
    for beta in BETAS:
        loss, chosen, rejected = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta)
        assert abs(float(loss) - math.log(2)) < 1e-15
        assert float(chosen.abs().max()) == 0.0 and float(rejected.abs().max()) == 0.0


def test_dpo_loss_decreases_in_the_margin_and_stays_finite():
    zero = torch.zeros(1, dtype=torch.float64)
    margins = torch.linspace(-1e4, 1e4, 201, dtype=torch.float64)
    losses = torch.stack([dpo_loss(m.view(1), zero, zero, zero, beta=0.1)[0] for m in margins])
    assert bool(torch.isfinite(losses).all())
    steps = losses[1:] - losses[:-1]
    assert bool((steps[losses[1:] > 0] < 0).all())  # strictly decreasing until it underflows to 0
    assert bool((steps <= 0).all())
    assert float(losses[0]) == pytest.approx(1e3, rel=1e-12)  # -log sigma(-1000) = 1000 + log(1 + e^-1000)
    assert float(losses[-1]) == 0.0
    # float32 too: logsigmoid, not log(sigmoid), which gives inf at a margin of -1000
    m = torch.tensor([-1e4], requires_grad=True)
    loss = dpo_loss(m, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1)[0]
    loss.backward()
    assert math.isfinite(loss.item()) and m.grad.item() == pytest.approx(-0.1)


def test_implicit_rewards():
    pc, pr, rc, rr = _random_logps(5, 3)
    _, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.3)
    torch.testing.assert_close(chosen, 0.3 * (pc - rc), rtol=0, atol=1e-15)
    torch.testing.assert_close(rejected, implicit_reward(pr, rr, 0.3), rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("beta", [0, 0.0, -0.1, float("nan"), float("inf"), True])
def test_dpo_rejects_a_bad_beta(beta):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta must be"):
        dpo_loss(x, x, x, x, beta=beta)


def test_dpo_rejects_mismatched_shapes():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="1-D of one length"):
        dpo_loss(x, torch.zeros(2), x, x)
    with pytest.raises(ValueError, match="1-D of one length"):
        dpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))


def test_sequence_logprobs_rejects_bad_input():
    logits, targets = _logits_and_targets()
    with pytest.raises(ValueError, match="disagree"):
        sequence_logprobs(logits, targets[:, :-1])
    with pytest.raises(ValueError, match=r"must be \(B, T, V\)"):
        sequence_logprobs(logits[0], targets[0])
    with pytest.raises(TypeError, match="integer token ids"):
        sequence_logprobs(logits, targets.double())
    bad = targets.clone()
    bad[0, 3] = 7
    with pytest.raises(ValueError, match=r"target id 7 is outside the vocabulary \[0, 7\)"):
        sequence_logprobs(logits, bad)
    empty = targets.clone()
    empty[2] = IGNORE_INDEX
    with pytest.raises(ValueError, match="row 2 has no target"):
        sequence_logprobs(logits, empty)


def test_preference_pair():
    pair = PreferencePair("2+2=", " 4", " 5")
    assert (pair.prompt, pair.chosen, pair.rejected) == ("2+2=", " 4", " 5")
    with pytest.raises(ValueError, match="a preference pair with identical answers teaches nothing"):
        PreferencePair("2+2=", " 4", " 4")
    with pytest.raises(TypeError, match="chosen must be a str"):
        PreferencePair("2+2=", 4, " 5")
