"""A retrieval benchmark that ships with Python: passages of its reference topics and questions about them.

The passages come from ``pydoc_data.topics``, the reference text behind ``help("if")`` that every Python
installs (``load_corpus("python-docs")`` is the same topics joined into one text). Each topic is a page of the
language reference: a title ('The "pass" statement'), an underline, then paragraphs. A passage is a run of
consecutive paragraphs of one topic, at most `max_words` words (a longer paragraph is cut into pieces of that
many words), prefixed with its topic's title so that every passage says what it is about. Only topics shorter
than `max_topic_chars` are used, and a topic whose whole text is another's is used once: the long topics are
the data model's special method names and the full grammar of compound statements, which repeat the short
topics, and leaving them out keeps the corpus small enough to embed in seconds.

The questions (``companion/data/retrieval/python_docs_questions.json``) were written by hand for this book,
each in a reader's own words rather than the reference's, with a short *evidence* string copied from the
text that answers it. A question's relevant passages are all the passages that
contain its evidence (whitespace collapsed), so the answer key does not depend on how the topics are cut, and
a question whose evidence is not in this Python's topics is left out with a warning.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Passage", "Question", "python_docs_passages", "python_docs_questions", "split_paragraphs"]

QUESTIONS_FILE = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "python_docs_questions.json"
_UNDERLINE = re.compile(r"^[*=\-^~]{3,}$")


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: its index in the corpus, the topic it comes from, and its text (title first)."""

    id: int
    topic: str
    text: str


@dataclass(frozen=True)
class Question:
    """A question, the evidence string copied from its answer, and the ids of the passages holding the evidence."""

    question: str
    evidence: str
    relevant: tuple[int, ...]


def _squash(text: str) -> str:
    """Runs of whitespace collapsed to one space, ends stripped."""
    return " ".join(text.split())


def split_paragraphs(text: str, max_words: int) -> list[str]:
    """Cut `text` at blank lines and pack consecutive paragraphs into pieces of at most `max_words` words.

    A paragraph longer than `max_words` words is cut into pieces of exactly that many words (the last shorter);
    underline lines (``*****``) are dropped. Each piece is returned with its whitespace collapsed.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    pieces: list[str] = []
    current: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.strip().split("\n") if not _UNDERLINE.match(ln.strip())]
        words = " ".join(lines).split()
        if not words:
            continue
        if len(current) + len(words) > max_words and current:
            pieces.append(" ".join(current))
            current = []
        while len(words) > max_words:
            pieces.append(" ".join(words[:max_words]))
            words = words[max_words:]
        current += words
    if current:
        pieces.append(" ".join(current))
    return pieces


def _topics(max_topic_chars: int) -> dict[str, str]:
    """The pydoc topics shorter than `max_topic_chars`, in sorted key order, each text once."""
    from pydoc_data.topics import topics

    chosen: dict[str, str] = {}
    seen: set[str] = set()
    for key in sorted(topics):
        text = topics[key].strip("\n")
        if len(text) < max_topic_chars and text not in seen:
            chosen[key] = text
            seen.add(text)
    return chosen


def python_docs_passages(max_words: int = 60, max_topic_chars: int = 5_000) -> list[Passage]:
    """The passages of the pydoc topics shorter than `max_topic_chars`: title + up to `max_words` words each."""
    passages: list[Passage] = []
    for key, text in _topics(max_topic_chars).items():
        title, _, body = text.partition("\n")
        for piece in split_paragraphs(body, max_words):
            passages.append(Passage(len(passages), key, f"{title.strip()}: {piece}"))
    if not passages:
        raise ValueError(f"no pydoc topic is shorter than max_topic_chars={max_topic_chars}")
    return passages


def python_docs_questions(passages: list[Passage], path: str | Path | None = None) -> list[Question]:
    """The hand-written questions with their relevant passages among `passages` (those holding the evidence).

    Questions whose evidence no passage holds (another Python's topics, another cut) are left out with a warning.
    """
    raw = json.loads(Path(path or QUESTIONS_FILE).read_text(encoding="utf-8"))
    texts = [_squash(p.text) for p in passages]
    out: list[Question] = []
    missing = []
    for item in raw["questions"]:
        evidence = _squash(item["evidence"])
        relevant = tuple(p.id for p, t in zip(passages, texts) if evidence in t)
        if relevant:
            out.append(Question(item["question"], item["evidence"], relevant))
        else:
            missing.append(item["question"])
    if missing:
        warnings.warn(f"{len(missing)} question(s) have no passage holding their evidence: {missing[:3]}", stacklevel=2)
    return out
