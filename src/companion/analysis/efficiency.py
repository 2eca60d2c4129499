r"""Making models cheaper: int8 quantisation, model size, KV-cache memory, tiled attention with the
online softmax (the FlashAttention idea), the measured time and memory of attention, knowledge
distillation and the energy of training.

Quantisation maps a real tensor $x$ to integers $q = \operatorname{clamp}(\operatorname{round}(x/s) + z,
q_{min}, q_{max})$ with scale $s$ and zero point $z$, and back by $\hat x = s (q - z)$; inside the
clamping range $|x - \hat x| \le s/2$ (Jacob et al. 2018).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from companion.inference.generation import kv_cache_bytes
from companion.nn.attention import causal_mask, scaled_dot_product_attention
from companion.nn.output import ModelOutput

__all__ = [
    "ATTENTION_PATHS",
    "MODEL_SHAPES",
    "DistillationModel",
    "QParams",
    "attention_call",
    "attention_cost",
    "attention_inputs",
    "best_time",
    "dequantize",
    "distillation_loss",
    "kv_cache_bytes",
    "kv_cache_table",
    "model_size_bytes",
    "online_softmax",
    "profiler_peak_bytes",
    "qparams",
    "quantize",
    "quantize_dynamic_int8",
    "tiled_attention",
    "time_call",
    "training_footprint",
]

INT_RANGES = {8: (-128, 127), 4: (-8, 7)}  # signed integer ranges used below


# --------------------------------------------------------------------------- quantisation


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


def _tensors(obj: Any):
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


def time_call(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` in seconds over `repeats` calls after `warmup` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- KV-cache memory

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
    """Rows {model, n_layers, d_model, n_ctx, bytes} of the KV-cache size for each model and length."""
    rows = []
    for name, s in (shapes or MODEL_SHAPES).items():
        for n_ctx in context_lengths:
            rows.append(
                {
                    "model": name,
                    "n_layers": s["n_layers"],
                    "d_model": s["d_model"],
                    "n_ctx": n_ctx,
                    "bytes": kv_cache_bytes(s["n_layers"], n_ctx, s["d_model"], batch_size, bytes_per_value),
                }
            )
    return rows


# --------------------------------------------------------------------------- online softmax


def online_softmax(x: Tensor, block_size: int) -> Tensor:
    r"""softmax over the last dimension, reading `x` in blocks and keeping only a running max and sum.

    After block $j$: $m_j = \max(m_{j-1}, \max x^{(j)})$,
    $\ell_j = \ell_{j-1} e^{m_{j-1} - m_j} + \sum e^{x^{(j)} - m_j}$ (Milakov & Gimelshein 2018);
    finally $\operatorname{softmax}(x)_i = e^{x_i - m} / \ell$.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype, device=x.device)
    ell = torch.zeros_like(m)
    for start in range(0, x.shape[-1], block_size):
        blk = x[..., start : start + block_size]
        m_new = torch.maximum(m, blk.amax(dim=-1, keepdim=True))
        ell = ell * torch.exp(m - m_new) + torch.exp(blk - m_new).sum(dim=-1, keepdim=True)
        m = m_new
    return torch.exp(x - m) / ell


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, block_size: int = 64, *, is_causal: bool = False) -> Tensor:
    r"""softmax(Q K^T / sqrt(d_k)) V computed one block of keys at a time (the FlashAttention idea).

    q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) -> (..., L, d_v). The full (L, S) matrix of
    scores is never formed; each query row keeps a running max $m$, a running normaliser $\ell$
    and an unnormalised output $o$, rescaled by $e^{m_{old} - m_{new}}$ whenever the max grows:

    $o \leftarrow o\, e^{m_{old} - m_{new}} + e^{S^{(j)} - m_{new}} V^{(j)}$, and at the end
    $o / \ell$ (Dao et al. 2022, with the recurrence of Milakov & Gimelshein 2018).
    `is_causal` uses the bottom-right aligned mask of `companion.nn.attention.causal_mask`.
    Rows that see no key give zeros, as `companion.nn.attention.scaled_dot_product_attention` does.
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError("q, k, v need at least two dimensions (..., length, features)")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    m = torch.full(batch + (L, 1), -math.inf, dtype=q.dtype, device=q.device)  # running max
    ell = torch.zeros(batch + (L, 1), dtype=q.dtype, device=q.device)  # running normaliser
    o = torch.zeros(batch + (L, v.shape[-1]), dtype=q.dtype, device=q.device)  # unnormalised out
    allowed = causal_mask(L, S, device=q.device) if is_causal else None  # (L, S)
    for start in range(0, S, block_size):
        kb, vb = k[..., start : start + block_size, :], v[..., start : start + block_size, :]
        s = (q @ kb.transpose(-2, -1)) * scale  # (..., L, b): one tile of scores
        if allowed is not None:
            s = s.masked_fill(~allowed[:, start : start + block_size], -math.inf)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (..., L, 1)
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows seeing nothing yet
        p = torch.exp(s - m_safe)  # (..., L, b), zeros where masked
        alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
        ell = ell * alpha + p.sum(dim=-1, keepdim=True)
        o = o * alpha + p @ vb  # (..., L, d_v)
        m = m_new
    return torch.where(ell > 0, o / ell.clamp(min=torch.finfo(q.dtype).tiny), torch.zeros_like(o))


# --------------------------------------------------------------------------- attention cost

ATTENTION_PATHS = ("explicit", "fused")


def attention_call(path: str, causal: bool = False) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """(q, k, v) -> out: "explicit" = the package's attention (full (L, S) matrices), "fused" = PyTorch's."""
    if path == "explicit":
        return lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal)
    if path == "fused":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    raise ValueError(f"unknown attention path {path!r}, expected one of {ATTENTION_PATHS}")


def attention_inputs(
    seq_len: int, batch: int = 1, n_heads: int = 8, d_head: int = 64, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded standard-normal q, k, v, each of shape (batch, n_heads, seq_len, d_head)."""
    if min(seq_len, batch, n_heads, d_head) < 1:
        raise ValueError(f"sizes must be positive, got {(seq_len, batch, n_heads, d_head)}")
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n_heads, seq_len, d_head, generator=g, dtype=dtype) for _ in range(3))


