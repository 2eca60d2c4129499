"""What every model of the package returns: one `ModelOutput`.

GPT, the encoder heads (masked LM, sequence classification) and the encoder-decoder all take
``forward(idx, targets=None, *, attention_mask=None, ...)`` and return the same four fields, so
the trainer, fine-tuning and decoding read ``.loss``, ``.logits`` or ``.hidden_states`` without
knowing which model they hold.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from companion.nn.kv_cache import KVCache


class ModelOutput(NamedTuple):
    """What a model's forward pass returns."""

    logits: torch.Tensor  # (B, T, vocab_size), or (B, n_classes) for a sequence classifier
    loss: torch.Tensor | None  # mean cross-entropy against targets (-100 ignored); None without targets
    hidden_states: torch.Tensor  # (B, T, d_model): the final hidden states, the output head's input
    kv_cache: KVCache | None = None  # the cache this call appended its keys and values to, if one was given
