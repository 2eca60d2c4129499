"""A decoder-only Transformer language model, GPT-2 compatible (Radford et al. 2019).

Token and learned position embeddings, a stack of causal TransformerBlocks, a final LayerNorm
(pre-LN only) and a linear head whose weight is tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from companion.nn.blocks import block_stack, check_decoder_inputs, check_shape_config
from companion.nn.kv_cache import KVCache
from companion.nn.output import ModelOutput
from companion.training.objectives import lm_loss


@dataclass
class GPTConfig:
    """Shape and options of a GPT; the defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    block_size: int = 1024  # context length: the most positions the model has embeddings for
    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    d_ff: int | None = None  # hidden width of the feed-forward block; None -> 4 * d_model
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms
    norm: str = "pre"  # "pre" (GPT-2) or "post" (original Transformer)
    layer_norm_eps: float = 1e-5
    tie_weights: bool = True  # output head shares the token-embedding matrix
    activation: str = "gelu_tanh"  # GPT-2's gelu_new; "gelu" (erf) or "relu" also work

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_shape_config(self, ("vocab_size", "block_size", "n_layers", "n_heads", "d_model", "d_ff"))

    @property
    def d_head(self) -> int:
        """Width of one attention head, d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (what the KV cache stores): GPT gives every query head its own."""
        return self.n_heads


def init_gpt_weights(model: nn.Module, n_residual_branches: int, std: float = 0.02) -> None:
    """GPT-2 initialisation: N(0, std) weights, zero biases, and residual output projections
    (attention out_proj, feed-forward fc_out) drawn with std / sqrt(n_residual_branches)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("out_proj.weight") or name.endswith("fc_out.weight"):
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(n_residual_branches))


class GPT(nn.Module):
    """Decoder-only Transformer: embeddings -> n_layers causal blocks -> (final LN) -> vocabulary logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, c.n_layers)
        # pre-LN leaves the residual stream un-normalised, so one last LayerNorm precedes the head
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_weights(self, n_residual_branches=2 * c.n_layers)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab_size, d_model) matrix, used twice

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, T, vocab_size), loss, hidden_states, kv_cache).

        targets: (B, T) the next token at each position, -100 where nothing is predicted.
        attention_mask: (B, S_past + T) with 1 = real token, 0 = padding (Hugging Face convention).
        kv_cache: a `KVCache` (see `KVCache.for_model`) holding S_past positions of earlier calls;
            this call appends its T positions in place, and its positions continue after S_past.
        """
        past_len = check_decoder_inputs(idx, self.config, attention_mask, kv_cache)
        T = idx.shape[1]
        pos = torch.arange(past_len, past_len + T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            layer_cache = None if kv_cache is None else kv_cache[i]
            x = block(x, key_padding_mask=attention_mask, is_causal=True, kv_cache=layer_cache)
        h = self.ln_f(x)  # (B, T, d_model)
        logits = self.lm_head(h)  # (B, T, vocab_size)

        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
            loss = lm_loss(logits, targets)
        return ModelOutput(logits, loss, h, kv_cache)
