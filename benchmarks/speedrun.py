"""A CPU speedrun: the least training time to a validation loss, under rules that make a record believable.

    python benchmarks/speedrun.py run 1.89                       # the 1.89 recipe, 3 seeds, companion's Shakespeare
    python benchmarks/speedrun.py run 1.70 --text tinyshakespeare.txt --out benchmarks/records
    python benchmarks/speedrun.py table --markdown book/_generated/speedrun.md
    python benchmarks/speedrun.py run 1.89 --preset tiny --out /tmp/records      # seconds: what the test runs

The rules are modded-nanogpt's (github.com/KellerJordan/modded-nanogpt), adapted to a 2-core CPU:

* Character-level text: the book's Shakespeare (`companion.text.corpora`, eight plays) by default, or
  any plain-text file with `--text` (the reference trainer's tiny-shakespeare, for instance). The
  first 90% of the characters are the training split, the last 10% the validation split.
* The loss that counts is the mean next-character loss (nats) over the WHOLE validation split, cut
  into non-overlapping windows of the recipe's context (`companion.training.evaluation.evaluate_full`):
  no sampling noise from the evaluation itself.
* A recipe is fixed before it runs: its step count, schedule and every setting. Nothing stops early
  on the validation loss, so the validation split is never used to choose when to stop.
* The clock starts before the text is tokenised and the model built, and stops after the last
  optimizer step: compilation, if a recipe asks for it, counts; the final evaluation does not.
  Wall seconds and CPU seconds (all threads) are both recorded.
* A record needs at least 3 seeds, and is accepted only when a one-sided t-test rejects "the mean
  final loss is above the target" at p < 0.01 (with 3 seeds the mean must sit about 4 standard
  deviations of the seeds below the target). A recipe that misses is written down too, marked
  not accepted: negative results are results.

Each `run` writes one JSON file per (text, target) into the records folder (recipe, seeds, losses,
wall and CPU seconds, machine, load average, command), replacing an earlier record only when the
new one is accepted and faster, or when the old one was not accepted. `table` prints the records
(and writes them as Markdown for the book's speedrun page). Targets and the recipes that meet them
are in RECIPES below; the book's speedrun page explains them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy import stats

from companion.nn import GPT, GPTConfig, Llama, LlamaConfig
from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy
from companion.training.evaluation import evaluate_full
from companion.training.trainer import TrainConfig, train
from companion.utils import cpu_info, describe_cpu

FORMAT = "companion-speedrun-record"
VERSION = 1
ALPHA = 0.01  # a record's one-sided test must reject "mean loss > target" at this level
MIN_SEEDS = 3
RECORDS = Path(__file__).with_name("records")

# One recipe per target: what every recipe shares, and what each changes. Everything a run does is here;
# `--set key=value` changes one entry.
SHARED = dict(
    arch="llama", n_heads=4, d_model=128, optimizer="muon", muon_lr=0.02, lr=5e-3, min_lr=5e-4,
    dtype="bf16", fused=True, compile=False,
)  # fmt: skip
RECIPES: dict[str, dict] = {
    "1.89": {**SHARED, "n_layers": 3, "block_size": 64, "batch_size": 32, "warmup": 20, "steps": 230},
    "1.70": {**SHARED, "n_layers": 4, "block_size": 64, "batch_size": 32, "warmup": 40, "steps": 400},
    "1.55": {**SHARED, "n_layers": 4, "block_size": 128, "batch_size": 16, "warmup": 50, "steps": 1200},
}
GOAL_SECONDS = {"1.89": 15, "1.70": 120, "1.55": 900}  # the times to beat on 2 cores (median over the seeds)
TINY = dict(n_layers=1, n_heads=2, d_model=32, block_size=16, steps=4, warmup=2, batch_size=4, compile=False)


def load_text(path: str | None) -> tuple[str, str]:
    """The text to train on and its name (the file's name, or 'companion-shakespeare')."""
    if path is None:
        return load_corpus("shakespeare"), "companion-shakespeare"
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--text {path}: no such file")
    return p.read_text(encoding="utf-8"), p.stem


def build_model(recipe: dict, vocab_size: int) -> torch.nn.Module:
    """The recipe's model: the GPT-2-style block ('gpt') or the modern decoder ('llama')."""
    shape = dict(
        vocab_size=vocab_size,
        block_size=recipe["block_size"],
        n_layers=recipe["n_layers"],
        n_heads=recipe["n_heads"],
        d_model=recipe["d_model"],
    )
    if recipe["arch"] == "gpt":
        return GPT(GPTConfig(**shape, activation=recipe.get("activation", "gelu"), dropout=0.0))  # GPT-2's block
    if recipe["arch"] == "llama":
        return Llama(LlamaConfig(**shape, n_kv_heads=recipe.get("n_kv_heads", recipe["n_heads"])))
    raise ValueError(f"unknown arch {recipe['arch']!r}: 'gpt' or 'llama'")


def train_once(recipe: dict, text: str, seed: int) -> dict:
    """Train the recipe once from scratch; the final loss on the whole validation split and the times."""
    t0, c0 = time.perf_counter(), time.process_time()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    n_train = int(0.9 * len(ids))
    train_ids, val_ids = ids[:n_train], ids[n_train:]
    torch.manual_seed(seed)
    model = build_model(recipe, tok.vocab_size)
    cfg = TrainConfig(
        steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        block_size=recipe["block_size"],
        lr=recipe["lr"],
        min_lr=recipe["min_lr"],
        warmup_steps=recipe["warmup"],
        optimizer=recipe["optimizer"],
        muon_lr=recipe.get("muon_lr", 0.02),
        eval_interval=0,
        eval_steps=1,
        device="cpu",
        dtype=recipe["dtype"],
        fused=recipe.get("fused", True),
        compile=recipe.get("compile", False),
        seed=seed,
    )
    history = train(model, train_ids, None, cfg, progress=False)
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    loss = evaluate_full(model, val_ids, recipe["block_size"], cfg=cfg)
    return {
        "seed": seed,
        "val_loss": loss,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "eval_wall_s": time.perf_counter() - t0 - train_wall,
        "final_train_loss": history.train_loss[-1],
        "tokens": recipe["steps"] * recipe["batch_size"] * recipe["block_size"],
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_val_chars": len(val_ids),
    }


def one_sided_p(losses: list[float], target: float) -> float:
    """p-value of the t-test of H0: mean loss >= target against H1: mean loss < target."""
    if len(losses) < 2:
        raise ValueError(f"a t-test needs at least 2 seeds, got {len(losses)}")
    sd = statistics.stdev(losses)
    if sd == 0:
        return 0.0 if statistics.mean(losses) < target else 1.0
    t = (statistics.mean(losses) - target) / (sd / math.sqrt(len(losses)))
    return float(stats.t.cdf(t, df=len(losses) - 1))


def summarise(target: float, runs: list[dict]) -> dict:
    """Mean and spread of the seeds' losses and times, the test's p-value and the verdict."""
    losses = [r["val_loss"] for r in runs]
    p = one_sided_p(losses, target)
    return {
        "mean_val_loss": statistics.mean(losses),
        "sd_val_loss": statistics.stdev(losses),
        "p_value": p,
        "accepted": len(runs) >= MIN_SEEDS and p < ALPHA,
        "median_train_wall_s": statistics.median(r["train_wall_s"] for r in runs),
        "max_train_wall_s": max(r["train_wall_s"] for r in runs),
        "median_train_cpu_s": statistics.median(r["train_cpu_s"] for r in runs),
    }


def record_path(out: Path, text_name: str, target: str) -> Path:
    """Where the record of one (text, target) lives."""
    return out / f"{text_name}-{target}.json"


def keep_better(path: Path, record: dict) -> bool:
    """Write `record` unless the file holds an accepted record that is at least as fast; True if written."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old["accepted"] and (not record["accepted"] or old["median_train_wall_s"] <= record["median_train_wall_s"]):
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return True


def apply_settings(recipe: dict, items: list[str]) -> dict:
    """A copy of `recipe` with each 'key=value' of `items` applied, the value read as the setting's type."""
    recipe = dict(recipe)
    for item in items:
        key, _, value = item.partition("=")
        if key not in recipe:
            raise ValueError(f"--set {item}: no recipe setting {key!r} (settings: {', '.join(recipe)})")
        kind = type(recipe[key])
        if kind is bool:
            if value not in ("True", "False"):
                raise ValueError(f"--set {item}: {key} is True or False")
            recipe[key] = value == "True"
            continue
        try:
            recipe[key] = kind(value)
        except ValueError:
            raise ValueError(f"--set {item}: {key} must be of type {kind.__name__}") from None
    return recipe


def run(args: argparse.Namespace) -> dict:
    """Run a recipe over the seeds and write its record."""
    if args.target not in RECIPES:
        raise ValueError(f"no recipe for target {args.target}: one of {', '.join(RECIPES)}")
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {args.seeds}: at least 2 distinct seeds (a record needs {MIN_SEEDS})")
    recipe = dict(RECIPES[args.target])
    if args.preset == "tiny":
        recipe.update(TINY)
    recipe = apply_settings(recipe, args.set or [])
    if args.threads:
        thread_policy.fix(args.threads)
    text, text_name = load_text(args.text)
    target = float(args.target)
    load_before = os.getloadavg()
    runs = []
    for seed in args.seeds:
        r = train_once(recipe, text, seed)
        runs.append(r)
        print(
            f"seed {seed}: validation loss {r['val_loss']:.4f} after {r['train_wall_s']:.1f} s "
            f"({r['train_cpu_s']:.1f} CPU-s)",
            flush=True,
        )
    record = {
        "format": FORMAT,
        "version": VERSION,
        "target": target,
        "text": text_name,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "recipe": recipe,
        "preset": args.preset,
        "runs": runs,
        **summarise(target, runs),
        "rules": {"alpha": ALPHA, "min_seeds": MIN_SEEDS, "split": "last 10% of the characters, all of it"},
        "machine": {**cpu_info(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python benchmarks/speedrun.py", *args.argv]),
    }
    verdict = "ACCEPTED" if record["accepted"] else "not accepted"
    print(
        f"target {target}: mean {record['mean_val_loss']:.4f} ± {record['sd_val_loss']:.4f} (sd of "
        f"{len(runs)} seeds), one-sided p = {format_p(record['p_value'])}: {verdict}; median "
        f"{record['median_train_wall_s']:.1f} s wall on {describe_cpu()}"
    )
    written = keep_better(record_path(Path(args.out), text_name, args.target), record)
    print("record written" if written else "an accepted record at least as fast exists: not replaced")
    return record


def load_records(folder: Path) -> list[dict]:
    """Every record in a folder, sorted by text, then target from the highest."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    for r in records:
        if r.get("format") != FORMAT:
            raise ValueError(f"a file in {folder} is not a speedrun record (format {r.get('format')!r})")
    return sorted(records, key=lambda r: (r["text"], -r["target"]))


def describe_recipe(recipe: dict) -> str:
    """One short line: the model, the optimizer and the budget."""
    block = {"gpt": "GPT-2 block", "llama": "modern block"}[recipe["arch"]]
    model = f"{block}, {recipe['n_layers']} layers × {recipe['d_model']}, context {recipe['block_size']}"
    optim = "Muon + AdamW" if recipe["optimizer"] == "muon" else "AdamW"
    extra = ", compiled" if recipe.get("compile") else ""
    return f"{model}; {optim}; {recipe['steps']} steps × {recipe['batch_size']}; {recipe['dtype']}{extra}"


def format_p(p: float) -> str:
    """A p-value to three decimals ('0.010' is not below 0.01), or '< 0.001'."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def goal_verdict(record: dict) -> str:
    """'met' when the record is accepted and its median time is within its target's goal, else why not."""
    goal = GOAL_SECONDS.get(f"{record['target']:.2f}")
    if goal is None:
        return "no goal"
    if not record["accepted"]:
        return "no record"
    return f"{goal} s: {'met' if record['median_train_wall_s'] <= goal else '**not met**'}"


def table(records: list[dict]) -> str:
    """The records as Markdown: the results, then the recipe and the conditions of each run."""
    lines = [
        "| text | target | loss, mean ± sd (seeds) | p | accepted | median time | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['text']} | {r['target']:.2f} | {r['mean_val_loss']:.3f} ± {r['sd_val_loss']:.3f} ({len(r['runs'])}) "
            f"| {format_p(r['p_value'])} | {'yes' if r['accepted'] else '**no**'} | "
            f"{r['median_train_wall_s']:.0f} s | {goal_verdict(r)} |"
        )
    lines += ["", "| text | target | recipe | CPU-s (median) | threads, load |", "|---|---|---|---|---|"]
    for r in records:
        load = max(r["load_average_before"][0], r["load_average_after"][0])
        lines.append(
            f"| {r['text']} | {r['target']:.2f} | {describe_recipe(r['recipe'])} | {r['median_train_cpu_s']:.0f} "
            f"| {r['machine']['threads']}, {load:.1f} |"
        )
    machines = sorted({describe_cpu(r["machine"]) for r in records})
    lines += [
        "",
        f"Measured on: {'; '.join(machines)}. *Threads, load*: the PyTorch threads at the end of the run and the "
        "higher of the one-minute load averages before and after it (above the number of cores, other "
        "programs shared the CPU and the times are slower than the machine can do).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | str:
    """Command line: `run TARGET` or `table`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a target's recipe over several seeds and write its record")
    r.add_argument("target", help=f"one of {', '.join(RECIPES)}")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--text", metavar="FILE", help="a plain-text file instead of companion's Shakespeare")
    r.add_argument("--preset", choices=("full", "tiny"), default="full", help="tiny: a few steps of a tiny model")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="change one recipe setting")
    r.add_argument("--threads", type=int, default=None, help="fixed CPU threads (default: companion.threads)")
    r.add_argument("--out", default=str(RECORDS), help="the records folder")
    t = sub.add_parser("table", help="print the records as a table")
    t.add_argument("--records", default=str(RECORDS))
    t.add_argument("--markdown", metavar="OUT", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        if args.command == "run":
            return run(args)
        text = table(load_records(Path(args.records)))
    except ValueError as e:
        p.exit(2, f"speedrun.py: error: {e}\n")
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
