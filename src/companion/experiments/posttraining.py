"""Chapter 10's experiment: from a pre-trained model to an assistant, every stage measured over several seeds.

Per seed, on the modern decoder (`companion.nn.Llama`) with the chat tokenizer (`ChatTokenizer.from_alphabet`):

1. **base**: pre-training on some Shakespeare plus (mostly) synthetic web pages that state the tasks' facts as
   statements in many phrasings, the held-out wordings' words among them (`posttraining_data`); no test prompt in
   the corpus, no chat marker in the stream (both asserted). The model is small (4 layers of width 128) so that
   pre-training gets enough steps for it to learn to copy from its context, which every skill needs;
2. **sft**: full fine-tuning on the chat-rendered training tasks, loss on the answer and <|end|>; the ablations
   **sft_nomask** (loss on every token) and **sft_lora** (LoRA r=8 on the attention and MLP projections, with the
   trainable parameters and AdamW's state bytes of both);
3. **dpo**: from the SFT model against its frozen copy, one run per beta; the beta kept for the summary is the one
   with the best accuracy on the *validation* tasks (seen wordings, never trained on; a tie goes to the larger
   beta), never chosen on a test;
4. **rl**: GRPO from the SFT model (not from DPO: each method is then measured against the same start, and RL's
   gain does not depend on DPO's beta), reward = the exact checker, one run per learning rate and the one kept
   the best on the validation tasks (a tie goes to the smaller rate); then the reward-hacking demonstration:
   **rl_hack** with a flawed reward (character recall: the share of the answer's characters found anywhere in the
   reply, which extra characters never lower) and **rl_fix**, the same run with the exact checker (same settings,
   prompts and sampling seeds), each with its curves of reward, true accuracy and reply length;
5. evaluation after every stage: greedy replies to a seen-wording test and a held-out-wording test, accuracy
   (overall, per family) with its binomial standard error; test-time compute on the final (rl) model: majority
   voting and pass@k over k sampled replies on the held-out test.

`posttraining_pipeline.SeedRun` runs one seed's stages. The summary (`posttraining_report.summarize`) gives mean +-
standard error over seeds per stage and the paired difference of successive stages with a paired t-test (and each
seed's record the same differences on its test items, with their item-level standard error). Nothing is selected
on a test and nothing stops early.

    python -m companion.experiments.posttraining --preset full --threads 1 --processes 3 \\
        --out src/companion/results/posttraining.json
    python -m companion.experiments.posttraining --preset tiny          # writes ./posttraining_tiny.json

Three one-thread processes for three seeds keep two cores busy to the end: with two, the third seed would run alone
after the first two, and one core would idle for the second half of the run.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import torch

from companion.experiments import default_out, machine, read_result, utc_now, write_json
from companion.experiments.posttraining_pipeline import SeedRun
from companion.experiments.posttraining_report import stage_table, summarize
from companion.posttraining.tasks import HELD_OUT_TEMPLATES, MAX_PROMPT_CHARS
from companion.threads import policy as thread_policy
from companion.utils import cpu_info

NAME = "posttraining"
FORMAT = "companion-posttraining"
STAGES = ("base", "sft", "sft_nomask", "sft_lora", "dpo", "rl", "rl_hack", "rl_fix")
STAGE_LABELS = {
    "base": "base model (pre-trained only)",
    "sft": "SFT (answer-only loss)",
    "sft_nomask": "SFT, loss on every token",
    "sft_lora": "SFT with LoRA (attention and MLP projections)",
    "dpo": "DPO from SFT (beta chosen on validation)",
    "rl": "GRPO from SFT, exact checker",
    "rl_hack": "GRPO from SFT, flawed reward (character recall)",
    "rl_fix": "GRPO from SFT, exact checker, the flawed run's settings",
}
COMPARISONS = (  # (from, to): the summary reports to - from
    ("base", "sft"),
    ("sft", "dpo"),
    ("sft", "rl"),
    ("dpo", "rl"),
    ("sft", "sft_nomask"),
    ("sft", "sft_lora"),
    ("rl_fix", "rl_hack"),
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc_gate", "fc_in", "fc_out")

FULL: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "model": {"n_layers": 4, "d_model": 128, "n_heads": 4, "n_kv_heads": 2, "block_size": 64},
    "data": {"n_train": 6000, "n_val": 300, "n_test": 400, "shakespeare_chars": 100_000, "web_chars": 900_000},
    "pretrain": {"steps": 2000, "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 200},
    "sft": {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup_steps": 60, "weight_decay": 0.01},
    "lora": {"r": 8, "alpha": 16, "lr": 4e-3, "targets": list(LORA_TARGETS)},
    "dpo": {"betas": [0.05, 0.1, 0.5], "n_pairs": 1000, "steps": 70, "batch_size": 32, "lr": 5e-5, "warmup_steps": 7},
    "grpo": {
        "steps": 70,
        "prompts_per_step": 16,
        "group_size": 8,
        "lrs": [3e-5, 1e-4],  # one run each; the summary keeps the best on validation
        "beta": 0.04,
        "clip_eps": 0.2,
        "temperature": 1.0,
        "max_new_tokens": 16,
    },
    "hack": {"steps": 42, "lr": 3e-4},  # the flawed-reward run and its fix: grpo's settings but these
    "eval": {"max_new_tokens": 16, "examples": 3, "continuation_tokens": 40},
    "test_time": {"ks": [1, 2, 4, 8, 16], "temperature": 1.0},
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with the sections of `overrides` updated key by key (unknown keys refused)."""
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        if section not in out:
            raise ValueError(f"unknown preset section {section!r}; sections: {', '.join(out)}")
        if isinstance(values, dict):
            unknown = set(values) - set(out[section])
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)} in preset section {section!r}")
            out[section].update(copy.deepcopy(values))
        else:
            out[section] = copy.deepcopy(values)
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "full": FULL,
    "notebook": merged(
        FULL,
        {
            "seeds": [0],
            "model": {"n_layers": 2},
            "data": {"n_train": 3000, "n_val": 200, "n_test": 300, "shakespeare_chars": 30_000, "web_chars": 300_000},
            "pretrain": {"steps": 450, "warmup_steps": 45},
            "sft": {"steps": 120, "batch_size": 48, "warmup_steps": 12},
            "dpo": {"n_pairs": 300, "steps": 20, "warmup_steps": 2},
            "grpo": {"steps": 15, "prompts_per_step": 8, "lrs": [1e-4]},
            "hack": {"steps": 15},
            "test_time": {"ks": [1, 2, 4, 8]},
        },
    ),
    "tiny": merged(
        FULL,
        {
            "seeds": [0, 1],
            "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "block_size": 72},
            "data": {"n_train": 200, "n_val": 30, "n_test": 40, "shakespeare_chars": 20_000, "web_chars": 20_000},
            "pretrain": {"steps": 15, "batch_size": 8, "warmup_steps": 2},
            "sft": {"steps": 10, "batch_size": 16, "warmup_steps": 2},
            "dpo": {"n_pairs": 24, "steps": 4, "batch_size": 8, "warmup_steps": 1},
            "grpo": {"steps": 3, "prompts_per_step": 3, "group_size": 4, "max_new_tokens": 12, "lrs": [1e-4, 3e-4]},
            "hack": {"steps": 2},
            "eval": {"max_new_tokens": 8, "continuation_tokens": 12},
            "test_time": {"ks": [1, 2, 4]},
        },
    ),
}


