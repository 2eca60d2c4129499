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

from companion.nn.encoder import ClassifierOutput, mean_pool
from companion.nn.gpt import GPT

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
        # With the LM head replaced by the identity, GPT.forward's "logits" are the final hidden
        # states (after ln_f): (B, T, d_model). The tied token embedding stays in the body.
        self.body.lm_head = nn.Identity()
        self.pooling, self.n_classes = pooling, n_classes
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, d_model) sentence vectors."""
        hidden = self.body(input_ids, attention_mask=attention_mask).logits  # (B, T, d_model)
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)  # (B, d_model)
        if attention_mask is None:
            return hidden[:, -1]
        last = attention_mask.long().sum(1) - 1  # (B,) index of the last real token (right padding)
        return hidden[torch.arange(len(last)), last]  # (B, d_model)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> ClassifierOutput:
        """logits (B, n_classes); with labels (B,) also the mean cross-entropy."""
        logits = self.head(self.drop(self.features(input_ids, attention_mask)))  # (B, n_classes)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ClassifierOutput(logits, loss)
