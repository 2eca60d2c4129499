"""The data of chapter 10's experiment: a pre-training corpus that states the skills' facts in prose, and the split.

The base model must *know* what the tasks ask (sums, reversed words, who is taller) without ever having seen an
instruction or a chat marker, as a model pre-trained on web text knows facts it was never asked about. Its corpus
is the book's Shakespeare (a newline becomes a space: the chat tokenizer's alphabet is printable ASCII) mixed with
synthetic "web documents": a few sentences each, every sentence one fact of a task family drawn exactly as the
tasks draw it (the family's own `TaskTemplate.fill`) and written in one of several prose phrasings, none of them
a task template:

    "7 plus 5 makes 12."   "Reversed, the word pam reads map."   "Ann is taller than Bob, so Bob is the shorter one."

The phrasings use the words of every wording, the held-out ones included, as statements ("The sum of 7 and 5 is
12.", "In capitals, pam is PAM.", "The bigger of 12 and 40 is 40."): a real model understands an instruction in
new words because pre-training taught it the words, so the held-out test measures whether the answer format that
SFT teaches on the seen wordings transfers to words the model knows. A statement is never a prompt: no question,
no "=", no chat marker (the contamination check below guards the prompts).

`check_pretraining` asserts what the chapter claims: no test prompt occurs in any pre-training document
(`tasks.contamination`, normalised substrings) and no chat marker was encoded into the token stream.

The task split is `tasks.make_split`'s (training tasks in the seen wordings, decontaminated against a seen-wording
test and a held-out-wording test), with a *validation* set cut from the end of its training draw: seen-wording
tasks that are never trained on, the only data any choice (DPO's beta) is made on.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from companion.posttraining.chat import ChatTokenizer
from companion.posttraining.tasks import ALPHABET, FAMILIES, TEMPLATES, Task, contamination, make_split, normalize
from companion.text.corpora import load_corpus

__all__ = [
    "WEB_WORDINGS",
    "ExperimentSplit",
    "check_pretraining",
    "experiment_split",
    "pretraining_documents",
    "shakespeare_documents",
    "to_alphabet",
    "web_documents",
    "web_sentence",
]

# Prose for each family's facts: statements, never a task prompt, in many phrasings (the held-out wordings'
# words among them). Fields are the template fields of `tasks` ({a}, {b}, {w}, ...) and {answer}, the answer.
WEB_WORDINGS: dict[str, tuple[str, ...]] = {
    "add": (
        "{a} plus {b} makes {answer}.",
        "{a} plus {b} is {answer}.",
        "Adding {a} to {b} gives {answer}.",
        "The total of {a} and {b} is {answer}.",
        "The sum of {a} and {b} is {answer}.",
        "{a} and {b} add up to {answer}.",
        "{a}+{b} is {answer}.",
    ),
    "sub": (
        "{a} take away {b} leaves {answer}.",
        "Taking {b} away from {a} leaves {answer}.",
        "{a} minus {b} is {answer}.",
        "{a} minus {b} equals {answer}.",
        "Subtracting {b} from {a} gives {answer}.",
        "{a}-{b} is {answer}.",
    ),
    "compare": (
        "Of {a} and {b}, the greater number is {answer}.",
        "{answer} is the larger one of {a} and {b}.",
        "The bigger of {a} and {b} is {answer}.",
        "Between {a} and {b}, {answer} is bigger.",
        "The max of {a} and {b} is {answer}.",
        "Of {a} or {b}, the larger is {answer}.",
    ),
    "sort": (
        "From small to large, {x} {y} {z} is {answer}.",
        "Arranged in rising order, {x}, {y} and {z} read {answer}.",
        "Sorted, {x} {y} {z} becomes {answer}.",
        "In order, {x} {y} {z} is {answer}.",
    ),
    "reverse": (
        "Reversed, the word {w} reads {answer}.",
        "Read from the end, {w} is {answer}.",
        "The reverse of {w} is {answer}.",
        "{w} spelled backwards is {answer}.",
        "Backwards, {w} reads {answer}.",
        "{w} reversed is {answer}.",
    ),
    "upper": (
        "In capital letters, {w} is {answer}.",
        "Shouted, {w} becomes {answer}.",
        "In capitals, {w} is {answer}.",
        "{w} in capitals is {answer}.",
        "The uppercase form of {w} is {answer}.",
        "Written in capitals, {w} becomes {answer}.",
    ),
    "count": (
        "Counting {c} in {w} gives {answer}.",
        "The letter {c} occurs in {w} this often: {answer}.",
        "There are {answer} {c}'s in {w}.",
        "The word {w} has {answer} of the letter {c}.",
    ),
    "first": (
        "The word {w} begins with {answer}.",
        "{w} opens with the letter {answer}.",
        "The first letter of {w} is {answer}.",
        "{w} starts with {answer}.",
    ),
    "last": (
        "The word {w} finishes with {answer}.",
        "{w} closes with the letter {answer}.",
        "The last letter of {w} is {answer}.",
        "{w} ends with {answer}.",
    ),
    "unit": (
        "{n} {big} equals {answer} {small}.",
        "There are {answer} {small} in {n} {big}.",
        "{n} {big} in {small} is {answer}.",
        "{n} {big} is {answer} {small}.",
        "Converted to {small}, {n} {big} is {answer}.",
    ),
    "fact": (
        "{a} is {r} than {b}, so {answer} is the {q} one.",
        "Since {a} is {r} than {b}, the {q} one is {answer}.",
        "If {a} is {r} than {b}, then {answer} is {q}.",
        "{a} is {r} than {b}. So the {q} is {answer}.",
    ),
}
_FILL = {family: next(t.fill for t in TEMPLATES.values() if t.family == family) for family in FAMILIES}


def to_alphabet(text: str, alphabet: str = ALPHABET) -> str:
    """`text` in the characters of `alphabet`: each run of newlines becomes one space, other characters are dropped."""
    allowed = set(alphabet)
    if " " not in allowed:
        raise ValueError("the alphabet has no space: newlines could not be mapped")
    text = " ".join(line for line in text.split("\n") if line)  # a run of newlines -> one space
    return "".join(ch for ch in text if ch in allowed)


def shakespeare_documents(n_chars: int | None, chunk_chars: int) -> list[str]:
    """The first `n_chars` characters of the book's Shakespeare (None: all), in the alphabet, cut into documents."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    text = to_alphabet(load_corpus("shakespeare"))[:n_chars]
    return [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]


