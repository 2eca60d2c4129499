"""LoRA (companion.posttraining.lora) against peft's LoRA, in float64, on a tiny GPT and a tiny Llama.

peft is applied with `peft.get_peft_model`, which works on any nn.Module with named Linear submodules
(companion's models included); both wrappers get the SAME A and B (B random, so the update matters).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from companion.nn import GPT, GPTConfig, Llama, LlamaConfig
from companion.posttraining.lora import (
    LoRALinear,
    adam_state_bytes,
    apply_lora,
    count_trainable,
    load_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_lora,
    strip_lora,
    unmerge_lora,
)

GPT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc_gate", "fc_in", "fc_out")
R, ALPHA = 4, 8


def tiny_gpt(dtype: torch.dtype = torch.float64, d_model: int = 16) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=61, block_size=16, n_layers=2, n_heads=2, d_model=d_model)
    return GPT(config).to(dtype)


def tiny_llama(dtype: torch.dtype = torch.float64) -> Llama:
    torch.manual_seed(0)  # n_kv_heads=2: k_proj and v_proj are 16 -> 8
    config = LlamaConfig(vocab_size=61, block_size=16, n_layers=2, n_heads=4, n_kv_heads=2, d_model=16, d_ff=40)
    return Llama(config).to(dtype)


MODELS = {"gpt": (tiny_gpt, GPT_TARGETS), "llama": (tiny_llama, LLAMA_TARGETS)}


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(seed))


def peft_wrap(model: nn.Module, targets, dropout: float = 0.0):
    config = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(targets), lora_dropout=dropout, init_lora_weights=True
    )
    return get_peft_model(model, config)


def peft_layers(peft_model) -> dict[str, nn.Module]:
    """peft's LoRA layers by the name the module has in the unwrapped model."""
    inner = peft_model.base_model.model
    return {name: m for name, m in inner.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


@torch.no_grad()
def same_random_adapters(ours: nn.Module, theirs, seed: int = 1) -> None:
    """Draw random A and B (B non-zero) for every LoRA layer and copy them into both models."""
    g = torch.Generator().manual_seed(seed)
    theirs_by_name = peft_layers(theirs)
    assert sorted(theirs_by_name) == [name for name, _ in sorted(lora_layers(ours))]
    for name, m in lora_layers(ours):
        m.lora_A.copy_(0.3 * torch.randn(m.lora_A.shape, generator=g, dtype=m.lora_A.dtype))
        m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype))
        theirs_by_name[name].lora_A["default"].weight.copy_(m.lora_A)
        theirs_by_name[name].lora_B["default"].weight.copy_(m.lora_B)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def both(arch: str, dropout: float = 0.0):
    """(base model, ours, peft's), the same weights, the same random adapters."""
    make, targets = MODELS[arch]
    base = make()
    ours = apply_lora(copy.deepcopy(base), targets, r=R, alpha=ALPHA, dropout=dropout)
    theirs = peft_wrap(copy.deepcopy(base), targets, dropout)
    same_random_adapters(ours, theirs)
    return base, ours, theirs


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


def test_lora_linear_is_the_formula_and_merges_without_double_counting():
    torch.manual_seed(0)
    base = nn.Linear(7, 5).double()
    W0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=3, alpha=6.0)
    assert layer.scaling == 2.0 and not base.weight.requires_grad and not base.bias.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    A, B, s = layer.lora_A.detach(), layer.lora_B.detach(), 2.0
    x = torch.randn(4, 2, 7, dtype=torch.float64)

    expected = x @ W0.T + base.bias.detach() + s * (x @ A.T @ B.T)  # (4, 2, 5)
    assert max_diff(layer(x), expected) < 1e-13
    assert max_diff(layer.delta_weight(), s * B @ A) < 1e-14
    assert max_diff(layer(x), x @ W0.T + base.bias.detach()) > 0.1  # the update matters

    unmerged = layer(x).detach()
    layer.merge()
    assert layer.merged and max_diff(base.weight, W0 + s * B @ A) < 1e-14
    assert max_diff(layer(x), unmerged) < 1e-13  # the update counted once, not twice
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert not layer.merged and max_diff(base.weight, W0) < 1e-15
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()


def test_a_is_kaiming_uniform_like_nn_linear_and_b_is_zero():
    torch.manual_seed(3)
    layer = LoRALinear(nn.Linear(400, 300), r=8, alpha=16)
    torch.manual_seed(3)
    nn.Linear(400, 300)  # the same draws for the base layer
    reference = torch.empty(8, 400)
    nn.init.kaiming_uniform_(reference, a=math.sqrt(5))
    assert torch.equal(layer.lora_A.detach(), reference)
    bound = 1 / math.sqrt(400)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(d_in), 1/sqrt(d_in))
    assert 0.95 * bound < layer.lora_A.abs().max().item() <= bound
    assert torch.count_nonzero(layer.lora_B) == 0


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_at_initialisation_the_wrapped_model_is_the_base_model(arch):
    make, targets = MODELS[arch]
    base = make()
    wrapped = apply_lora(copy.deepcopy(base), targets, r=R, alpha=ALPHA)
    x = tokens()
    assert torch.equal(wrapped(x).logits, base(x).logits)  # B = 0: exactly, not approximately


