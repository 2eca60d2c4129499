r"""A sequence classifier: a pre-trained GPT body, pooling, and a linear head.

The body maps a sentence to hidden states $H \in \mathbb{R}^{T \times d}$, pooling turns them
into one vector $h$, and a linear layer gives logits $z = W h + b$ with
$W \in \mathbb{R}^{K \times d}$. Fine-tuning it is `companion.training.finetune`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.nn.encoder import mean_pool
from companion.nn.gpt import GPT
from companion.nn.output import ModelOutput

__all__ = ["SequenceClassifier"]


class SequenceClassifier(nn.Module):
    """A pre-trained GPT body (its LM head removed) + pooling + dropout + Linear(d_model -> n_classes).

    pooling="mean": average of the hidden states of the real tokens; "last": the hidden state of
    the last real token (GPT-1's choice: in a causal model only it has seen the whole sentence).
    The GPT passed in is copied, so the pre-trained model itself is never changed.
    """

    def __init__(self, gpt: GPT, n_classes: int, *, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.body = copy.deepcopy(gpt)
        # the classifier reads the body's hidden_states and needs no vocabulary logits, so the LM
        # head is dropped (the tied token embedding stays in the body)
        self.body.lm_head = nn.Identity()
        self.pooling, self.n_classes = pooling, n_classes
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """idx (B, T) token ids, attention_mask (B, T) 1 = real token -> (B, d_model) sentence vectors."""
        hidden = self.body(idx, attention_mask=attention_mask).hidden_states  # (B, T, d_model)
        return self._pool(hidden, attention_mask)

    def _pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Hidden states (B, T, d_model) -> one vector per sentence (B, d_model)."""
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)  # (B, d_model)
        if attention_mask is None:
            return hidden[:, -1]
        last = attention_mask.long().sum(1) - 1  # (B,) index of the last real token (right padding)
        return hidden[torch.arange(len(last)), last]  # (B, d_model)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, attention_mask: Tensor | None = None
    ) -> ModelOutput:
        """idx (B, T) token ids -> ModelOutput(logits (B, n_classes), loss, hidden_states (B, T, d_model)).

        targets: (B,) class indices; the loss is their mean cross-entropy.
        attention_mask: (B, T) with 1 = real token, 0 = padding.
        """
        hidden = self.body(idx, attention_mask=attention_mask).hidden_states  # (B, T, d_model)
        logits = self.head(self.drop(self._pool(hidden, attention_mask)))  # (B, n_classes)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape[:1]:
                raise ValueError(f"targets must be (B,) = ({idx.shape[0]},) class indices, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits, targets)
        return ModelOutput(logits, loss, hidden)
