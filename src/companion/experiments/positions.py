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

The models are built by composition from the package's blocks (``TransformerBlock``,
``init_gpt_weights``); rotary and ALiBi replace each block's attention by a wrapper that reuses its
projections. Training is ``companion.training.trainer.train``.

    python -m companion.experiments.positions --preset full --out src/companion/results/positions.json
    python -m companion.experiments.positions --preset tiny          # writes ./positions_tiny.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.experiments import committed, default_out
from companion.nn.attention import AttentionOutput, MultiHeadAttention, merge_heads, split_heads
from companion.nn.blocks import TransformerBlock
from companion.nn.gpt import GPTConfig, init_gpt_weights
from companion.nn.output import ModelOutput
from companion.nn.positional import RotaryEmbedding, sinusoidal_encoding
from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.training.trainer import TrainConfig, train

NAME = "positions"
FORMAT = "companion-positions"
POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "none")
METRICS = ("within", "beyond", "beyond_sliding")


# ----------------------------------------------------------------------------- the models


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's head-specific slopes m_h = 2^(-8h/n_heads), h = 1..n_heads (Press et al. 2022): (n_heads,)."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    return 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float32) / n_heads)


def alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Causal ALiBi bias (n_heads, T, T): -m_h (i - j) for keys j <= i, -inf for j > i."""
    i = torch.arange(length, device=slopes.device)
    distance = (i[:, None] - i[None, :]).to(slopes.dtype)  # (T, T): i - j
    bias = -slopes[:, None, None] * distance  # (n_heads, T, T)
    return bias.masked_fill(distance < 0, -math.inf)


class PositionAwareAttention(nn.Module):
    """A block's MultiHeadAttention with rotary q/k or an ALiBi score bias; reuses its projections.

    Only causal self-attention without a cache or masks is supported (what the experiment needs).
    """

    def __init__(self, attn: MultiHeadAttention, position: str, base: float = 10000.0):
        super().__init__()
        if position not in ("rotary", "alibi"):
            raise ValueError(f"position must be 'rotary' or 'alibi', got {position!r}")
        self.attn, self.position = attn, position
        self.rope = RotaryEmbedding(attn.d_head, base) if position == "rotary" else None
        self.register_buffer("slopes", alibi_slopes(attn.n_heads), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv_cache: Any = None,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """Causal self-attention of x (B, T, d_model) -> AttentionOutput(out (B, T, d_model), None)."""
        if (
            context is not None
            or attn_mask is not None
            or key_padding_mask is not None
            or kv_cache is not None
            or need_weights
            or not is_causal
        ):
            raise ValueError(
                "PositionAwareAttention does causal self-attention only (no context, masks, cache or weights)"
            )
        a = self.attn
        q = split_heads(a.q_proj(x), a.n_heads)  # (B, H, T, d_head)
        k = split_heads(a.k_proj(x), a.n_heads)
        v = split_heads(a.v_proj(x), a.n_heads)
        p = a.dropout if self.training else 0.0
        if self.rope is not None:
            q, k = self.rope(q, k)  # rotate by positions 0..T-1
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            bias = alibi_bias(self.slopes.to(q.dtype), x.shape[1])  # (H, T, T), causal
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return AttentionOutput(a.out_proj(merge_heads(y)), None)


class PositionalGPT(nn.Module):
    """A pre-LN GPT whose position information is `position` (one of POSITIONS).

    "learned": a (block_size, d_model) table added to the token embeddings (GPT-2);
    "sinusoidal": scale * PE(pos) added (Vaswani et al. 2017), defined for any length;
    "rotary": queries and keys rotated (Su et al. 2021); "alibi": a linear distance bias on the
    scores (Press et al. 2022); "none": nothing but the causal mask (NoPE, Haviv et al. 2022).
    Only "learned" is limited to block_size positions.
    """

    def __init__(self, config: GPTConfig, position: str, sinusoidal_scale: float = 0.1):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}; choose one of {', '.join(POSITIONS)}")
        self.config = c = config
        self.position, self.sinusoidal_scale = position, sinusoidal_scale
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model) if position == "learned" else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                c.d_model, c.n_heads, c.d_ff, dropout=c.dropout, bias=c.bias, norm="pre", activation=c.activation
            )
            for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_weights(self, n_residual_branches=2 * c.n_layers)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in GPT-2
        if position in ("rotary", "alibi"):
            for block in self.blocks:
                block.attn = PositionAwareAttention(block.attn, position)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> ModelOutput(logits (B, T, vocab_size), mean cross-entropy or None, hidden_states)."""
        T = idx.shape[1]
        x = self.tok_emb(idx)  # (B, T, d_model)
        if self.position == "learned":
            if T > self.config.block_size:
                raise ValueError(
                    f"a learned position table has {self.config.block_size} rows; got a sequence of length {T}"
                )
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        elif self.position == "sinusoidal":
            pe = sinusoidal_encoding(T, self.config.d_model).to(x.device, x.dtype)  # (T, d_model)
            x = x + self.sinusoidal_scale * pe
        for block in self.blocks:
            x = block(x, is_causal=True)
        h = self.ln_f(x)  # (B, T, d_model)
        logits = self.lm_head(h)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return ModelOutput(logits, loss, h)


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
    sinusoidal_scale: float = 0.1  # the scale chapter 5 uses: unscaled, PE swamps the embeddings
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
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            block_size=self.block_size,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            eval_interval=0,
            seed=seed,
            device="cpu",
        )


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


def load_data(corpus_chars: int | None = None) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """Shakespeare as character ids: (tokenizer, first 90% to train on, last 10% held out)."""
    text = load_corpus("shakespeare")
    text = text[:corpus_chars] if corpus_chars else text
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))
    n_train = int(0.9 * len(ids))
    return tok, ids[:n_train], ids[n_train:]


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
    tok, train_ids, val_ids = load_data(cfg.corpus_chars)
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
        "metadata": {
            "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
        },
    }


# ----------------------------------------------------------------------------- reading results


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (default: the committed full run)."""
    path = committed(NAME) if path is None else Path(path)
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if result.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {result.get('format')!r})")
    return result


def _values(result: dict[str, Any], position: str, metric: str) -> dict[int, float]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return {r["seed"]: r[metric] for r in result["runs"] if r["position"] == position and r[metric] is not None}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0.0 for one value) of a list of numbers."""
    if not values:
        raise ValueError("mean_se of an empty list is undefined")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


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
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m companion.experiments.positions", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON to write (default: ./positions_<preset>.json; the committed result "
        "is replaced only when named here)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    out = args.out or default_out(NAME, args.preset)
    t0 = time.perf_counter()
    result = run(cfg, verbose=not args.quiet)
    result["command"] = " ".join(["python -m companion.experiments.positions", *argv])
    result["metadata"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if not args.quiet:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
