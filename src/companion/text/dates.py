"""A generated translation-style task: dates written many ways -> ISO 8601 ("2026-11-23").

The source side is English in several formats ("the twenty-third of November 2026",
"Nov 23rd, 2026", "Monday 23 November 2026", "23.11.2026", ...); the target is always
``YYYY-MM-DD``. The mapping is deterministic, so exact-match accuracy is a fair measure, and
it needs what translation needs: reordering (month before or after the day), many-to-one
words ("twenty-third" -> "23"), copying (the year) and ignoring (the weekday).

Both sides are tokenized by characters (`CharVocab`); `make_batch` pads a list of pairs into
the tensors `companion.nn.EncoderDecoder` takes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from companion.text.tokenization import CharTokenizer, pad_batch

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_UNITS = ("", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
_TEENS = (
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
)

#: The source formats, with the date 2026-11-23 written in each.
FORMATS: dict[str, str] = {
    "words": "the twenty-third of November 2026",
    "day_month": "23 November 2026",
    "month_day": "November 23, 2026",
    "short": "23 Nov 2026",
    "ordinal": "Nov 23rd, 2026",
    "weekday": "Monday 23 November 2026",
    "dotted": "23.11.2026",
}
FIRST_DATE, LAST_DATE = dt.date(1900, 1, 1), dt.date(2099, 12, 31)

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
IGNORE_INDEX = -100


def ordinal_words(n: int) -> str:
    """1 -> 'first', 23 -> 'twenty-third', 30 -> 'thirtieth' (days of a month, 1..31)."""
    if not 1 <= n <= 31:
        raise ValueError(f"day {n} is outside 1..31")
    if n < 10:
        return _UNITS[n]
    if n < 20:
        return _TEENS[n - 10]
    tens, unit = divmod(n, 10)
    stem = ("twenty", "thirty")[tens - 2]
    return (stem[:-1] + "ieth") if unit == 0 else f"{stem}-{_UNITS[unit]}"


def ordinal_suffix(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return str(n) + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def format_date(date: dt.date, style: str) -> str:
    """Write `date` in one of the `FORMATS` styles."""
    d, m, y = date.day, MONTHS[date.month - 1], date.year
    if style == "words":
        return f"the {ordinal_words(d)} of {m} {y}"
    if style == "day_month":
        return f"{d} {m} {y}"
    if style == "month_day":
        return f"{m} {d}, {y}"
    if style == "short":
        return f"{d} {m[:3]} {y}"
    if style == "ordinal":
        return f"{m[:3]} {ordinal_suffix(d)}, {y}"
    if style == "weekday":
        return f"{WEEKDAYS[date.weekday()]} {d} {m} {y}"
    if style == "dotted":
        return f"{d:02d}.{date.month:02d}.{y}"
    raise ValueError(f"unknown date style {style!r}; choose one of {', '.join(FORMATS)}")


def iso_date(date: dt.date) -> str:
    """The target side: 'YYYY-MM-DD'."""
    return date.isoformat()


class DatePairs(NamedTuple):
    """Train and test lists of (source text, target text); no date appears in both."""

    train: list[tuple[str, str]]
    test: list[tuple[str, str]]


def make_date_pairs(n_train: int, n_test: int, seed: int = 0, styles: Sequence[str] = tuple(FORMATS)) -> DatePairs:
    """Draw distinct random dates in 1900..2099, each written in a random style.

    The test dates are never used in training (in any style), so test accuracy measures
    generalisation to new dates, not memory.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    for s in styles:
        if s not in FORMATS:
            raise ValueError(f"unknown date style {s!r}; choose one of {', '.join(FORMATS)}")
    if not styles:
        raise ValueError("styles is empty: give at least one date style")
    n_days = (LAST_DATE - FIRST_DATE).days + 1
    if n_train + n_test > n_days:
        raise ValueError(f"asked for {n_train + n_test} distinct dates, only {n_days} exist in range")
    rng = np.random.default_rng(seed)
    offsets = rng.choice(n_days, size=n_train + n_test, replace=False)
    which = rng.integers(len(styles), size=n_train + n_test)
    pairs = []
    for off, s in zip(offsets, which):
        date = FIRST_DATE + dt.timedelta(days=int(off))
        pairs.append((format_date(date, styles[s]), iso_date(date)))
    return DatePairs(pairs[:n_train], pairs[n_train:])


class CharVocab(CharTokenizer):
    """A `CharTokenizer` whose specials frame sequences: <pad> = 0, <bos> = 1, <eos> = 2."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, chars: Iterable[str], specials: Sequence[str] = (PAD, BOS, EOS)):
        if tuple(specials) != (PAD, BOS, EOS):
            raise ValueError(f"CharVocab's specials are {(PAD, BOS, EOS)}, got {tuple(specials)}")
        super().__init__(chars, specials)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Characters -> ids, optionally wrapped in <bos> ... <eos>; unknown characters raise."""
        return [self.bos_id] * bos + super().encode(text) + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, skipping <pad>/<bos> and stopping at the first <eos>."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return super().decode(kept)


def date_vocabs() -> tuple[CharVocab, CharVocab]:
    """Source and target vocabularies that cover every string `format_date` and `iso_date` write."""
    words = list(MONTHS) + list(WEEKDAYS) + [ordinal_words(d) for d in range(1, 32)] + ["the of stndrh"]
    src = CharVocab("".join(words) + "0123456789 ,.-")
    return src, CharVocab("0123456789-")


class Seq2SeqBatch(NamedTuple):
    """Padded tensors for teacher forcing (B = batch size, S source length, T target length + 1)."""

    src_ids: torch.Tensor  # (B, S)
    src_mask: torch.Tensor  # (B, S) 1 = real character
    tgt_in: torch.Tensor  # (B, T) <bos> y_1 ... y_n  (decoder input)
    tgt_out: torch.Tensor  # (B, T) y_1 ... y_n <eos>  (what each position must predict; -100 = pad)
    tgt_mask: torch.Tensor  # (B, T) 1 = real position


def make_batch(pairs: Sequence[tuple[str, str]], src_vocab: CharVocab, tgt_vocab: CharVocab) -> Seq2SeqBatch:
    """Encode and right-pad (source, target) pairs into a `Seq2SeqBatch`."""
    if len(pairs) == 0:
        raise ValueError("make_batch got no pairs: the batch would be empty")
    src = [src_vocab.encode(s) for s, _ in pairs]
    tgt = [tgt_vocab.encode(t) for _, t in pairs]
    src_ids, src_mask = pad_batch(src, src_vocab.pad_id)  # (B, S) each
    tgt_in, _ = pad_batch([[tgt_vocab.bos_id] + t for t in tgt], tgt_vocab.pad_id)  # (B, T)
    tgt_out, tgt_mask = pad_batch([t + [tgt_vocab.eos_id] for t in tgt], IGNORE_INDEX)  # (B, T) each
    return Seq2SeqBatch(src_ids, src_mask, tgt_in, tgt_out, tgt_mask)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions identical to their reference string."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("exact_match of an empty list is undefined")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)
