"""Small helpers every chapter uses: seeding, device choice, and what CPU this is."""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a torch Generator seeded the same way.

    Python's string hashing (set and dict order of strings) is fixed only by ``PYTHONHASHSEED``
    before the interpreter starts, so it cannot be set here; the book never depends on it.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file raises a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid {what} ({err})") from None


def get_device(device: str | None = None) -> torch.device:
    """Return `device` if given, else the best available: cuda, then mps, then cpu."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' was asked for but torch.backends.mps.is_available() is False")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that make bf16 matmuls fast


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU's model name, logical CPU count and bf16 instructions (from /proc/cpuinfo on Linux).

    Benchmarks print it: bf16 autocast is about 2x faster than fp32 on a CPU with avx512_bf16 or
    AMX, and barely faster on one without, so the same recipe's timings differ between machines.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the flags are unknown
        return {"model": model, "cpus": os.cpu_count(), "bf16_flags": None}
    return {"model": model, "cpus": os.cpu_count(), "bf16_flags": [f for f in BF16_CPU_FLAGS if f in flags]}


def describe_cpu(info: dict | None = None) -> str:
    """One line such as 'AMD EPYC, 2 CPUs, bf16 instructions: avx512_bf16'."""
    info = info or cpu_info()
    flags = info["bf16_flags"]
    bf16 = "unknown" if flags is None else (", ".join(flags) or "none")
    return f"{info['model']}, {info['cpus']} CPUs, bf16 instructions: {bf16}"
