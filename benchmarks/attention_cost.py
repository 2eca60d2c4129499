"""Time and memory of attention against sequence length: the explicit path vs PyTorch's fused one.

    python benchmarks/attention_cost.py                      # 128 ... 4096, batch 1, 8 heads, d_head 64
    python benchmarks/attention_cost.py --lengths 256 1024 --causal --json /tmp/cost.json
    python benchmarks/attention_cost.py --rss                # also measure peak RSS in subprocesses

The measurements themselves are ``companion.analysis.attention_cost.attention_cost`` (which Chapter 3 calls);
this script adds the command line, the ``--rss`` cross-check and a JSON file.

The explicit path is ``companion.nn.attention.scaled_dot_product_attention`` (it forms the full
(L, L) score and weight matrices); the fused path is ``torch.nn.functional.
scaled_dot_product_attention`` (on CPU a FlashAttention-style kernel that works block by block
and never stores the whole matrix). Both run under ``torch.no_grad()`` in float32 by default.
Times are the best of a few rounds.
On a busy machine, ``--threads 1`` gives much steadier numbers: with several threads, small
problems spend most of their time waiting for a thread the OS has descheduled.

Memory is reported three ways, and the table says which is which:

* ``matrix``: analytic size of ONE attention matrix, batch * n_heads * L * L * bytes per element.
  The explicit path holds about two of them at its peak (scores and weights).
* ``peak``: measured with ``torch.profiler`` (``profile_memory=True``): the running sum of the
  bytes that PyTorch's CPU allocator hands out and takes back, op by op; its maximum is the peak
  of extra tensor memory during the call (inputs excluded). Buffers an op allocates and frees
  inside itself are netted out, so for the fused kernel this can miss small scratch buffers.
* ``rss`` (with ``--rss``): growth of the process's peak resident set size (``VmHWM`` on
  Linux, ``ru_maxrss`` elsewhere) during one call, each measurement in a fresh subprocess.
  Sees everything, including scratch buffers, at page granularity.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys

import torch

from companion.analysis.attention_cost import ATTENTION_PATHS, attention_call, attention_cost, attention_inputs
from companion.threads import policy as thread_policy

PATHS = ATTENTION_PATHS


def _peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes."""
    try:  # Linux: VmHWM belongs to this program's memory map (ru_maxrss survives fork + exec)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _rss_child(args: argparse.Namespace, path: str, seq_len: int) -> None:
    """Run in a fresh process: print the growth of peak RSS (bytes) during one call."""
    fn = attention_call(path, args.causal)
    inputs = attention_inputs(seq_len, args.batch, args.n_heads, args.d_head, getattr(torch, args.dtype))
    small = tuple(t[..., :16, :].contiguous() for t in inputs)
    with torch.no_grad():
        fn(*small)  # load kernels and thread pools before the baseline
        before = _peak_rss_bytes()
        fn(*inputs)
        after = _peak_rss_bytes()
    print(after - before)


def rss_peak_bytes(args: argparse.Namespace, path: str, seq_len: int) -> int:
    """Peak RSS growth of one call, measured in a subprocess so earlier peaks do not hide it."""
    cmd = [
        sys.executable,
        __file__,
        "--_rss-child",
        path,
        str(seq_len),
        "--batch",
        str(args.batch),
        "--n-heads",
        str(args.n_heads),
        "--d-head",
        str(args.d_head),
        "--dtype",
        args.dtype,
    ]
    if args.causal:
        cmd.append("--causal")
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> list[dict]:
    """Measure every (length, path) pair and return one row per pair, printing each as it is ready."""

    def on_row(row: dict) -> None:
        if args.rss:
            row["rss_peak_bytes"] = rss_peak_bytes(args, row["path"], row["seq_len"])
        print_row(row, args.rss)

    return attention_cost(
        args.lengths,
        batch=args.batch,
        n_heads=args.n_heads,
        d_head=args.d_head,
        dtype=getattr(torch, args.dtype),
        causal=args.causal,
        repeats=args.repeats,
        min_time=args.min_time,
        on_row=on_row,
    )


def print_header(rss: bool) -> None:
    """The table's column names."""
    cols = f"{'L':>6} {'path':>9} {'ms/call':>10} {'GFLOP/s':>8} {'matrix MiB':>11} {'peak MiB':>9}"
    print(cols + (f" {'rss MiB':>8}" if rss else ""))
    print("-" * (len(cols) + (9 if rss else 0)))


def print_row(row: dict, rss: bool) -> None:
    """One measured row of the table."""
    mib = 2**20
    line = (
        f"{row['seq_len']:>6} {row['path']:>9} {row['seconds'] * 1e3:>10.2f} {row['gflops_per_s']:>8.1f} "
        f"{row['matrix_bytes'] / mib:>11.1f} {row['profiler_peak_bytes'] / mib:>9.1f}"
    )
    if rss:
        line += f" {row['rss_peak_bytes'] / mib:>8.1f}"
    print(line, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--causal", action="store_true", help="causal attention (is_causal=True)")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds; the best is reported")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds of calls per length (small L loops)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fixed CPU threads (default: companion.threads)",
    )
    p.add_argument("--rss", action="store_true", help="also measure peak RSS growth in subprocesses")
    p.add_argument("--json", metavar="OUT", help="write the results to this JSON file")
    p.add_argument("--_rss-child", nargs=2, metavar=("PATH", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(n < 1 for n in args.lengths):
        p.error(f"lengths must be positive, got {args.lengths}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        thread_policy.fix(args.threads)
    if args._rss_child:
        _rss_child(args, args._rss_child[0], int(args._rss_child[1]))
        return
    print(
        f"attention cost: batch {args.batch}, {args.n_heads} heads, d_head {args.d_head}, {args.dtype}, "
        f"{'causal' if args.causal else 'no mask'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        "matrix = analytic bytes of one (L, L) attention matrix per batch and head set; "
        "peak = torch.profiler allocator peak" + ("; rss = peak RSS growth (subprocess)" if args.rss else "")
    )
    print_header(args.rss)
    rows = run(args)
    if len(args.lengths) >= 2:
        for path in PATHS:
            a, b = [r for r in rows if r["path"] == path][-2:]
            slope = math.log(b["seconds"] / a["seconds"]) / math.log(b["seq_len"] / a["seq_len"])
            print(f"{path}: time grows like L^{slope:.2f} between L={a['seq_len']} and L={b['seq_len']}")
    if args.json:
        meta = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "json"}
        meta.update(torch=torch.__version__, threads=torch.get_num_threads())
        with open(args.json, "w") as f:
            json.dump({"config": meta, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
