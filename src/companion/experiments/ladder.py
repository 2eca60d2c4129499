"""The ablation ladder and the race: what each part of a Transformer block buys, in bits per character.

Every rung of ``companion.experiments.ladder_models.RUNGS`` (bigram table -> embeddings -> one-head
attention -> multiple heads -> feed-forward -> residual connections -> LayerNorm, the GPT-2 block ->
the modern Llama block) is trained on companion's Shakespeare characters with one budget and one
recipe: the same steps, batch, block_size, AdamW schedule, initialisation scheme (``init``: PyTorch's
per-layer defaults unless set; see ``ladder_models`` for why) and seeds (seed s fixes a model's
initial draw and its batch order, identical for every rung). Each is scored on the whole
validation split, cut into non-overlapping windows of block_size characters (every character but
the first predicted once, from the characters before it in its window), in bits per character,
with its own sampling error; the ladder reports mean +- standard error over the seeds.

**The race** pairs the GPT-2 block with the modern block, whose SwiGLU width makes the two parameter
counts match, each with the package's own initialisation (GPT-2's N(0, 0.02), which Llama uses
too), the same tokens, steps and seeds (``race_seeds``), and each at its own best peak learning
rate of a small sweep (``race_lrs``, one seed, picked by the lowest final *training* loss, so no
held-out number is selected on). The two are compared seed by seed (mean difference, its standard
error, a paired t-test) next to the test split's own sampling error of that difference. The
verdict is "tie" unless the paired test gives p < 0.05 AND the difference exceeds twice that
sampling error.

    python -m companion.experiments.ladder --preset full --threads 2 --out src/companion/results/ladder.json
    python -m companion.experiments.ladder --preset tiny          # writes ./ladder_tiny.json

The notebook runs `live` (a smaller ladder, one seed, seconds); ``companion.experiments.ladder_report``
draws and tabulates a result.
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
from scipy.stats import ttest_rel

from companion.analysis.metrics import bits_per_character, mean_se
from companion.experiments import cpu_train_config, machine, read_result, run_command, shakespeare_chars, utc_now
from companion.experiments.ladder_models import INITS, LABELS, RUNGS, build_rung, gpt_config, llama_config
from companion.experiments.positions import position_losses
from companion.nn.gpt import GPTConfig
from companion.scaling.counting import (
    count_parameters,
    forward_flops_per_token,
    gpt_parameters,
    llama_forward_flops_per_token,
    llama_parameters,
)
from companion.text.ngram import NGramModel
from companion.training.trainer import TrainConfig, train

NAME = "ladder"
FORMAT = "companion-ladder"
RACE = ("gpt2", "modern")  # the race: the GPT-2 block against the modern block
RACE_INIT = "gpt2"  # ... each as the package initialises it
P_THRESHOLD = 0.05
RunKey = tuple[str, int, str, float]  # (rung, seed, init, peak learning rate)
LN2 = math.log(2)


@dataclass(frozen=True)
class LadderConfig:
    """One model shape, one recipe and one budget for every rung and seed."""

    name: str
    rungs: tuple[str, ...] = RUNGS
    seeds: tuple[int, ...] = (0, 1, 2)  # every rung of the ladder
    race_seeds: tuple[int, ...] = (0, 1, 2)  # the two race rungs (the first also sweeps race_lrs); () for no race
    race_lrs: tuple[float, ...] = (2e-3, 4e-3, 8e-3, 1.6e-2)  # each race rung's peak lr is the best of these
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    block_size: int = 64
    batch_size: int = 32
    steps: int = 500
    lr: float = 2e-3  # one learning rate for every rung (chapter 2's positional runs at this shape)
    min_lr: float = 2e-4
    warmup_steps: int = 50
    init: str = "pytorch"  # the ladder's initialisation, one of ladder_models.INITS (the race's is RACE_INIT)
    corpus_chars: int | None = None  # use only the first this many characters (None: all)
    eval_chars: int | None = None  # score only the first this many validation characters (None: all)

    def __post_init__(self) -> None:
        if not self.rungs or [r for r in RUNGS if r in self.rungs] != list(self.rungs):
            raise ValueError(f"rungs must be a non-empty subset of {RUNGS}, in that order, got {self.rungs}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.race_lrs or len(set(self.race_lrs)) != len(self.race_lrs) or min(self.race_lrs) <= 0:
            raise ValueError(f"race_lrs must be distinct positive learning rates, at least one, got {self.race_lrs}")
        if len(set(self.race_seeds)) != len(self.race_seeds) or len(self.race_seeds) == 1:
            raise ValueError(
                f"race_seeds must be () or at least 2 distinct seeds (a paired test), got {self.race_seeds}"
            )

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The shared shape (GPT-2's block, no dropout, an untied head); the modern rung derives its own."""
        return gpt_config(vocab_size, self.block_size, self.n_layers, self.n_heads, self.d_model)

    def train_config(self, seed: int, lr: float | None = None) -> TrainConfig:
        """The trainer's recipe at peak learning rate `lr` (default: the ladder's; min_lr keeps its ratio to lr);
        the seed fixes the batch order (the model's initial draw is seeded apart)."""
        lr = self.lr if lr is None else lr
        return cpu_train_config(dataclasses.replace(self, lr=lr, min_lr=self.min_lr * lr / self.lr), seed)

    def ladder_runs(self) -> list[RunKey]:
        """Every (rung, seed, init, lr) of the ladder."""
        return [(rung, seed, self.init, self.lr) for seed in self.seeds for rung in self.rungs]

    def sweep_runs(self) -> list[RunKey]:
        """The race's learning-rate sweep: both race rungs at every race_lr, with the first race seed
        (none without a race or with a single race_lr)."""
        if not self.race_seeds or len(self.race_lrs) == 1:
            return []
        return [(rung, self.race_seeds[0], RACE_INIT, lr) for lr in self.race_lrs for rung in RACE]

    def race_runs(self, lrs: dict[str, float]) -> list[RunKey]:
        """The race: both race rungs at every race seed, each at its learning rate in `lrs`."""
        return [(rung, seed, RACE_INIT, lrs[rung]) for seed in self.race_seeds for rung in RACE]


