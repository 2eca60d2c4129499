"""GPTs that differ only in how they know positions: learned, sinusoidal, rotary, ALiBi or none.

The models are built by composition from the package's blocks (``TransformerBlock``,
``init_gpt_weights``); rotary and ALiBi replace each block's attention by a wrapper that reuses its
projections. ``companion.experiments.positions`` trains and compares them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.nn.attention import AttentionOutput, MultiHeadAttention, merge_heads, split_heads
from companion.nn.blocks import TransformerBlock
from companion.nn.gpt import GPTConfig, init_gpt_weights
from companion.nn.output import ModelOutput
from companion.nn.positional import RotaryEmbedding, alibi_bias, alibi_slopes, sinusoidal_encoding

POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "none")


class PositionAwareAttention(nn.Module):
    """A block's MultiHeadAttention with rotary q/k or an ALiBi score bias; reuses its projections.

    Only causal self-attention without a cache or masks is supported (what the experiment needs).
    """

    def __init__(self, attn: MultiHeadAttention, position: str, base: float = 10000.0):
        super().__init__()
        if position not in ("rotary", "alibi"):
            raise ValueError(f"position must be 'rotary' or 'alibi', got {position!r}")
        self.attn, self.position = attn, position
        self.rope = RotaryEmbedding(attn.d_head, base) if position == "rotary" else None
        self.register_buffer("slopes", alibi_slopes(attn.n_heads), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv_cache: Any = None,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """Causal self-attention of x (B, T, d_model) -> AttentionOutput(out (B, T, d_model), None)."""
        if (
            context is not None
            or attn_mask is not None
            or key_padding_mask is not None
            or kv_cache is not None
            or need_weights
            or not is_causal
        ):
            raise ValueError(
                "PositionAwareAttention does causal self-attention only (no context, masks, cache or weights)"
            )
        a = self.attn
        q = split_heads(a.q_proj(x), a.n_heads)  # (B, H, T, d_head)
        k = split_heads(a.k_proj(x), a.n_heads)
        v = split_heads(a.v_proj(x), a.n_heads)
        p = a.dropout if self.training else 0.0
        if self.rope is not None:
            q, k = self.rope(q, k)  # rotate by positions 0..T-1
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            bias = alibi_bias(self.slopes.to(q.dtype), x.shape[1])  # (H, T, T), causal
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return AttentionOutput(a.out_proj(merge_heads(y)), None)


class PositionalGPT(nn.Module):
    """A pre-LN GPT whose position information is `position` (one of POSITIONS).

    "learned": a (block_size, d_model) table added to the token embeddings (GPT-2);
    "sinusoidal": scale * PE(pos) added (Vaswani et al. 2017), defined for any length;
    "rotary": queries and keys rotated (Su et al. 2021); "alibi": a linear distance bias on the
    scores (Press et al. 2022); "none": nothing but the causal mask (NoPE, Haviv et al. 2022).
    Only "learned" is limited to block_size positions.
    """

    def __init__(self, config: GPTConfig, position: str, sinusoidal_scale: float = 0.1):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}; choose one of {', '.join(POSITIONS)}")
        self.config = c = config
        self.position, self.sinusoidal_scale = position, sinusoidal_scale
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model) if position == "learned" else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                c.d_model, c.n_heads, c.d_ff, dropout=c.dropout, bias=c.bias, norm="pre", activation=c.activation
            )
            for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_weights(self, n_residual_branches=2 * c.n_layers)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in GPT-2
        if position in ("rotary", "alibi"):
            for block in self.blocks:
                block.attn = PositionAwareAttention(block.attn, position)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> ModelOutput(logits (B, T, vocab_size), mean cross-entropy or None, hidden_states)."""
        T = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.position == "learned":
            if T > self.config.block_size:
                raise ValueError(
                    f"a learned position table has {self.config.block_size} rows; got a sequence of length {T}"
                )
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        elif self.position == "sinusoidal":
            pe = sinusoidal_encoding(T, self.config.d_model).to(x.device, x.dtype)  # (T, d_model)
            x = x + self.sinusoidal_scale * pe
        for block in self.blocks:
            x = block(x, is_causal=True)
        h = self.ln_f(x)  # (B, T, d_model)
        logits = self.lm_head(h)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return ModelOutput(logits, loss, h)
