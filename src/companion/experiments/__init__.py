"""Experiments too long to run inside a notebook; each writes a small JSON that the book reads.

Run one as a module, e.g. ``python -m companion.experiments.scaling_sweep --preset full``. By default a
run writes ``<name>_<preset>.json`` in the current folder; the committed results in
``companion/results/`` are replaced only when ``--out`` names them explicitly, so a quick
``--preset tiny`` never overwrites a full run and nothing writes into an installed package.

This module holds what the experiments share: where their results go, their common command line,
reading and writing their JSON, the record of the machine a run used, the trainer's CPU recipe, and
the Shakespeare character data several of them train on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy
from companion.training.trainer import TrainConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"


def default_out(name: str, preset: str) -> Path:
    """The JSON a run writes when no ``--out`` is given: ``./<name>_<preset>.json``."""
    return Path(f"{name}_{preset}.json")


def committed(name: str) -> Path:
    """The committed full-run result ``companion/results/<name>.json`` that the book reads."""
    return RESULTS / f"{name}.json"


def experiment_parser(module: str, name: str, description: str, presets: Iterable[str]) -> argparse.ArgumentParser:
    """The command line of ``python -m companion.experiments.<module>`` with the options every
    experiment has: ``--preset``, ``--out`` (default ``./<name>_<preset>.json``) and ``--threads``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m companion.experiments.{module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(presets), default="full")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON to write (default: ./{name}_<preset>.json; the committed result is replaced only when named here)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fixed CPU threads (default: companion.threads)",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[argparse.Namespace, str]:
    """Parse `argv` (default: the process's arguments) and apply ``--threads``: (args, the command line run)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    return args, " ".join([parser.prog, *argv])


def read_result(path: str | Path | None, name: str, fmt: str) -> dict[str, Any]:
    """Read an experiment's JSON (default: its committed ``companion/results/<name>.json``); a ValueError
    unless its "format" is `fmt`."""
    path = committed(name) if path is None else Path(path)
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if result.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} file (format {result.get('format')!r})")
    return result


def run_command(
    module: str,
    name: str,
    description: str,
    presets: Mapping[str, Any],
    run: Callable[..., dict[str, Any]],
    argv: list[str] | None = None,
) -> int:
    """The command line of an experiment with presets: ``--preset``, ``--out``, ``--threads`` and ``--quiet``;
    runs ``run(presets[preset], verbose=...)``, adds the command and the wall time, writes the JSON."""
    parser = experiment_parser(module, name, description, presets)
    parser.add_argument("--quiet", action="store_true")
    args, command = parse_args(parser, argv)
    out = args.out or default_out(name, args.preset)
    t0 = time.perf_counter()
    result = run(presets[args.preset], verbose=not args.quiet)
    result["command"] = command
    result["metadata"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, result)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def cpu_train_config(cfg: Any, seed: int) -> TrainConfig:
    """The trainer's recipe from an experiment config's steps, batch_size, block_size, lr, min_lr and
    warmup_steps: on the CPU, no evaluation during training, `seed` fixing the batch order."""
    return TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        block_size=cfg.block_size,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        warmup_steps=cfg.warmup_steps,
        eval_interval=0,
        seed=seed,
        device="cpu",
    )


def utc_now() -> str:
    """The time now in UTC, ISO 8601 to the second: when a run was made."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    """Where a run ran: PyTorch and Python versions, the platform, CPU cores and torch's thread count."""
    return {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write `result` as indented JSON, atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def shakespeare_chars(corpus_chars: int | None = None) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """Shakespeare as character ids: (CharTokenizer, the first 90% to train on, the last 10% held out).

    `corpus_chars`: use only the first this many characters (None: all of them).
    """
    text = load_corpus("shakespeare")
    text = text[:corpus_chars] if corpus_chars else text
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text))  # (N,)
    n_train = int(0.9 * len(ids))
    return tok, ids[:n_train], ids[n_train:]
