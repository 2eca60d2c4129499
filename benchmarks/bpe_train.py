"""BPE training: ours (pure Python, one core) vs Hugging Face's `BpeTrainer` and `rustbpe`, time and merges.

    python benchmarks/bpe_train.py                          # vocab 1,024 and 8,192 on the 1 MB text
    python benchmarks/bpe_train.py --vocab-sizes 4096 --corpora shakespeare reviews-1MB --repeats 3
    python benchmarks/bpe_train.py --libraries hf --json /tmp/bpe.json

Corpora: ``docs+shakespeare-1MB`` (the default: the 1,000,000 bytes that ``benchmarks/bpe_encode.py``
encodes, Python's documentation then the book's Shakespeare), ``shakespeare`` (the book's corpus, about
1.1M characters) and ``reviews-1MB`` (the review corpus cut to its first 1,000,000 UTF-8 bytes).

All learn byte-level merges inside GPT-2's pre-tokens: ours with ``BPETokenizer.train``; Hugging Face's
``BpeTrainer`` behind its ``ByteLevel`` pre-tokenizer (the same pattern) with the 256 byte characters as
its alphabet; ``rustbpe`` (the trainer of Karpathy's nanochat, if installed) with ``pattern=GPT2_PATTERN``.
Ours and Hugging Face's vocabularies hold one special token, rustbpe's none, so rustbpe is asked for one
id fewer: all learn the same number of merges. Libraries run on one thread (``RAYON_NUM_THREADS=1``, set
before they are imported). Times are medians of ``--repeats`` runs; "x ours" is speed over ours.

Merges are compared as the sequence of the tokens they make (rustbpe reports ranks, not pairs): "same
place" counts merges equal at the same position, "same set" those of ours found anywhere among theirs.
Every trainer merges the most frequent pair and breaks a tie by the smaller pair of ids, but the ids
differ: ours and rustbpe number the 256 bytes by value (the space, 32, comes early), while Hugging Face
numbers its alphabet in the code-point order of GPT-2's printable byte characters, where the space is
'Ġ' (U+0120), after every printable byte. So on a tie between " C" and "us" ours merges " C" first and
Hugging Face "us". The first difference is printed with both pairs' counts at that step, recounted by
replaying the merges made so far.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from companion.experiments import write_json
from companion.text.bpe import BPETokenizer, bytes_to_unicode
from companion.text.corpora import load_corpus
from companion.text.pretokenization import GPT2_PATTERN, pretokenize
from companion.utils import cpu_info, describe_cpu

EOT = "<|endoftext|>"
LIBRARIES = ("hf", "rustbpe")


def load_bpe_encode():
    """benchmarks/bpe_encode.py as a module (for the 1 MB text both benchmarks share)."""
    spec = importlib.util.spec_from_file_location("bpe_encode", Path(__file__).with_name("bpe_encode.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus(name: str, n_bytes: int) -> str:
    """One benchmark text, cut to n_bytes UTF-8 bytes where the name says 1MB."""
    if name == "docs+shakespeare-1MB":
        return load_bpe_encode().benchmark_text(n_bytes)
    if name == "reviews-1MB":
        return load_corpus("reviews").encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")
    return load_corpus(name)


def train_ours(text: str, vocab_size: int) -> BPETokenizer:
    """Our trainer."""
    return BPETokenizer.train(text, vocab_size, special_tokens=(EOT,))


def merged_tokens(tok: BPETokenizer) -> list[bytes]:
    """The tokens our merges make, in order."""
    return [tok.vocab[a] + tok.vocab[b] for a, b in tok.merges]


def train_hf(text: str, vocab_size: int) -> list[bytes]:
    """Hugging Face's trainer; the tokens its merges make, in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return [bytes(byte_of[c] for c in a + b) for a, b in json.loads(tok.to_str())["model"]["merges"]]


def train_rustbpe(text: str, vocab_size: int) -> list[bytes]:
    """rustbpe's trainer (no special token, so one id fewer); the tokens its merges make, in order."""
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter([text]), vocab_size - 1, pattern=GPT2_PATTERN)
    return [token for token, rank in sorted(tok.get_mergeable_ranks(), key=lambda tr: tr[1]) if rank >= 256]


TRAINERS = {"ours": train_ours, "hf": train_hf, "rustbpe": train_rustbpe}


