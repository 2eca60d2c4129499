"""Experiments too long to run inside a notebook; each writes a small JSON that the book reads.

Run one as a module, e.g. ``python -m companion.experiments.scaling_sweep --preset full``. By default a
run writes ``<name>_<preset>.json`` in the current folder; the committed results in
``companion/results/`` are replaced only when ``--out`` names them explicitly, so a quick
``--preset tiny`` never overwrites a full run and nothing writes into an installed package.

This module holds what the experiments share: where their results go, their common command-line
options, the record of the machine a run used, writing the JSON, and the Shakespeare character
data two of them train on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from companion.text.corpora import load_corpus
from companion.text.tokenization import CharTokenizer
from companion.threads import policy as thread_policy

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
