"""Positional information: sinusoidal encodings, learned position embeddings, rotary (RoPE) and ALiBi.

Every function and module here RETURNS THE POSITIONAL TERM ONLY, never `x + encoding`: the caller
adds it once, `h = tok_emb(idx) + pos_emb(T)`. (Functions that returned `x + PE` invite the bug of
adding the encoding twice, `x = x + pe(x)`.) Rotary embeddings are different in kind: they are not
added to anything but rotate the queries and keys, so `RotaryEmbedding.apply_rotary(x)` returns the
rotated `x`. ALiBi adds nothing to the vectors either: `alibi_bias` is a term added to the
attention scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


def _check_length(seq_len: int, offset: int, block_size: int) -> None:
    if seq_len < 0 or offset < 0:
        raise ValueError(f"seq_len ({seq_len}) and offset ({offset}) must be non-negative")
    if offset + seq_len > block_size:
        what = f"sequence length {seq_len}" + (f" at offset {offset}" if offset else "")
        raise ValueError(f"{what} exceeds block_size {block_size}")


def _frequencies(n: int, d: int, base: float) -> Tensor:
    """omega_i = base^(-2i/d) for i = 0..n-1, in float64."""
    return base ** (-torch.arange(0, n, dtype=torch.float64) * 2 / d)


def sinusoidal_encoding(
    block_size: int, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The sinusoidal table of Vaswani et al. (2017): returns PE (block_size, d_model), not x + PE.

    PE[pos, 2i] = sin(pos / base^(2i/d_model)) and PE[pos, 2i+1] = cos(pos / base^(2i/d_model)).
    Computed in float64 and cast to `dtype`. An odd d_model gets one more sine column than cosines.
    """
    if block_size < 0 or d_model < 1:
        raise ValueError(f"block_size must be >= 0 and d_model >= 1, got {block_size}, {d_model}")
    omega = _frequencies((d_model + 1) // 2, d_model, base)  # (ceil(d/2),)
    angles = torch.arange(block_size, dtype=torch.float64)[:, None] * omega  # (T, ceil(d/2))
    pe = torch.empty(block_size, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return pe.to(dtype)


def sinusoidal_shift_matrix(offset: int, d_model: int, base: float = 10000.0) -> Tensor:
    """The (d_model, d_model) matrix M with PE[pos + offset] = M @ PE[pos] for every pos (float64).

    It is block-diagonal: each (sin, cos) pair of frequency w is rotated by the angle offset * w,
    because sin(a + b) = sin a cos b + cos a sin b and cos(a + b) = cos a cos b - sin a sin b.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even for the shift matrix, got {d_model}")
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, w in enumerate(_frequencies(d_model // 2, d_model, base).tolist()):
        c, s = math.cos(offset * w), math.sin(offset * w)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c, s  # new sin = sin*c + cos*s
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -s, c  # new cos = cos*c - sin*s
    return m


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encodings; `forward(seq_len, offset)` returns (seq_len, d_model), not x + PE."""

    def __init__(self, block_size: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.block_size, self.d_model = block_size, d_model
        self.register_buffer("pe", sinusoidal_encoding(block_size, d_model, base), persistent=False)

    def forward(self, seq_len: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset .. offset + seq_len - 1: (seq_len, d_model)."""
        _check_length(seq_len, offset, self.block_size)
        return self.pe[offset : offset + seq_len]


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (GPT-2 style); `forward` returns (seq_len, d_model), not x + P."""

    def __init__(self, block_size: int, d_model: int):
        super().__init__()
        self.block_size, self.d_model = block_size, d_model
        self.weight = nn.Parameter(torch.empty(block_size, d_model))
        nn.init.normal_(self.weight, std=0.02)  # GPT-2's initialisation

    def forward(self, seq_len: int, offset: int = 0) -> Tensor:
        """Embeddings of positions offset .. offset + seq_len - 1: (seq_len, d_model).

        There are only block_size trained vectors, so longer sequences raise a ValueError.
        """
        _check_length(seq_len, offset, self.block_size)
        return self.weight[offset : offset + seq_len]


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (GPT-NeoX / Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (Su et al., 2021), for vectors of size d_head.

    Dimension pair i of a query or key at position m is rotated by the angle m * theta_i,
    theta_i = base^(-2i/d_head). Scores then depend on positions only through their offset:
    <R(m) q, R(n) k> = <q, R(n - m) k>. Pairs are (i, i + d_head/2) by default (the layout of
    GPT-NeoX and Hugging Face Llama); `interleaved=True` pairs (2i, 2i+1) as in the RoFormer paper,
    which is complex multiplication of (x[2i] + j x[2i+1]) by exp(j m theta_i). The two layouts
    differ only by a fixed permutation of the dimensions.

    `angle_dtype` is the precision of the frequencies, angles, cosines and sines: float64 by
    default; Llama computes them in float32 (Meta's reference code and `transformers` alike:
    theta_i = 1 / base^(2i/d_head) in float32, angles m * theta_i in float32), and a model that
    passes ``angle_dtype=torch.float32`` computes exactly their numbers, whatever its own dtype.
    """

    def __init__(
        self, d_head: int, base: float = 10000.0, interleaved: bool = False, angle_dtype: torch.dtype = torch.float64
    ):
        super().__init__()
        if d_head % 2:
            raise ValueError(f"d_head must be even for rotary embeddings, got {d_head}")
        if not base > 1.0:
            raise ValueError(f"the rotary base (rope_theta) must be > 1, got {base!r}")
        if angle_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"angle_dtype must be torch.float32 or torch.float64, got {angle_dtype}")
        self.d_head, self.base, self.interleaved, self.angle_dtype = d_head, base, interleaved, angle_dtype
        inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=angle_dtype) / d_head)  # (d_head/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, base={self.base}, interleaved={self.interleaved}, angle_dtype={self.angle_dtype}"

    def angles(self, positions: Tensor) -> Tensor:
        """Rotation angles m * theta_i: positions (...,) -> (..., d_head/2), in `angle_dtype`."""
        return positions.to(self.angle_dtype)[..., None] * self.inv_freq.to(self.angle_dtype)

    def cos_sin(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles, each (..., d_head), laid out like the vectors they rotate."""
        a = self.angles(positions)  # (..., d_head/2)
        a = a.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((a, a), dim=-1)
        return a.cos().to(dtype), a.sin().to(dtype)

    def apply_rotary(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate x (..., T, d_head) by its positions (T,) or (..., T) (default 0..T-1): returns R x."""
        if x.shape[-1] != self.d_head:
            raise ValueError(f"last dimension of x is {x.shape[-1]}, expected d_head {self.d_head}")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        if positions.shape[-1] != x.shape[-2]:
            raise ValueError(f"{positions.shape[-1]} positions for a sequence of length {x.shape[-2]}")
        cos, sin = self.cos_sin(positions.to(x.device), x.dtype)  # (..., T, d_head)
        if self.interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]  # real and imaginary parts
            rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
            return x * cos + rotated * sin
        return x * cos + rotate_half(x) * sin

    def forward(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotate queries and keys (..., T, d_head) by the same positions."""
        return self.apply_rotary(q, positions), self.apply_rotary(k, positions)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's head-specific slopes m_h = 2^(-8h/n_heads), h = 1..n_heads (Press et al. 2022): (n_heads,)."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    return 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float32) / n_heads)


def alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Causal ALiBi bias (n_heads, T, T): -m_h (i - j) for keys j <= i, -inf for j > i."""
    i = torch.arange(length, device=slopes.device)
    distance = (i[:, None] - i[None, :]).to(slopes.dtype)  # (T, T): i - j
    bias = -slopes[:, None, None] * distance  # (n_heads, T, T)
    return bias.masked_fill(distance < 0, -math.inf)