def best_time(fn: Callable[[], Any], repeats: int = 3, min_time: float = 0.1) -> float:
    """Seconds per call of `fn()`: the best of `repeats` rounds of min_time / repeats each, after a warm-up.

    The minimum, as `timeit` recommends: noise from other processes only ever adds time.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    times = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_time / repeats or n == 0:  # loop short calls
            fn()
            n += 1
        times.append(elapsed / n)
    return min(times)


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side prints start/stop lines there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiler_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak extra tensor bytes during one call of `fn()`: the running sum, op by op, of the bytes that
    PyTorch's CPU allocator hands out and takes back (torch.profiler; scratch freed inside an op nets out)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        # ops carry the net bytes they allocated themselves; "[memory]" events happened outside any op
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _measure_attention(
    path: str, causal: bool, q: Tensor, k: Tensor, v: Tensor, repeats: int, min_time: float
) -> dict[str, Any]:
    """One row of :func:`attention_cost` for q, k, v of shape (B, h, L, d_head)."""
    B, h, L, d = q.shape
    fn = attention_call(path, causal)
    seconds = best_time(lambda: fn(q, k, v), repeats, min_time)
    return dict(
        seq_len=L,
        path=path,
        seconds=seconds,
        gflops_per_s=4 * B * h * L * L * d / seconds / 1e9,
        matrix_bytes=B * h * L * L * q.element_size(),  # ONE (B, h, L, L) matrix
        profiler_peak_bytes=profiler_peak_bytes(lambda: fn(q, k, v)),
    )


def attention_cost(
    lengths: list[int],
    *,
    batch: int = 1,
    n_heads: int = 8,
    d_head: int = 64,
    dtype: torch.dtype = torch.float32,
    causal: bool = False,
    repeats: int = 3,
    min_time: float = 0.1,
    threads: int | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Time and memory of one attention call per (length, path): rows {seq_len, path, seconds,
    gflops_per_s, matrix_bytes, profiler_peak_bytes}.

    `seconds` from :func:`best_time`; FLOPs count Q K^T and A V; `matrix_bytes` is the analytic size
    of one (batch, n_heads, L, L) matrix. `threads` sets torch's thread count during the measurement
    only; `on_row(row)` is called as each row is ready (to print progress).
    """
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of positive integers, got {lengths}")
    old_threads, rows = torch.get_num_threads(), []
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for seq_len in lengths:
                q, k, v = attention_inputs(seq_len, batch, n_heads, d_head, dtype)
                for path in ATTENTION_PATHS:
                    rows.append(_measure_attention(path, causal, q, k, v, repeats, min_time))
                    if on_row is not None:
                        on_row(rows[-1])
    finally:
        torch.set_num_threads(old_threads)
    return rows


