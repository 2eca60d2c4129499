"""Small helpers every chapter uses: seeding and device choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a torch Generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


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
