"""An opt-in CPU fast path for decoding: a copy of a model whose Linear layers store W as (in, out).

A decoding step multiplies one row vector by every weight matrix, so it is bound by reading the
weights from memory. ``nn.Linear`` stores W as (out, in) and computes x W^T; on some CPUs the BLAS
reads a matrix faster as x W with W stored (in, out), as GPT-2's original Conv1D layers (and so
``transformers``) store it. `packed_for_inference` returns a separate inference copy whose
``nn.Linear`` modules are replaced by `PackedLinear` modules holding that layout: nothing in the
original model changes, and `companion.inference.generation.generate` runs either unchanged. The generation
benchmark times both, so whether the layout pays on a given CPU is measured, not assumed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import Tensor


class PackedLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight is stored transposed, (in_features, out_features)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())  # (in, out)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> x @ W^T + b (..., out), as nn.Linear computes."""
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        y = x2 @ self.weight_t if self.bias is None else torch.addmm(self.bias, x2, self.weight_t)  # (N, out)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def packed_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with every ``nn.Linear`` replaced by a `PackedLinear`.

    For inference only (its weights are buffers, not parameters: it cannot be trained), and a
    snapshot: later changes to `model`'s weights do not reach the copy.
    """
    fast = copy.deepcopy(model).eval()
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
    return fast
