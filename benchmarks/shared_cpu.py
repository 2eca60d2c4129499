"""Training on a shared CPU: one run alone, then 2 and 4 started together, with and without the thread policy.

    python benchmarks/shared_cpu.py                    # copies 1 2 4, both modes (about 15 minutes on 2 cores)
    python benchmarks/shared_cpu.py --copies 1 2 --steps 100 --json /tmp/shared.json

Each copy is `benchmarks/time_to_quality.py` with a fixed amount of work (`--steps` steps of its
default recipe, target 0 so that it never stops early), started at the same moment as the other
copies. Two modes run the same copies:

* ``policy``: the package's thread policy (`companion.threads`): threads = the CPUs available minus
  the other runnable tasks, re-checked every second;
* ``torch``: PyTorch's default, one thread per core whatever else runs (``COMPANION_THREADS=torch``).

For each mode and number of copies it prints every copy's wall time, the slowdown of the slowest
copy against that mode's lone run, and the ratio of the group's wall time (process start-up
included) to running the copies one after the other (the lone run's wall time, start-up included,
times the number of copies). Target (the shared-machines issue): with two at once, each finishes within 2.2x of
its lone time; alone, the policy is within 5% of PyTorch's default. Run it on an otherwise idle
machine: the point is the interference between the copies, not with anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from companion.utils import describe_cpu

HERE = Path(__file__).resolve().parent
MODES = {"policy": None, "torch": "torch"}  # mode -> the COMPANION_THREADS value (None: unset)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4], help="how many copies start together")
    p.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    p.add_argument("--steps", type=int, default=400, help="training steps of each copy")
    p.add_argument("--text", metavar="FILE", help="a text file instead of companion's Shakespeare")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--markdown", metavar="OUT", help="also write the table as Markdown (the book includes it)")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.copies) or args.steps < 1:
        p.error("--copies and --steps must be >= 1")
    return args


def run_together(n: int, mode: str, steps: int, folder: Path, text: str | None = None) -> list[dict]:
    """Start n copies at once in `mode`; wait for all; return each copy's figures."""
    env = {k: v for k, v in os.environ.items() if k not in ("COMPANION_THREADS", "OMP_NUM_THREADS")}
    if MODES[mode] is not None:
        env["COMPANION_THREADS"] = MODES[mode]
    cmd = [sys.executable, str(HERE / "time_to_quality.py"), "--target", "0", "--steps", str(steps)]
    cmd += ["--text", text] if text else []
    procs = []
    for i in range(n):
        out = folder / f"{mode}_{n}_{i}.json"
        procs.append((out, subprocess.Popen([*cmd, "--json", str(out)], env=env, stdout=subprocess.DEVNULL)))
    results = []
    for out, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a copy failed (exit {proc.returncode}): {' '.join(cmd)}")
        r = json.loads(out.read_text())
        results.append({"wall_s": r["total_s"], "cpu_s": r["total_cpu_s"], "threads_at_end": r["threads"]})
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run every mode x copies combination one after the other and print the table."""
    args = parse(argv)
    copies = sorted(set(args.copies) | {1})  # the lone run is every ratio's reference
    rows, load_before = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for n in copies:
                t0 = time.perf_counter()
                runs = run_together(n, mode, args.steps, Path(tmp), args.text)
                rows.append({"mode": mode, "copies": n, "group_wall_s": time.perf_counter() - t0, "runs": runs})
    lone = {r["mode"]: max(x["wall_s"] for x in r["runs"]) for r in rows if r["copies"] == 1}
    lone_group = {r["mode"]: r["group_wall_s"] for r in rows if r["copies"] == 1}  # with process start-up
    print(f"{args.steps} training steps per copy; load average before {load_before[0]:.2f}")
    print(f"{'mode':7s} {'copies':>6s} {'each copy (s)':>28s} {'slowest / lone':>15s} {'group / one-by-one':>19s}")
    for r in rows:
        walls = [x["wall_s"] for x in r["runs"]]
        r["slowdown"] = max(walls) / lone[r["mode"]]
        r["vs_sequential"] = r["group_wall_s"] / (r["copies"] * lone_group[r["mode"]])  # both with start-up
        each = " ".join(f"{w:.1f}" for w in walls)
        print(f"{r['mode']:7s} {r['copies']:6d} {each:>28s} {r['slowdown']:14.2f}x {r['vs_sequential']:18.2f}x")
    if {"policy", "torch"} <= lone.keys():
        print(f"alone, policy / torch default: {lone['policy'] / lone['torch']:.3f}x the wall time")
    result = {
        "steps": args.steps,
        "rows": rows,
        "lone_s": lone,
        "load_average_before": load_before,
        "command": " ".join(["python benchmarks/shared_cpu.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    result["machine"] = describe_cpu()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(result), encoding="utf-8")
    return result


def markdown_table(result: dict) -> str:
    """The measured table as Markdown, with the machine and the command that produced it."""
    names = {"policy": "the package's policy", "torch": "PyTorch's default"}
    lines = [
        "| threads | copies at once | wall time of each copy (s) | slowest copy / alone | all / one after another |",
        "|---|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        each = ", ".join(f"{x['wall_s']:.0f}" for x in r["runs"])
        lines.append(
            f"| {names[r['mode']]} | {r['copies']} | {each} | {r['slowdown']:.2f}x | {r['vs_sequential']:.2f}x |"
        )
    lines += [
        "",
        f"Each copy trains the `benchmarks/time_to_quality.py` model for {result['steps']} steps; measured on "
        f"{result['machine']} with `{result['command']}` (load average {result['load_average_before'][0]:.2f} "
        "before the run).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
