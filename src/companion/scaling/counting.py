r"""Counting parameters and forward FLOPs of a GPT or a Llama from its config alone (no model is built).

Per block, with $d$ = d_model and $d_{ff}$ = d_ff:

* attention: four $d \times d$ matrices ($W_Q, W_K, W_V, W_O$) + 4d biases
* feed-forward: $d \times d_{ff}$ and $d_{ff} \times d$ + $d_{ff} + d$ biases
* two LayerNorms: 2d each (gain and bias)

so $4d^2 + 2 d\,d_{ff} \approx 12 d^2$ when $d_{ff} = 4d$.

**Non-embedding parameters** (Kaplan et al. 2020): the total *minus* the token-embedding
matrix (vocab_size x d_model), the position-embedding matrix (block_size x d_model) and, when
the output head is not tied, the output (unembedding) matrix, which is the same kind of
vocabulary table. Biases and LayerNorm gains are *included* (Kaplan et al.'s
$12\,n_{layers} d^2$ approximation leaves them out; they are a fraction of about $1/d$).

**Forward FLOPs per token** (Kaplan et al. 2020, Table 1): $C_{forward} \approx 2N +
2\,n_{layers}\,n_{ctx}\,d$, with $N$ the non-embedding parameters (a multiply and an add per
weight) and the second term for the attention scores and the weighted sum of values.

**The modern block** (`companion.nn.llama`), with $d_{kv} = n_{kv\_heads} \cdot d_{head}$: attention
$2d^2 + 2d\,d_{kv}$ (grouped-query attention shrinks $W_K$ and $W_V$), SwiGLU $3\,d\,d_{ff}$ (three
matrices), two RMSNorm gains $2d$, no biases and no position embeddings. A mixture of $E$
experts has $E \cdot 3\,d\,d_{ff}$ expert weights and a $d \times E$ router, but a token passes
through only $k$ experts: its *active* parameters count $k$ of them, and so do its FLOPs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn

from companion.nn.gpt import GPTConfig
from companion.nn.llama import LlamaConfig


class ParamCount(NamedTuple):
    """Parameter counts of a GPT, by part."""

    total: int  # every distinct parameter (a tied matrix counted once)
    non_embedding: int  # total minus token/position embeddings and an untied output matrix
    token_embedding: int  # vocab_size * d_model
    position_embedding: int  # block_size * d_model
    output_head: int  # vocab_size * d_model if untied, else 0
    per_block: int  # parameters of one Transformer block
    final_norm: int  # the final LayerNorm (pre-LN) or 0


def attention_parameters(d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = True) -> int:
    """W_Q, W_O (d x d each) and W_K, W_V (d x d_kv each, d_kv = n_kv_heads * d_head), plus their biases."""
    d, b = d_model, int(bias)
    d_kv = d_model // n_heads * (n_heads if n_kv_heads is None else n_kv_heads)
    return 2 * (d * d + d * b) + 2 * (d * d_kv + d_kv * b)


def block_parameters(d_model: int, d_ff: int, bias: bool = True) -> int:
    """Parameters of one block: attention 4 d^2 (+4d), FFN 2 d d_ff (+d_ff+d), two LayerNorms."""
    d, b = d_model, int(bias)
    attention = attention_parameters(d, 1, bias=bias)
    ffn = d * d_ff + d_ff * d + (d_ff + d) * b
    norms = 2 * d * (1 + b)  # gain, and a bias when bias=True
    return attention + ffn + norms


def gpt_parameters(config: GPTConfig) -> ParamCount:
    """Exact parameter count of ``GPT(config)``, computed from the config."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"gpt_parameters needs a GPTConfig, got {type(config).__name__}")
    c = config
    tok = c.vocab_size * c.d_model
    pos = c.block_size * c.d_model
    head = 0 if c.tie_weights else c.vocab_size * c.d_model
    per_block = block_parameters(c.d_model, c.d_ff, c.bias)
    final = c.d_model * (1 + int(c.bias)) if c.norm == "pre" else 0
    non_emb = c.n_layers * per_block + final
    return ParamCount(
        total=non_emb + tok + pos + head,
        non_embedding=non_emb,
        token_embedding=tok,
        position_embedding=pos,
        output_head=head,
        per_block=per_block,
        final_norm=final,
    )