def timed_training(name: str, text: str, vocab_size: int, repeats: int):
    """Median seconds of `repeats` trainings, and what the last returned."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trained = TRAINERS[name](text, vocab_size)
        times.append(time.perf_counter() - start)
    return statistics.median(times), trained


def counts_after(text: str, merges: list[tuple[int, int]]) -> dict[bytes, int]:
    """After our first merges: for each token the next merge could make, the count of its most frequent pair."""
    tok = BPETokenizer(merges, special_tokens=())
    pairs: Counter[tuple[int, int]] = Counter()
    for word, freq in Counter(pretokenize(text)).items():
        ids = tok.encode(word, allowed_special=())
        for pair in zip(ids, ids[1:]):
            pairs[pair] += freq
    best: dict[bytes, int] = {}
    for (a, b), c in pairs.items():
        token = tok.vocab[a] + tok.vocab[b]
        best[token] = max(best.get(token, 0), c)
    return best


def compare(text: str, ours_tok: BPETokenizer, theirs: list[bytes]) -> dict:
    """How many merges agree (same place, same set) and the first difference with both pairs' counts."""
    ours = merged_tokens(ours_tok)
    n = min(len(ours), len(theirs))
    first = next((i for i in range(n) if ours[i] != theirs[i]), None)
    out = {
        "merges": n,
        "same_place": sum(a == b for a, b in zip(ours, theirs)),
        "same_set": len(set(ours[:n]) & set(theirs[:n])),
        "first_difference": first,
    }
    if first is not None:
        counts = counts_after(text, ours_tok.merges[:first])
        out["ours_token"], out["their_token"] = (t[first].decode("utf-8", "backslashreplace") for t in (ours, theirs))
        out["ours_count"], out["their_count"] = counts.get(ours[first], 0), counts.get(theirs[first], 0)
    return out


def describe(name: str, c: dict) -> str:
    """One line of merge agreement."""
    line = f"  {name:<8} merges: {c['same_place']:,} of {c['merges']:,} same place, {c['same_set']:,} same set"
    if c["first_difference"] is not None:
        tie = "a tie" if c["ours_count"] == c["their_count"] else "NOT a tie"
        line += (
            f"; first difference at merge {c['first_difference']}: ours {c['ours_token']!r} "
            f"(count {c['ours_count']:,}), {name} {c['their_token']!r} (count {c['their_count']:,}): {tie}"
        )
    return line


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument(
        "--corpora",
        nargs="+",
        default=["docs+shakespeare-1MB"],
        choices=["docs+shakespeare-1MB", "shakespeare", "reviews-1MB"],
    )
    parser.add_argument("--bytes", type=int, default=1_000_000, help="length of the 1MB corpora in UTF-8 bytes")
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # read when the libraries start their thread pools
    libraries = [lib for lib in args.libraries if importlib.util.find_spec({"hf": "tokenizers"}.get(lib, lib))]
    for lib in sorted(set(args.libraries) - set(libraries)):
        print(f"{lib} is not installed (pip install {lib}): skipped")

    results = {"python": sys.version.split()[0], "machine": platform.machine(), "cpu": cpu_info(), "runs": []}
    print(
        f"byte-level BPE training inside GPT-2's pre-tokens, one thread, median of {args.repeats}; "
        f"{describe_cpu(results['cpu'])}"
    )
    header = f"{'corpus':<22}{'bytes':>11}{'vocab':>7}{'merges':>8}{'ours s':>8}"
    print(header + "".join(f"{lib + ' s':>11}{'x ours':>8}" for lib in libraries))
    for name in args.corpora:
        text = corpus(name, args.bytes)
        n_bytes = len(text.encode("utf-8"))
        for vocab_size in args.vocab_sizes:
            seconds, trained = {}, {}
            for lib in ["ours", *libraries]:
                seconds[lib], trained[lib] = timed_training(lib, text, vocab_size, args.repeats)
            row = f"{name:<22}{n_bytes:>11,}{vocab_size:>7,}{len(trained['ours'].merges):>8,}{seconds['ours']:>8.2f}"
            print(row + "".join(f"{seconds[lib]:>11.2f}{seconds['ours'] / seconds[lib]:>8.2f}" for lib in libraries))
            merges = {lib: compare(text, trained["ours"], trained[lib]) for lib in libraries}
            for lib in libraries:
                print(describe(lib, merges[lib]))
            results["runs"].append(
                {"corpus": name, "bytes": n_bytes, "vocab_size": vocab_size, "seconds": seconds, "merges": merges}
            )
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
