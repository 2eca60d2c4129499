"""Tests of companion.experiments.notebook_times on tiny notebooks written to a temporary folder."""

from __future__ import annotations

import json

import nbformat
import pytest

from companion.experiments import notebook_times

pytestmark = pytest.mark.slow  # starts real kernels: a few seconds each

KERNEL_MB = 120  # the kernel itself holds this much
CHILD_MB = 250  # a child process of the kernel holds this much, for about two seconds


def write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = cells
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook_times")
    good = write_notebook(
        tmp / "01_tiny.ipynb",
        [
            nbformat.v4.new_markdown_cell("# Chapter 1: Tiny\n\nA notebook that uses memory and time."),
            nbformat.v4.new_code_cell(f"import time\nblock = b'x' * ({KERNEL_MB} * 2**20)\ntime.sleep(0.5)"),
            nbformat.v4.new_code_cell(
                "import subprocess, sys\n"
                f"code = 'import time; x = b\"y\" * ({CHILD_MB} * 2**20); time.sleep(2.0)'\n"
                "subprocess.run([sys.executable, '-c', code], check=True)"
            ),
            nbformat.v4.new_code_cell("from pathlib import Path\nassert Path('01_tiny.ipynb').exists()  # cwd"),
        ],
    )
    bad = write_notebook(
        tmp / "02_broken.ipynb",
        [nbformat.v4.new_markdown_cell("# Chapter 2: Broken"), nbformat.v4.new_code_cell("1 / 0")],
    )
    out, md = tmp / "times.json", tmp / "times.md"
    common = ["--out", str(out), "--markdown", str(md), "--timeout", "120"]
    status_bad = notebook_times.main([str(bad), *common])
    # A second run with --update adds the good notebook and keeps the broken one's row.
    status_good = notebook_times.main([str(good), *common, "--update", "--save-executed", str(tmp / "executed")])
    return (status_bad, status_good), json.loads(out.read_text()), md.read_text()


def test_save_executed_writes_the_notebook_with_its_outputs(measured, tmp_path_factory):
    executed = sorted(tmp_path_factory.getbasetemp().glob("notebook_times*/executed/01_tiny.ipynb"))
    assert executed, "--save-executed wrote nothing"
    nb = nbformat.read(executed[-1], as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("CompletedProcess" in str(o.get("data", {})) for o in outputs)


def test_exit_status_reports_the_failure_of_this_run(measured):
    (status_bad, status_good), _, _ = measured
    assert status_bad == 1  # the run with the broken notebook fails
    assert status_good == 0  # the --update run of the good one succeeds


def test_json_layout(measured):
    _, result, _ = measured
    assert result["format"] == "companion-notebook-times"
    assert result["machine"]["logical_cores"] >= 1 and result["machine"]["python"]
    # --update kept the row of the earlier run and sorted the rows by file name.
    assert [r["notebook"] for r in result["notebooks"]] == ["01_tiny.ipynb", "02_broken.ipynb"]
    tiny, broken = result["notebooks"]
    assert broken["started"] <= tiny["started"]  # the kept row is the earlier run's
    assert result["total_wall_s"] == pytest.approx(sum(r["wall_s"] for r in result["notebooks"]), abs=0.2)


def test_good_notebook_time_and_memory(measured):
    _, result, _ = measured
    row = result["notebooks"][0]
    assert row["status"] == "ok" and row["error"] is None
    assert row["title"] == "Chapter 1: Tiny" and row["code_cells"] == 3
    assert row["wall_s"] >= 2.5  # 0.5 s + 2.0 s of sleeping, plus the kernel's start
    # The kernel's own peak holds the block it allocated ...
    assert row["peak_rss_mb"] >= KERNEL_MB
    # ... and the tree's peak also holds the child's block, which the kernel's own peak does not.
    assert row["peak_tree_rss_mb"] >= KERNEL_MB + CHILD_MB
    assert row["peak_rss_mb"] < KERNEL_MB + CHILD_MB
    if row["load_average_before"] is not None:
        assert len(row["load_average_before"]) == 3


def test_broken_notebook_is_reported(measured):
    _, result, _ = measured
    row = result["notebooks"][1]
    assert row["status"] == "error"
    assert "ZeroDivisionError" in row["error"]


def test_markdown_table(measured):
    _, result, md = measured
    lines = md.splitlines()
    assert lines[0].startswith("| Notebook |") and lines[1].startswith("|---")
    assert "`01_tiny.ipynb` | Chapter 1: Tiny |" in lines[2] and lines[2].endswith("| ok |")
    assert "**failed**" in lines[3]
    peak = max(result["notebooks"][0]["peak_rss_mb"], result["notebooks"][0]["peak_tree_rss_mb"])
    assert f"{peak:,.0f} MB" in lines[2]


def test_missing_notebook_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        notebook_times.main([str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "x.json"), "--no-markdown"])


def test_timeout_is_reported_as_such(tmp_path):
    slow = write_notebook(
        tmp_path / "03_slow.ipynb",
        [nbformat.v4.new_markdown_cell("# Chapter 3: Slow"), nbformat.v4.new_code_cell("import time\ntime.sleep(60)")],
    )
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    status = notebook_times.main([str(slow), "--out", str(out), "--markdown", str(md), "--timeout", "3"])
    row = json.loads(out.read_text())["notebooks"][0]
    assert status == 1
    assert row["status"] == "timeout" and "3 s" in row["error"]
    assert row["wall_s"] < 50  # stopped at the timeout, not after the whole sleep
    assert "**timed out**" in md.read_text()
