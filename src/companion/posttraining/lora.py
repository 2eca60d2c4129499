"""Low-rank adaptation (LoRA; Hu et al. 2021, arXiv:2106.09685): train a small update, not the model.

A frozen linear layer with weight W (d_out x d_in) gains a trainable update of rank at most r:

    W' = W + (alpha / r) B A,    A (r x d_in),  B (d_out x r),  r << min(d_in, d_out)

A starts random (Kaiming-uniform with a = sqrt(5), like nn.Linear and peft) and B at zero, so B A = 0 and
the wrapped model starts exactly equal to the original. The forward pass never forms the d_out x d_in
product B A; it sends the input through the two thin matrices:

    y = x W^T + b + (alpha / r) dropout(x) A^T B^T

Only A and B are trained: r (d_in + d_out) numbers per layer instead of d_in d_out. AdamW keeps two
moments for every trainable number, so its memory shrinks by the same factor (`adam_state_bytes`).
The factor alpha / r keeps the update's size from growing with r, so alpha need not be retuned when r
changes. After training, merging writes W + (alpha / r) B A into the base weight, so the adapted model
costs nothing extra at inference; unmerging subtracts it back (exactly, up to rounding).

The names follow peft's (`base_layer`, `lora_A`, `lora_B`, `scaling`, `merge`, `unmerge`), and the tests
check logits, merged weights and trainable parameters against peft's LoRA in float64.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "LoRALinear",
    "adam_state_bytes",
    "apply_lora",
    "count_trainable",
    "load_lora",
    "load_lora_state_dict",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "strip_lora",
    "unmerge_lora",
]


def _check_hyperparameters(r: int, alpha: float, dropout: float) -> None:
    """Raise a ValueError unless r is an int >= 1, alpha a finite number > 0 and dropout in [0, 1)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")


def _check_rank_fits(layer: nn.Linear, r: int, name: str = "") -> None:
    """Raise a ValueError if r exceeds min(d_in, d_out): B A could not have rank r."""
    width = min(layer.in_features, layer.out_features)
    if r > width:
        where = f" ({name})" if name else ""
        raise ValueError(f"LoRA rank {r} exceeds the layer's width {width}{where}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = base_layer(x) + (alpha / r) dropout(x) A^T B^T."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        _check_hyperparameters(r, alpha, dropout)
        _check_rank_fits(base_layer, r)
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, float(alpha), alpha / r
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # uniform in +-1/sqrt(d_in), as nn.Linear
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True while the update is written into base_layer.weight

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"

    def delta_weight(self) -> Tensor:
        """The update (alpha / r) B A, shape (d_out, d_in), the shape of the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Write the update into the base weight, W <- W + (alpha / r) B A; forward then uses W alone."""
        if self.merged:
            raise ValueError("this LoRA layer is already merged: merging twice would add the update twice")
        w = self.base_layer.weight
        w += self.delta_weight().to(w.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight, W <- W - (alpha / r) B A."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged: there is nothing to unmerge")
        w = self.base_layer.weight
        w -= self.delta_weight().to(w.dtype)
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_out). Merged: the base layer alone, its weight already holds the update
        (so the LoRA dropout is not applied and A, B receive no gradient: unmerge before training on)."""
        y = self.base_layer(x)  # (..., d_out)
        if self.merged:
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        return y + F.linear(h, self.lora_B) * self.scaling  # (..., d_out)


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRALinear in `model` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """`lora_layers(model)`, or a ValueError when there are none."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: call apply_lora(model, ...) first")
    return layers


