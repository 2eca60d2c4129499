r"""Mixture of experts: a feed-forward layer of SwiGLU experts, each token routed to its top k.

A router (one linear map d_model -> n_experts, no bias) scores the experts for each token; the k
best run on it and their outputs are mixed with the softmax probabilities of those k, renormalised
to sum to 1 (Shazeer et al. 2017; Mixtral, Jiang et al. 2024). The parameters grow with
n_experts, the compute per token only with k.

Nothing forces the router to spread the tokens: it can send almost all of them to a few experts.
The load-balancing loss of the Switch Transformer (Fedus et al. 2021, eqs. 4-6), in the top-k
form of Mixtral (`transformers`' ``load_balancing_loss_func``),

$$\mathcal{L}_\text{aux} = E \sum_{i=1}^{E} f_i P_i ,$$

with $f_i$ the fraction of tokens that chose expert $i$ among their k (so $\sum_i f_i = k$) and
$P_i$ the router's mean probability for expert $i$, is smallest, $k$, when both are uniform; a
small multiple of it added to the training loss keeps the experts in use.

The router's softmax and the gates are computed in float32 whatever the model's dtype, as Mixtral
does; a loaded Mixtral block then gives exactly its numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from companion.nn.attention import values_checkable
from companion.nn.blocks import SwiGLU

__all__ = ["MixtureOfExperts", "MoEOutput", "load_balancing_loss"]


class MoEOutput(NamedTuple):
    """What ``MixtureOfExperts.forward`` returns."""

    out: Tensor  # (B, T, d_model)
    aux_loss: Tensor  # scalar: this call's load-balancing loss (float32)
    router_logits: Tensor  # (B * T, n_experts): the router's scores, before the softmax


def load_balancing_loss(router_logits: Tensor, n_experts_per_token: int, token_mask: Tensor | None = None) -> Tensor:
    """E * sum_i f_i P_i of router logits (N, E); token_mask (N,) (1 = real token) leaves padding out."""
    n_experts = router_logits.shape[-1]
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    chosen = probs.topk(n_experts_per_token, dim=-1).indices  # (N, k)
    w = torch.ones_like(probs[:, 0]) if token_mask is None else token_mask.reshape(-1).to(probs.dtype)  # (N,)
    n_tokens = w.sum().clamp(min=1.0)
    slots = torch.zeros_like(probs[0]).scatter_add_(0, chosen.reshape(-1), w.repeat_interleave(n_experts_per_token))
    f = slots / n_tokens  # (E,) tokens that chose expert i, as a fraction of all tokens
    p = (probs * w[:, None]).sum(dim=0) / n_tokens  # (E,) mean router probability of expert i
    return n_experts * (f * p).sum()


class MixtureOfExperts(nn.Module):
    """n_experts SwiGLU experts and a router; each token is sent to its top n_experts_per_token."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, n_experts_per_token: int, *, dropout: float = 0.0):
        super().__init__()
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"n_experts must be an int >= 1, got {n_experts!r}")
        k = n_experts_per_token
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
            raise ValueError(f"n_experts_per_token must be an int in [1, n_experts={n_experts}], got {k!r}")
        self.n_experts, self.top_k = n_experts, k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_experts))
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, n_experts_per_token={self.top_k}"

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, d_model) -> router logits (N, E), gates (N, k) in float32 summing to 1, chosen experts (N, k)."""
        logits = self.router(x)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        top, chosen = probs.topk(self.top_k, dim=-1)  # (N, k), best first
        return logits, top / top.sum(dim=-1, keepdim=True), chosen

    def mix_sparse(self, x: Tensor, gates: Tensor, chosen: Tensor) -> Tensor:
        """Run each expert on the tokens that chose it only: the sum over its k experts of gate * expert(x)."""
        out = torch.zeros_like(x)  # (N, d_model)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens that chose expert e, and in which of their k slots
            out.index_add_(0, token, (expert(x[token]) * gates[token, slot, None]).to(x.dtype))
        return out

    def mix_dense(self, x: Tensor, gates: Tensor, chosen: Tensor) -> Tensor:
        """The same sum with every expert run on every token and weighted by its gate (0 where not chosen):
        no shapes that depend on the routing, so no host synchronisation, at n_experts / k times the FLOPs."""
        weights = torch.zeros(x.shape[0], self.n_experts, dtype=gates.dtype, device=x.device)
        weights = weights.scatter(1, chosen, gates)  # (N, E)
        out = torch.zeros_like(x)  # (N, d_model)
        for e, expert in enumerate(self.experts):
            out = out + (expert(x) * weights[:, e, None]).to(x.dtype)
        return out

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> MoEOutput:
        """x (B, T, d_model) -> MoEOutput(out (B, T, d_model), aux_loss, router_logits (B*T, E)).

        token_mask: (B, T), 1 = real token: padding is left out of the load-balancing loss.
        In eager mode on the CPU, where reading the routing costs nothing, each expert runs only on
        its tokens (`mix_sparse`); under ``torch.compile`` or on an accelerator, `mix_dense`.
        """
        B, T, d = x.shape
        flat = x.reshape(B * T, d)  # (N, d_model)
        logits, gates, chosen = self.route(flat)
        mix = self.mix_sparse if values_checkable(flat) else self.mix_dense
        out = mix(flat, gates, chosen).view(B, T, d)  # (B, T, d_model)
        aux = load_balancing_loss(logits, self.top_k, token_mask)
        return MoEOutput(self.dropout(out), aux, logits)
