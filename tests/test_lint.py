"""Lint first: `ruff check` and `ruff format --check` over the package, tests, benchmarks and tools.

conftest.py orders the session so that these run before everything else.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "tools", "book/_ext", "conftest.py"]


def ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.fail("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")


def test_ruff_check():
    result = subprocess.run([*ruff(), "check", "--no-cache", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_format():
    result = subprocess.run(
        [*ruff(), "format", "--check", "--no-cache", *PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, "run `ruff format`:\n" + result.stdout[-4000:] + result.stderr[-2000:]