def _matches(name: str, targets: Iterable[str]) -> bool:
    """Whether a module's qualified name is one of the targets or ends with '.' + one (peft's rule)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """The qualified names under which each parameter appears (more than one for tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    return owners


def apply_lora(
    model: nn.Module,
    target_modules: str | Iterable[str] = ("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
) -> nn.Module:
    """Replace every nn.Linear named in `target_modules` by a LoRALinear and freeze all other parameters.

    Works in place and returns `model`. A target matches a module whose qualified name equals it or ends
    with '.' + it (peft's rule): "q_proj" matches blocks.0.attn.q_proj, "attn.q_proj" works too. Each
    target must match at least one nn.Linear. Nothing is changed unless every check passes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_lora needs an nn.Module, got {type(model).__name__}")
    if not isinstance(target_modules, (str, Iterable)):
        raise TypeError(f"target_modules must be a module name or names, got {type(target_modules).__name__}")
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be one or more non-empty module names, got {target_modules!r}")
    _check_hyperparameters(r, alpha, dropout)
    if existing := lora_layers(model):
        raise ValueError(f"the model already has LoRA layers ({existing[0][0]}, ...): strip_lora it first")

    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
    chosen = {name: m for name, m in linears.items() if _matches(name, targets)}
    missing = [t for t in targets if not any(_matches(name, (t,)) for name in chosen)]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(
            f"no nn.Linear in the model matches target_modules {missing}; "
            f"its linear layers are called: {', '.join(available) or '(none)'}"
        )
    owners = _weight_owners(model)
    for name, layer in chosen.items():
        _check_rank_fits(layer, r, name)
        others = [o for o in owners[id(layer.weight)] if o != f"{name}.weight"]
        if others:
            raise ValueError(
                f"{name}.weight is tied to {others[0]}: merging an update into it would change both; "
                f"leave {name} out of target_modules or untie the weights"
            )

    model.requires_grad_(False)
    for name, layer in chosen.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, LoRALinear(layer, r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer's update into its base weight (in place); returns `model`."""
    layers = _require_lora(model)
    if merged := [name for name, m in layers if m.merged]:
        raise ValueError(f"LoRA layers already merged ({merged[0]}, ...): merging twice would add the update twice")
    for _, m in layers:
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract every LoRA layer's update from its base weight again (in place); returns `model`."""
    layers = _require_lora(model)
    if unmerged := [name for name, m in layers if not m.merged]:
        raise ValueError(f"LoRA layers not merged ({unmerged[0]}, ...): there is nothing to unmerge")
    for _, m in layers:
        m.unmerge()
    return model


def strip_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and put its base nn.Linear (now holding W + (alpha / r) B A) back in its place.

    In place; returns `model`, whose state_dict has the original model's keys (peft's `merge_and_unload`).
    Parameters keep their requires_grad (frozen after `apply_lora`).
    """
    for name, m in _require_lora(model):
        if not m.merged:
            m.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, m.base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters only: {"<layer>.lora_A": A, "<layer>.lora_B": B} for every LoRA layer (detached)."""
    state = {}
    for name, m in _require_lora(model):
        state[f"{name}.lora_A"] = m.lora_A.detach()
        state[f"{name}.lora_B"] = m.lora_B.detach()
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Copy adapters saved by `lora_state_dict` into `model`'s (unmerged) LoRA layers; returns `model`.

    The keys must be exactly the model's adapter keys and each shape must match.
    """
    layers = _require_lora(model)
    if merged := [name for name, m in layers if m.merged]:
        raise ValueError(f"LoRA layer {merged[0]} is merged: unmerge_lora(model) before loading adapters")
    params = {f"{name}.lora_{ab}": getattr(m, f"lora_{ab}") for name, m in layers for ab in "AB"}
    missing, unexpected = sorted(params.keys() - state_dict.keys()), sorted(state_dict.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, p in params.items():
        t = state_dict[key]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{key} has shape {tuple(t.shape)}, the model's is {tuple(p.shape)} (another rank?)")
        p.copy_(t)
    return model


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Save the adapters to a safetensors file, with each layer's r and alpha in its metadata."""
    layers = _require_lora(model)
    hyper = {name: {"r": m.r, "alpha": m.alpha} for name, m in layers}
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(path), metadata={"lora": json.dumps(hyper)})


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load adapters written by `save_lora` into `model`, checking each layer's r and alpha; returns `model`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "lora" not in metadata:
        raise ValueError(f"{path} has no LoRA metadata: it was not written by save_lora")
    saved = json.loads(metadata["lora"])
    for name, m in _require_lora(model):
        h = saved.get(name)
        if h is not None and (h["r"], h["alpha"]) != (m.r, m.alpha):
            raise ValueError(
                f"{name}: the file's adapter has r={h['r']}, alpha={h['alpha']:g}, "
                f"the model's r={m.r}, alpha={m.alpha:g}"
            )
    return load_lora_state_dict(model, load_file(str(path)))


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared (tied) tensor counted once, as peft counts them."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adam_state_bytes(model: nn.Module) -> int:
    """Bytes of AdamW's two moments (exp_avg, exp_avg_sq) for the trainable parameters: 2 x numel x element size.

    torch.optim.AdamW keeps both moments in each parameter's dtype, so 8 bytes per fp32 parameter; it
    creates them at the first step for every parameter that has a gradient. The per-tensor step counters
    (one scalar each) are left out.
    """
    return sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
