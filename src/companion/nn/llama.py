"""The modern decoder-only Transformer, the Llama family (Touvron et al. 2023), optionally with experts (Mixtral).

What changed since GPT-2 (`companion.nn.gpt`), block by block:

* RMSNorm instead of LayerNorm, before each sub-layer (pre-norm) and once after the stack;
* a gated SwiGLU feed-forward (three matrices) instead of a GELU MLP (two);
* no position embeddings: rotary positions rotate the queries and keys inside attention;
* grouped-query attention: n_kv_heads key/value heads, each shared by n_heads / n_kv_heads
  query heads, so the KV cache shrinks by that factor (n_kv_heads = 1: multi-query attention);
* no biases anywhere, and an output head that is not tied to the token embedding by default.

With ``n_experts > 0`` every feed-forward is a `MixtureOfExperts` of SwiGLU experts, each token
routed to ``n_experts_per_token`` of them (Mixtral, Jiang et al. 2024), and the training loss adds
``aux_loss_coef`` times the load-balancing loss averaged over the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from companion.nn.attention import MultiHeadAttention
from companion.nn.blocks import RMSNorm, SwiGLU, check_config_ints, check_decoder_inputs, swiglu_hidden_size
from companion.nn.gpt import init_gpt_weights
from companion.nn.kv_cache import KVCache, LayerKVCache
from companion.nn.moe import MixtureOfExperts
from companion.nn.output import ModelOutput
from companion.nn.positional import RotaryEmbedding
from companion.training.objectives import lm_loss

__all__ = ["Llama", "LlamaBlock", "LlamaConfig"]


@dataclass
class LlamaConfig:
    """Shape and options of a Llama; the defaults are Llama-2-7B (6.74B parameters)."""

    vocab_size: int = 32000
    block_size: int = 4096  # context length: the most positions the model is used at
    n_layers: int = 32
    n_heads: int = 32  # query heads
    n_kv_heads: int | None = None  # key/value heads, dividing n_heads; None -> n_heads, 1 -> multi-query
    d_model: int = 4096
    d_ff: int | None = None  # SwiGLU hidden width (per expert); None -> swiglu_hidden_size(d_model)
    rope_theta: float = 10000.0  # the rotary base
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # output head shares the token-embedding matrix
    dropout: float = 0.0
    n_experts: int = 0  # 0: a dense SwiGLU per block; > 0: a mixture of that many SwiGLU experts
    n_experts_per_token: int = 2  # k, the experts each token is routed to
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss (Switch Transformer's 10^-2)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = swiglu_hidden_size(self.d_model)
        check_config_ints(self, ("vocab_size", "block_size", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff"))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.d_head % 2:
            raise ValueError(f"LlamaConfig: rotary needs an even d_head (d_model / n_heads), got {self.d_head}")
        for name in ("rope_theta", "norm_eps", "aux_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"LlamaConfig.{name} must be a finite number, got {value!r}")
        if not (self.rope_theta > 1 and self.norm_eps > 0 and self.aux_loss_coef >= 0):
            raise ValueError(
                f"LlamaConfig needs rope_theta > 1, norm_eps > 0 and aux_loss_coef >= 0, got "
                f"{self.rope_theta!r}, {self.norm_eps!r}, {self.aux_loss_coef!r}"
            )
        e, k = self.n_experts, self.n_experts_per_token
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"LlamaConfig.n_experts must be an int >= 0 (0: dense), got {e!r}")
        if e and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= e):
            raise ValueError(f"LlamaConfig.n_experts_per_token must be an int in [1, n_experts={e}], got {k!r}")

    @property
    def d_head(self) -> int:
        """Width of one attention head, d_model / n_heads."""
        return self.d_model // self.n_heads


class LlamaBlock(nn.Module):
    """x = x + Attn(RMSNorm(x)); x = x + FFN(RMSNorm(x)), the FFN a SwiGLU or a mixture of SwiGLU experts."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        rotary = RotaryEmbedding(c.d_head, c.rope_theta, angle_dtype=torch.float32)  # Llama's float32 angles
        self.norm_attn = RMSNorm(c.d_model, c.norm_eps)
        self.attn = MultiHeadAttention(
            c.d_model, c.n_heads, n_kv_heads=c.n_kv_heads, rotary=rotary, dropout=c.dropout, bias=False
        )
        self.attn_drop = nn.Dropout(c.dropout)  # on the residual branch, after out_proj
        self.norm_ffn = RMSNorm(c.d_model, c.norm_eps)
        if c.n_experts:
            self.ffn = MixtureOfExperts(c.d_model, c.d_ff, c.n_experts, c.n_experts_per_token, dropout=c.dropout)
        else:
            self.ffn = SwiGLU(c.d_model, c.d_ff, dropout=c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d_model) -> (x (B, T, d_model), the experts' load-balancing loss, or None when dense).

        key_padding_mask: (B, S_past + T), 1 = real token; kv_cache: this layer's cache, appended to in place.
        """
        a = self.attn(self.norm_attn(x), key_padding_mask=key_padding_mask, is_causal=True, kv_cache=kv_cache)
        x = x + self.attn_drop(a.out)
        h = self.norm_ffn(x)  # (B, T, d_model)
        if isinstance(self.ffn, SwiGLU):
            return x + self.ffn(h), None
        token_mask = None if key_padding_mask is None else key_padding_mask[:, -x.shape[1] :]  # (B, T)
        moe = self.ffn(h, token_mask)
        return x + moe.out, moe.aux_loss


class Llama(nn.Module):
    """Decoder-only Transformer of the Llama family: embeddings -> n_layers LlamaBlocks -> RMSNorm -> logits.

    ``aux_loss`` holds the last forward pass's load-balancing loss averaged over the layers
    (detached, for logging; None for a dense model); the training loss already includes it.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layers))
        self.norm_f = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_weights(self, n_residual_branches=2 * c.n_layers)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab_size, d_model) matrix, used twice
        self.aux_loss: torch.Tensor | None = None

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, T, vocab_size), loss, hidden_states, kv_cache).

        targets: (B, T) the next token at each position, -100 where nothing is predicted; the loss
            is their cross-entropy plus aux_loss_coef times the load-balancing loss (with experts).
        attention_mask: (B, S_past + T) with 1 = real token, 0 = padding (Hugging Face convention).
        kv_cache: a `KVCache` (see `KVCache.for_model`, n_kv_heads heads per layer) holding S_past
            positions of earlier calls; this call appends its T positions in place, and its rotary
            positions continue after S_past.
        """
        c = self.config
        check_decoder_inputs(idx, c, attention_mask, kv_cache)
        x = self.drop(self.tok_emb(idx))  # (B, T, d_model): no position embedding, rotary acts inside attention
        aux_losses = []
        for i, block in enumerate(self.blocks):
            layer_cache = None if kv_cache is None else kv_cache[i]
            x, aux = block(x, key_padding_mask=attention_mask, kv_cache=layer_cache)
            if aux is not None:
                aux_losses.append(aux)
        h = self.norm_f(x)  # (B, T, d_model)
        logits = self.lm_head(h)  # (B, T, vocab_size)
        aux = torch.stack(aux_losses).mean() if aux_losses else None
        self.aux_loss = None if aux is None else aux.detach()

        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
            loss = lm_loss(logits, targets)
            if aux is not None:
                loss = loss + c.aux_loss_coef * aux
        return ModelOutput(logits, loss, h, kv_cache)
