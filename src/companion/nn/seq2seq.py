"""An encoder-decoder Transformer (Vaswani et al. 2017; T5/BART-like in use).

The encoder reads the source bidirectionally; the decoder reads the target causally and, in
every block, cross-attends to the encoder output. Learned positions, pre-LN by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from companion.nn.blocks import (
    block_stack,
    check_length,
    check_padding_mask,
    check_shape_config,
    check_token_ids,
)
from companion.nn.gpt import init_gpt_weights
from companion.nn.output import ModelOutput
from companion.training.objectives import lm_loss


@dataclass
class EncoderDecoderConfig:
    """Shape and options of an encoder-decoder Transformer."""

    src_vocab_size: int = 1000
    tgt_vocab_size: int = 1000
    block_size: int = 256  # most positions in the source and in the target
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    n_heads: int = 4
    d_model: int = 128
    d_ff: int | None = None  # None -> 4 * d_model
    dropout: float = 0.0
    bias: bool = True
    norm: str = "pre"
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"
    tie_weights: bool = True  # decoder's output head shares the target embedding

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_shape_config(
            self,
            (
                "src_vocab_size",
                "tgt_vocab_size",
                "block_size",
                "n_encoder_layers",
                "n_decoder_layers",
                "n_heads",
                "d_model",
                "d_ff",
            ),
        )


class EncoderDecoder(nn.Module):
    """Source ids (B, S) and decoder input ids (B, T) -> next-target-token logits (B, T, tgt_vocab_size)."""

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = c = config
        self.src_emb = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_emb = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)  # shared by both sides
        self.drop = nn.Dropout(c.dropout)
        self.encoder_blocks = block_stack(c, c.n_encoder_layers)
        self.decoder_blocks = block_stack(c, c.n_decoder_layers, cross_attention=True)

        def final_ln() -> nn.Module:
            return nn.LayerNorm(c.d_model, eps=c.layer_norm_eps, bias=c.bias) if c.norm == "pre" else nn.Identity()

        self.ln_enc, self.ln_dec = final_ln(), final_ln()
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        n_branches = 2 * c.n_encoder_layers + 3 * c.n_decoder_layers
        init_gpt_weights(self, n_residual_branches=n_branches)
        if c.tie_weights:
            self.lm_head.weight = self.tgt_emb.weight

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        return self.drop(emb(ids) + self.pos_emb(pos))  # (B, T, d_model)

    def encode(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids idx (B, S), attention_mask (B, S) 1 = real token -> memory (B, S, d_model)."""
        c = self.config
        check_token_ids(idx, c.src_vocab_size, name="source token id")
        check_length(idx.shape[1], c.block_size)
        check_padding_mask(attention_mask, *idx.shape, "attention_mask")
        x = self._embed(self.src_emb, idx)
        for block in self.encoder_blocks:
            x = block(x, key_padding_mask=attention_mask)
        return self.ln_enc(x)  # (B, S, d_model)

    def _decoder_hidden(
        self,
        decoder_idx: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """decoder_idx (B, T), memory (B, S, d_model) -> the decoder's final hidden states (B, T, d_model)."""
        c = self.config
        check_token_ids(decoder_idx, c.tgt_vocab_size, name="target token id")
        check_length(decoder_idx.shape[1], c.block_size)
        check_padding_mask(decoder_attention_mask, *decoder_idx.shape, "decoder_attention_mask")
        x = self._embed(self.tgt_emb, decoder_idx)
        for block in self.decoder_blocks:
            x = block(
                x,
                context=memory,
                key_padding_mask=decoder_attention_mask,
                is_causal=True,
                context_padding_mask=attention_mask,
            )
        return self.ln_dec(x)  # (B, T, d_model)

    def decode(
        self,
        decoder_idx: torch.Tensor,
        memory: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """decoder_idx (B, T), memory (B, S, d_model) -> logits (B, T, tgt_vocab_size).

        attention_mask: (B, S) the source's padding mask; decoder_attention_mask: (B, T) the target's.
        """
        h = self._decoder_hidden(decoder_idx, memory, attention_mask, decoder_attention_mask)
        return self.lm_head(h)  # (B, T, tgt_vocab_size)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        decoder_idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Teacher forcing: source idx (B, S) and decoder input decoder_idx (B, T) -> ModelOutput.

        decoder_idx: the target sequence shifted right (<bos> first); the logits at position t
            predict targets[:, t], the target token after decoder_idx[:, t] (-100 is ignored).
        attention_mask: (B, S) source padding, 1 = real token; decoder_attention_mask: (B, T).
        Returns logits (B, T, tgt_vocab_size), the loss, and the decoder's hidden states (B, T, d_model).
        """
        if idx.shape[0] != decoder_idx.shape[0]:
            raise ValueError(f"batch sizes differ: idx {idx.shape[0]}, decoder_idx {decoder_idx.shape[0]}")
        memory = self.encode(idx, attention_mask=attention_mask)  # (B, S, d_model)
        h = self._decoder_hidden(decoder_idx, memory, attention_mask, decoder_attention_mask)  # (B, T, d_model)
        logits = self.lm_head(h)  # (B, T, tgt_vocab_size)
        loss = None
        if targets is not None:
            if targets.shape != decoder_idx.shape:
                raise ValueError(
                    f"targets shape {tuple(targets.shape)} != decoder_idx shape {tuple(decoder_idx.shape)}"
                )
            loss = lm_loss(logits, targets)
        return ModelOutput(logits, loss, h)
