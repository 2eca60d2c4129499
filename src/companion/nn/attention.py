"""Scaled dot-product attention and multi-head attention, written out so every step can be read.

Conventions (the same as PyTorch's ``F.scaled_dot_product_attention``):

* a **boolean** mask is True where a query *may attend* to a key;
* a **float** mask is *added* to the scores (0 keeps a key, ``-inf`` removes it);
* ``key_padding_mask`` follows Hugging Face: 1/True = real token, 0/False = padding
  (note: ``torch.nn.MultiheadAttention`` uses the opposite convention).

Fully masked query rows (a query that may attend to no key at all) have no softmax: it would
be 0/0. Here they are *defined*: the output row is zeros and the weights row is all zeros, on
both the explicit and the PyTorch path, with finite gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.nn.kv_cache import LayerKVCache
from companion.nn.positional import RotaryEmbedding

__all__ = [
    "AttentionOutput",
    "MultiHeadAttention",
    "causal_mask",
    "merge_heads",
    "padding_mask",
    "repeat_kv_heads",
    "scaled_dot_product_attention",
    "split_heads",
    "values_checkable",
]


class AttentionOutput(NamedTuple):
    """What ``MultiHeadAttention.forward`` returns."""

    out: Tensor  # (B, T, d_model)
    weights: Tensor | None  # (B, n_heads, T, S_total) when need_weights=True


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def causal_mask(q_len: int, k_len: int | None = None, device=None) -> Tensor:
    """Boolean (q_len, k_len) causal mask, True = may attend, aligned bottom-right.

    Query i sees key j if j <= i + (k_len - q_len): the q_len queries are the *last* q_len
    positions of the sequence, which is what a KV cache needs (k_len - q_len keys are cached).
    With k_len == q_len this is the usual lower-triangular mask.
    """
    k_len = q_len if k_len is None else k_len
    for name, n in (("q_len", q_len), ("k_len", k_len)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    i = torch.arange(q_len, device=device).unsqueeze(1)  # (q_len, 1)
    j = torch.arange(k_len, device=device).unsqueeze(0)  # (1, k_len)
    return j <= i + (k_len - q_len)  # (q_len, k_len)


def values_checkable(t: Tensor) -> bool:
    """Whether reading `t`'s values to validate them is free: eager mode on the CPU.

    On an accelerator that read would be a host synchronisation, and inside ``torch.compile`` a
    graph break, so there the model's forward pass checks only shapes and dtypes.
    """
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def padding_mask(lengths_or_attention_mask, max_len: int | None = None, device=None) -> Tensor:
    """Boolean (B, 1, 1, S) keep-mask (True = real token) from an HF attention mask or lengths.

    * a (B, S) tensor of 0/1 (or bool): Hugging Face's ``attention_mask``, 1 = real token;
    * a (B,) tensor or list of ints: sequence lengths; S = ``max_len`` or the largest length.
    The result broadcasts against scores of shape (B, n_heads, T, S).
    """
    m = torch.as_tensor(lengths_or_attention_mask, device=device)
    if m.ndim == 2:
        if m.dtype != torch.bool:
            if values_checkable(m) and not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("attention mask must contain only 0 and 1 (1 = real token)")
            m = m != 0
        return m[:, None, None, :]  # (B, 1, 1, S)
    if m.ndim == 1:
        if m.dtype.is_floating_point or m.dtype == torch.bool:
            raise ValueError(f"lengths must be integers, got dtype {m.dtype}")
        if (m < 0).any():
            raise ValueError(f"lengths must be non-negative, got {m.tolist()}")
        longest = int(m.max()) if m.numel() else 0
        s = longest if max_len is None else max_len
        if longest > s:
            raise ValueError(f"length {longest} exceeds max_len {s}")
        keep = torch.arange(s, device=m.device)[None, :] < m[:, None]  # (B, S)
        return keep[:, None, None, :]  # (B, 1, 1, S)
    raise ValueError(f"expected a (B, S) attention mask or (B,) lengths, got shape {tuple(m.shape)}")


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean keep-mask as a float mask (0 = keep, -inf = drop); float masks pass through."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)
    return mask.to(dtype)


def _merge_masks(masks: list[Tensor], dtype: torch.dtype) -> Tensor | None:
    """Combine several masks into one: AND if all are boolean, else a sum of additive masks."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        out = masks[0]
        for m in masks[1:]:
            out = out & m
        return out
    out = _as_additive(masks[0], dtype)
    for m in masks[1:]:
        out = out + _as_additive(m, dtype)
    return out


