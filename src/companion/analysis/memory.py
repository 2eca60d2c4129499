"""Memory of a model: the bytes of its weights and of its KV cache at a given context length."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from companion.inference.generation import kv_cache_bytes

__all__ = ["MODEL_SHAPES", "kv_cache_table", "model_size_bytes"]


def _tensors(obj: Any):
    """The tensors in one state-dict value (a packed int8 layer stores a tuple of them)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state dict (packed int8 weights included), shared ones counted once."""
    seen, total = set(), 0
    for value in model.state_dict().values():
        for t in _tensors(value):
            key = (t.data_ptr(), t.numel(), t.dtype)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


# Shapes of published models (Radford et al. 2019; Brown et al. 2020, Table 2.1).
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "GPT-2 small (124M)": {"n_layers": 12, "d_model": 768, "n_ctx": 1024},
    "GPT-2 XL (1.5B)": {"n_layers": 48, "d_model": 1600, "n_ctx": 1024},
    "GPT-3 175B": {"n_layers": 96, "d_model": 12288, "n_ctx": 2048},
}


def kv_cache_table(
    context_lengths: list[int],
    shapes: dict[str, dict[str, int]] | None = None,
    bytes_per_value: int = 2,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """Rows {model, n_layers, d_model, n_ctx, bytes} of the KV-cache size for each model and length.

    A shape may give ``n_heads`` and ``n_kv_heads`` (grouped-query attention, e.g. Llama-2-70B's
    64 and 8): its cache then holds n_kv_heads / n_heads of the width d_model.
    """
    rows = []
    for name, s in (shapes or MODEL_SHAPES).items():
        for n_ctx in context_lengths:
            rows.append(
                {
                    "model": name,
                    "n_layers": s["n_layers"],
                    "d_model": s["d_model"],
                    "n_ctx": n_ctx,
                    "bytes": kv_cache_bytes(
                        s["n_layers"],
                        n_ctx,
                        s["d_model"],
                        batch_size,
                        bytes_per_value,
                        n_heads=s.get("n_heads"),
                        n_kv_heads=s.get("n_kv_heads"),
                    ),
                }
            )
    return rows