def check_preset(preset: dict[str, Any]) -> None:
    """Raise ValueError unless `preset` has FULL's sections and settings, and its lengths fit the model."""
    missing = {s: sorted(set(v) - set(preset.get(s, {}))) for s, v in FULL.items() if isinstance(v, dict)}
    missing = {s: keys for s, keys in missing.items() if keys}
    if missing or set(preset) != set(FULL):
        raise ValueError(f"the preset lacks settings {missing} or has other sections than {list(FULL)}")
    seeds = preset["seeds"]
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, at least one, got {seeds}")
    longest = MAX_PROMPT_CHARS + 3 + max(preset["grpo"]["max_new_tokens"], preset["eval"]["max_new_tokens"])
    if longest > preset["model"]["block_size"]:
        raise ValueError(
            f"a prompt and its reply take up to {longest} tokens, more than block_size {preset['model']['block_size']}"
        )
    if not preset["test_time"]["ks"] or min(preset["test_time"]["ks"]) < 1:
        raise ValueError(f"test_time ks must be >= 1, at least one, got {preset['test_time']['ks']}")
    if not set(preset["hack"]) <= set(preset["grpo"]) | {"lr"}:
        raise ValueError(f"hack settings must be grpo settings or lr, got {sorted(preset['hack'])}")
    if not preset["grpo"]["lrs"] or min(preset["grpo"]["lrs"]) <= 0:
        raise ValueError(f"grpo lrs: give at least one learning rate > 0, got {preset['grpo']['lrs']}")
    if not preset["dpo"]["betas"]:
        raise ValueError("dpo betas: give at least one")


def _log(verbose: bool) -> Callable[[str], None]:
    return (lambda s: print(s, flush=True)) if verbose else (lambda s: None)