def _fully_masked_rows(mask: Tensor) -> Tensor:
    """True for query rows of `mask` (..., L, S) that may attend to no key; shape (..., L, 1)."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------------


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a ValueError naming the shapes if q, k, v cannot be attended together."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"q, k, v need at least 2 dimensions (..., length, d): {shapes}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has d_k={q.shape[-1]} but k has d_k={k.shape[-1]}: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k has {k.shape[-2]} keys but v has {v.shape[-2]} values: k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"batch/head dimensions of q, k, v do not broadcast: {shapes}") from None
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    is_causal: bool = False,
    return_weights: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V, written out step by step.

    Shapes: q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) -> out (..., L, d_v).

    ``mask`` is boolean (True = may attend) or float (added to the scores), broadcastable to
    (..., L, S). ``is_causal=True`` ANDs in :func:`causal_mask` (bottom-right aligned, so it
    also works when L < S with a KV cache); unlike PyTorch, it may be combined with ``mask``.
    ``dropout_p`` > 0 drops attention weights (inverted dropout, drawn from ``generator``);
    it is applied whenever given, like PyTorch's function: pass 0.0 at evaluation time.

    A query row that may attend to no key gets output zeros (and, with ``return_weights``,
    a weights row of zeros) instead of the NaN that 0/0 would give. The returned weights are
    the softmax probabilities before dropout, so each row that is not fully masked sums to 1.
    """
    _check_qkv(q, k, v)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    L, S, d_k = q.shape[-2], k.shape[-2], q.shape[-1]

    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., L, S)

    if mask is not None:
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                f"(..., L, S) = {tuple(scores.shape)}"
            ) from None
    if is_causal:
        mask = _merge_masks([mask, causal_mask(L, S, device=q.device)], q.dtype)

    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask.to(scores.dtype)
        # A row with every score -inf has no softmax; give it finite scores so both the
        # forward and the backward pass stay finite, then zero its weights below.
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., L, 1)
        scores = scores.masked_fill(dead, 0.0)
    else:
        dead = None

    weights = torch.softmax(scores, dim=-1)  # (..., L, S), the one and only softmax
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)

    dropped = weights
    if dropout_p > 0.0:
        keep = torch.rand(weights.shape, generator=generator, device=weights.device) >= dropout_p
        dropped = weights * keep / (1.0 - dropout_p)

    out = dropped @ v  # (..., L, d_v)
    return (out, weights) if return_weights else out


# --------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, d_model) -> (B, n_heads, T, d_head): each head gets its own slice of features."""
    if x.dim() != 3:
        raise ValueError(f"split_heads expects (B, T, d_model), got shape {tuple(x.shape)}")
    B, T, d_model = x.shape
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not divisible into n_heads {n_heads} heads")
    return x.view(B, T, n_heads, d_model // n_heads).transpose(1, 2)  # (B, n_heads, T, d_head)


def merge_heads(x: Tensor) -> Tensor:
    """(B, n_heads, T, d_head) -> (B, T, n_heads * d_head): concatenate the heads."""
    B, n_heads, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, n_heads * d_head)  # (B, T, d_model)


