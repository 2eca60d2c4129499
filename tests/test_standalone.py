"""Every notebook runs outside the repository, as in Colab: the package installed non-editable from a
wheel-like install, each notebook copied alone into an empty folder, no file of the repository in reach.

Slow (it runs every notebook a second time); CI runs it. The installed copy is also checked to be
unchanged afterwards: no notebook writes into the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
pytestmark = pytest.mark.slow


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (bytecode caches excluded)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Install the package (no dependencies, not editable) from a copy of its sources into a fresh folder."""
    tmp = tmp_path_factory.mktemp("standalone")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return site, tree_digest(site / "companion")


def test_every_notebook_runs_alone_with_the_installed_package(installed, tmp_path):
    site, digest = installed
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import companion; print(companion.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), f"companion imported from {where}, not from the installed copy"
    copies = []
    for nb in NOTEBOOKS:
        folder = tmp_path / nb.stem
        folder.mkdir()
        copies.append(shutil.copy(nb, folder / nb.name))
    out = tmp_path / "times.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "companion.experiments.notebook_times",
            *map(str, copies),
            "--out",
            str(out),
            "--no-markdown",
            "--timeout",
            "900",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.is_file(), f"the notebook runner failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    rows = json.loads(out.read_text())["notebooks"]
    failed = [f"{r['notebook']}: {r['status']}: {r['error']}" for r in rows if r["status"] != "ok"]
    assert not failed, "notebooks that fail outside the repository:\n" + "\n".join(failed)
    assert len(rows) == len(NOTEBOOKS)
    total = sum(r["wall_s"] for r in rows)
    print(f"\nstandalone run of {len(rows)} notebooks: {total:.0f} s")
    assert tree_digest(site / "companion") == digest, "a notebook wrote into the installed package"
