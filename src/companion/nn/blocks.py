"""The pieces every Transformer is built from: feed-forward blocks, normalisation, the block.

A block has a residual stream ``x`` of shape (B, T, d_model) and adds to it the output of
self-attention, optionally cross-attention (keys and values from another sequence), and a
position-wise feed-forward network. Two placements of LayerNorm are supported:

* post-LN (Vaswani et al. 2017, BERT):  x = LN(x + F(x))
* pre-LN  (GPT-2 onward):               x = x + F(LN(x))   (plus one final LN after the stack)

The modern decoder's pieces live here too: `RMSNorm` and the gated `SwiGLU` feed-forward
(its block is `companion.nn.llama.LlamaBlock`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.nn.attention import MultiHeadAttention, values_checkable
from companion.nn.kv_cache import KVCache, LayerKVCache

NORMS = ("pre", "post")

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # exact: x * Phi(x) with the erf (BERT's "gelu")
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": lambda: nn.ReLU(),  # the original Transformer
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for `name` ("gelu", "gelu_tanh" or "relu")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_norm(norm: str) -> None:
    """Raise a ValueError unless `norm` is "pre" or "post"."""
    if norm not in NORMS:
        raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")


def check_config_ints(config: object, positive: tuple[str, ...]) -> None:
    """Raise a ValueError unless the named fields of `config` are ints >= 1, d_model divides into
    n_heads and dropout is in [0, 1)."""
    cls = type(config).__name__
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{cls}.{name} must be an int >= 1, got {value!r}")
    if config.d_model % config.n_heads:
        raise ValueError(f"{cls}: d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{cls}.dropout must be in [0, 1), got {config.dropout!r}")


def check_shape_config(config: object, positive: tuple[str, ...]) -> None:
    """Validate a model config: `check_config_ints`, then layer_norm_eps > 0, and norm and
    activation are known names."""
    cls = type(config).__name__
    check_config_ints(config, positive)
    if not config.layer_norm_eps > 0:
        raise ValueError(f"{cls}.layer_norm_eps must be > 0, got {config.layer_norm_eps!r}")
    check_norm(config.norm)
    make_activation(config.activation)  # validates the name


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d_model -> d_ff), activation, Linear(d_ff -> d_model), dropout."""

    def __init__(
        self, d_model: int, d_ff: int, *, activation: str = "gelu_tanh", dropout: float = 0.0, bias: bool = True
    ):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.act = make_activation(activation)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model); every position is transformed independently."""
        h = self.act(self.fc_in(x))  # (B, T, d_ff)
        return self.dropout(self.fc_out(h))  # (B, T, d_model)


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation (Zhang & Sennrich 2019): $y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \odot g$.

    LayerNorm without the mean subtraction and without a bias: one gain vector g (init 1). The
    statistics are computed in float32 whatever the input's dtype, then cast back, as Llama does
    (Meta's reference code and `transformers`): a bf16 model is normalised in float32, and a
    loaded Llama gives exactly its numbers (a float64 input is normalised in float32 too).
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"RMSNorm eps must be > 0, got {eps!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., d_model), each vector scaled to a root-mean-square of 1, times g."""
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., d_model)
        return self.weight * h.to(x.dtype)