def repeat_kv_heads(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv_heads, S, d_head) -> (B, n_kv_heads * n_rep, S, d_head): query head h reads K/V head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class MultiHeadAttention(nn.Module):
    r"""MultiHead(X) = Concat(head_1, ..., head_h) W_O with head_i = Attention(X W_Q^i, X W_K^i, X W_V^i).

    ``use_sdpa=True`` runs the core through ``torch.nn.functional.scaled_dot_product_attention``
    (fused kernels); ``use_sdpa=False`` through :func:`scaled_dot_product_attention` above.
    Both give the same numbers; ``need_weights=True`` always takes the explicit path because
    the fused kernels never form the weights. Dropout on the weights acts only in training mode.
    Fully masked query rows give zeros before ``out_proj`` on both paths (so the layer's output
    there is ``out_proj``'s bias).

    Grouped-query attention (Ainslie et al. 2023): ``n_kv_heads`` (default ``n_heads``) key and
    value heads, each shared by ``n_heads / n_kv_heads`` query heads; one is multi-query attention
    (Shazeer 2019). K and V are projected, cached and stored with ``n_kv_heads`` heads only; the
    explicit path repeats them for the query heads, SDPA's ``enable_gqa`` shares them in place.
    ``rotary``: a `RotaryEmbedding` that rotates the queries and keys of self-attention by their
    positions, which continue after the KV cache's filled length (Su et al. 2021; Llama).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        rotary: RotaryEmbedding | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        if d_model <= 0 or n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive, got d_model={d_model}, n_heads={n_heads}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads must be an int >= 1 that divides n_heads={n_heads}, got {n_kv_heads!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.d_head = d_model // n_heads
        if rotary is not None and (not isinstance(rotary, RotaryEmbedding) or rotary.d_head != self.d_head):
            raise ValueError(f"rotary must be a RotaryEmbedding of d_head {self.d_head}, got {rotary!r}")
        self.rotary = rotary
        self.dropout = dropout
        self.use_sdpa = use_sdpa
        d_kv = n_kv_heads * self.d_head  # width of the keys (and values) of all K/V heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_kv, bias=bias)
        self.v_proj = nn.Linear(d_model, d_kv, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def extra_repr(self) -> str:
        kv = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_heads else ""
        return f"d_model={self.d_model}, n_heads={self.n_heads}{kv}, dropout={self.dropout}, use_sdpa={self.use_sdpa}"

    def _check_inputs(self, x: Tensor, context: Tensor | None, kv_cache: LayerKVCache | None) -> None:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, d_model={self.d_model}), got {tuple(x.shape)}")
        if context is not None and (
            context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.d_model
        ):
            raise ValueError(f"context must be (B={x.shape[0]}, S, d_model={self.d_model}), got {tuple(context.shape)}")
        if kv_cache is not None:
            if not isinstance(kv_cache, LayerKVCache):
                raise ValueError(f"kv_cache must be a LayerKVCache, got {type(kv_cache).__name__}")
            B, H, _, D = kv_cache.k.shape
            if (B, H, D) != (x.shape[0], self.n_kv_heads, self.d_head):
                raise ValueError(
                    f"kv_cache holds (B, n_kv_heads, S, d_head) = ({B}, {H}, S, {D}) keys; this layer needs "
                    f"({x.shape[0]}, {self.n_kv_heads}, S, {self.d_head})"
                )
            if context is not None:
                raise ValueError("a KV cache holds self-attention keys: it cannot be combined with a context")
        if context is not None and self.rotary is not None:
            raise ValueError("rotary positions are for self-attention: this layer cannot attend to a context")

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        kv_cache: LayerKVCache | None = None,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """Attend from x (B, T, d_model) to context (B, S, d_model), default x itself.

        kv_cache: this layer's preallocated cache; the new keys and values are written into it
        after its filled positions, and the queries attend over all of them (S_total of them).
        """
        self._check_inputs(x, context, kv_cache)
        B, T, _ = x.shape
        source = x if context is None else context

        q = split_heads(self.q_proj(x), self.n_heads)  # (B, n_heads, T, d_head)
        k = split_heads(self.k_proj(source), self.n_kv_heads)  # (B, n_kv_heads, S, d_head)
        v = split_heads(self.v_proj(source), self.n_kv_heads)  # (B, n_kv_heads, S, d_head)
        if self.rotary is not None:  # rotate by the positions, which continue after the cache's
            past = 0 if kv_cache is None else kv_cache.length
            q, k = self.rotary(q, k, torch.arange(past, past + T, device=x.device))
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, n_kv_heads, S_total, d_head), views of the cache's buffers
        S_total = k.shape[2]
        n_rep = self.n_heads // self.n_kv_heads  # query heads per K/V head

        masks = []
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, S_total):
                raise ValueError(
                    f"key_padding_mask must be (B, S_total) = ({B}, {S_total}) "
                    f"(1 = real token), got {tuple(key_padding_mask.shape)}"
                )
            masks.append(padding_mask(key_padding_mask))  # (B, 1, 1, S_total)
        if attn_mask is not None:
            try:
                torch.broadcast_shapes(attn_mask.shape, (B, self.n_heads, T, S_total))
            except RuntimeError:
                raise ValueError(
                    f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                    f"(B, n_heads, T, S_total) = {(B, self.n_heads, T, S_total)}"
                ) from None
            masks.append(attn_mask)
        causal = is_causal and T > 1  # one query (a decoding step) is the last position: it sees every key
        if causal:
            masks.append(causal_mask(T, S_total, device=x.device))  # (T, S_total)
        mask = _merge_masks(masks, q.dtype)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)

        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights or not self.use_sdpa:
            k, v = repeat_kv_heads(k, n_rep), repeat_kv_heads(v, n_rep)  # (B, n_heads, S_total, d_head)
            y, weights = scaled_dot_product_attention(q, k, v, mask, p, return_weights=True)
            if not need_weights:
                weights = None
        elif mask is None or (causal and len(masks) == 1 and T == S_total):
            # No mask, or only a square causal one: let PyTorch pick its fused kernel.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=mask is not None, enable_gqa=n_rep > 1)
        else:
            # Rows with no key to attend to: let them attend to everything (finite forward
            # and backward), then zero their output, matching the explicit path.
            dead = _fully_masked_rows(mask)  # (..., T, 1)
            if mask.dtype == torch.bool:
                mask = mask | dead
            else:
                mask = mask.masked_fill(dead, 0.0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=n_rep > 1)
            y = y.masked_fill(dead, 0.0)

        out = self.out_proj(merge_heads(y))  # (B, T, d_model)
        return AttentionOutput(out, weights)