def web_sentence(family: str, rng: random.Random) -> str:
    """One fact of `family` in prose: its fields drawn as the tasks draw them, written in one of WEB_WORDINGS."""
    if family not in WEB_WORDINGS:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    fields, answer = _FILL[family](rng)
    return rng.choice(WEB_WORDINGS[family]).format(**fields, answer=answer)


def web_documents(n_chars: int, rng: random.Random, sentences: tuple[int, int] = (4, 10)) -> list[str]:
    """Synthetic web pages of `sentences` (min, max) facts each, families mixed uniformly, until n_chars in all."""
    lo, hi = sentences
    if not 1 <= lo <= hi:
        raise ValueError(f"sentences must be (min, max) with 1 <= min <= max, got {sentences}")
    docs, total = [], 0
    while total < n_chars:
        doc = " ".join(web_sentence(rng.choice(FAMILIES), rng) for _ in range(rng.randint(lo, hi)))
        docs.append(doc)
        total += len(doc) + 1
    return docs


def pretraining_documents(
    shakespeare_chars: int | None, web_chars: int, chunk_chars: int, seed: int, sentences: tuple[int, int] = (4, 10)
) -> tuple[list[str], dict[str, int]]:
    """Shakespeare's documents and the web documents, shuffled together under `seed`; and their character counts."""
    rng = random.Random(seed)
    plays = shakespeare_documents(shakespeare_chars, chunk_chars)
    web = web_documents(web_chars, rng, sentences)
    docs = plays + web
    rng.shuffle(docs)
    counts = {
        "shakespeare_chars": sum(map(len, plays)),
        "web_chars": sum(map(len, web)),
        "web_documents": len(web),
        "documents": len(docs),
    }
    return docs, counts


def check_pretraining(documents: list[str], stream: list[int], tokenizer: ChatTokenizer, tests: list[Task]) -> int:
    """Raise unless the corpus holds no test prompt and the stream no marker id; returns the contamination count (0)."""
    dirty = contamination(documents, tests)
    if dirty:
        raise RuntimeError(
            f"{len(dirty)} test prompts occur in the pre-training text, e.g. {dirty[0].prompt!r}: "
            "the base model would have seen the test"
        )
    markers = set(tokenizer.role_ids.values()) | {tokenizer.end_id}
    if any(i in markers for i in stream):
        raise RuntimeError("a chat marker's id occurs in the pre-training stream: the base model must never see one")
    return len(dirty)


class ExperimentSplit(NamedTuple):
    """Training tasks, a validation set (seen wordings, never trained on), and the two tests."""

    train: list[Task]
    val: list[Task]
    test_seen: list[Task]
    test_held_out: list[Task]


def experiment_split(n_train: int, n_val: int, n_test: int, seed: int) -> ExperimentSplit:
    """`make_split(n_train + n_val, n_test, seed)` with its last n_val training draws (minus any prompt that the
    first n_train also hold) set aside for validation."""
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"n_train, n_val and n_test must be >= 1, got {n_train}, {n_val}, {n_test}")
    split = make_split(n_train + n_val, n_test, seed)
    train = split.train[:n_train]
    seen = {normalize(t.prompt) for t in train}
    val = [t for t in split.train[n_train:] if normalize(t.prompt) not in seen]
    return ExperimentSplit(train, val, split.test_seen, split.test_held_out)


def split_counts(split: ExperimentSplit) -> dict[str, Any]:
    """How many tasks each part holds, and how many distinct training prompts."""
    return {
        "train": len(split.train),
        "train_distinct_prompts": len({normalize(t.prompt) for t in split.train}),
        "val": len(split.val),
        "test_seen": len(split.test_seen),
        "test_held_out": len(split.test_held_out),
    }
