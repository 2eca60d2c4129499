"""Training throughput (tokens/s) of `companion.training.trainer.train` on the reference configuration.

    python benchmarks/train_throughput.py                  # eager vs torch.compile: fp32 (and bf16 where fast)
    python benchmarks/train_throughput.py --modes fp32,bf16,bf16+fused --threads 2 --json /tmp/tp.json
    python benchmarks/train_throughput.py --steps 40 --warmup 5  # a shorter run

The reference configuration (SYLLABUS.md): character-level Shakespeare from `companion.text.corpora`,
a GPT with 4 layers, 4 heads, width 128, context 64, batch 12, no dropout (0.80M parameters).
The reference is timed in the same run, never taken from a constant: by default the recipe of a
well-known minimal trainer (nanoGPT) written out in plain PyTorch below (fused q/k/v projection,
PyTorch's fused attention, AdamW with betas 0.9/0.99, clipping, random windows from a NumPy array,
the loss read back every step); with `--reference PATH`, nanoGPT's own `train.py` from a local
checkout (its data folder is filled from the same text, so nothing is downloaded). Every mode's
tokens/s is printed as a ratio to the reference's. Each mode trains a fresh model (same seed) for `--warmup` untimed
steps and `--steps` timed steps through the real training loop (AdamW, schedule, clipping,
loss read-back every step); tokens/s = timed tokens / summed step times. A mode is a
`+`-joined set of: fp32 | bf16 (autocast), fused (fused AdamW kernel), compile (torch.compile).
By default every precision runs eager and compiled side by side: fp32 and fp32+compile, plus
bf16+fused and bf16+fused+compile on a CPU with bf16 instructions (avx512_bf16 or AMX; without them
bf16 is barely faster than fp32). Compilation happens in the first warm-up step, so it is excluded from tokens/s
and reported on its own: `compile s` = the first step's time minus a timed step's median (compiled
modes only), with the training time after which a compiled mode's compilation has paid for itself
against the reference. PyTorch caches compiled kernels on disk (under the system's temporary folder),
so a second run of the benchmark compiles in seconds where the first took tens of seconds.
The load average is printed: other processes on the machine slow every mode down. Tokens per
CPU-second (process time of all threads) is printed too: with one thread on a busy machine it
approximates what a dedicated core would do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.nn import GPT, GPTConfig
from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy
from companion.training.trainer import TrainConfig, train
from companion.utils import cpu_info, describe_cpu

REFERENCE_MODEL = dict(
    n_layers=4, n_heads=4, d_model=128, block_size=64, dropout=0.0, activation="gelu"
)  # the reference trainer's exact (erf) GELU


def load_ids(text_file: str | None) -> tuple[torch.Tensor, int, str]:
    """Character ids of the corpus (90% training split), the vocabulary size and the text."""
    text = open(text_file, encoding="utf-8").read() if text_file else load_corpus("shakespeare")
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return ids[: int(0.9 * len(ids))], tok.vocab_size, text


# ----------------------------------------------------------------------------- the reference recipe


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    """Token + position embeddings, pre-LN blocks, a final LayerNorm and a tied output head."""

    def __init__(self, vocab_size: int, block_size: int = 64, n_layers: int = 4, n_heads: int = 4, d: int = 128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, d), nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(Block(d, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def run_reference(ids: torch.Tensor, vocab_size: int, steps: int, warmup: int, batch_size: int = 12) -> dict:
    """Train the reference recipe for warmup + steps steps; tokens/s and ms/step of the timed steps."""
    torch.manual_seed(0)
    data = ids.numpy().astype(np.uint16)
    rng = np.random.default_rng(0)
    model = ReferenceGPT(vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99)
    )
    total, times = warmup + steps, []
    for it in range(total):
        t0 = time.perf_counter()
        lr = 1e-3 * (it + 1) / 100 if it < 100 else 1e-4 + 0.5 * (1 + math.cos(math.pi * it / total)) * 9e-4
        for g in opt.param_groups:
            g["lr"] = lr
        ix = rng.integers(0, len(data) - 65, batch_size)
        x = torch.from_numpy(np.stack([data[i : i + 64] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1 : i + 65] for i in ix]).astype(np.int64))
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    timed = times[warmup:]
    tokens = batch_size * 64
    return {
        "mode": "reference (plain PyTorch)",
        "tokens_per_s": tokens * len(timed) / sum(timed),
        "ms_per_step": 1000 * sum(timed) / len(timed),
        "ms_per_step_median": 1000 * statistics.median(timed),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def run_nanogpt(checkout: str | Path, text: str, steps: int, warmup: int) -> dict:
    """Time nanoGPT's own train.py (a local checkout) on the same text; ms/step from its log lines."""
    checkout = Path(checkout)
    if not (checkout / "train.py").is_file() or not (checkout / "data" / "shakespeare_char" / "prepare.py").is_file():
        raise ValueError(f"{checkout} is not a nanoGPT checkout (train.py and data/shakespeare_char/prepare.py)")
    data_dir = checkout / "data" / "shakespeare_char"
    (data_dir / "input.txt").write_text(text, encoding="utf-8")  # prepare.py downloads only when this is missing
    subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, capture_output=True)
    out_dir = checkout / "out-benchmark"
    args = [
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_interval=100000",
        "--eval_iters=1",
        "--log_interval=1",
        "--block_size=64",
        "--batch_size=12",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={warmup + steps}",
        f"--lr_decay_iters={warmup + steps}",
        "--dropout=0.0",
        "--always_save_checkpoint=False",
        f"--out_dir={out_dir}",
    ]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=checkout, capture_output=True, text=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    ms = [float(m) for m in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout)]
    if proc.returncode != 0 or len(ms) <= warmup:
        raise ValueError(
            f"nanoGPT's train.py failed or logged no iterations:\n{proc.stdout[-800:]}{proc.stderr[-800:]}"
        )
    timed = ms[warmup:]
    return {
        "mode": "reference (nanoGPT train.py)",
        "tokens_per_s": 12 * 64 * 1000 * len(timed) / sum(timed),
        "ms_per_step": sum(timed) / len(timed),
        "ms_per_step_median": statistics.median(timed),
        "n_params": None,
    }