def seed_threads(n_seeds: int, processes: int, threads: int) -> list[int]:
    """Threads for each seed's process: `threads` each, except that the seeds of a last, partial round share the
    round's idle cores (3 seeds on 2 processes of 1 thread: 1, 1, then 2 for the seed that runs alone)."""
    if min(n_seeds, processes, threads) < 1:
        raise ValueError(f"need n_seeds, processes and threads >= 1, got {n_seeds}, {processes}, {threads}")
    full_rounds, rest = divmod(n_seeds, processes)
    last = [threads * processes // rest] * rest if rest else []
    return [threads] * (full_rounds * processes) + last


def exit_with_parent(parent: int, poll_seconds: float = 2.0) -> threading.Thread:
    """Start a daemon thread that ends this process once `parent` is no longer its parent.

    A killed run then leaves no worker behind: a pool's worker would otherwise finish its seed, for many minutes,
    with nobody to read the result.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    watcher = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    watcher.start()
    return watcher


def _seed_in_process(preset: dict[str, Any], seed: int, threads: int, verbose: bool, parent: int) -> dict[str, Any]:
    """One seed's run in a worker process of its own, on `threads` threads; it ends if `parent` dies."""
    exit_with_parent(parent)
    thread_policy.fix(threads)
    return SeedRun(preset, seed, _log(verbose)).run(COMPARISONS)


def run(
    preset: dict[str, Any], seeds: list[int] | None = None, verbose: bool = False, processes: int = 1
) -> dict[str, Any]:
    """Run `preset` (seeds overridden by `seeds`) for every seed; the JSON-ready result with its summary.

    With processes > 1 the seeds run side by side, each in a fresh process (so a seed's result never depends
    on what ran before it) on this process's thread count: on a small model two one-thread processes use two
    cores better than one two-thread process.
    """
    preset = merged(preset, {"seeds": list(seeds)}) if seeds is not None else copy.deepcopy(preset)
    check_preset(preset)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    wall, cpu = time.perf_counter(), time.process_time()
    children_cpu = _children_cpu()
    threads = torch.get_num_threads()
    if processes == 1:
        runs = [SeedRun(preset, seed, _log(verbose)).run(COMPARISONS) for seed in preset["seeds"]]
    else:
        context = multiprocessing.get_context("spawn")  # fork after torch's threads started is unsafe
        with ProcessPoolExecutor(processes, mp_context=context, max_tasks_per_child=1) as pool:
            counts = seed_threads(len(preset["seeds"]), processes, threads)
            jobs = [
                pool.submit(_seed_in_process, preset, s, n, verbose, os.getpid())
                for s, n in zip(preset["seeds"], counts)
            ]
            runs = [job.result() for job in jobs]
    return {
        "format": FORMAT,
        "version": 1,
        "preset": preset,
        "seeds": preset["seeds"],
        "command": None,  # the command line, when run from it
        "held_out_templates": list(HELD_OUT_TEMPLATES),
        "stage_labels": STAGE_LABELS,
        "comparisons": [list(c) for c in COMPARISONS],
        "runs": runs,
        "summary": summarize(runs, STAGES, COMPARISONS),
        "metadata": {
            "date_utc": utc_now(),
            **machine(),
            "cpu": cpu_info(),
            "threads": threads,
            "processes": processes,
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu + _children_cpu() - children_cpu, 1),
        },
    }


def _children_cpu() -> float:
    """CPU seconds used so far by this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def live(verbose: bool = False) -> dict[str, Any]:
    """The notebook's run: the `notebook` preset (one seed, fewer steps; about two minutes on one core)."""
    return run(PRESETS["notebook"], verbose=verbose)


def load_result(path: str | Path | None = None) -> dict[str, Any]:
    """Read a JSON written by this script (default: the committed full run)."""
    return read_result(path, NAME, FORMAT)


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see --help)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: --preset, --seeds, --out, --force, --threads, --quiet."""
    parser = _Parser(
        prog="python -m companion.experiments.posttraining",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON to write (default: ./{NAME}_<preset>.json)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--threads", type=int, default=None, help="fixed CPU threads (default: companion.threads)")
    parser.add_argument("--processes", type=int, default=1, help="seeds run side by side, each in its own process")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: run a preset and write its JSON (an existing file is replaced only with --force)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    out = args.out or default_out(NAME, args.preset)
    if out.is_dir():
        parser.error(f"{out} is a folder, not a JSON file")
    if out.exists() and not args.force:
        parser.error(f"{out} exists: pass --force to replace it")
    if args.threads:
        thread_policy.fix(args.threads)
    result = run(PRESETS[args.preset], args.seeds, verbose=not args.quiet, processes=args.processes)
    result["command"] = " ".join([parser.prog, *argv])
    write_json(out, result)
    if not args.quiet:
        print(stage_table(result))
        print(f"wrote {out} ({result['metadata']['wall_seconds']:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
