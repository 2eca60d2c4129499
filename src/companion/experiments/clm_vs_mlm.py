"""Causal vs masked language modelling on the same characters, for longer than a notebook can.

Chapter 6 trains a small GPT (causal LM) and a BERT-style encoder of the same shape (masked LM,
15% of positions, 80/10/10) on Shakespeare's characters with the same budget. This script runs
the same two models for more steps and measures, every `eval_interval` steps, how well each one
fills in blanks: 15% of the characters of fixed held-out windows are hidden, the masked model sees
the corrupted window on both sides, the causal model predicts each hidden character from the true
text to its left. It writes one small JSON (curves of validation loss and blank-filling accuracy,
the fills of a few sentences at the end, and how and where it ran) that chapter 6 plots.
The test itself is ``companion.experiments.blank_filling``.

Every seed in the preset trains both models again (seed = initial weights, batches and masks);
the blank-filling test is the same for every seed, so the two models and the seeds are compared
on the same items (a paired comparison). The JSON keeps every seed's curves, and at every
measurement the 2 x 2 table of which blanks each model got right, from which `summarize` derives
means, standard errors across seeds and the binomial standard error of the test itself.

    python -m companion.experiments.clm_vs_mlm --threads 1            # -> ./objectives_full.json
    python -m companion.experiments.clm_vs_mlm --preset tiny          # -> ./objectives_tiny.json
    python -m companion.experiments.clm_vs_mlm --threads 1 --out src/companion/results/objectives.json

Only an explicit ``--out`` replaces the committed result that chapter 6 reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.experiments import (
    committed,
    default_out,
    experiment_parser,
    machine,
    parse_args,
    shakespeare_chars,
    utc_now,
    write_json,
)
from companion.experiments.blank_filling import SENTENCES, blank_test, fill_predictions, fill_sentence
from companion.nn import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig
from companion.nn.positional import sinusoidal_encoding
from companion.text.tokenization import CharTokenizer
from companion.training.objectives import MaskedLM
from companion.training.trainer import TrainConfig, train

NAME = "objectives"
FORMAT = "companion-objectives"
VERSION = 2


@dataclass(frozen=True)
class ObjectivesConfig:
    """The two runs: one model shape, one recipe, one budget, two objectives."""

    name: str
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    block_size: int = 64
    batch_size: int = 32
    steps: int = 700
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    eval_interval: int = 50
    eval_steps: int = 8
    fill_windows: int = 512  # held-out windows of the blank-filling test
    mask_prob: float = 0.15
    corpus_chars: int | None = None  # use only the first this many characters (None: all)
    seeds: tuple[int, ...] = (0,)  # one training run of each model per seed
    test_seed: int = 0  # the blank-filling test: the same for every training seed

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")

    def shape(self) -> dict[str, Any]:
        """The model shape both objectives share (pre-LN, no dropout)."""
        return dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            block_size=self.block_size,
            dropout=0.0,
            norm="pre",
        )

    def train_config(self, seed: int | None = None) -> TrainConfig:
        """The trainer's configuration, the same for both runs (default seed: the first)."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            block_size=self.block_size,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            eval_interval=self.eval_interval,
            eval_steps=self.eval_steps,
            seed=self.seeds[0] if seed is None else seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists, as they come back from a JSON file)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS = {
    "notebook": ObjectivesConfig("notebook"),  # what chapter 6 trains live
    # 3,000 steps (not 5,000) so that three seeds of both models fit in about an hour on one core
    "full": ObjectivesConfig("full", steps=3000, eval_interval=250, seeds=(0, 1, 2)),
    "tiny": ObjectivesConfig(
        "tiny",
        n_layers=1,
        d_model=32,
        block_size=16,
        batch_size=8,
        steps=20,
        eval_interval=10,
        eval_steps=2,
        fill_windows=32,
        corpus_chars=60_000,
        seeds=(0, 1),
    ),
}


@dataclass
class CharData:
    """The corpus as character ids, split 90/10, with a [MASK] id after the characters."""

    tok: CharTokenizer
    train_ids: torch.Tensor  # (N_train,)
    val_ids: torch.Tensor  # (N_val,)

    @property
    def mask_id(self) -> int:
        """The id of [MASK]: one after the characters, never in the text."""
        return self.tok.vocab_size

    @property
    def vocab_size(self) -> int:
        """Characters plus [MASK]: both models get the same vocabulary."""
        return self.tok.vocab_size + 1


