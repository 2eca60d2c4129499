r"""The KV cache: preallocated keys and values that decoding appends to in place.

A causal model's keys and values at earlier positions never change, so a decoding step needs to
compute them only for the newest position. `KVCache` holds one `LayerKVCache` per layer, each
with two buffers (B, n_kv_heads, max_len, d_head) allocated once; a forward pass given the cache
writes its new positions after the filled ones (`LayerKVCache.update`) and attends over all
filled positions. Nothing is re-allocated or concatenated per step. With as many K/V heads as
query heads (GPT) it holds $2 \cdot n_\text{layers} \cdot \text{max\_len} \cdot d_\text{model}$
numbers per sequence; grouped-query attention stores only n_kv_heads of the n_heads heads (see
`companion.inference.generation.kv_cache_bytes`).

    cache = KVCache.for_model(model, batch_size=1)
    logits = model(prompt, kv_cache=cache).logits        # prefill: cache.length == T
    logits = model(next_token, kv_cache=cache).logits    # one step: cache.length == T + 1
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["KVCache", "LayerKVCache"]


class LayerKVCache:
    """Preallocated keys and values of one attention layer, each (B, n_kv_heads, max_len, d_head).

    (The constructor's ``n_heads`` is the number of heads the layer caches: its K/V heads.)
    """

    def __init__(
        self,
        batch_size: int,
        n_heads: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        for name, n in (("batch_size", batch_size), ("n_heads", n_heads), ("max_len", max_len), ("d_head", d_head)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"LayerKVCache {name} must be an int >= 1, got {n!r}")
        self.k = torch.empty(batch_size, n_heads, max_len, d_head, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.max_len = max_len
        self.length = 0  # positions filled so far

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Write k_new, v_new (B, n_heads, T, d_head) after the filled positions; return the
        keys and values of all filled positions, views (B, n_heads, length, d_head) of the buffers."""
        B, H, _, D = self.k.shape
        if k_new.ndim != 4 or (k_new.shape[0], k_new.shape[1], k_new.shape[3]) != (B, H, D):
            raise ValueError(
                f"the KV cache holds (B, n_heads, S, d_head) = ({B}, {H}, S, {D}) keys, got {tuple(k_new.shape)}"
            )
        end = self.length + k_new.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions; cannot store {self.length} + {k_new.shape[2]} = {end}"
            )
        self.k[:, :, self.length : end] = k_new
        self.v[:, :, self.length : end] = v_new
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """The filled keys and values, (B, n_heads, length, d_head) each."""
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class KVCache:
    """One `LayerKVCache` per layer: what a model's ``kv_cache=`` argument takes."""

    def __init__(self, layers: list[LayerKVCache]):
        if not layers:
            raise ValueError("a KVCache needs at least one layer")
        self.layers = layers

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache shaped for a causal `model`, holding up to `max_len` (default block_size).

        Its config gives the shape: n_layers layers of n_kv_heads heads of width d_head.
        """
        c = model.config
        p = next(model.parameters())
        max_len = c.block_size if max_len is None else max_len
        return cls(
            [LayerKVCache(batch_size, c.n_kv_heads, max_len, c.d_head, p.dtype, p.device) for _ in range(c.n_layers)]
        )

    @property
    def length(self) -> int:
        """Positions cached so far."""
        return self.layers[0].length

    @property
    def batch_size(self) -> int:
        """Sequences the cache holds."""
        return self.layers[0].k.shape[0]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)
