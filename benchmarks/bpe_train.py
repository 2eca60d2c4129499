"""Training time of our byte-level BPE (pure Python, one core) on about 1 MB of text.

    python benchmarks/bpe_train.py                    # vocab 1,024 on Shakespeare and 1 MB of reviews
    python benchmarks/bpe_train.py --vocab-size 4096 --repeats 3 --json /tmp/bpe.json
    python benchmarks/bpe_train.py --hf               # also time Hugging Face's Rust trainer

Corpora: the book's Shakespeare corpus (``load_corpus("shakespeare")``, about 1.1M characters) and
the review corpus truncated to its first 1,000,000 UTF-8 bytes. Our trainer counts pairs once over
the unique pre-tokens and then updates only the pre-tokens that contain each merged pair, so its
time grows with the number of merges times the number of affected pre-tokens, not with the text
length times the number of merges as a naive recount would. The figure reported is the median wall
time of ``--repeats`` runs, and merges per second = merges / that time. ``--hf`` times Hugging
Face's ``BpeTrainer`` with ``RAYON_NUM_THREADS=1`` (set before import) for a one-core comparison and
checks that both compress the text to within 2% of each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus


def corpora() -> dict[str, str]:
    """The two benchmark texts."""
    reviews = load_corpus("reviews").encode("utf-8")[:1_000_000].decode("utf-8", errors="ignore")
    return {"shakespeare": load_corpus("shakespeare"), "reviews-1MB": reviews}


def time_ours(text: str, vocab_size: int, repeats: int) -> tuple[float, BPETokenizer]:
    """Median seconds of `repeats` trainings, and the last tokenizer."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tok = BPETokenizer.train(text, vocab_size)
        times.append(time.perf_counter() - start)
    return statistics.median(times), tok


def time_hf(text: str, vocab_size: int) -> tuple[float, float]:
    """Seconds for Hugging Face's trainer, and its bytes per token on the same text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tok.train_from_iterator([text], trainer)
    seconds = time.perf_counter() - start
    return seconds, len(text.encode("utf-8")) / len(tok.encode(text).ids)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hf", action="store_true", help="also time Hugging Face's trainer")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.hf:
        os.environ.setdefault("RAYON_NUM_THREADS", "1")

    results = {
        "vocab_size": args.vocab_size,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "corpora": {},
    }
    print(f"byte-level BPE training to vocab_size {args.vocab_size} (pure Python, one core)")
    print(
        f"{'corpus':<12} {'chars':>10} {'bytes':>10} {'merges':>7} {'seconds':>8} "
        f"{'merges/s':>9} {'bytes/token':>11}" + ("  HF s  HF bytes/token" if args.hf else "")
    )
    for name, text in corpora().items():
        seconds, tok = time_ours(text, args.vocab_size, args.repeats)
        n_bytes = len(text.encode("utf-8"))
        bpt = n_bytes / len(tok.encode(text))
        row = {
            "chars": len(text),
            "bytes": n_bytes,
            "merges": len(tok.merges),
            "seconds": round(seconds, 3),
            "merges_per_s": round(len(tok.merges) / seconds, 1),
            "bytes_per_token": round(bpt, 4),
        }
        line = (
            f"{name:<12} {len(text):>10,} {n_bytes:>10,} {len(tok.merges):>7} {seconds:>8.2f} "
            f"{row['merges_per_s']:>9.0f} {bpt:>11.3f}"
        )
        if args.hf:
            hf_seconds, hf_bpt = time_hf(text, args.vocab_size)
            row.update(hf_seconds=round(hf_seconds, 3), hf_bytes_per_token=round(hf_bpt, 4))
            line += f"  {hf_seconds:>4.2f}  {hf_bpt:>15.3f}"
            assert abs(bpt - hf_bpt) / hf_bpt < 0.02, (bpt, hf_bpt)
        print(line)
        results["corpora"][name] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
