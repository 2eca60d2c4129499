"""A BERT-style bidirectional encoder (Devlin et al. 2019) and its two usual heads.

Embeddings = token + position + token-type, then a LayerNorm (post-LN, as BERT) and a stack of
non-causal TransformerBlocks that see the whole sequence except padding. ``mean_pool`` turns the
hidden states into one sentence vector the way sentence-transformers does for all-MiniLM-L6-v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.nn.blocks import (
    block_stack,
    check_length,
    check_padding_mask,
    check_shape_config,
    check_token_ids,
    make_activation,
)
from companion.nn.gpt import init_gpt_weights
from companion.nn.output import ModelOutput
from companion.training.objectives import lm_loss


@dataclass
class EncoderConfig:
    """Shape and options of a BERT-style encoder; defaults are BERT-base."""

    vocab_size: int = 30522
    block_size: int = 512  # most positions (BERT's max_position_embeddings)
    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    d_ff: int | None = None  # None -> 4 * d_model
    dropout: float = 0.1
    bias: bool = True
    norm: str = "post"  # BERT is post-LN; "pre" adds a final LayerNorm instead of the embedding one
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2  # segment A / segment B
    activation: str = "gelu"  # BERT's exact erf GELU
    pad_token_id: int = 0

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_shape_config(
            self, ("vocab_size", "block_size", "n_layers", "n_heads", "d_model", "d_ff", "type_vocab_size")
        )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"EncoderConfig.pad_token_id must be in [0, {self.vocab_size}), got {self.pad_token_id!r}")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average the hidden states (B, T, C) over real tokens -> (B, C), as sentence-transformers does."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, C)


class Encoder(nn.Module):
    """Bidirectional Transformer encoder: (B, T) token ids -> (B, T, d_model) hidden states."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        post = c.norm == "post"
        self.ln_emb = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias) if post else nn.Identity()
        self.drop = nn.Dropout(c.dropout)
        self.blocks = block_stack(c, c.n_layers)
        self.ln_f = nn.Identity() if post else nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias)
        init_gpt_weights(self, n_residual_branches=1)  # BERT: plain N(0, 0.02) everywhere

    def forward(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) token ids -> hidden states (B, T, d_model).

        attention_mask: (B, T) with 1 = real token, 0 = padding; token_type_ids: (B, T) segment ids.
        """
        c = self.config
        check_token_ids(idx, c.vocab_size)
        B, T = idx.shape
        check_length(T, c.block_size)
        check_padding_mask(attention_mask, B, T, "attention_mask")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(idx)
        check_token_ids(token_type_ids, c.type_vocab_size, name="token type id")

        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.type_emb(token_type_ids) + self.pos_emb(pos)  # (B, T, d_model)
        x = self.drop(self.ln_emb(x))
        for block in self.blocks:
            x = block(x, key_padding_mask=attention_mask)  # every token sees every real token
        return self.ln_f(x)  # (B, T, d_model)


class EncoderForMaskedLM(nn.Module):
    """Encoder + BERT's MLM head: Linear, activation, LayerNorm, then logits tied to the token embedding."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        c = config
        self.config = c
        self.encoder = Encoder(c)
        self.transform = nn.Sequential(
            nn.Linear(c.d_model, c.d_model),
            make_activation(c.activation),
            nn.LayerNorm(c.d_model, eps=c.layer_norm_eps),
        )
        self.decoder = nn.Linear(c.d_model, c.vocab_size)  # weight tied below, bias is its own
        init_gpt_weights(self.transform, n_residual_branches=1)
        nn.init.zeros_(self.decoder.bias)
        self.decoder.weight = self.encoder.tok_emb.weight

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, T, vocab_size), loss, hidden_states (B, T, d_model)).

        targets: (B, T) the original token at masked positions, -100 elsewhere (BERT's labels).
        attention_mask: (B, T) with 1 = real token; token_type_ids: (B, T) segment ids.
        """
        h = self.encoder(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)  # (B, T, d_model)
        logits = self.decoder(self.transform(h))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
            loss = lm_loss(logits, targets)
        return ModelOutput(logits, loss, h)


class EncoderForSequenceClassification(nn.Module):
    """Encoder + a sentence vector + dropout + Linear(d_model -> n_classes).

    pooling="cls": BERT's pooler, tanh(Linear(h[:, 0])) on the [CLS] position;
    pooling="mean": mean_pool over real tokens (no pooler weights), as sentence-transformers.
    """

    def __init__(self, config: EncoderConfig, n_classes: int, *, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.config, self.pooling = config, pooling
        self.encoder = Encoder(config)
        self.pooler = nn.Sequential(nn.Linear(config.d_model, config.d_model), nn.Tanh()) if pooling == "cls" else None
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, n_classes)
        init_gpt_weights(self.classifier, n_residual_branches=1)
        if self.pooler is not None:
            init_gpt_weights(self.pooler, n_residual_branches=1)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, n_classes), loss, hidden_states (B, T, d_model)).

        targets: (B,) class indices; the loss is their mean cross-entropy.
        attention_mask: (B, T) with 1 = real token; token_type_ids: (B, T) segment ids.
        """
        h = self.encoder(idx, attention_mask=attention_mask, token_type_ids=token_type_ids)  # (B, T, d_model)
        if self.pooler is not None:
            sentence = self.pooler(h[:, 0])  # (B, d_model)
        else:
            sentence = mean_pool(h, attention_mask)  # (B, d_model)
        logits = self.classifier(self.drop(sentence))  # (B, n_classes)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape[:1]:
                raise ValueError(f"targets must be (B,) = ({idx.shape[0]},) class indices, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits, targets)
        return ModelOutput(logits, loss, h)
