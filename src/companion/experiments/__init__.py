"""Experiments too long to run inside a notebook; each writes a small JSON that the book reads.

Run one as a module, e.g. ``python -m companion.experiments.scaling_sweep --preset full``. By default a
run writes ``<name>_<preset>.json`` in the current folder; the committed results in
``companion/results/`` are replaced only when ``--out`` names them explicitly, so a quick
``--preset tiny`` never overwrites a full run and nothing writes into an installed package.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def default_out(name: str, preset: str) -> Path:
    """The JSON a run writes when no ``--out`` is given: ``./<name>_<preset>.json``."""
    return Path(f"{name}_{preset}.json")


def committed(name: str) -> Path:
    """The committed full-run result ``companion/results/<name>.json`` that the book reads."""
    return RESULTS / f"{name}.json"
