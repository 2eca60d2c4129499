r"""The cost of attention: tiled attention with the online softmax, and attention's measured time and memory.

Explicit attention forms the whole (L, S) matrix of scores; the online softmax (Milakov &
Gimelshein 2018) lets `tiled_attention` read the keys one block at a time and never form it (the
FlashAttention idea, Dao et al. 2022). `attention_cost` measures what the matrix costs: the time and
the peak memory of the package's explicit attention against PyTorch's fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from companion.analysis.measure import best_time, profiler_peak_bytes
from companion.nn.attention import causal_mask, scaled_dot_product_attention

__all__ = [
    "ATTENTION_PATHS",
    "attention_call",
    "attention_cost",
    "attention_inputs",
    "online_softmax",
    "tiled_attention",
]


def online_softmax(x: Tensor, block_size: int) -> Tensor:
    r"""softmax over the last dimension, reading `x` in blocks and keeping only a running max and sum.

    After block $j$: $m_j = \max(m_{j-1}, \max x^{(j)})$,
    $\ell_j = \ell_{j-1} e^{m_{j-1} - m_j} + \sum e^{x^{(j)} - m_j}$ (Milakov & Gimelshein 2018);
    finally $\operatorname{softmax}(x)_i = e^{x_i - m} / \ell$.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype, device=x.device)
    ell = torch.zeros_like(m)
    for start in range(0, x.shape[-1], block_size):
        blk = x[..., start : start + block_size]
        m_new = torch.maximum(m, blk.amax(dim=-1, keepdim=True))
        ell = ell * torch.exp(m - m_new) + torch.exp(blk - m_new).sum(dim=-1, keepdim=True)
        m = m_new
    return torch.exp(x - m) / ell


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, block_size: int = 64, *, is_causal: bool = False) -> Tensor:
    r"""softmax(Q K^T / sqrt(d_k)) V computed one block of keys at a time (the FlashAttention idea).

    q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) -> (..., L, d_v). The full (L, S) matrix of
    scores is never formed; each query row keeps a running max $m$, a running normaliser $\ell$
    and an unnormalised output $o$, rescaled by $e^{m_{old} - m_{new}}$ whenever the max grows:

    $o \leftarrow o\, e^{m_{old} - m_{new}} + e^{S^{(j)} - m_{new}} V^{(j)}$, and at the end
    $o / \ell$ (Dao et al. 2022, with the recurrence of Milakov & Gimelshein 2018).
    `is_causal` uses the bottom-right aligned mask of `companion.nn.attention.causal_mask`.
    Rows that see no key give zeros, as `companion.nn.attention.scaled_dot_product_attention` does.
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError("q, k, v need at least two dimensions (..., length, features)")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    m = torch.full(batch + (L, 1), -math.inf, dtype=q.dtype, device=q.device)  # running max
    ell = torch.zeros(batch + (L, 1), dtype=q.dtype, device=q.device)  # running normaliser
    o = torch.zeros(batch + (L, v.shape[-1]), dtype=q.dtype, device=q.device)  # unnormalised out
    allowed = causal_mask(L, S, device=q.device) if is_causal else None  # (L, S)
    for start in range(0, S, block_size):
        kb, vb = k[..., start : start + block_size, :], v[..., start : start + block_size, :]
        s = (q @ kb.transpose(-2, -1)) * scale  # (..., L, b): one tile of scores
        if allowed is not None:
            s = s.masked_fill(~allowed[:, start : start + block_size], -math.inf)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (..., L, 1)
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows seeing nothing yet
        p = torch.exp(s - m_safe)  # (..., L, b), zeros where masked
        alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
        ell = ell * alpha + p.sum(dim=-1, keepdim=True)
        o = o * alpha + p @ vb  # (..., L, d_v)
        m = m_new
    return torch.where(ell > 0, o / ell.clamp(min=torch.finfo(q.dtype).tiny), torch.zeros_like(o))


# --------------------------------------------------------------------------- measured cost

ATTENTION_PATHS = ("explicit", "fused")


def attention_call(path: str, causal: bool = False) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """(q, k, v) -> out: "explicit" = the package's attention (full (L, S) matrices), "fused" = PyTorch's."""
    if path == "explicit":
        return lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal)
    if path == "fused":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    raise ValueError(f"unknown attention path {path!r}, expected one of {ATTENTION_PATHS}")


def attention_inputs(
    seq_len: int, batch: int = 1, n_heads: int = 8, d_head: int = 64, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded standard-normal q, k, v, each of shape (batch, n_heads, seq_len, d_head)."""
    if min(seq_len, batch, n_heads, d_head) < 1:
        raise ValueError(f"sizes must be positive, got {(seq_len, batch, n_heads, d_head)}")
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n_heads, seq_len, d_head, generator=g, dtype=dtype) for _ in range(3))


def _measure_attention(
    path: str, causal: bool, q: Tensor, k: Tensor, v: Tensor, repeats: int, min_time: float
) -> dict[str, Any]:
    """One row of :func:`attention_cost` for q, k, v of shape (B, h, L, d_head)."""
    B, h, L, d = q.shape
    fn = attention_call(path, causal)
    seconds = best_time(lambda: fn(q, k, v), repeats, min_time)
    return dict(
        seq_len=L,
        path=path,
        seconds=seconds,
        gflops_per_s=4 * B * h * L * L * d / seconds / 1e9,
        matrix_bytes=B * h * L * L * q.element_size(),  # ONE (B, h, L, L) matrix
        profiler_peak_bytes=profiler_peak_bytes(lambda: fn(q, k, v)),
    )


def attention_cost(
    lengths: list[int],
    *,
    batch: int = 1,
    n_heads: int = 8,
    d_head: int = 64,
    dtype: torch.dtype = torch.float32,
    causal: bool = False,
    repeats: int = 3,
    min_time: float = 0.1,
    threads: int | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Time and memory of one attention call per (length, path): rows {seq_len, path, seconds,
    gflops_per_s, matrix_bytes, profiler_peak_bytes}.

    `seconds` from :func:`best_time`; FLOPs count Q K^T and A V; `matrix_bytes` is the analytic size
    of one (batch, n_heads, L, L) matrix. `threads` sets torch's thread count during the measurement
    only; `on_row(row)` is called as each row is ready (to print progress).
    """
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of positive integers, got {lengths}")
    old_threads, rows = torch.get_num_threads(), []
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for seq_len in lengths:
                q, k, v = attention_inputs(seq_len, batch, n_heads, d_head, dtype)
                for path in ATTENTION_PATHS:
                    rows.append(_measure_attention(path, causal, q, k, v, repeats, min_time))
                    if on_row is not None:
                        on_row(rows[-1])
    finally:
        torch.set_num_threads(old_threads)
    return rows
