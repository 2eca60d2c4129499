"""Positional encodings compared by training: learned, sinusoidal, rotary, ALiBi and none.

Chapter 2 derives four ways to give a Transformer the order of its tokens. This script trains the
same small character-level causal model on Shakespeare with each of them (plus no positional
information at all, "NoPE"), for several seeds with the same data, split and steps, and measures
the held-out loss at every position of windows *twice as long* as the training windows:

* **within**: mean loss over positions 0 .. block_size-1 (the lengths seen in training);
* **beyond**: mean loss over positions block_size .. 2 block_size-1, the model reading the whole
  longer window (extrapolation). A learned table has no vectors for these positions, so the
  learned model gets no "beyond" number;
* **beyond_sliding**: the same positions scored with a sliding window of the last block_size
  tokens, the standard way to run a fixed-length model on long text and the baseline that
  extrapolation has to beat. Every model, the learned one included, gets this number.

The models are ``companion.experiments.position_models.PositionalGPT``; training is
``companion.training.trainer.train``.

    python -m companion.experiments.positions --preset full --out src/companion/results/positions.json
    python -m companion.experiments.positions --preset tiny          # writes ./positions_tiny.json
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.analysis.metrics import mean_se
from companion.experiments import cpu_train_config, machine, read_result, run_command, shakespeare_chars, utc_now
from companion.experiments.position_models import POSITIONS, PositionalGPT
from companion.nn.gpt import GPTConfig
from companion.training.trainer import TrainConfig, train

NAME = "positions"
FORMAT = "companion-positions"
METRICS = ("within", "beyond", "beyond_sliding")


# ----------------------------------------------------------------------------- measuring


@torch.no_grad()
def position_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Per-token loss (nats) of next-token prediction over whole windows (n, L+1) -> (n, L)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        logits = model(w[:, :-1]).logits  # (b, L, V)
        out.append(F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none"))  # (b, L)
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def sliding_losses(model: nn.Module, windows: torch.Tensor, block_size: int, batch_size: int = 256) -> torch.Tensor:
    """Losses at positions block_size .. L-1 of windows (n, L+1), each predicted from the last
    block_size tokens only (a sliding window): (n, L - block_size)."""
    L = windows.shape[1] - 1
    if not 1 <= block_size < L:
        raise ValueError(f"block_size must be in [1, {L}), got {block_size}")
    was_training = model.training
    model.eval()
    cols = []
    for p in range(block_size, L):  # predict token p + 1 from tokens p - block_size + 1 .. p
        ctx, target = windows[:, p - block_size + 1 : p + 1], windows[:, p + 1]
        rows = [model(ctx[i : i + batch_size]).logits[:, -1] for i in range(0, len(ctx), batch_size)]
        cols.append(F.cross_entropy(torch.cat(rows), target, reduction="none"))  # (n,)
    model.train(was_training)
    return torch.stack(cols, dim=1)


def eval_windows(val_ids: torch.Tensor, length: int, max_windows: int) -> torch.Tensor:
    """Consecutive non-overlapping held-out windows of length + 1 tokens: (n, length + 1)."""
    n = min(max_windows, len(val_ids) // (length + 1))
    if n < 2:
        raise ValueError(f"held-out data of {len(val_ids)} tokens holds fewer than 2 windows of {length + 1}")
    return val_ids[: n * (length + 1)].view(n, length + 1)


def mean_and_window_se(losses: torch.Tensor) -> tuple[float, float]:
    """Mean loss of (n_windows, positions) and its standard error across the n windows."""
    per_window = losses.double().mean(dim=1)  # (n,)
    return float(per_window.mean()), float(per_window.std() / math.sqrt(len(per_window)))


# ----------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class PositionsConfig:
    """One model shape, one recipe and one budget for every positional scheme and seed."""

    name: str
    positions: tuple[str, ...] = POSITIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    block_size: int = 64  # training length; evaluation windows are eval_factor times longer
    eval_factor: int = 2
    batch_size: int = 32
    steps: int = 1000
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    sinusoidal_scale: float = 0.1  # the scale chapter 6 uses: unscaled, PE swamps the embeddings
    eval_windows: int = 256
    corpus_chars: int | None = None  # use only the first this many characters (None: all)

    def __post_init__(self) -> None:
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {self.positions}")
        if not self.seeds or self.eval_factor < 2:
            raise ValueError("need at least one seed and eval_factor >= 2")

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The shared shape (pre-LN, no dropout)."""
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            dropout=0.0,
            norm="pre",
        )

    def train_config(self, seed: int) -> TrainConfig:
        """The trainer's recipe; the seed fixes the initialisation and the batch order."""
        return cpu_train_config(self, seed)