def load_chars(corpus_chars: int | None = None) -> CharData:
    """Shakespeare as character ids: the first 90% to train on, the last 10% held out."""
    return CharData(*shakespeare_chars(corpus_chars))


def sinusoidal_start(pos_emb: nn.Embedding, scale: float = 0.1) -> None:
    """Start a learned position embedding from the sinusoidal table (Chapter 2), scaled."""
    with torch.no_grad():
        pos_emb.weight.copy_(scale * sinusoidal_encoding(*pos_emb.weight.shape))


def build_models(cfg: ObjectivesConfig, vocab_size: int, seed: int = 0) -> dict[str, nn.Module]:
    """A GPT and an encoder of the same shape, same seed, both with the sinusoidal start."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, **cfg.shape()))
    torch.manual_seed(seed)
    bert = EncoderForMaskedLM(EncoderConfig(vocab_size=vocab_size, **cfg.shape()))
    sinusoidal_start(gpt.pos_emb)
    sinusoidal_start(bert.encoder.pos_emb)
    return {"clm": gpt, "mlm": bert}


def run_seed(
    cfg: ObjectivesConfig, data: CharData, windows: torch.Tensor, hide: torch.Tensor, seed: int, progress: bool = False
) -> dict[str, Any]:
    """Train both models from `seed`; their curves and the paired 2 x 2 tables of the blank test."""
    models = build_models(cfg, data.vocab_size, seed)
    right_clm: dict[int, torch.Tensor] = {}  # step -> which blanks the causal model got right
    paired: dict[str, list[int]] = {"step": [], "both": [], "mlm_only": [], "clm_only": [], "neither": []}
    runs: dict[str, Any] = {}
    for kind, model in models.items():  # "clm" first, so its answers are there for the tables
        runs[kind] = _train_and_measure(cfg, data, windows, hide, kind, model, seed, right_clm, paired, progress)
    runs["paired"] = paired
    return runs


def _train_and_measure(
    cfg: ObjectivesConfig,
    data: CharData,
    windows: torch.Tensor,
    hide: torch.Tensor,
    kind: str,
    model: nn.Module,
    seed: int,
    right_clm: dict[int, torch.Tensor],
    paired: dict[str, list[int]],
    progress: bool,
) -> dict[str, Any]:
    """Train one model, measuring the blank test every `eval_interval` steps; its JSON record."""
    curve: dict[str, list[float]] = {"step": [], "fill_accuracy": [], "fill_cross_entropy": []}

    def measure(step: int, _history: Any = None) -> None:  # train()'s callback
        if step % cfg.eval_interval and step != cfg.steps:
            return
        right, nll = fill_predictions(model, kind, windows, hide, data.mask_id)
        curve["step"].append(step)
        curve["fill_accuracy"].append(round(right.float().mean().item(), 5))
        curve["fill_cross_entropy"].append(round(nll.mean().item(), 5))
        if kind == "clm":
            right_clm[step] = right
            return
        c = right_clm[step]
        for key, n in (
            ("step", step),
            ("both", int((right & c).sum())),
            ("mlm_only", int((right & ~c).sum())),
            ("clm_only", int((~right & c).sum())),
            ("neither", int((~right & ~c).sum())),
        ):
            paired[key].append(n)

    measure(0)
    objective = "clm" if kind == "clm" else MaskedLM(data.mask_id, data.vocab_size, cfg.mask_prob)
    t0, c0 = time.perf_counter(), time.process_time()
    history = train(
        model,
        data.train_ids,
        data.val_ids,
        cfg.train_config(seed),
        objective=objective,
        progress=progress,
        callback=measure,
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "eval_step": history.eval_step,
        "val_loss": [round(v, 5) for v in history.val_loss],
        **curve,
        "sentences": {
            s: fill_sentence(model, kind, s, data.tok, data.mask_id) for s in SENTENCES if len(s) <= cfg.block_size
        },
    }


def run(cfg: ObjectivesConfig, progress: bool = False) -> dict[str, Any]:
    """Train both models once per seed of `cfg`; return the JSON-ready result."""
    data = load_chars(cfg.corpus_chars)
    windows, hide = blank_test(data.val_ids, cfg.block_size, cfg.fill_windows, cfg.mask_prob, cfg.test_seed)
    runs = {}
    for seed in cfg.seeds:
        runs[str(seed)] = run_seed(cfg, data, windows, hide, seed, progress)
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} accuracy {runs[str(seed)][k]['fill_accuracy'][-1]:.3f}" for k in ("clm", "mlm")),
            flush=True,
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "seeds": list(cfg.seeds),
        "characters": {"train": len(data.train_ids), "val": len(data.val_ids), "vocab_size": data.vocab_size},
        "hidden_characters": int(hide.sum()),
        "runs": runs,
        "metadata": {"date": utc_now(), **machine(), "device": "cpu"},
    }


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (by default the committed full run)."""
    path = committed(NAME) if path is None else Path(path)
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if result.get("format") != FORMAT or result.get("version") != VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} file of version {VERSION} "
            f"(format {result.get('format')!r}, version {result.get('version')!r})"
        )
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per measurement step: accuracy of each model over the seeds, and the paired difference.

    For each kind: mean accuracy over seeds, its standard error across seeds (sample std / sqrt(S))
    and the binomial standard error of an accuracy p on the n test items, sqrt(p (1 - p) / n). For
    the difference masked - causal: its mean over seeds, the standard error across seeds, and the
    test's own (paired) sampling error from the 2 x 2 tables, sqrt((b + c)/n - ((b - c)/n)^2) / sqrt(n)
    with b, c the blanks only one model got right.
    """
    runs = [result["runs"][str(s)] for s in result["seeds"]]
    n, S = result["hidden_characters"], len(runs)
    out: dict[str, Any] = {"step": runs[0]["mlm"]["step"], "seeds": S, "items": n}
    for kind in ("clm", "mlm"):
        acc = torch.tensor([r[kind]["fill_accuracy"] for r in runs], dtype=torch.float64)  # (S, steps)
        mean = acc.mean(0)
        out[kind] = {
            "mean": mean.tolist(),
            "se_seeds": _se(acc).tolist(),
            "se_binomial": (mean * (1 - mean) / n).sqrt().tolist(),
        }
    diff = torch.tensor(
        [[(m - c) / n for m, c in zip(r["paired"]["mlm_only"], r["paired"]["clm_only"])] for r in runs],
        dtype=torch.float64,
    )  # (S, steps): mlm accuracy - clm accuracy
    discordant = torch.tensor(
        [[(m + c) / n for m, c in zip(r["paired"]["mlm_only"], r["paired"]["clm_only"])] for r in runs],
        dtype=torch.float64,
    ).mean(0)
    se_test = ((discordant - diff.mean(0) ** 2).clamp_min(0) / n).sqrt()
    out["diff"] = {
        "mean": diff.mean(0).tolist(),
        "se_seeds": _se(diff).tolist(),
        "se_test": se_test.tolist(),
        "se": (_se(diff) ** 2 + se_test**2).sqrt().tolist(),
        "per_seed": diff.tolist(),
    }
    return out


def _se(x: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the first axis (zeros for a single row)."""
    if x.shape[0] < 2:
        return torch.zeros(x.shape[1:], dtype=x.dtype)
    return x.std(0, unbiased=True) / math.sqrt(x.shape[0])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = experiment_parser("clm_vs_mlm", NAME, __doc__, PRESETS)
    parser.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bars")
    args, command = parse_args(parser, argv)
    cfg = PRESETS[args.preset]
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
    out = args.out or default_out(NAME, args.preset)
    t0 = time.perf_counter()
    result = run(cfg, progress=args.progress)
    result["command"] = command
    result["metadata"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, result)
    summary = summarize(result)
    for kind in ("clm", "mlm"):
        print(
            f"{kind}: blank-filling accuracy {summary[kind]['mean'][-1]:.3f} +- "
            f"{summary[kind]['se_seeds'][-1]:.3f} (seeds) +- {summary[kind]['se_binomial'][-1]:.3f} (test) "
            f"after {cfg.steps} steps, {len(cfg.seeds)} seeds"
        )
    print(f"masked - causal: {summary['diff']['mean'][-1]:+.3f} +- {summary['diff']['se'][-1]:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
