"""Training throughput (tokens/s) of `companion.training.trainer.train` on the reference configuration.

    python benchmarks/train_throughput.py                  # eager vs torch.compile: fp32 (and bf16 where fast)
    python benchmarks/train_throughput.py --modes fp32,bf16,bf16+fused --threads 2 --json /tmp/tp.json
    python benchmarks/train_throughput.py --steps 40 --warmup 5  # a shorter run

The reference configuration (SYLLABUS.md): character-level Shakespeare from `companion.text.corpora`,
a GPT with 4 layers, 4 heads, width 128, context 64, batch 12, no dropout (0.80M parameters).
A well-known minimal trainer runs it at about 62 ms per iteration, about 12k tokens/s, on a
2-core CPU of this kind. Each mode trains a fresh model (same seed) for `--warmup` untimed
steps and `--steps` timed steps through the real training loop (AdamW, schedule, clipping,
loss read-back every step); tokens/s = timed tokens / summed step times. A mode is a
`+`-joined set of: fp32 | bf16 (autocast), fused (fused AdamW kernel), compile (torch.compile).
By default every precision runs eager and compiled side by side: fp32 and fp32+compile, plus bf16
and bf16+compile on a CPU with bf16 instructions (avx512_bf16 or AMX; without them bf16 is barely
faster than fp32). Compilation happens in the first warm-up step, so it is excluded from tokens/s
and reported on its own: `compile s` = the first step's time minus a timed step's median (compiled
modes only).
The load average is printed: other processes on the machine slow every mode down. Tokens per
CPU-second (process time of all threads) is printed too: with one thread on a busy machine it
approximates what a dedicated core would do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from companion.nn import GPT, GPTConfig
from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy
from companion.training.trainer import TrainConfig, train
from companion.utils import cpu_info, describe_cpu

REFERENCE_TOKENS_PER_S = 12_000  # ≈ 768 tokens / 62 ms (SYLLABUS.md)
REFERENCE_MODEL = dict(
    n_layers=4, n_heads=4, d_model=128, block_size=64, dropout=0.0, activation="gelu"
)  # the reference trainer's exact (erf) GELU


def load_ids(text_file: str | None) -> tuple[torch.Tensor, int]:
    """Character ids of the corpus (90% training split) and the vocabulary size."""
    text = open(text_file, encoding="utf-8").read() if text_file else load_corpus("shakespeare")
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return ids[: int(0.9 * len(ids))], tok.vocab_size


def default_modes(cpu: dict) -> str:
    """Eager and compiled fp32, and bf16 too where the CPU has bf16 instructions."""
    precisions = ["fp32", "bf16"] if cpu.get("bf16_flags") else ["fp32"]
    return ",".join(f"{p}{c}" for p in precisions for c in ("", "+compile"))


def measure(mode: str, ids: torch.Tensor, vocab_size: int, steps: int, warmup: int, batch_size: int) -> dict:
    """Train `warmup + steps` steps in `mode`; return tokens/s and ms/step of the timed steps."""
    parts = set(mode.split("+"))
    unknown = parts - {"fp32", "bf16", "fused", "compile"}
    if unknown:
        raise ValueError(f"unknown mode part(s) {sorted(unknown)} in {mode!r}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first step compiles and is never timed), got {warmup}")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, **REFERENCE_MODEL))
    cfg = TrainConfig(
        steps=warmup + steps,
        batch_size=batch_size,
        block_size=64,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=min(100, warmup + steps),
        device="cpu",
        dtype="bf16" if "bf16" in parts else "fp32",
        fused="fused" in parts,
        compile="compile" in parts,
    )
    c_warm = []

    def mark(step: int, history) -> None:  # CPU time at the end of the warm-up
        if step == warmup:
            c_warm.append(time.process_time())

    t0 = time.perf_counter()
    h = train(model, ids, None, cfg, progress=False, callback=mark)
    total = time.perf_counter() - t0
    cpu_timed = time.process_time() - c_warm[0]
    tokens = batch_size * 64
    all_step_s = [tokens / x for x in h.tokens_per_s]  # seconds of every step, warm-up included
    step_s = all_step_s[warmup:]
    return {
        "mode": mode,
        "tokens_per_s": tokens * len(step_s) / sum(step_s),
        "ms_per_step": 1000 * sum(step_s) / len(step_s),
        "ms_per_step_median": 1000 * statistics.median(step_s),
        "tokens_per_cpu_s": tokens * len(step_s) / cpu_timed,
        "warmup_s": total - sum(step_s),
        "compile_s": max(0.0, all_step_s[0] - statistics.median(step_s)) if "compile" in parts else None,
        "final_train_loss": h.train_loss[-1],
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print a table; return the results."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes, e.g. fp32,bf16+fused (default: fp32,fp32+compile, "
        "and bf16,bf16+compile on a CPU with bf16 instructions)",
    )
    p.add_argument("--steps", type=int, default=100, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per mode (the first one compiles)")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fixed CPU threads (default: companion.threads)",
    )
    p.add_argument("--text", metavar="FILE", help="a text file instead of companion's Shakespeare")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    ids, vocab = load_ids(args.text)
    load_before = os.getloadavg()
    results = []
    cpu = cpu_info()
    modes = [m.strip() for m in (args.modes or default_modes(cpu)).split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {describe_cpu(cpu)}; "
        f"load average before: {load_before[0]:.2f}"
    )
    print(
        f"{'mode':<18}{'tokens/s':>10}{'ms/step':>9}{'vs 12k':>8}{'warm-up s':>11}{'compile s':>11}{'tokens/CPU-s':>14}"
    )
    for mode in modes:
        r = measure(mode, ids, vocab, args.steps, args.warmup, args.batch_size)
        results.append(r)
        compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(
            f"{r['mode']:<18}{r['tokens_per_s']:>10,.0f}{r['ms_per_step']:>9.1f}"
            f"{r['tokens_per_s'] / REFERENCE_TOKENS_PER_S:>7.2f}x{r['warmup_s']:>11.1f}{compile_s:>11}"
            f"{r['tokens_per_cpu_s']:>14,.0f}",
            flush=True,
        )
    by_mode = {r["mode"]: r for r in results}
    for r in results:  # compiled against eager, mode by mode
        eager = by_mode.get("+".join(p for p in r["mode"].split("+") if p != "compile"))
        if eager is not None and eager is not r:
            print(
                f"{r['mode']} vs {eager['mode']}: {r['tokens_per_s'] / eager['tokens_per_s']:.2f}x the tokens/s, "
                f"after {r['compile_s']:.0f} s of compilation"
            )
    load_after = os.getloadavg()
    best = max(results, key=lambda r: r["tokens_per_s"])
    print(
        f"fastest: {best['mode']} at {best['tokens_per_s']:,.0f} tokens/s = "
        f"{best['tokens_per_s'] / REFERENCE_TOKENS_PER_S:.2f}x the reference trainer's 12k; "
        f"load average after: {load_after[0]:.2f} (above ~{os.cpu_count()} means other processes "
        f"shared the cores)"
    )
    out = {
        "results": results,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cpu": cpu,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "reference_tokens_per_s": REFERENCE_TOKENS_PER_S,
        "n_params": results[0]["n_params"],
        "vocab_size": vocab,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
