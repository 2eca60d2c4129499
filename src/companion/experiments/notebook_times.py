"""Run every chapter notebook in a fresh kernel and measure its wall time and peak memory.

    python -m companion.experiments.notebook_times                       # all of notebooks/
    python -m companion.experiments.notebook_times notebooks/03_attention.ipynb --out /tmp/t.json
    python -m companion.experiments.notebook_times --update notebooks/05_*.ipynb   # re-run one, keep the rest

Each notebook is executed top to bottom with `nbclient` in a new `python3` kernel whose working
directory is the notebook's folder (as in JupyterLab), exactly once, with nothing cached.

What is measured, and how:

* **wall time**: seconds from asking for the kernel to the kernel's shutdown after the last
  cell, i.e. what a student waits for with *Restart Kernel and Run All Cells* (kernel start-up,
  about a second, included).
* **peak memory** of the *kernel*: on Linux the kernel process's own high-water mark of resident
  memory (``VmHWM`` in ``/proc/<pid>/status``), read after every cell, which catches short
  peaks exactly; elsewhere the largest RSS seen by polling.
* **peak memory of the kernel's process tree**: a thread polls the kernel and all its
  descendants with `psutil` every 0.1 s and keeps the largest *sum* of their RSS. It matters
  for notebooks that start worker processes (a benchmark in a subprocess, data-parallel
  training); short-lived peaks between two polls can be missed.

The table reports the larger of the two as "peak memory". The script writes a small JSON file
(default ``src/companion/results/notebook_times.json``) with the machine (CPU model, cores,
memory, Python and PyTorch versions) and the load average before and after each notebook,
because timings on a busy machine are slower, and a Markdown table (default
``book/_generated/notebook_times.md``) that the teacher's guide includes. The Markdown table is
also printed. Both files are rewritten after every notebook, so an interrupted run keeps
what it measured. The exit status is 1 if any notebook run this time failed. With ``--update`` the
rows of the notebooks not run this time are kept from the existing JSON file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from companion.experiments import committed

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_OUT = committed("notebook_times")  # what the teacher's guide reads (written only with --out)
DEFAULT_MARKDOWN = ROOT / "book" / "_generated" / "notebook_times.md"
FORMAT = "companion-notebook-times"
MB = 1024 * 1024


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of one process (Linux ``VmHWM``), or None where not available."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError):
        return None
    return None


class TreeMemoryMonitor:
    """Poll a process and its descendants; remember the largest total and largest own RSS."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.peak_tree = 0  # bytes: max over polls of sum of RSS over the process tree
        self.peak_own = 0  # bytes: max over polls of the process's own RSS
        self.peak_hwm = 0  # bytes: last VmHWM read (monotone)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Take one sample of the tree's memory now."""
        try:
            root = psutil.Process(self.pid)
            own = root.memory_info().rss
            total = own
            for child in root.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        self.peak_own = max(self.peak_own, own)
        self.peak_tree = max(self.peak_tree, total)
        hwm = vm_hwm_bytes(self.pid)
        if hwm is not None:
            self.peak_hwm = max(self.peak_hwm, hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


def notebook_title(nb: nbformat.NotebookNode, path: Path) -> str:
    """The text of the notebook's first top-level heading, or its file name."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def run_notebook(
    path: Path, timeout: int = 1800, kernel_name: str = "python3", save_to: Path | None = None
) -> dict[str, Any]:
    """Execute one notebook in a fresh kernel; return its wall time, peak memory and status.

    With `save_to`, the executed notebook (outputs included, as far as it ran) is written there.
    """
    nb = nbformat.read(path, as_version=4)
    n_code = sum(1 for c in nb.cells if c.cell_type == "code")
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
    )
    state: dict[str, Any] = {"monitor": None}

    def on_start(**_: Any) -> None:  # the kernel process exists from here on
        pid = client.km.provisioner.pid
        state["monitor"] = TreeMemoryMonitor(pid)
        state["monitor"].start()

    def on_cell_complete(**_: Any) -> None:  # exact VmHWM after every cell
        if state["monitor"] is not None:
            state["monitor"].sample()

    client.on_notebook_start = on_start
    client.on_cell_complete = on_cell_complete
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    status, error = "ok", None
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellTimeoutError:  # a slow machine, not a wrong notebook: say so
        status, error = "timeout", f"CellTimeoutError: a cell ran longer than {timeout} s"
    except CellExecutionError as exc:
        status, error = "error", str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else repr(exc)
    except Exception as exc:  # a timeout or a dead kernel: report it, go on with the others
        status, error = "error", f"{type(exc).__name__}: {exc}"[:500]
    wall = time.perf_counter() - t0
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save_to)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    monitor = state["monitor"]
    if monitor is not None:
        monitor.stop()
        kernel_peak = monitor.peak_hwm or monitor.peak_own
        tree_peak = monitor.peak_tree
    else:
        kernel_peak = tree_peak = 0
    return {
        "notebook": path.name,
        "title": notebook_title(nb, path),
        "started": started,
        "status": status,
        "error": error,
        "code_cells": n_code,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(kernel_peak / MB, 1),
        "peak_tree_rss_mb": round(tree_peak / MB, 1),
        "kernel_peak_method": "VmHWM" if (monitor is not None and monitor.peak_hwm) else "psutil polling",
        "load_average_before": [round(x, 2) for x in load_before] if load_before else None,
        "load_average_after": [round(x, 2) for x in load_after] if load_after else None,
    }


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where the measurement ran."""
    return {
        "cpu": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def peak_mb(row: dict[str, Any]) -> float:
    """The larger of the kernel's peak RSS and the polled peak of its process tree."""
    return max(row["peak_rss_mb"], row["peak_tree_rss_mb"])


def markdown_table(result: dict[str, Any]) -> str:
    """The measurements as a Markdown table with a sentence on how and where they were taken."""
    lines = [
        "| Notebook | Title | Wall time | Peak memory (RSS) | Load average during the run | Status |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in result["notebooks"]:
        minutes, seconds = divmod(row["wall_s"], 60)
        wall = f"{int(minutes)} min {seconds:04.1f} s" if minutes else f"{seconds:.1f} s"
        loads = [x for x in (row["load_average_before"], row["load_average_after"]) if x]
        load = " → ".join(f"{x[0]:.1f}" for x in loads) if loads else "n/a"
        if row["status"] == "ok":
            status = "ok"
        elif row["status"] == "timeout" or "CellTimeoutError" in (row["error"] or ""):
            status = "**timed out**"
        else:
            status = "**failed**"
        lines.append(f"| `{row['notebook']}` | {row['title']} | {wall} | {peak_mb(row):,.0f} MB | {load} | {status} |")
    total = sum(r["wall_s"] for r in result["notebooks"])
    m = result["machine"]
    lines += [
        "",
        f"Total: {total / 60:.1f} minutes for {len(result['notebooks'])} notebooks. Measured on "
        f"{result['date'][:10]} with `python -m companion.experiments.notebook_times` on "
        f"{m['logical_cores']} logical cores ({m['cpu']}), {m['memory_gb']} GB of memory, Python "
        f"{m['python']}, PyTorch {m['torch']}; each notebook in a fresh kernel. The load average is the "
        f"one-minute load before and after each notebook: on a machine with {m['logical_cores']} cores, "
        f"a load above {m['logical_cores']} means other programs were competing for the CPU and the times "
        "are longer than on a quiet machine. Peak memory is the larger of the kernel's own peak resident "
        "memory and the polled peak of the kernel with its child processes.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("notebook_times.json"),
        help=f"JSON output (default: ./notebook_times.json; the committed one is {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help=f"Markdown table output (default: --out with .md; the book includes {DEFAULT_MARKDOWN})",
    )
    parser.add_argument("--no-markdown", action="store_true", help="do not write the Markdown file")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    parser.add_argument(
        "--update", action="store_true", help="keep the rows of notebooks not run now from the existing --out file"
    )
    parser.add_argument(
        "--save-executed", type=Path, metavar="DIR", help="also write each executed notebook, with outputs, to DIR"
    )
    args = parser.parse_args(argv)
    if args.markdown is None:
        args.markdown = args.out.with_suffix(".md")

    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        parser.error("no notebooks given and none found in notebooks/")
    for path in paths:
        if not path.is_file():
            parser.error(f"notebook not found: {path}")

    result: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m companion.experiments.notebook_times " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "memory_method": (
            "peak_rss_mb: the kernel process's own peak resident set size (Linux VmHWM read after every "
            "cell; psutil polling elsewhere); peak_tree_rss_mb: largest sum of RSS over the kernel and its "
            "descendants, polled with psutil every 0.1 s"
        ),
        "notebooks": [],
    }
    old_rows: list[dict[str, Any]] = []
    if args.update and args.out.is_file():
        old_rows = json.loads(args.out.read_text(encoding="utf-8")).get("notebooks", [])

    def save(rows_now: list[dict[str, Any]]) -> str:
        """Write the JSON and the Markdown table (after every notebook, so a long run keeps its results)."""
        run_now = {r["notebook"] for r in rows_now}
        kept = [r for r in old_rows if r["notebook"] not in run_now]
        result["notebooks"] = sorted(kept + rows_now, key=lambda r: r["notebook"])
        result["total_wall_s"] = round(sum(r["wall_s"] for r in result["notebooks"]), 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        table = markdown_table(result)
        if not args.no_markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table, encoding="utf-8")
        return table

    rows_now: list[dict[str, Any]] = []
    for path in paths:
        print(f"running {path.name} ...", file=sys.stderr, flush=True)
        save_to = args.save_executed / path.name if args.save_executed else None
        row = run_notebook(path.resolve(), timeout=args.timeout, save_to=save_to)
        print(
            f"  {row['status']}: {row['wall_s']:.1f} s, peak {peak_mb(row):.0f} MB"
            + (f"  ({row['error']})" if row["error"] else ""),
            file=sys.stderr,
            flush=True,
        )
        rows_now.append(row)
        table = save(rows_now)
    print(table)
    return 0 if all(r["status"] == "ok" for r in rows_now) else 1


if __name__ == "__main__":
    sys.exit(main())
