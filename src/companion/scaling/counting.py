r"""Counting parameters and forward FLOPs of a GPT from its config alone (no model is built).

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
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn

from companion.nn.gpt import GPTConfig


class ParamCount(NamedTuple):
    """Parameter counts of a GPT, by part."""

    total: int  # every distinct parameter (a tied matrix counted once)
    non_embedding: int  # total minus token/position embeddings and an untied output matrix
    token_embedding: int  # vocab_size * d_model
    position_embedding: int  # block_size * d_model
    output_head: int  # vocab_size * d_model if untied, else 0
    per_block: int  # parameters of one Transformer block
    final_norm: int  # the final LayerNorm (pre-LN) or 0


def block_parameters(d_model: int, d_ff: int, bias: bool = True) -> int:
    """Parameters of one block: attention 4 d^2 (+4d), FFN 2 d d_ff (+d_ff+d), two LayerNorms."""
    d, b = d_model, int(bias)
    attention = 4 * d * d + 4 * d * b
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