PRESETS = {
    "full": LadderConfig("full"),
    "tiny": LadderConfig(
        "tiny",
        seeds=(0, 1),
        race_seeds=(0, 1),
        race_lrs=(2e-3, 4e-3),
        n_layers=1,
        n_heads=2,
        d_model=16,
        block_size=16,
        batch_size=8,
        steps=12,
        warmup_steps=2,
        corpus_chars=60_000,
    ),
}
LIVE = LadderConfig(  # the notebook's reduced run: every rung, half the width and context, one seed, 150 steps
    "live", seeds=(0,), race_seeds=(), d_model=32, block_size=32, steps=150, eval_chars=20_000
)


# ----------------------------------------------------------------------------- measuring


def split_windows(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut ids (N,) into windows (n, block_size + 1) that overlap by one token, n = (N - 1) // block_size:
    every token after the first is a target exactly once (a last part shorter than block_size is dropped)."""
    n = (len(ids) - 1) // block_size
    if n < 2:
        raise ValueError(f"{len(ids)} tokens hold fewer than 2 windows of block_size {block_size} + 1")
    return ids[: n * block_size + 1].unfold(0, block_size + 1, block_size)  # (n, block_size + 1)


def mean_and_errors(values: torch.Tensor) -> dict[str, float]:
    """Mean of per-character values (n_windows, T) and its standard errors: treating the characters as
    independent ("se_chars"), and across windows ("se_windows", which allows for correlation within one)."""
    v = values.double()
    return {
        "mean": float(v.mean()),
        "se_chars": float(v.std() / math.sqrt(v.numel())),
        "se_windows": float(v.mean(dim=1).std() / math.sqrt(v.shape[0])),
    }


def bigram_count_bits(train_ids: torch.Tensor, windows: torch.Tensor) -> float:
    """Bits per character of a Kneser-Ney bigram counted on the training ids, on the windows' targets:
    what the bigram rung could reach with counting instead of this training budget."""
    model = NGramModel(2).fit(train_ids.tolist())
    scored = torch.cat([windows[0, :1], windows[:, 1:].reshape(-1)]).tolist()  # the windows' text, in order
    return bits_per_character(float(-model.log_probs(scored)[1:].sum()), len(scored) - 1)


def run_one(
    cfg: LadderConfig, run: RunKey, train_ids: torch.Tensor, windows: torch.Tensor, vocab_size: int
) -> tuple[dict[str, Any], torch.Tensor]:
    """Train one (rung, seed, init, lr) and score it: (its JSON record, per-character losses (n, T) in nats)."""
    rung, seed, init, lr = run
    torch.manual_seed(seed)
    model = build_rung(rung, cfg.gpt_config(vocab_size), init)
    t0 = time.perf_counter()
    history = train(model, train_ids, None, cfg.train_config(seed, lr), progress=False)
    train_seconds = time.perf_counter() - t0
    losses = position_losses(model, windows)  # (n, T)
    scores = mean_and_errors(losses / LN2)  # bits per character
    tail = history.train_loss[-max(1, cfg.steps // 10) :]
    record = {
        "rung": rung,
        "seed": seed,
        "init": init,
        "lr": lr,
        "val_bits": round(scores["mean"], 5),
        "val_se_chars": round(scores["se_chars"], 5),
        "val_se_windows": round(scores["se_windows"], 5),
        "final_train_bits": round(sum(tail) / len(tail) / LN2, 5),
        "parameters": count_parameters(model),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - t0 - train_seconds, 1),
    }
    return record, losses


# ----------------------------------------------------------------------------- summaries


def ladder_summary(runs: list[dict[str, Any]], cfg: LadderConfig) -> list[dict[str, Any]]:
    """Per rung of `cfg` over its seeds and init: label, parameters, mean bits per character and its standard
    error, and the step from the rung before it ("gain", bits saved, paired by seed, with its standard error)."""
    out, below = [], None
    for rung in cfg.rungs:
        mine = [r for r in runs if r["rung"] == rung and r["init"] == cfg.init and r["lr"] == cfg.lr]
        bits = {r["seed"]: r["val_bits"] for r in mine}
        if not set(cfg.seeds) <= set(bits):
            raise ValueError(f"rung {rung!r} has runs for seeds {sorted(bits)}, not for all of {cfg.seeds}")
        mean, se = mean_se([bits[s] for s in cfg.seeds])
        gain, gain_se = mean_se([below[s] - bits[s] for s in cfg.seeds]) if below else (None, None)
        params = mine[0]["parameters"]
        out.append(
            {"rung": rung, "label": LABELS[rung], "parameters": params, "bits": mean, "se": se, "n": len(cfg.seeds)}
            | {"gain": gain, "gain_se": gain_se}
        )
        below = bits
    return out


def best_lrs(cfg: LadderConfig, sweep: list[dict[str, Any]]) -> dict[str, float]:
    """Each race rung's peak learning rate: the race_lr whose sweep run ends with the lowest training loss."""
    if len(cfg.race_lrs) == 1:
        return dict.fromkeys(RACE, cfg.race_lrs[0])
    return {
        rung: min((r for r in sweep if r["rung"] == rung), key=lambda r: r["final_train_bits"])["lr"] for rung in RACE
    }


def race_summary(
    cfg: LadderConfig,
    lrs: dict[str, float],
    race: dict[RunKey, tuple[dict[str, Any], torch.Tensor]],
    sweep: list[dict[str, Any]],
    vocab_size: int,
) -> dict[str, Any]:
    """The paired comparison of RACE over cfg.race_seeds, each rung at its learning rate in `lrs`, from the
    race's runs (records and per-character losses); difference = gpt2 - modern (> 0: modern is better)."""
    a, b = RACE
    seeds = list(cfg.race_seeds)
    record = {(k[0], k[1]): rec for k, (rec, _) in race.items()}
    losses = {(k[0], k[1]): char_losses for k, (_, char_losses) in race.items()}
    bits = {key: rec["val_bits"] for key, rec in record.items()}
    diffs = [bits[a, s] - bits[b, s] for s in seeds]
    mean, se = mean_se(diffs)
    if se > 0:
        t, p = (float(v) for v in ttest_rel([bits[a, s] for s in seeds], [bits[b, s] for s in seeds]))
    else:  # every seed gave the same difference: no spread to test against
        t, p = (math.copysign(math.inf, mean), 0.0) if mean else (0.0, 1.0)
    per_char = torch.stack([losses[a, s] - losses[b, s] for s in seeds]).double().mean(0) / LN2  # (n, T) bits
    test = mean_and_errors(per_char)
    noise = 2 * max(test["se_windows"], test["se_chars"])
    verdict = "tie" if p >= P_THRESHOLD or abs(mean) <= noise else (b if mean > 0 else a)
    gpt = cfg.gpt_config(vocab_size)
    llama = llama_config(gpt)
    n_a, n_b = gpt_parameters(gpt).total, llama_parameters(llama).total
    return {
        "pair": list(RACE),
        "init": RACE_INIT,
        "seeds": seeds,
        "lr": lrs,
        "lr_sweep": lr_sweep_summary(cfg, lrs, sweep),
        "tokens_per_run": cfg.steps * cfg.batch_size * cfg.block_size,
        "parameters": {a: n_a, b: n_b},
        "parameter_gap": round((n_b - n_a) / n_a, 5),
        "d_ff": {a: gpt.d_ff, b: llama.d_ff},
        "forward_flops_per_token": {a: forward_flops_per_token(gpt), b: llama_forward_flops_per_token(llama)},
        "per_seed": [
            {"seed": s, a: bits[a, s], b: bits[b, s], "difference": round(d, 5)} for s, d in zip(seeds, diffs)
        ],
        "mean_difference": mean,
        "se_difference": se,
        "t": t,
        "p_value": p,
        "test_se": {r: sum(record[r, s]["val_se_chars"] for s in seeds) / len(seeds) for r in RACE},  # bits
        "test_se_difference_chars": test["se_chars"],
        "test_se_difference_windows": test["se_windows"],
        "verdict": verdict,
        "rule": f"tie unless the paired t-test gives p < {P_THRESHOLD} and |mean difference| > 2 x the test "
        "split's standard error of the difference (the larger of per character and per window)",
    }


def lr_sweep_summary(cfg: LadderConfig, lrs: dict[str, float], sweep: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep's runs (training and validation bits per learning rate) and whether a pick is at the grid's edge."""
    if not sweep:
        return None
    edges = (min(cfg.race_lrs), max(cfg.race_lrs))
    return {
        "seed": sweep[0]["seed"],
        "lrs": list(cfg.race_lrs),
        "picked_by": "the lowest final training loss (mean of the last 10% of steps): no held-out number is used",
        "runs": [{k: r[k] for k in ("rung", "lr", "final_train_bits", "val_bits")} for r in sweep],
        "best_at_edge": {rung: lrs[rung] in edges for rung in RACE},
    }


# ----------------------------------------------------------------------------- the run


def run(cfg: LadderConfig, verbose: bool = False) -> dict[str, Any]:
    """Train the ladder, then the race's sweep and the race (a run shared by two of them is trained once);
    returns the JSON-ready result."""
    tok, train_ids, val_ids = shakespeare_chars(cfg.corpus_chars)
    windows = split_windows(val_ids[: cfg.eval_chars] if cfg.eval_chars else val_ids, cfg.block_size)
    done: dict[RunKey, tuple[dict[str, Any], torch.Tensor]] = {}

    def train_all(keys: list[RunKey]) -> list[dict[str, Any]]:
        for key in keys:
            if key not in done:
                done[key] = run_one(cfg, key, train_ids, windows, tok.vocab_size)
                if verbose:
                    r = done[key][0]
                    print(
                        f"{r['rung']:>9} seed {r['seed']} ({r['init']} init, lr {r['lr']:g}): {r['val_bits']:.4f} "
                        f"bits/char ({r['parameters']:,} parameters, {r['train_seconds']:.0f} s)",
                        flush=True,
                    )
        return [done[key][0] for key in keys]

    runs = train_all(cfg.ladder_runs())
    race = None
    if cfg.race_seeds:
        sweep = train_all(cfg.sweep_runs())
        lrs = best_lrs(cfg, sweep)
        train_all(cfg.race_runs(lrs))
        race = race_summary(cfg, lrs, {k: done[k] for k in cfg.race_runs(lrs)}, sweep, tok.vocab_size)
    return {
        "format": FORMAT,
        "version": 1,
        "config": dataclasses.asdict(cfg),
        "data": {
            "corpus": "shakespeare",
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "scored_characters": windows[:, 1:].numel(),
            "vocab_size": tok.vocab_size,
        },
        "reference": {"bigram_counts_bits": bigram_count_bits(train_ids, windows)},
        "runs": [record for record, _ in done.values()],
        "ladder": ladder_summary(runs, cfg),
        "race": race,
        "metadata": {"date_utc": utc_now(), **machine(), "device": "cpu"},
    }


def live(verbose: bool = False, **overrides: Any) -> dict[str, Any]:
    """The notebook's reduced run, about 20 s on one core: `LIVE` (every rung, d_model and block_size 32, one
    seed, 150 steps, 20,000 validation characters), any field overridden (e.g. ``rungs=("bigram", "gpt2")``)."""
    return run(dataclasses.replace(LIVE, **overrides), verbose=verbose)


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (default: the committed full run)."""
    return read_result(path, NAME, FORMAT)


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.experiments.ladder [--preset full|tiny] [--out PATH] [--threads N]."""
    return run_command("ladder", NAME, __doc__.split("\n\n")[0], PRESETS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
