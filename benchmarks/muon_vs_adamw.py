"""Muon against AdamW on chapter 7's GPT: steps and time to a validation loss, over several seeds.

    python benchmarks/muon_vs_adamw.py --threads 1                       # -> ./muon_full.json
    python benchmarks/muon_vs_adamw.py --threads 1 --out src/companion/results/muon.json

Each seed trains the same 0.8M-parameter GPT (4 layers, 4 heads, width 128, context 64) twice
with `benchmarks/time_to_quality.py`, once per recipe, until its loss on the WHOLE validation
split (non-overlapping windows of the last 10% of the text) is <= `--target`:

* ``muon``: Muon (companion.training.optim) for the blocks' matrices at peak learning rate 0.02, AdamW at
  5e-3 for embeddings, biases and norms, one schedule (50 warm-up steps, cosine over 400 steps);
* ``adamw``: AdamW at 5e-3 for everything, the same warm-up, cosine over 800 steps.

Both use batches of 32 windows and the exact GELU (the best recipes found by time_to_quality.py),
in bf16 autocast on a CPU with bf16 instructions and in fp32 on one without (`--dtype auto`).
The full validation pass runs only when a cheap estimate (8 fixed batches, every 50 steps) is
close to the target, so "steps to target" has a resolution of 50 steps. It also measures what
one step costs: forward + backward of one batch, an AdamW step and a Muon step (whose extra cost
is the Newton-Schulz orthogonalisation), as medians over `--repeats` repetitions.

Timings depend on the machine and on what else runs on it: the JSON records the CPU, the thread
count, the load average before and after, and CPU seconds next to wall seconds (with `--threads 1`
on a busy machine the CPU time approximates the wall time on a dedicated core). The committed
result in companion/results/ is replaced only when `--out` names it; chapter 7 reads it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from companion.experiments import default_out
from companion.nn import GPT, GPTConfig
from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy
from companion.training.batching import get_batch
from companion.training.optim import hidden_matrices, make_optimizer, newton_schulz
from companion.training.trainer import TrainConfig, model_loss, precision_context
from companion.utils import cpu_info

FORMAT = "companion-muon-benchmark"
VERSION = 1
SHARED = ["--lr", "5e-3", "--min-lr", "5e-4", "--warmup", "50", "--batch-size", "32", "--activation", "gelu"]
RECIPES: dict[str, list[str]] = {
    "muon": ["--optimizer", "muon", "--muon-lr", "0.02", "--steps", "400", *SHARED],
    "adamw": ["--optimizer", "adamw", "--steps", "800", *SHARED],
}


def load_time_to_quality() -> Any:
    """The sibling script benchmarks/time_to_quality.py as a module."""
    path = Path(__file__).with_name("time_to_quality.py")
    spec = importlib.util.spec_from_file_location("time_to_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=1.89, help="validation loss to reach")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fixed CPU threads (default: companion.threads)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast if the CPU has bf16 instructions, else fp32",
    )
    p.add_argument("--repeats", type=int, default=30, help="repetitions of the per-step timings")
    p.add_argument("--text", metavar="FILE", help="a text file instead of companion's Shakespeare")
    p.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="further options for time_to_quality.py (model size, steps, ...), last",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default ./muon_full.json; the committed result is replaced only when this names it)",
    )
    args = p.parse_args(argv)
    if args.dtype == "auto":
        args.dtype = "bf16" if cpu_info()["bf16_flags"] else "fp32"
    return args


def time_to_target(ttq: Any, recipe: list[str], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of time_to_quality.py: did it reach the target, at which step, in how many seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        argv = [
            *recipe,
            "--seed",
            str(seed),
            "--target",
            str(args.target),
            "--json",
            str(out),
            "--dtype",
            args.dtype,
            *args.extra,
        ]
        argv += ["--threads", str(args.threads)] if args.threads else []
        argv += ["--text", args.text] if args.text else []
        r = ttq.main(argv)
    return {
        "seed": seed,
        "reached": r["reached"],
        "step": r["step"],
        "full_val_loss": r["full_val_loss"],
        "seconds_to_target": r["seconds_to_target"],
        "cpu_seconds_to_target": r["cpu_seconds_to_target"],
        "total_s": r["total_s"],
        "checks": r["checks"],
    }


def step_costs(args: argparse.Namespace, repeats: int) -> dict[str, Any]:
    """Median milliseconds of forward + backward, an AdamW step, a Muon step and Newton-Schulz alone."""
    text = open(args.text, encoding="utf-8").read() if args.text else load_corpus("shakespeare")
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layers=4, n_heads=4, d_model=128, activation="gelu")
    )
    x, y = get_batch(ids, batch_size=32, block_size=64, generator=torch.Generator().manual_seed(0))  # (32, 64)
    device = torch.device("cpu")
    cfgs = {
        name: TrainConfig(optimizer=name, lr=5e-3, muon_lr=0.02, dtype=args.dtype, device="cpu")
        for name in ("adamw", "muon")
    }
    optims = {name: make_optimizer(model, cfg, device) for name, cfg in cfgs.items()}
    times: dict[str, list[float]] = {"forward_backward": [], "adamw_step": [], "muon_step": [], "newton_schulz": []}
    for r in range(repeats + 3):  # 3 warm-up rounds
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with precision_context(device, cfgs["muon"]):
            loss = model_loss(model, x, y)
        loss.backward()
        t1 = time.perf_counter()
        optims["adamw"].step()
        t2 = time.perf_counter()
        optims["muon"].step()
        t3 = time.perf_counter()
        for p in hidden_matrices(model):
            newton_schulz(p.grad)
        t4 = time.perf_counter()
        if r >= 3:
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key].append(1e3 * seconds)
    return {
        "tokens_per_batch": x.numel(),
        "hidden_matrices": len(hidden_matrices(model)),
        "repeats": repeats,
        **{f"{k}_ms": round(statistics.median(v), 2) for k, v in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every recipe for every seed, measure the per-step costs, write and return the JSON."""
    args = parse(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    ttq = load_time_to_quality()
    load_before, t0 = os.getloadavg(), time.perf_counter()
    runs = {name: [time_to_target(ttq, recipe, s, args) for s in args.seeds] for name, recipe in RECIPES.items()}
    costs = step_costs(args, args.repeats)
    result = {
        "format": FORMAT,
        "version": VERSION,
        "command": " ".join(["python benchmarks/muon_vs_adamw.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": args.target,
        "seeds": args.seeds,
        "dtype": args.dtype,
        "corpus": args.text or "companion shakespeare",
        "recipes": {name: " ".join(r) for name, r in RECIPES.items()},
        "extra": " ".join(args.extra),
        "runs": runs,
        "step_cost": costs,
        "machine": {
            "cpu": cpu_info(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = args.out or default_out("muon", "full")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, rs in runs.items():
        print(
            f"{name:6s} steps to {args.target}: {[r['step'] for r in rs]}, CPU s: "
            f"{[None if r['cpu_seconds_to_target'] is None else round(r['cpu_seconds_to_target'], 1) for r in rs]}"
        )
    print(
        f"per step: forward+backward {costs['forward_backward_ms']} ms, AdamW {costs['adamw_step_ms']} ms, "
        f"Muon {costs['muon_step_ms']} ms (Newton-Schulz alone {costs['newton_schulz_ms']} ms)"
    )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