# ----------------------------------------------------------------------------- ours


def default_modes(cpu: dict) -> str:
    """Eager and compiled fp32, and bf16 with the fused AdamW too where the CPU has bf16 instructions."""
    precisions = ["fp32", "bf16+fused"] if cpu.get("bf16_flags") else ["fp32"]
    return ",".join(f"{p}{c}" for p in precisions for c in ("", "+compile"))


def break_even_s(result: dict, reference: dict) -> float | None:
    """Training seconds after which a compiled mode's compilation has paid for itself against the reference.

    Compiling costs `compile_s` once; each token then saves 1/ref_tps - 1/tps seconds. None when the
    mode is not compiled or is not faster than the reference.
    """
    saving = 1 / reference["tokens_per_s"] - 1 / result["tokens_per_s"]
    if result["compile_s"] is None or saving <= 0:
        return None
    return result["compile_s"] / saving / result["tokens_per_s"]


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
        "and bf16+fused,bf16+fused+compile on a CPU with bf16 instructions)",
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
    p.add_argument("--reference", metavar="PATH", help="a nanoGPT checkout: time its train.py as the reference")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    ids, vocab, text = load_ids(args.text)
    load_before = os.getloadavg()
    results = []
    cpu = cpu_info()
    modes = [m.strip() for m in (args.modes or default_modes(cpu)).split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {describe_cpu(cpu)}; "
        f"load average before: {load_before[0]:.2f}"
    )
    if args.reference:
        reference = run_nanogpt(args.reference, text, args.steps, args.warmup)
    else:
        reference = run_reference(ids, vocab, args.steps, args.warmup, args.batch_size)
    print(f"{reference['mode']}: {reference['tokens_per_s']:,.0f} tokens/s, {reference['ms_per_step']:.1f} ms/step")
    print(
        f"{'mode':<18}{'tokens/s':>10}{'ms/step':>9}{'vs ref':>8}{'warm-up s':>11}{'compile s':>11}{'tokens/CPU-s':>14}"
    )
    for mode in modes:
        r = measure(mode, ids, vocab, args.steps, args.warmup, args.batch_size)
        r["vs_reference"] = r["tokens_per_s"] / reference["tokens_per_s"]
        results.append(r)
        compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(
            f"{r['mode']:<18}{r['tokens_per_s']:>10,.0f}{r['ms_per_step']:>9.1f}"
            f"{r['vs_reference']:>7.2f}x{r['warmup_s']:>11.1f}{compile_s:>11}"
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
    for r in results:
        r["break_even_s"] = break_even_s(r, reference)
        if r["break_even_s"] is not None:
            print(
                f"{r['mode']}: its {r['compile_s']:.0f} s of compilation are repaid after "
                f"{r['break_even_s']:.0f} s of training (against the reference); shorter runs are faster eager"
            )
    load_after = os.getloadavg()
    best = max(results, key=lambda r: r["tokens_per_s"])
    print(
        f"fastest: {best['mode']} at {best['tokens_per_s']:,.0f} tokens/s = "
        f"{best['vs_reference']:.2f}x the reference measured in this run; "
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
        "reference": reference,
        "n_params": results[0]["n_params"],
        "vocab_size": vocab,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