PRESETS = {
    "full": PositionsConfig("full"),
    "tiny": PositionsConfig(
        "tiny",
        seeds=(0, 1),
        n_layers=1,
        n_heads=2,
        d_model=16,
        block_size=16,
        batch_size=8,
        steps=12,
        warmup_steps=2,
        eval_windows=16,
        corpus_chars=60_000,
    ),
}


def run_one(
    cfg: PositionsConfig, position: str, seed: int, train_ids: torch.Tensor, windows: torch.Tensor, vocab_size: int
) -> dict[str, Any]:
    """Train one model and measure it on the (n, eval_factor * block_size + 1) windows."""
    torch.manual_seed(seed)
    model = PositionalGPT(cfg.gpt_config(vocab_size), position, cfg.sinusoidal_scale)
    t0 = time.perf_counter()
    history = train(model, train_ids, None, cfg.train_config(seed), progress=False)
    train_seconds = time.perf_counter() - t0
    T = cfg.block_size
    full = position_losses(model, windows if position != "learned" else windows[:, : T + 1])  # (n, L)
    sliding = sliding_losses(model, windows, T)  # (n, L - T)
    within, within_se = mean_and_window_se(full[:, :T])
    beyond, beyond_se = mean_and_window_se(full[:, T:]) if position != "learned" else (None, None)
    slide, slide_se = mean_and_window_se(sliding)
    tail = history.train_loss[-max(1, cfg.steps // 10) :]
    return {
        "position": position,
        "seed": seed,
        "within": round(within, 5),
        "within_se_windows": round(within_se, 5),
        "beyond": None if beyond is None else round(beyond, 5),
        "beyond_se_windows": None if beyond_se is None else round(beyond_se, 5),
        "beyond_sliding": round(slide, 5),
        "beyond_sliding_se_windows": round(slide_se, 5),
        "curve": [round(v, 4) for v in full.mean(0).tolist()],  # mean loss at each position
        "final_train_loss": round(sum(tail) / len(tail), 5),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - t0 - train_seconds, 1),
    }


def run(cfg: PositionsConfig, verbose: bool = False) -> dict[str, Any]:
    """Every (position, seed) pair of `cfg`; returns the JSON-ready result."""
    tok, train_ids, val_ids = shakespeare_chars(cfg.corpus_chars)
    windows = eval_windows(val_ids, cfg.eval_factor * cfg.block_size, cfg.eval_windows)
    runs = []
    for seed in cfg.seeds:
        for position in cfg.positions:
            runs.append(run_one(cfg, position, seed, train_ids, windows, tok.vocab_size))
            if verbose:
                r = runs[-1]
                print(
                    f"{position:>10} seed {seed}: within {r['within']:.4f}  beyond {r['beyond']}  "
                    f"sliding {r['beyond_sliding']:.4f}  ({r['train_seconds']:.0f} s)",
                    flush=True,
                )
    return {
        "format": FORMAT,
        "version": 1,
        "config": dataclasses.asdict(cfg),
        "data": {
            "corpus": "shakespeare",
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "vocab_size": tok.vocab_size,
            "eval_windows": len(windows),
            "eval_length": windows.shape[1] - 1,
        },
        "runs": runs,
        "metadata": {"date_utc": utc_now(), **machine(), "device": "cpu"},
    }


# ----------------------------------------------------------------------------- reading results


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (default: the committed full run)."""
    return read_result(path, NAME, FORMAT)


def _values(result: dict[str, Any], position: str, metric: str) -> dict[int, float]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return {r["seed"]: r[metric] for r in result["runs"] if r["position"] == position and r[metric] is not None}


def summarize(result: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, int] | None]]:
    """{position: {metric: (mean, SE across seeds, n seeds) or None if not applicable}}."""
    out: dict[str, dict[str, tuple[float, float, int] | None]] = {}
    for position in result["config"]["positions"]:
        out[position] = {}
        for metric in METRICS:
            vals = list(_values(result, position, metric).values())
            out[position][metric] = (*mean_se(vals), len(vals)) if vals else None
    return out


def paired_difference(
    result: dict[str, Any], a: str, b: str, metric: str, metric_b: str | None = None
) -> tuple[float, float, int]:
    """Mean and SE over shared seeds of a's `metric` minus b's `metric_b` (default the same): (mean, SE, n)."""
    va, vb = _values(result, a, metric), _values(result, b, metric_b or metric)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        raise ValueError(f"no seed has both {a} {metric} and {b} {metric_b or metric}")
    return (*mean_se([va[s] - vb[s] for s in seeds]), len(seeds))


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.experiments.positions [--preset full|tiny] [--out PATH]."""
    return run_command("positions", NAME, __doc__.split("\n\n")[0], PRESETS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
