"""Measuring one call: its wall time (the median or the best of several) and its peak tensor memory."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["best_time", "profiler_peak_bytes", "time_call"]


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