# --------------------------------------------------------------------------------------------
# Against peft
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_logits_match_peft(arch):
    base, ours, theirs = both(arch)
    x = tokens()
    got, want = ours(x).logits, theirs(x).logits
    assert max_diff(got, want) < 1e-12
    assert max_diff(got, base(x).logits) > 1e-3  # the adapters change the model


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_trainable_parameters_match_peft(arch):
    base, ours, theirs = both(arch)
    ours_names = sorted(name for name, p in ours.named_parameters() if p.requires_grad)
    peft_names = sorted(
        name.removeprefix("base_model.model.")
        .replace(".lora_A.default.weight", ".lora_A")
        .replace(".lora_B.default.weight", ".lora_B")
        for name, p in theirs.named_parameters()
        if p.requires_grad
    )
    assert ours_names == peft_names and len(ours_names) == 2 * len(MODELS[arch][1]) * base.config.n_layers
    trainable, total = count_trainable(ours)
    assert (trainable, total) == theirs.get_nb_trainable_parameters()
    per_layer = [R * (m.base_layer.in_features + m.base_layer.out_features) for _, m in lora_layers(ours)]
    assert trainable == sum(per_layer) and total == count_trainable(base)[1] + trainable


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_merge_matches_peft_merge_and_unload_and_unmerge_restores(arch):
    base, ours, theirs = both(arch)
    x = tokens()
    unmerged_logits = ours(x).logits
    merge_lora(ours)
    assert max_diff(ours(x).logits, unmerged_logits) < 1e-12

    merged_theirs = theirs.merge_and_unload().state_dict()
    stripped = strip_lora(copy.deepcopy(ours)).state_dict()
    assert stripped.keys() == merged_theirs.keys() == base.state_dict().keys()
    assert max(max_diff(stripped[k], merged_theirs[k]) for k in stripped) < 1e-15
    for name, m in lora_layers(ours):
        assert max_diff(m.base_layer.weight, merged_theirs[f"{name}.weight"]) < 1e-15

    unmerge_lora(ours)
    original = base.state_dict()
    restored = {name: m.base_layer.weight for name, m in lora_layers(ours)}
    assert max(max_diff(w, original[f"{name}.weight"]) for name, w in restored.items()) < 1e-15
    assert max_diff(ours(x).logits, unmerged_logits) < 1e-12


def test_strip_lora_gives_plain_linear_layers_with_the_merged_model():
    _, ours, _ = both("gpt")
    x = tokens()
    want = ours(x).logits
    plain = strip_lora(ours)
    assert not lora_layers(plain)
    assert all(type(plain.blocks[0].attn.get_submodule(t)) is nn.Linear for t in ("q_proj", "v_proj"))
    assert max_diff(plain(x).logits, want) < 1e-12


def test_train_mode_dropout_matches_peft_and_eval_mode_has_none():
    _, ours, theirs = both("gpt", dropout=0.3)
    x = tokens()
    ours.train(), theirs.train()
    torch.manual_seed(7)
    got = ours(x).logits
    torch.manual_seed(7)
    want = theirs(x).logits
    assert max_diff(got, want) < 1e-12  # the same dropout masks, drawn in the same order

    no_dropout = copy.deepcopy(ours)
    for _, m in lora_layers(no_dropout):
        m.lora_dropout = nn.Identity()
    ours.eval()
    assert torch.equal(ours(x).logits, no_dropout.eval()(x).logits)
    assert max_diff(got, ours(x).logits) > 1e-3  # in training mode dropout did act


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_gradients_reach_only_a_and_b(arch):
    _, ours, _ = both(arch)
    x = tokens()
    ours(x, targets=tokens(1)).loss.backward()
    for name, p in ours.named_parameters():
        if name.endswith((".lora_A", ".lora_B")):
            assert p.requires_grad and p.grad is not None and p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_adamw_state_is_what_the_formula_says_full_vs_lora():
    """Build torch.optim.AdamW, take one step, and sum the bytes of the state it really allocated."""

    def measured(model: nn.Module) -> tuple[int, int, int]:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model(tokens(), targets=tokens(1)).loss.backward()
        opt.step()
        moments = sum(s[k].nbytes for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
        total = sum(t.nbytes for s in opt.state.values() for t in s.values())
        return moments, total, len(opt.state)

    full = tiny_gpt(torch.float32, d_model=32)
    lora = apply_lora(copy.deepcopy(full), GPT_TARGETS, r=2, alpha=4)
    lora64 = apply_lora(tiny_gpt(torch.float64, d_model=32), GPT_TARGETS, r=2, alpha=4)
    for model, size in ((full, 4), (lora, 4), (lora64, 8)):
        moments, total, n_tensors = measured(model)
        trainable = count_trainable(model)[0]
        assert moments == adam_state_bytes(model) == 2 * size * trainable  # two moments in the parameter's dtype
        assert total == moments + n_tensors * 4  # plus one fp32 step counter per tensor
    lora_params = sum(2 * (m.base_layer.in_features + m.base_layer.out_features) for _, m in lora_layers(lora))
    assert adam_state_bytes(lora) == 8 * lora_params
    assert adam_state_bytes(full) == 8 * count_trainable(full)[1]
    assert adam_state_bytes(lora) < adam_state_bytes(full) / 10


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def test_adapters_round_trip_through_safetensors(tmp_path):
    _, ours, _ = both("llama")
    x = tokens()
    want = ours(x).logits
    fresh = apply_lora(tiny_llama(), LLAMA_TARGETS, r=R, alpha=ALPHA)
    assert max_diff(fresh(x).logits, want) > 1e-3

    state = lora_state_dict(ours)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in state) and len(state) == 2 * 7 * 2
    save_file(state, tmp_path / "plain.safetensors")
    load_lora_state_dict(fresh, load_file(tmp_path / "plain.safetensors"))
    assert torch.equal(fresh(x).logits, want)

    save_lora(ours, tmp_path / "adapter.safetensors")
    again = load_lora(apply_lora(tiny_llama(), LLAMA_TARGETS, r=R, alpha=ALPHA), tmp_path / "adapter.safetensors")
    assert torch.equal(again(x).logits, want)