# --------------------------------------------------------------------------- distillation


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    targets: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    r"""Hinton et al. (2015): the distillation loss of a student against a teacher.

    $\alpha\, \tau^2\, \mathrm{KL}(p_T^{\tau} \,\|\, p_S^{\tau}) + (1-\alpha)\, \mathrm{CE}(y, p_S)$, where
    $p^{\tau} = \operatorname{softmax}(z / \tau)$; the $\tau^2$ keeps the gradient scale of the soft
    term independent of $\tau$. Logits (..., V); targets (...) with -100 = ignore.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha < 1.0 and targets is None:
        raise ValueError("alpha < 1 mixes in the hard-label loss: pass targets")
    V = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.reshape(-1, V) / temperature, dim=-1)
    soft = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(student_logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    return alpha * soft + (1.0 - alpha) * hard


class DistillationModel(nn.Module):
    """Wraps (student, frozen teacher) so `companion.training.trainer.train` minimises `distillation_loss`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0, alpha: float = 1.0):
        super().__init__()
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ValueError(
                f"student vocab_size {student.config.vocab_size} != teacher vocab_size {teacher.config.vocab_size}"
            )
        self.student, self.teacher = student, teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.config = student.config

    def train(self, mode: bool = True) -> DistillationModel:
        """Train mode for the student only; the teacher stays in eval mode."""
        self.student.train(mode)
        self.teacher.eval()
        self.training = mode
        return self

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> the student's ModelOutput, its loss the distillation loss (None without targets)."""
        out = self.student(idx)  # logits (B, T, V)
        if targets is None:
            return out._replace(loss=None)
        with torch.no_grad():
            teacher_logits = self.teacher(idx).logits  # (B, T, V)
        loss = distillation_loss(out.logits, teacher_logits, self.temperature, targets, self.alpha)
        return out._replace(loss=loss)


# --------------------------------------------------------------------------- energy


def training_footprint(
    flops: float,
    peak_flops_per_s: float = 312e12,
    utilisation: float = 0.4,
    power_w: float = 400.0,
    pue: float = 1.1,
    kg_co2_per_kwh: float = 0.4,
) -> dict[str, float]:
    """GPU-hours, energy and CO2 of a training run of `flops` FLOPs, under stated assumptions.

    gpu_hours = flops / (peak * utilisation) / 3600; kwh = gpu_hours * power_w / 1000 * pue;
    tonnes_co2 = kwh * kg_co2_per_kwh / 1000. Defaults: an A100's bf16 peak (312 TFLOP/s),
    40% utilisation, 400 W per GPU, a data-centre PUE of 1.1, 0.4 kg CO2 per kWh.
    """
    for name, value in [("flops", flops), ("peak_flops_per_s", peak_flops_per_s), ("power_w", power_w), ("pue", pue)]:
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    if kg_co2_per_kwh < 0:
        raise ValueError(f"kg_co2_per_kwh must be >= 0, got {kg_co2_per_kwh}")
    gpu_hours = flops / (peak_flops_per_s * utilisation) / 3600.0
    kwh = gpu_hours * power_w / 1000.0 * pue
    return {"gpu_hours": gpu_hours, "kwh": kwh, "tonnes_co2": kwh * kg_co2_per_kwh / 1000.0}
