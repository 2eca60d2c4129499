"""A scaling sweep that really trains: isoFLOP profiles of small GPTs on a CPU.

For every compute budget $C$ and every model size $N$ (non-embedding parameters, as in Kaplan
et al. 2020) of that budget's window, the run trains on $D = C / (6N)$ tokens, i.e.
``steps = D / (batch_size * block_size)``, with one fixed recipe (AdamW, a short linear warm-up,
cosine decay to the last step, a peak learning rate that shrinks with width), then measures the
validation loss on the same held-out windows for every run. The result is one small JSON file
(configuration, N, D, C, final validation loss, a subsampled loss curve per run, and how, where
and when it ran) that chapter 8 reads.

    python -m companion.experiments.scaling_sweep                      # the full sweep (~25 min, 2 cores)
    python -m companion.experiments.scaling_sweep --preset tiny --out /tmp/tiny.json   # a few seconds
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from companion.experiments import committed, default_out, experiment_parser, machine, parse_args, utc_now, write_json
from companion.nn import GPT, GPTConfig
from companion.scaling.counting import forward_flops_per_token, gpt_parameters
from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus
from companion.training.evaluation import evaluate
from companion.training.trainer import TrainConfig, train
from companion.utils import set_seed

DEFAULT_OUT = committed("scaling_sweep")  # the full sweep the chapter reads (written only with --out)
FORMAT = "companion-scaling-sweep"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep: data, model ladder, budgets and the training recipe."""

    name: str
    corpus: str = "reviews"  # a companion.text.corpora corpus
    corpus_chars: int | None = None  # use only the first this many characters (None: all)
    bpe_chars: int = 2_000_000  # the BPE tokenizer is trained on the first this many characters
    vocab_size: int = 512
    val_fraction: float = 0.05  # the last tokens of the corpus are held out for validation
    block_size: int = 64
    batch_size: int = 16  # sequences per step: batch_size * block_size tokens per step
    shapes: tuple[tuple[int, int], ...] = ()  # the model ladder, (n_layers, d_model), growing
    d_head: int = 16  # n_heads = d_model // d_head (at least 1)
    budgets: tuple[float, ...] = ()  # training FLOPs C = 6 N D of each isoFLOP profile
    windows: tuple[int, ...] = ()  # index into `shapes` of the smallest model of each budget
    sizes_per_budget: int = 8  # consecutive shapes trained at each budget
    lr_ref: float = 2e-3  # peak learning rate at width d_ref ...
    d_ref: int = 64  # ... scaled as lr = lr_ref * sqrt(d_ref / d_model)
    min_lr_ratio: float = 0.1  # cosine decay ends at min_lr = lr * min_lr_ratio
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of the steps
    weight_decay: float = 0.1
    eval_batches: int = 32  # the validation loss averages this many batches ...
    eval_batch_size: int = 32  # ... of this many windows (the same windows for every run)
    curve_points: int = 32  # the training-loss curve is averaged into at most this many bins
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.windows) != len(self.budgets):
            raise ValueError(f"{len(self.budgets)} budgets but {len(self.windows)} windows")
        if any(c <= 0 for c in self.budgets):
            raise ValueError(f"budgets must be positive, got {self.budgets}")
        for w in self.windows:
            if w < 0 or w + self.sizes_per_budget > len(self.shapes):
                raise ValueError(
                    f"window starting at shape {w} with {self.sizes_per_budget} sizes "
                    f"runs past the {len(self.shapes)} shapes"
                )

    def lr_for(self, d_model: int) -> float:
        """Peak learning rate of a model of width d_model: lr_ref * sqrt(d_ref / d_model)."""
        return self.lr_ref * math.sqrt(self.d_ref / d_model)

    def model_config(self, n_layers: int, d_model: int) -> GPTConfig:
        """The GPTConfig of one rung of the ladder."""
        return GPTConfig(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layers=n_layers,
            n_heads=max(1, d_model // self.d_head),
            d_model=d_model,
            dropout=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return dataclasses.asdict(self)


# The ladder grows by about 1.75x per rung. Each budget trains 8 consecutive rungs (a 30-45x
# span in N) and the windows move up as the budget grows, since the compute-optimal size grows
# about as sqrt(C). At these budgets the optimum is tiny: see chapter 8 for why.
_LADDER = ((1, 16), (1, 24), (1, 32), (2, 32), (2, 40), (2, 48), (2, 64), (3, 64), (3, 80), (4, 96))

PRESETS: dict[str, SweepConfig] = {
    "full": SweepConfig(
        name="full",
        shapes=_LADDER,
        batch_size=16,
        budgets=(1e11, 2.2e11, 4.6e11, 1e12),
        windows=(0, 1, 1, 2),
        sizes_per_budget=8,
    ),
    "tiny": SweepConfig(
        name="tiny",
        corpus="shakespeare",
        corpus_chars=200_000,
        bpe_chars=50_000,
        vocab_size=300,
        block_size=32,
        batch_size=8,
        shapes=((1, 16), (1, 32), (2, 32)),
        budgets=(3e8, 1.5e9),
        windows=(0, 0),
        sizes_per_budget=3,
        eval_batches=4,
        eval_batch_size=16,
        curve_points=8,
    ),
}

# Fields that do not change what one run computes: runs with these alone differing can be reused.
_PLAN_FIELDS = ("name", "shapes", "budgets", "windows", "sizes_per_budget")


@dataclass(frozen=True)
class RunPlan:
    """One training run of the sweep."""

    budget: float  # the isoFLOP budget C this run belongs to
    n_layers: int
    d_model: int
    n_params: int  # non-embedding parameters N
    steps: int  # round(C / (6 N) / tokens_per_step), at least 1

    @property
    def key(self) -> str:
        """A name unique within a sweep."""
        return f"C{self.budget:.2g}_L{self.n_layers}_d{self.d_model}"


def plan_runs(cfg: SweepConfig) -> list[RunPlan]:
    """Every (budget, shape) pair of the sweep with its step count, smallest budget first."""
    tokens_per_step = cfg.batch_size * cfg.block_size
    plans = []
    for budget, first in zip(cfg.budgets, cfg.windows):
        for n_layers, d_model in cfg.shapes[first : first + cfg.sizes_per_budget]:
            n = gpt_parameters(cfg.model_config(n_layers, d_model)).non_embedding
            steps = max(1, round(budget / (6 * n) / tokens_per_step))
            plans.append(RunPlan(budget, n_layers, d_model, n, steps))
    return plans


@dataclass
class SweepData:
    """The tokenised corpus, split once and kept in memory for every run."""

    train: torch.Tensor  # (n_train,) int64 token ids
    val: torch.Tensor  # (n_val,)
    chars: int  # characters of text encoded
    tokenizer: BPETokenizer


def prepare_data(cfg: SweepConfig) -> SweepData:
    """Train the byte-level BPE on the start of the corpus, encode it all, split train/val."""
    text = load_corpus(cfg.corpus)
    if cfg.corpus_chars is not None:
        text = text[: cfg.corpus_chars]
    tokenizer = BPETokenizer.train(text[: cfg.bpe_chars], cfg.vocab_size)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)  # (n_tokens,)
    n_val = max(cfg.block_size + 1, int(len(ids) * cfg.val_fraction))
    return SweepData(train=ids[:-n_val], val=ids[-n_val:], chars=len(text), tokenizer=tokenizer)


def _curve(history, points: int, tokens_per_step: int) -> dict[str, list]:
    """Training loss averaged over up to `points` equal bins of steps (tokens at each bin's end)."""
    losses = history.train_loss
    n = len(losses)
    edges = sorted({round(i * n / points) for i in range(points + 1)})
    tokens, loss = [], []
    for lo, hi in zip(edges, edges[1:]):
        tokens.append(hi * tokens_per_step)
        loss.append(round(sum(losses[lo:hi]) / (hi - lo), 5))
    return {"tokens": tokens, "train_loss": loss}


def run_one(plan: RunPlan, data: SweepData, cfg: SweepConfig, device: str = "cpu") -> dict[str, Any]:
    """Train one model of the sweep from scratch and return its JSON record."""
    gcfg = cfg.model_config(plan.n_layers, plan.d_model)
    counts = gpt_parameters(gcfg)
    lr = cfg.lr_for(plan.d_model)
    tc = TrainConfig(
        steps=plan.steps,
        batch_size=cfg.batch_size,
        block_size=cfg.block_size,
        lr=lr,
        min_lr=lr * cfg.min_lr_ratio,
        warmup_steps=max(1, round(cfg.warmup_fraction * plan.steps)),
        weight_decay=cfg.weight_decay,
        eval_interval=0,
        eval_steps=cfg.eval_batches,
        eval_batch_size=cfg.eval_batch_size,
        device=device,
        seed=cfg.seed,
    )
    set_seed(cfg.seed)
    model = GPT(gcfg)
    t0, c0 = time.perf_counter(), time.process_time()
    history = train(model, data.train, None, tc, progress=False)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    val_loss = evaluate(model, data.val, tc, device=torch.device(device))
    tokens = plan.steps * cfg.batch_size * cfg.block_size  # D actually trained on
    return {
        "key": plan.key,
        "budget": plan.budget,
        "n_layers": plan.n_layers,
        "d_model": plan.d_model,
        "n_heads": gcfg.n_heads,
        "d_ff": gcfg.d_ff,
        "n_params": plan.n_params,
        "n_params_total": counts.total,
        "tokens": tokens,
        "steps": plan.steps,
        "flops": 6 * plan.n_params * tokens,  # C = 6 N D, N non-embedding
        "flops_with_attention": 3 * forward_flops_per_token(gcfg, cfg.block_size) * tokens,
        "flops_total_params": 6 * counts.total * tokens,  # as if every parameter cost 6 FLOPs/token
        "lr": lr,
        "warmup_steps": tc.warmup_steps,
        "val_loss": round(val_loss, 5),
        "final_train_loss": round(history.train_loss[-1], 5),
        "train_seconds": round(train_s, 2),  # wall clock
        "train_cpu_seconds": round(cpu_s, 2),  # CPU time of this process (all its threads)
        "tokens_per_second": round(tokens / train_s, 1),
        "curve": _curve(history, cfg.curve_points, cfg.batch_size * cfg.block_size),
    }


def _metadata(cfg: SweepConfig, command: str, data: SweepData | None) -> dict[str, Any]:
    meta = {
        "command": command,
        "preset": cfg.name,
        "date_utc": utc_now(),
        **machine(),
        "processor": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if data is not None:
        meta.update(
            train_tokens=len(data.train),
            val_tokens=len(data.val),
            corpus_chars=data.chars,
            chars_per_token=round(data.chars / (len(data.train) + len(data.val)), 4),
            unigram_entropy=round(unigram_entropy(data.train, data.val), 4),
        )
    return meta


def unigram_entropy(train: torch.Tensor, val: torch.Tensor) -> float:
    """Cross-entropy (nats/token) on `val` of the unigram distribution of `train` (add-one smoothed).

    The loss of a model that knows only how often each token occurs: the first plateau of
    training, and a yardstick for the sweep's losses.
    """
    size = int(max(train.max(), val.max())) + 1
    p = (torch.bincount(train, minlength=size).double() + 1) / (len(train) + size)
    return float(-p.log()[val].mean())


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    *,
    command: str = "",
    device: str = "cpu",
    resume: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run every planned run (skipping those already in `out` when resume=True) and write `out`.

    The JSON is rewritten after every run, with "complete": false until the last one.
    """
    out = Path(out)
    t_start = time.perf_counter()
    done: dict[str, dict] = {}
    elapsed_before, old_meta = 0.0, None
    if resume and out.exists():
        old = json.loads(out.read_text())
        recipe = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k not in _PLAN_FIELDS}
        if {k: v for k, v in old.get("config", {}).items() if k not in _PLAN_FIELDS} == recipe:
            done = {r["key"]: r for r in old["runs"]}
            elapsed_before, old_meta = old["metadata"].get("wall_seconds", 0.0), old["metadata"]
    t0 = time.perf_counter()
    data = prepare_data(cfg)
    data_s = time.perf_counter() - t0
    if verbose:
        print(
            f"data: {len(data.train):,} train / {len(data.val):,} val tokens "
            f"({data.chars / (len(data.train) + len(data.val)):.2f} chars per token), "
            f"{data_s:.1f} s",
            flush=True,
        )
    plans = plan_runs(cfg)
    meta = _metadata(cfg, command, data)
    if old_meta is not None:  # keep how the sweep was started; note each resumption
        resumed = old_meta.get("resumed", []) + [{"command": command, "date_utc": meta["date_utc"]}]
        meta.update(command=old_meta["command"], date_utc=old_meta["date_utc"], resumed=resumed)
    result = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "complete": False,
        "config": cfg.to_dict(),
        "metadata": meta,
        "runs": [],
    }
    for i, plan in enumerate(plans):
        record = done.get(plan.key) or run_one(plan, data, cfg, device)
        result["runs"].append(record)
        result["complete"] = i == len(plans) - 1
        result["metadata"]["data_seconds"] = round(data_s, 1)
        result["metadata"]["wall_seconds"] = round(elapsed_before + time.perf_counter() - t_start, 1)
        write_json(out, result)
        if verbose:
            print(
                f"[{i + 1}/{len(plans)}] C={plan.budget:.2g} L={plan.n_layers} d={plan.d_model} "
                f"N={plan.n_params:,} steps={plan.steps} val={record['val_loss']:.4f} "
                f"({record['train_seconds']:.0f} s)",
                flush=True,
            )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: python -m companion.experiments.scaling_sweep [--preset full|tiny] [--out PATH]."""
    parser = experiment_parser("scaling_sweep", "scaling", __doc__.split("\n\n")[0], PRESETS)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--plan", action="store_true", help="print the runs and exit")
    parser.add_argument("--quiet", action="store_true")
    args, command = parse_args(parser, argv)
    cfg = PRESETS[args.preset]
    if args.plan:
        for p in plan_runs(cfg):
            print(f"{p.key}: N={p.n_params:,} steps={p.steps} D={p.steps * cfg.batch_size * cfg.block_size:,}")
        return {}
    out = args.out or default_out("scaling", args.preset)
    return run_sweep(cfg, out, command=command, device=args.device, resume=args.resume, verbose=not args.quiet)


if __name__ == "__main__":
    main()
