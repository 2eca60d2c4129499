"""Random contiguous-block batches from a 1-D token tensor, with a resumable data position.

Pre-training reads a long stream of token ids and cuts it into windows: each batch holds
`batch_size` windows of `length` consecutive tokens starting at random offsets. The only
state is the random generator that picks the offsets, so saving its state (and the number of
batches drawn) is enough to resume a run on exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any

import torch


def as_token_tensor(data: Any, name: str = "data") -> torch.Tensor:
    """Turn a list/array/tensor of token ids into a 1-D int64 tensor, with clear errors."""
    t = data if isinstance(data, torch.Tensor) else torch.as_tensor(data)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} holds a negative token id ({int(t.min())})")
    return t


class BlockSampler:
    """Draw (batch_size, length) windows of consecutive tokens at random offsets.

    `length` is the number of tokens each window holds: block_size + 1 for next-token
    prediction (inputs and targets overlap by all but one token), block_size for masked LM.
    """

    def __init__(
        self, data: torch.Tensor, batch_size: int, length: int, seed: int = 0, name: str = "train data"
    ) -> None:
        self.data = as_token_tensor(data, name)
        if batch_size < 1 or length < 1:
            raise ValueError(f"batch_size and length must be >= 1, got {batch_size} and {length}")
        if len(self.data) < length:
            raise ValueError(f"{name} has {len(self.data)} tokens, fewer than one window of {length} tokens")
        self.batch_size = batch_size
        self.length = length
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    @property
    def n_offsets(self) -> int:
        """How many distinct start offsets a window can have."""
        return len(self.data) - self.length + 1

    def next(self) -> torch.Tensor:
        """Return the next batch of windows, shape (batch_size, length), on the CPU."""
        starts = torch.randint(self.n_offsets, (self.batch_size,), generator=self.generator)
        idx = starts[:, None] + torch.arange(self.length)[None, :]  # (B, length)
        self.batches_drawn += 1
        return self.data[idx]

    def state_dict(self) -> dict[str, Any]:
        """The data position: generator state and number of batches drawn."""
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a data position saved by `state_dict`."""
        self.generator.set_state(state["generator"])
        self.batches_drawn = int(state["batches_drawn"])


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One next-token batch: x = data[i:i+block_size], y = data[i+1:i+block_size+1], (B, T) each."""
    data = as_token_tensor(data)
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}")
    if len(data) < block_size + 1:
        raise ValueError(f"data has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(block_size + 1)[None, :]  # (B, T+1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]
