r"""Int8 quantisation: affine quantisers of tensors and PyTorch's dynamic int8 quantisation of a model.

Quantisation maps a real tensor $x$ to integers $q = \operatorname{clamp}(\operatorname{round}(x/s) + z,
q_{min}, q_{max})$ with scale $s$ and zero point $z$, and back by $\hat x = s (q - z)$; inside the
clamping range $|x - \hat x| \le s/2$ (Jacob et al. 2018).
"""

from __future__ import annotations

import copy
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["QParams", "dequantize", "qparams", "quantize", "quantize_dynamic_int8"]

INT_RANGES = {8: (-128, 127), 4: (-8, 7)}  # signed integer ranges used below


class QParams(NamedTuple):
    """Scale(s) and zero point(s) of an affine quantiser, with its integer range."""

    scale: Tensor  # () per tensor, or (C,) per channel
    zero_point: Tensor  # same shape as scale, integer values
    qmin: int
    qmax: int


def qparams(x: Tensor, n_bits: int = 8, symmetric: bool = True, axis: int | None = None) -> QParams:
    r"""Min/max quantisation parameters for signed `n_bits` integers, as PyTorch's MinMaxObserver.

    Asymmetric: the range $[\min(x_{min}, 0), \max(x_{max}, 0)]$ is spread over the
    $q_{max} - q_{min}$ steps, $s = (x_{max} - x_{min}) / (q_{max} - q_{min})$ and
    $z = q_{min} - \operatorname{round}(x_{min}/s)$, so that 0.0 is exactly representable.
    Symmetric: $z = 0$ and $s = \max|x| / ((q_{max} - q_{min})/2)$.
    `axis`: None for one scale for the whole tensor, or the dimension that gets its own scale.
    """
    if n_bits not in INT_RANGES:
        raise ValueError(f"n_bits must be one of {sorted(INT_RANGES)}, got {n_bits}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("cannot quantise an empty tensor")
    qmin, qmax = INT_RANGES[n_bits]
    if axis is None:
        lo, hi = x.min(), x.max()
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        lo, hi = x.amin(dim=dims), x.amax(dim=dims)  # (C,)
    lo, hi = lo.clamp(max=0.0).float(), hi.clamp(min=0.0).float()
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int64)
    return QParams(scale, zero_point, qmin, qmax)


def _broadcast(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.view(shape)


def quantize(x: Tensor, p: QParams, axis: int | None = None) -> Tensor:
    """q = clamp(round(x / scale) + zero_point, qmin, qmax) as an int8 tensor (round half to even)."""
    scale, zp = _broadcast(p.scale, x, axis), _broadcast(p.zero_point, x, axis)
    return (torch.round(x / scale) + zp).clamp(p.qmin, p.qmax).to(torch.int8)


def dequantize(q: Tensor, p: QParams, axis: int | None = None) -> Tensor:
    """x_hat = scale * (q - zero_point) as float32."""
    scale, zp = _broadcast(p.scale, q, axis), _broadcast(p.zero_point, q, axis)
    return scale * (q.to(torch.float32) - zp)


def quantize_dynamic_int8(model: nn.Module, layers: tuple[type[nn.Module], ...] = (nn.Linear,)) -> nn.Module:
    """A copy of `model` whose nn.Linear layers hold int8 weights (PyTorch's dynamic quantisation).

    Weights are quantised once, per tensor and symmetrically; activations are quantised on the fly
    at every call from their observed range; matrix products run in int8 with int32 accumulation.
    CPU only. Uses ``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of the separate
    ``torchao`` package, still shipped with PyTorch 2.13); its deprecation warnings are silenced.
    """
    from torch.ao.quantization import quantize_dynamic

    if not any(isinstance(m, layers) for m in model.modules()):
        raise ValueError(f"the model has no layer of type {[t.__name__ for t in layers]} to quantise")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("dynamic int8 quantisation runs on the CPU: call model.cpu() first")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(copy.deepcopy(model).eval(), set(layers), dtype=torch.qint8)