def swiglu_hidden_size(d_model: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4 d_model (so three matrices hold as many weights as a 4 d_model
    two-matrix MLP), rounded up to a multiple of `multiple_of` (4096 -> 11008, Llama-2-7B)."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): fc_out(SiLU(fc_gate(x)) * fc_in(x)), no biases, then dropout."""

    def __init__(self, d_model: int, d_ff: int, *, dropout: float = 0.0):
        super().__init__()
        self.fc_gate = nn.Linear(d_model, d_ff, bias=False)  # W_1, through SiLU: the gate
        self.fc_in = nn.Linear(d_model, d_ff, bias=False)  # W_3, the value the gate scales
        self.fc_out = nn.Linear(d_ff, d_model, bias=False)  # W_2, back to the residual stream
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., d_model); every position is transformed independently."""
        h = F.silu(self.fc_gate(x)) * self.fc_in(x)  # (..., d_ff)
        return self.dropout(self.fc_out(h))  # (..., d_model)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention and feed-forward, each with a residual and a LayerNorm.

    ``norm="pre"``:  x = x + Attn(LN(x));  x = x + Cross(LN(x), context);  x = x + FFN(LN(x))
    ``norm="post"``: x = LN(x + Attn(x));  x = LN(x + Cross(x, context));  x = LN(x + FFN(x))
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        norm: str = "pre",
        layer_norm_eps: float = 1e-5,
        activation: str = "gelu_tanh",
        cross_attention: bool = False,
    ):
        super().__init__()
        check_norm(norm)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm = norm
        self.ln_attn = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.attn_drop = nn.Dropout(dropout)  # on the residual branch, after out_proj
        if cross_attention:
            self.ln_cross = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
            self.cross_drop = nn.Dropout(dropout)
        else:
            self.ln_cross = self.cross_attn = self.cross_drop = None
        self.ln_ffn = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)

    def _residual(self, x: torch.Tensor, ln: nn.LayerNorm, branch) -> torch.Tensor:
        """Apply x + branch(LN(x)) (pre-LN) or LN(x + branch(x)) (post-LN)."""
        if self.norm == "pre":
            return x + branch(ln(x))
        return ln(x + branch(x))

    def forward(
        self,
        x: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        context_padding_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> x (B, T, d_model).

        key_padding_mask: (B, S_past + T), 1 = real token (HF convention), for self-attention.
        context: (B, S, d_model) encoder output for cross-attention; context_padding_mask (B, S).
        kv_cache: the self-attention's cache, appended to in place (S_past = its filled length).
        """

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            a = self.attn(
                h, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal, kv_cache=kv_cache
            )
            return self.attn_drop(a.out)  # (B, T, d_model)

        x = self._residual(x, self.ln_attn, self_attention)
        if context is not None:
            if self.cross_attn is None:
                raise ValueError("a context was given but this block was built without cross_attention")

            def cross_attention(h: torch.Tensor) -> torch.Tensor:
                a = self.cross_attn(h, context, key_padding_mask=context_padding_mask)
                return self.cross_drop(a.out)  # (B, T, d_model)

            x = self._residual(x, self.ln_cross, cross_attention)
        elif self.cross_attn is not None:
            raise ValueError("this block has cross-attention: pass the encoder output as context=")
        return self._residual(x, self.ln_ffn, self.ffn)


def block_stack(config: object, n_layers: int, *, cross_attention: bool = False) -> nn.ModuleList:
    """`n_layers` TransformerBlocks with the width, heads, norm, dropout and activation of a model config."""
    c = config
    return nn.ModuleList(
        TransformerBlock(
            c.d_model,
            c.n_heads,
            c.d_ff,
            dropout=c.dropout,
            bias=c.bias,
            norm=c.norm,
            layer_norm_eps=c.layer_norm_eps,
            activation=c.activation,
            cross_attention=cross_attention,
        )
        for _ in range(n_layers)
    )


def check_token_ids(idx: torch.Tensor, vocab_size: int, name: str = "token id") -> None:
    """Raise a ValueError unless idx is a (B, T) integer tensor with values in [0, vocab_size).

    Shape and dtype are always checked (they cost nothing). The values are checked only in
    eager mode on the CPU, where reading ``min``/``max`` costs no device synchronisation; on an
    accelerator, or inside ``torch.compile`` (where it would break the graph), the forward pass
    stays free of host syncs, and the ids are checked where data enters instead (``train``
    validates the whole dataset once, ``generate`` its prompt).
    """
    if idx.dim() != 2:
        raise ValueError(f"expected token ids of shape (B, T), got shape {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"token ids must be an integer tensor, got dtype {idx.dtype}")
    if idx.numel() == 0 or not values_checkable(idx):
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} {bad} out of range for vocab_size {vocab_size}")


def check_length(length: int, block_size: int) -> None:
    """Raise a ValueError when a sequence is longer than the context length."""
    if length > block_size:
        raise ValueError(f"sequence length {length} exceeds block_size {block_size}")


def check_padding_mask(mask: torch.Tensor | None, batch: int, length: int, name: str) -> None:
    """Raise a ValueError unless mask is None or has shape (batch, length)."""
    if mask is not None and tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape ({batch}, {length}), got {tuple(mask.shape)}")


def check_decoder_inputs(
    idx: torch.Tensor, config: object, attention_mask: torch.Tensor | None, kv_cache: KVCache | None
) -> int:
    """Check a causal language model's inputs (ids, cache, length, mask); return the cache's filled length S_past."""
    check_token_ids(idx, config.vocab_size)
    past_len = 0
    if kv_cache is not None:
        if not isinstance(kv_cache, KVCache):
            raise ValueError(f"kv_cache must be a KVCache, got {type(kv_cache).__name__}")
        if len(kv_cache) != config.n_layers:
            raise ValueError(f"kv_cache has {len(kv_cache)} layers, the model has {config.n_layers}")
        past_len = kv_cache.length
    check_length(past_len + idx.shape[1], config.block_size)
    check_padding_mask(attention_mask, idx.shape[0], past_len + idx.shape[1], "attention_mask")
    return past_len
