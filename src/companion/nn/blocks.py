"""The pieces every Transformer is built from: feed-forward block, LayerNorm placement, block.

A block has a residual stream ``x`` of shape (B, T, d_model) and adds to it the output of
self-attention, optionally cross-attention (keys and values from another sequence), and a
position-wise feed-forward network. Two placements of LayerNorm are supported:

* post-LN (Vaswani et al. 2017, BERT):  x = LN(x + F(x))
* pre-LN  (GPT-2 onward):               x = x + F(LN(x))   (plus one final LN after the stack)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from companion.nn.attention import MultiHeadAttention, values_checkable
from companion.nn.kv_cache import LayerKVCache

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


def check_shape_config(config: object, positive: tuple[str, ...]) -> None:
    """Validate a model config: the named fields are ints >= 1, d_model divides into n_heads,
    dropout is in [0, 1), layer_norm_eps > 0, and norm and activation are known names."""
    cls = type(config).__name__
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{cls}.{name} must be an int >= 1, got {value!r}")
    if config.d_model % config.n_heads:
        raise ValueError(f"{cls}: d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{cls}.dropout must be in [0, 1), got {config.dropout!r}")
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
