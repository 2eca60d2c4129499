"""Shared pytest set-up: execute each notebook once for both nbval and the book build.

The session runs in stages (`pytest_collection_modifyitems`): lint, then the unit tests, then
nbval over every notebook, then the book build and browser checks, then the standalone runs of
the notebooks outside the repository. When every cell of a notebook passes, the notebook with the outputs nbval
received is stored in the Jupyter cache of the book that `tests/test_book.py` builds; the
book build then finds an up-to-date cached execution (same code, same kernel) instead of
running the notebook a second time. Run alone, `tests/test_book.py` executes the notebooks
itself, so the book test never depends on this shortcut for correctness.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The package lowers PyTorch's thread count while other processes keep the CPUs busy
# (companion.threads); reductions then add in another order and the last digits change. The suite
# pins the count to the CPUs available, so that its results never depend on the machine's load
# (notebook kernels inherit it); tests/test_threads.py tests the policy itself.
if "COMPANION_THREADS" not in os.environ:
    os.environ["COMPANION_THREADS"] = str(len(os.sched_getaffinity(0)))

# tests/data holds inputs, not tests: nbval must not execute the nbgrader fixture assignments there
# (tests/test_course.py releases and grades them).
collect_ignore_glob = ["tests/data/*"]


def book_output_dir(config: pytest.Config) -> Path:
    """The temporary folder this test session builds the book into."""
    if not hasattr(config, "_book_output_dir"):
        config._book_output_dir = Path(tempfile.mkdtemp(prefix="llm-principles-book-"))
    return config._book_output_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    path = getattr(config, "_book_output_dir", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/browser.py) for the browser checks: required in CI, skipped elsewhere if missing."""
    from browser import Chromium, find_chromium  # tests/ is on sys.path once a test module imported it

    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (.ci/run installs the Debian package 'chromium')")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    with Chromium(binary) as chromium:
        yield chromium


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after a test whose code under test sets it."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _session_stage(item: pytest.Item) -> int:
    """Order of a test in the session: lint, unit tests, notebooks (nbval), book build, standalone runs."""
    path = Path(str(item.fspath)).name
    if path == "test_lint.py":
        return 0
    if type(item).__name__ == "IPyNbCell":
        return 2
    if path == "test_book.py":
        return 3
    if path == "test_standalone.py":
        return 4
    return 1


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail fast on cheap checks: lint and unit tests before the notebooks and the book (a stable sort)."""
    items.sort(key=_session_stage)


def _is_nbval_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "cell")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    if not _is_nbval_cell(item) or call.when != "call":
        return
    report = outcome.get_result()
    notebook = item.parent
    if not hasattr(notebook, "_executed"):
        notebook._executed = copy.deepcopy(notebook.nb)
        notebook._all_passed = True
    notebook._all_passed &= report.passed
    index = notebook.nb.cells.index(item.cell)
    if item.cell.cell_type == "code":
        notebook._executed.cells[index].outputs = list(item.test_outputs or [])


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if not _is_nbval_cell(item) or (nextitem is not None and nextitem.parent is item.parent):
        return
    notebook = item.parent
    if not getattr(notebook, "_all_passed", False):
        return
    n_cells = sum(1 for c in notebook.nb.cells if c.cell_type == "code")
    n_run = sum(1 for c in notebook._executed.cells if c.cell_type == "code")
    if n_run != n_cells:
        return
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(book_output_dir(item.config) / "_build" / ".jupyter_cache"))
    count = 0
    for cell in notebook._executed.cells:
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            for out in cell.outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = count
    cache.cache_notebook_bundle(
        CacheBundleIn(notebook._executed, uri=str(notebook.path)), check_validity=False, overwrite=True
    )