def test_loading_adapters_that_do_not_fit_is_refused(tmp_path):
    _, ours, _ = both("gpt")
    save_lora(ours, tmp_path / "a.safetensors")
    state = lora_state_dict(ours)

    other_alpha = apply_lora(tiny_gpt(), GPT_TARGETS, r=R, alpha=2 * ALPHA)
    with pytest.raises(ValueError, match="alpha=8, the model's r=4, alpha=16"):
        load_lora(other_alpha, tmp_path / "a.safetensors")
    other_rank = apply_lora(tiny_gpt(), GPT_TARGETS, r=2, alpha=ALPHA)
    with pytest.raises(ValueError, match=r"has shape \(4, 16\), the model's is \(2, 16\)"):
        load_lora_state_dict(other_rank, state)
    fewer_targets = apply_lora(tiny_gpt(), ("q_proj",), r=R, alpha=ALPHA)
    with pytest.raises(ValueError, match="unexpected.*k_proj"):
        load_lora_state_dict(fewer_targets, state)
    merged = merge_lora(copy.deepcopy(ours))
    with pytest.raises(ValueError, match="merged: unmerge_lora"):
        load_lora_state_dict(merged, state)
    save_file({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="not written by save_lora"):
        load_lora(copy.deepcopy(ours), tmp_path / "b.safetensors")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "rank r must be an int >= 1, got 0"),
        ({"r": -2}, "rank r must be an int >= 1"),
        ({"r": 2.0}, "rank r must be an int >= 1"),
        ({"r": True}, "rank r must be an int >= 1"),
        ({"r": 17}, r"LoRA rank 17 exceeds the layer's width 16 \(blocks.0.attn.q_proj\)"),
        ({"alpha": 0}, "alpha must be a finite number > 0, got 0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"alpha": float("inf")}, "alpha must be a finite number > 0"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ({"target_modules": ("query",)}, r"matches target_modules \['query'\].*fc_in.*q_proj"),
        ({"target_modules": ("q_proj", "v_prj")}, r"matches target_modules \['v_prj'\].*v_proj"),
        ({"target_modules": ("attn",)}, r"matches target_modules \['attn'\]"),  # a module, not a Linear
        ({"target_modules": ()}, "one or more non-empty module names"),
        ({"target_modules": ("",)}, "one or more non-empty module names"),
        ({"target_modules": ("lm_head",)}, "lm_head.weight is tied to tok_emb.weight"),
    ],
)
def test_bad_arguments_are_refused_and_leave_the_model_untouched(kwargs, message):
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **kwargs)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_error_names_the_narrow_layer():
    with pytest.raises(ValueError, match=r"LoRA rank 12 exceeds the layer's width 8 \(blocks.0.attn.k_proj\)"):
        apply_lora(tiny_llama(), LLAMA_TARGETS, r=12, alpha=16)  # q_proj (16 wide) would take rank 12


def test_misuse_is_refused():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        apply_lora({"q_proj": nn.Linear(4, 4)})
    with pytest.raises(TypeError, match="target_modules must be a module name or names, got int"):
        apply_lora(tiny_gpt(), target_modules=3)
    assert lora_layers(apply_lora(tiny_gpt(), "attn.q_proj", r=2, alpha=2))[0][0] == "blocks.0.attn.q_proj"
    with pytest.raises(TypeError, match="wraps an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=4)
    with pytest.raises(ValueError, match=r"LoRA rank 5 exceeds the layer's width 4$"):
        LoRALinear(nn.Linear(4, 9), r=5, alpha=4)
    wrapped = apply_lora(tiny_gpt())
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(wrapped)
    for fn in (merge_lora, unmerge_lora, strip_lora, lora_state_dict):
        with pytest.raises(ValueError, match="no LoRA layers: call apply_lora"):
            fn(tiny_gpt())
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(wrapped)
    merge_lora(wrapped)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(wrapped)