def kaplan_parameters(config: GPTConfig) -> int:
    """Kaplan et al.'s approximation N = 2 d_model n_layers (2 d_attn + d_ff) (= 12 n_layers d^2 if d_ff = 4d)."""
    return 2 * config.d_model * config.n_layers * (2 * config.d_model + config.d_ff)


def forward_flops_per_token(config: GPTConfig, n_ctx: int | None = None) -> int:
    """Kaplan et al. (2020, Table 1) forward FLOPs per token: 2 N + 2 n_layers n_ctx d_model.

    N = kaplan_parameters(config); n_ctx defaults to block_size. The training cost per token is
    about three times this (backward = 2 x forward), which gives C = 6 N D for D tokens.
    """
    n_ctx = config.block_size if n_ctx is None else n_ctx
    return 2 * kaplan_parameters(config) + 2 * config.n_layers * n_ctx * config.d_model


class LlamaParamCount(NamedTuple):
    """Parameter counts of a Llama, by part; `active` counts only the experts a token is routed to."""

    total: int  # every distinct parameter (a tied matrix counted once)
    active: int  # the parameters one token's forward pass uses (= total without experts)
    non_embedding: int  # total minus the token embedding and an untied output matrix
    active_non_embedding: int  # active minus the same
    token_embedding: int  # vocab_size * d_model
    output_head: int  # vocab_size * d_model if untied, else 0
    per_block: int  # parameters of one block
    active_per_block: int  # of those, the ones one token uses
    final_norm: int  # the final RMSNorm's gain


def llama_parameters(config: LlamaConfig) -> LlamaParamCount:
    """Exact parameter count of ``Llama(config)``, total and active, computed from the config."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"llama_parameters needs a LlamaConfig, got {type(config).__name__}")
    c = config
    d, e = c.d_model, c.n_experts
    attention = attention_parameters(d, c.n_heads, c.n_kv_heads, bias=False)
    swiglu = 3 * d * c.d_ff  # W_gate, W_in (d x d_ff) and W_out (d_ff x d)
    router = d * e
    ffn, active_ffn = (e * swiglu + router, c.n_experts_per_token * swiglu + router) if e else (swiglu, swiglu)
    per_block, active_block = attention + ffn + 2 * d, attention + active_ffn + 2 * d  # + two RMSNorm gains
    tok = c.vocab_size * d
    head = 0 if c.tie_embeddings else c.vocab_size * d
    non_emb, active_non_emb = c.n_layers * per_block + d, c.n_layers * active_block + d  # + the final RMSNorm
    return LlamaParamCount(
        total=non_emb + tok + head,
        active=active_non_emb + tok + head,
        non_embedding=non_emb,
        active_non_embedding=active_non_emb,
        token_embedding=tok,
        output_head=head,
        per_block=per_block,
        active_per_block=active_block,
        final_norm=d,
    )


def llama_forward_flops_per_token(config: LlamaConfig, n_ctx: int | None = None) -> int:
    """Forward FLOPs per token in Kaplan et al.'s form, 2 N_active + 2 n_layers n_ctx d_model (n_ctx: block_size).

    N_active is the active non-embedding parameters: a mixture of experts costs what its k
    routed experts cost, however many experts it holds. Grouped-query attention changes the
    projections (in N) but not the scores: every query head still scores n_ctx keys.
    """
    n_ctx = config.block_size if n_ctx is None else n_ctx
    return 2 * llama_parameters(config).active_non_embedding + 2 * config.n_layers * n_ctx * config.d_model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Sum of numel() over a model's distinct parameters (``parameters()`` yields a tied one once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def non_embedding_parameters(model: nn.Module) -> int:
    """count_parameters minus every nn.Embedding matrix and an untied output head named ``lm_head``."""
    excluded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        excluded.add(id(head.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
