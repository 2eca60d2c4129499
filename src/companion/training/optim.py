r"""Optimizers for the trainer: AdamW, and Muon for the hidden matrices (Jordan et al. 2024).

AdamW scales every coordinate of the gradient by its own running RMS. Muon treats a weight
matrix as a matrix: it keeps a momentum $M_t = \mu M_{t-1} + (1-\mu) G_t$ of the gradient and
steps along its *orthogonalised* version. With the SVD $M = U \Sigma V^\top$,

$$\operatorname{orth}(M) = U V^\top = \arg\min_{O \text{ (semi-)orthogonal}} \lVert O - M \rVert_F ,$$

the same directions with every singular value set to 1, so the rare directions of the update
are not drowned by the few dominant ones. An SVD per matrix per step would be slow; a
polynomial iteration gets close with five rounds of three matrix products: after scaling $X_0 = M / \lVert M
\rVert_F$ (all singular values in (0, 1]), $X_{k+1} = a X_k + b (X_k X_k^\top) X_k + c (X_k
X_k^\top)^2 X_k$ applies $p(\sigma) = a\sigma + b\sigma^3 + c\sigma^5$ to every singular value
at once, and the coefficients (3.4445, -4.7750, 2.0315) make five rounds of $p$ carry every
$\sigma$ in [0.002, 1] into roughly [0.7, 1.2] (smaller ones still grow about 500-fold; the
slope at 0 is $a^5$). Muon is for the matrices inside the Transformer
blocks; embeddings, the output head, biases and norms keep AdamW (Muon's own recommendation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # p(s) = a s + b s^3 + c s^5 (Jordan et al. 2024)
OPTIMIZERS = ("adamw", "muon")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices of Linear-type layers decay; biases, norms, embeddings do not."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep = [], []
    for p in model.parameters():  # shared (tied) parameters appear once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in no_decay else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon is for: 2-D weights of nn.Linear layers, except an output head (one with
    `config.vocab_size` outputs) and any weight shared with an embedding (tied)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out, seen = [], set()
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.out_features == vocab:
            continue
        p = module.weight
        if p.requires_grad and id(p) not in embedded and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


@torch.no_grad()
def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise G (..., m, n): about U V^T for G = U S V^T (quintic iteration).

    Singular values of G above 0.002 of its Frobenius norm become roughly [0.7, 1.2]; the
    singular vectors are G's.
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix (or a stack of them), got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype).reshape(-1, *G.shape[-2:])  # (k, m, n): a batch of matrices
    wide = X.size(-2) <= X.size(-1)
    if not wide:  # iterate on the smaller Gram matrix X X^T
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # Frobenius >= spectral norm: sigma <= 1
    for _ in range(steps):
        A = X @ X.mT  # (k, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + (b A + c A^2) X: p applied to every singular value
    return (X if wide else X.mT).reshape(G.shape)


class Muon(torch.optim.Optimizer):
    r"""Muon for groups with ``use_muon=True``; AdamW (the same update as torch.optim.AdamW) for the rest.

    Muon step for a matrix W of shape (m, n) with gradient G, momentum mu, learning rate lr:
    $B \leftarrow \mu B + (1-\mu) G$; $U = \operatorname{orth}(\mu B + (1-\mu) G)$ (Nesterov);
    $W \leftarrow (1 - \mathrm{lr}\,\lambda) W - \mathrm{lr} \sqrt{\max(1, m/n)}\, U$.
    Matrices of one shape are orthogonalised together, as one batched iteration. The matrix
    update is the same, to the bit in tests, as `torch.optim.Muon` (PyTorch 2.9+), which has no
    AdamW part and so needs a second optimizer and a second state for the other parameters.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype = torch.bfloat16,
    ):
        if lr <= 0 or not 0.0 <= momentum < 1.0 or ns_steps < 1:
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1 and ns_steps >= 1, got lr={lr}, "
                f"momentum={momentum}, ns_steps={ns_steps}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            use_muon=True,
        )
        params = list(params)
        if not params:
            raise ValueError("Muon got no parameters (does the model have hidden Linear matrices?)")
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # not a group option: groups are saved as JSON in checkpoints

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon(group, params)
            else:
                self._adamw(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        by_shape: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            if p.dim() != 2:
                raise ValueError(
                    f"Muon updates matrices; a parameter of shape {tuple(p.shape)} is in "
                    "a use_muon group (give it to a use_muon=False group)"
                )
            by_shape.setdefault(tuple(p.shape), []).append(p)
        for (m, n), ps in by_shape.items():
            updates = []
            for p in ps:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # B = mu B + (1 - mu) G
                updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
            ortho = newton_schulz(torch.stack(updates), group["ns_steps"], self.ns_dtype)  # (k, m, n)
            scale = math.sqrt(max(1.0, m / n))
            for p, u in zip(ps, ortho):
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(u.to(p.dtype), alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        (beta1, beta2), lr, wd, eps = group["betas"], group["lr"], group["weight_decay"], group["eps"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            if wd:
                p.mul_(1 - lr * wd)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def muon_param_groups(model: nn.Module, weight_decay: float, lr_scale: float) -> list[dict[str, Any]]:
    """Groups for `Muon`: the hidden matrices (use_muon, lr_scale) and the AdamW groups of the rest."""
    hidden = {id(p) for p in hidden_matrices(model)}
    groups = [
        {
            "params": [p for p in model.parameters() if id(p) in hidden],
            "use_muon": True,
            "weight_decay": weight_decay,
            "lr_scale": lr_scale,
        }
    ]
    for g in param_groups(model, weight_decay):
        rest = [p for p in g["params"] if id(p) not in hidden]
        if rest:
            groups.append({**g, "params": rest, "use_muon": False, "lr_scale": 1.0})
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names: AdamW over `param_groups` (fused when asked for, or
    when None on CUDA), or Muon for the hidden matrices at lr x muon_lr / lr plus AdamW for the rest."""
    if cfg.optimizer == "muon":
        groups = muon_param_groups(model, cfg.weight_decay, cfg.muon_lr / cfg.lr)
        for g in groups:  # the peak rates; train() then sets lr_at(step) * lr_scale every step
            g["lr"] = cfg.lr * g["lr_scale"]
        return Muon(groups, lr=cfg.lr, momentum=cfg.muon_momentum, betas=cfg.betas, eps=cfg.eps)
    fused = cfg.fused
    if fused is None:  # on CPU the fused kernel measured slower than foreach for small models
        fused = device.type == "cuda"
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kwargs)
