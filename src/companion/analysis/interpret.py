r"""Looking inside a trained Transformer: attention patterns, the logit lens, a WEAT-style
association test on embeddings, and memorisation of training text.

Linear probes on hidden states are `companion.analysis.baselines.fit_linear_probe`: the same
logistic regression as the sentence-vector baseline of Chapter 9.

`trace(model, idx)` runs a GPT (or an Encoder) once and keeps what flows through it: the residual
stream before the first block and after every block, and every head's attention weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from companion.inference.generation import generate

__all__ = [
    "Trace",
    "continuation_match",
    "induction_scores",
    "logit_lens",
    "previous_token_scores",
    "sequence_losses",
    "trace",
    "weat_bootstrap_ci",
    "weat_effect_size",
    "weat_permutation_test",
]


class Trace(NamedTuple):
    """What `trace` records."""

    output: object  # the model's own output (ModelOutput for a GPT, hidden states for an Encoder)
    residuals: Tensor  # (n_layers + 1, B, T, d_model): input of block 0, then output of each block
    attentions: Tensor  # (n_layers, B, n_heads, T, T): softmax weights of every head


@torch.no_grad()
def trace(model: nn.Module, idx: Tensor, **kwargs) -> Trace:
    """Run `model(idx, **kwargs)` once with hooks on its `blocks`, returning a `Trace`.

    A forward pre-hook switches on ``need_weights`` of each block's self-attention (our
    MultiHeadAttention then takes its explicit path and returns the weights); forward hooks keep
    the weights and the residual stream. The model's output is unchanged by the hooks.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError("trace needs a model with a non-empty `blocks` ModuleList (GPT or Encoder)")
    residuals: list[Tensor] = []
    attentions: list[Tensor] = []
    handles = []

    def want_weights(module, args, kw):
        kw = dict(kw)
        kw["need_weights"] = True
        return args, kw

    def keep_weights(module, args, kw, out):
        attentions.append(out.weights)  # (B, n_heads, T, S)

    def keep_input(module, args, kw):
        residuals.append(args[0] if args else kw["x"])  # (B, T, d_model)

    def keep_output(module, args, out):
        residuals.append(out)  # (B, T, d_model)

    handles.append(blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    for block in blocks:
        handles.append(block.attn.register_forward_pre_hook(want_weights, with_kwargs=True))
        handles.append(block.attn.register_forward_hook(keep_weights, with_kwargs=True))
        handles.append(block.register_forward_hook(keep_output))
    was_training = model.training
    model.eval()
    try:
        output = model(idx, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Trace(output, torch.stack(residuals), torch.stack(attentions))


# --------------------------------------------------------------------------- attention patterns


def _check_attn(attn: Tensor) -> None:
    if attn.dim() < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention weights must be (..., T, T), got {tuple(attn.shape)}")


def _offset_score(attn: Tensor, offset: int, first_query: int) -> Tensor:
    """Mean weight that query t puts on key t - offset, over queries t >= first_query."""
    _check_attn(attn)
    T = attn.shape[-1]
    if not 0 <= offset <= first_query < T:
        raise ValueError(f"need 0 <= offset ({offset}) <= first query ({first_query}) < T ({T})")
    t = torch.arange(first_query, T)
    picked = attn[..., t, t - offset]  # (..., n_queries)
    return picked.mean(dim=-1)


def previous_token_scores(attn: Tensor) -> Tensor:
    """Mean attention from each position t >= 1 to position t - 1: (..., T, T) -> (...).

    For weights (n_layers, B, n_heads, T, T) average over B afterwards to get one score per head.
    A head that always looks at the previous token scores 1.
    """
    return _offset_score(attn, 1, 1)


def induction_scores(attn: Tensor, period: int) -> Tensor:
    """Mean attention to the token *after* the previous occurrence, on a sequence repeating with `period`.

    In the second copy, query t sees the same token at t - period; an induction head attends to
    t - period + 1 (what came next last time) and so can copy it (Olsson et al. 2022).
    (..., T, T) -> (...), over queries t >= period.
    """
    if period < 2:
        raise ValueError(f"period must be >= 2, got {period}")
    return _offset_score(attn, period - 1, period)


# --------------------------------------------------------------------------- logit lens


@torch.no_grad()
def logit_lens(model: nn.Module, residuals: Tensor, targets: Tensor) -> Tensor:
    """Next-token loss of each layer's residual stream read through the final LayerNorm and head.

    residuals (n_layers + 1, B, T, d_model), targets (B, T) -> (n_layers + 1,) mean cross-entropy
    (nostalgebraist 2020). The last entry equals the model's own loss.
    """
    if residuals.dim() != 4 or residuals.shape[1:3] != targets.shape:
        raise ValueError(
            f"residuals (L+1, B, T, d) and targets (B, T) do not fit: "
            f"{tuple(residuals.shape)} vs {tuple(targets.shape)}"
        )
    logits = model.lm_head(model.ln_f(residuals))  # (L+1, B, T, V)
    V = logits.shape[-1]
    flat_targets = targets.reshape(-1)
    return torch.stack([F.cross_entropy(lg.reshape(-1, V), flat_targets) for lg in logits])


# --------------------------------------------------------------------------- WEAT


def _association(w: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """s(w, A, B) = mean cos(w, a) - mean cos(w, b), for each row w: (n, d) -> (n,)."""
    w, a, b = (F.normalize(t.float(), dim=-1) for t in (w, a, b))
    return (w @ a.T).mean(dim=1) - (w @ b.T).mean(dim=1)


def _check_sets(*sets: Tensor) -> None:
    d = sets[0].shape[-1]
    for s in sets:
        if s.dim() != 2 or s.shape[0] < 1 or s.shape[1] != d:
            raise ValueError(f"every word set must be a non-empty (n, {d}) matrix, got {tuple(s.shape)}")


def weat_effect_size(X: Tensor, Y: Tensor, A: Tensor, B: Tensor) -> float:
    r"""Caliskan et al. (2017): $d = \frac{\operatorname{mean}_{x} s(x,A,B) - \operatorname{mean}_{y} s(y,A,B)}
    {\operatorname{std}_{w \in X \cup Y} s(w,A,B)}$ with $s(w,A,B)$ the difference of mean cosines.

    X, Y target embeddings (n, d) (e.g. two sets of occupations); A, B attribute embeddings
    (e.g. male and female words). Positive d: X is closer to A (and Y to B) than the reverse.
    """
    _check_sets(X, Y, A, B)
    sx, sy = _association(X, A, B), _association(Y, A, B)
    spread = torch.cat([sx, sy]).std()  # sample standard deviation, as in the paper
    return ((sx.mean() - sy.mean()) / spread).item()


def weat_permutation_test(
    X: Tensor, Y: Tensor, A: Tensor, B: Tensor, n_permutations: int = 10_000, seed: int = 0
) -> float:
    r"""One-sided p-value of the WEAT statistic $\sum_x s(x,A,B) - \sum_y s(y,A,B)$.

    The targets X ∪ Y are re-split at random into sets of the sizes of X and Y; the p-value is the
    fraction of splits (the observed one counted in) whose statistic is at least the observed one.
    """
    _check_sets(X, Y, A, B)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    s = torch.cat([_association(X, A, B), _association(Y, A, B)])  # (n_x + n_y,)
    n_x = X.shape[0]
    observed = s[:n_x].sum() - s[n_x:].sum()
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(s.numel(), generator=g) for _ in range(n_permutations)])
    shuffled = s[perms]  # (n_permutations, n)
    stats = shuffled[:, :n_x].sum(dim=1) - shuffled[:, n_x:].sum(dim=1)
    return ((stats >= observed - 1e-12).sum().item() + 1) / (n_permutations + 1)


def weat_bootstrap_ci(
    X: Tensor,
    Y: Tensor,
    A: Tensor,
    B: Tensor,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    resample_attributes: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the WEAT effect size d over the choice of words.

    Each resample draws the target words of X and of Y with replacement (and, when
    `resample_attributes`, the attribute words of A and of B too) and recomputes d, so the
    interval shows how much d depends on which words happened to be in the lists.
    """
    _check_sets(X, Y, A, B)
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < ci < 1, got {n_boot}, {ci}")
    n_x, n_y, n_a, n_b = X.shape[0], Y.shape[0], A.shape[0], B.shape[0]
    w = F.normalize(torch.cat([X, Y]).float(), dim=-1)  # (n_x + n_y, d)
    cos_a = w @ F.normalize(A.float(), dim=-1).T  # (n_x + n_y, n_a)
    cos_b = w @ F.normalize(B.float(), dim=-1).T  # (n_x + n_y, n_b)
    g = torch.Generator().manual_seed(seed)
    rows = torch.cat(
        [torch.randint(0, n_x, (n_boot, n_x), generator=g), n_x + torch.randint(0, n_y, (n_boot, n_y), generator=g)],
        dim=1,
    )  # (n_boot, n_x + n_y)
    if resample_attributes:
        cols_a = torch.randint(0, n_a, (n_boot, n_a), generator=g)  # (n_boot, n_a)
        cols_b = torch.randint(0, n_b, (n_boot, n_b), generator=g)
    else:
        cols_a, cols_b = torch.arange(n_a).expand(n_boot, n_a), torch.arange(n_b).expand(n_boot, n_b)
    s = cos_a[rows.unsqueeze(-1), cols_a.unsqueeze(1)].mean(-1) - cos_b[rows.unsqueeze(-1), cols_b.unsqueeze(1)].mean(
        -1
    )  # (n_boot, n_x + n_y)
    d = (s[:, :n_x].mean(dim=1) - s[:, n_x:].mean(dim=1)) / s.std(dim=1)  # (n_boot,)
    d = d[torch.isfinite(d)]  # a resample of one repeated word has no spread
    lo, hi = torch.quantile(d, torch.tensor([(1 - ci) / 2, (1 + ci) / 2]))
    return lo.item(), hi.item()


# --------------------------------------------------------------------------- memorisation


@torch.no_grad()
def continuation_match(
    model: nn.Module, data: Tensor, starts: list[int], prefix_len: int = 32, cont_len: int = 32
) -> tuple[float, float]:
    """Greedy-continue `prefix_len` tokens taken from `data` at each start; compare with the true text.

    Returns (fraction of continuations reproduced exactly, mean fraction of tokens matching
    position by position). A model that memorised its training text scores high on training
    starts and low on held-out starts (Carlini et al. 2021).
    """
    if prefix_len < 1 or cont_len < 1:
        raise ValueError(f"prefix_len and cont_len must be >= 1, got {prefix_len}, {cont_len}")
    if not starts:
        raise ValueError("starts is empty")
    if max(starts) + prefix_len + cont_len > len(data) or min(starts) < 0:
        raise ValueError("a start is out of range: need 0 <= start <= len(data) - prefix_len - cont_len")
    windows = torch.stack([data[s : s + prefix_len + cont_len] for s in starts])  # (N, P + C)
    out = generate(model, windows[:, :prefix_len], cont_len, temperature=0.0)  # (N, P + C)
    same = out[:, prefix_len:] == windows[:, prefix_len:]  # (N, C)
    return same.all(dim=1).float().mean().item(), same.float().mean().item()


@torch.no_grad()
def sequence_losses(model: nn.Module, data: Tensor, starts: list[int], length: int) -> Tensor:
    """Mean next-token loss of each window data[s : s + length + 1]: returns (len(starts),)."""
    if length < 1 or not starts or max(starts) + length + 1 > len(data) or min(starts) < 0:
        raise ValueError("need length >= 1 and every window data[s : s + length + 1] inside data")
    windows = torch.stack([data[s : s + length + 1] for s in starts])  # (N, length + 1)
    was_training = model.training
    model.eval()
    logits = model(windows[:, :-1]).logits  # (N, length, V)
    model.train(was_training)
    loss = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # (N, length)
    return loss.mean(dim=1)
