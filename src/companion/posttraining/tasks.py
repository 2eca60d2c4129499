"""Checkable instruction tasks: prompts with one canonical answer that a program verifies.

A task is a short prompt (at most MAX_PROMPT_CHARS characters) and its canonical answer (at most
MAX_ANSWER_CHARS), made by a program so that every answer can be checked. Tasks come in *families*
(a skill: add, sub, compare, sort, reverse, upper, count, first, last, unit, fact) and each family in
several *templates* (wordings of the same skill): "What is 3+4?" (add/plain), "Add 3 and 4." (add/words),
"3 plus 4 =" (add/eq). Every character a task can hold is printable ASCII (ALPHABET), so a
character-level tokenizer covers them all.

The verifier is the reward of a verifiable task,

    r(x, y) = 1[check(x, y)],

where check strips surrounding whitespace and compares the response with the canonical answer: exactly
for words, and as integers for numbers (written as an optional "-" and the digits 0-9), so "07" and "7"
are the same answer while "+7", "7.0" and "seven" are wrong.

Generalisation is measured on a declared split. HELD_OUT_TEMPLATES are wordings that never appear in
training: `make_split` draws the held-out test from them, a seen-wording test from the other templates,
then the training set from the seen templates, *decontaminated* against both tests (Sainz et al. 2023,
arXiv:2310.18018): a training prompt is redrawn when a test prompt occurs inside it. `contamination`
is the check the chapter asserts: the test items whose normalised prompt (lower case, whitespace collapsed)
is a substring of some normalised training document. Everything is deterministic given a seed.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ALPHABET",
    "FAMILIES",
    "HELD_OUT_TEMPLATES",
    "MAX_ANSWER_CHARS",
    "MAX_PROMPT_CHARS",
    "SEEN_TEMPLATES",
    "TEMPLATES",
    "Split",
    "Task",
    "TaskTemplate",
    "check",
    "contamination",
    "documents_containing",
    "make_split",
    "normalize",
    "reward",
    "sample_tasks",
]

ALPHABET = "".join(chr(c) for c in range(32, 127))  # printable ASCII: " " to "~", 95 characters
MAX_PROMPT_CHARS = 44
MAX_ANSWER_CHARS = 12


@dataclass(frozen=True)
class Task:
    """One instruction: its family (skill), template (wording) id, prompt and canonical answer."""

    family: str
    template: str
    prompt: str
    answer: str


# ----------------------------------------------------------------------------- what the tasks are made of

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_NAMES = ("Ann", "Bob", "Cal", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea")
_NAMES += ("Max", "Ned", "Oda", "Pam", "Ray", "Sam", "Tom", "Uma", "Val", "Wes", "Zoe")
_RELATIONS = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"), ("heavier", "lighter"))
# (large unit, small unit, small units per large unit, largest count asked)
_UNITS = (
    ("m", "cm", 100, 99),
    ("km", "m", 1000, 99),
    ("kg", "g", 1000, 99),
    ("cm", "mm", 10, 99),
    ("L", "mL", 1000, 99),
    ("h", "min", 60, 12),
    ("min", "s", 60, 12),
)

Fields = dict[str, object]


def _word(rng: random.Random) -> str:
    """A pronounceable made-up word of 3-6 lower-case letters (consonants and vowels alternate)."""
    n = rng.randint(3, 6)
    vowel = rng.random() < 0.3
    letters = []
    for _ in range(n):
        letters.append(rng.choice(_VOWELS if vowel else _CONSONANTS))
        vowel = not vowel
    return "".join(letters)


def _fill_add(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"a": a, "b": b}, str(a + b)


def _fill_sub(rng: random.Random) -> tuple[Fields, str]:
    a = rng.randint(0, 99)
    b = rng.randint(0, a)  # a - b >= 0
    return {"a": a, "b": b}, str(a - b)


def _fill_compare(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.sample(range(100), 2)  # two different numbers
    return {"a": a, "b": b}, str(max(a, b))


def _fill_sort(rng: random.Random) -> tuple[Fields, str]:
    digits = [rng.randint(0, 9) for _ in range(3)]
    return {"x": digits[0], "y": digits[1], "z": digits[2]}, " ".join(str(d) for d in sorted(digits))


def _fill_reverse(rng: random.Random) -> tuple[Fields, str]:
    w = _word(rng)
    while w == w[::-1]:  # a palindrome would reward copying the word
        w = _word(rng)
    return {"w": w}, w[::-1]


def _fill_upper(rng: random.Random) -> tuple[Fields, str]:
    w = _word(rng)
    return {"w": w}, w.upper()


def _fill_count(rng: random.Random) -> tuple[Fields, str]:
    w = _word(rng)
    c = rng.choice(w) if rng.random() < 0.75 else rng.choice(_CONSONANTS + _VOWELS)  # sometimes absent: 0
    return {"w": w, "c": c}, str(w.count(c))


def _fill_first(rng: random.Random) -> tuple[Fields, str]:
    w = _word(rng)
    return {"w": w}, w[0]


def _fill_last(rng: random.Random) -> tuple[Fields, str]:
    w = _word(rng)
    return {"w": w}, w[-1]


def _fill_unit(rng: random.Random) -> tuple[Fields, str]:
    big, small, factor, most = rng.choice(_UNITS)
    n = rng.randint(1, most)
    return {"n": n, "big": big, "small": small}, str(n * factor)


def _fill_fact(rng: random.Random) -> tuple[Fields, str]:
    a, b = rng.sample(_NAMES, 2)
    pair = rng.choice(_RELATIONS)
    r, q = rng.choice(pair), rng.choice(pair)  # "a is r than b. Who is q?"
    return {"a": a, "b": b, "r": r, "q": q}, a if q == r else b


# family -> (how to draw the fields and the answer, {wording name: prompt})
_FAMILIES: dict[str, tuple[Callable[[random.Random], tuple[Fields, str]], dict[str, str]]] = {
    "add": (
        _fill_add,
        {
            "plain": "What is {a}+{b}?",
            "words": "Add {a} and {b}.",
            "eq": "{a} plus {b} =",
            "sum": "What is the sum of {a} and {b}?",
        },
    ),
    "sub": (_fill_sub, {"plain": "What is {a}-{b}?", "words": "Subtract {b} from {a}.", "eq": "{a} minus {b} ="}),
    "compare": (
        _fill_compare,
        {"larger": "Which is larger, {a} or {b}?", "max": "max({a}, {b}) =", "bigger": "Is {a} or {b} bigger?"},
    ),
    "sort": (_fill_sort, {"plain": "Sort {x} {y} {z}.", "order": "Put {x} {y} {z} in order."}),
    "reverse": (_fill_reverse, {"plain": "Reverse {w}.", "back": "Spell {w} backwards.", "colon": "reverse: {w}"}),
    "upper": (_fill_upper, {"plain": "Uppercase {w}.", "caps": "Write {w} in capitals."}),
    "count": (_fill_count, {"plain": "How many {c}'s in {w}?", "letter": "Count the letter {c} in {w}."}),
    "first": (_fill_first, {"plain": "First letter of {w}?", "starts": "What letter does {w} start with?"}),
    "last": (_fill_last, {"plain": "Last letter of {w}?", "ends": "What letter does {w} end with?"}),
    "unit": (
        _fill_unit,
        {
            "howmany": "How many {small} in {n} {big}?",
            "convert": "Convert {n} {big} to {small}.",
            "eq": "{n} {big} in {small} =",
        },
    ),
    "fact": (_fill_fact, {"who": "{a} is {r} than {b}. Who is {q}?", "if": "If {a} is {r} than {b}, who is {q}?"}),
}


@dataclass(frozen=True)
class TaskTemplate:
    """One wording of a family: calling it with a `random.Random` draws a Task."""

    id: str
    family: str
    text: str
    fill: Callable[[random.Random], tuple[Fields, str]]

    def __call__(self, rng: random.Random) -> Task:
        """Draw the fields, fill the wording in, return the Task."""
        fields, answer = self.fill(rng)
        return Task(self.family, self.id, self.text.format(**fields), answer)


FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
TEMPLATES: dict[str, TaskTemplate] = {
    f"{family}/{name}": TaskTemplate(f"{family}/{name}", family, text, fill)
    for family, (fill, wordings) in _FAMILIES.items()
    for name, text in wordings.items()
}
# One wording of seven families never appears in training: the test asks familiar skills in unseen words.
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "add/sum",
    "sub/eq",
    "compare/bigger",
    "reverse/colon",
    "upper/caps",
    "unit/eq",
    "fact/if",
)
SEEN_TEMPLATES: tuple[str, ...] = tuple(t for t in TEMPLATES if t not in HELD_OUT_TEMPLATES)


# ----------------------------------------------------------------------------- the verifier

_INTEGER = re.compile(r"-?[0-9]+")  # [0-9], not \d: "٧" is a digit to Python's int() but not an answer here


def check(task: Task, response: str) -> bool:
    """Is `response` the task's answer? Whitespace around it is ignored; numbers compare as integers."""
    if not isinstance(response, str):
        raise TypeError(f"a response is a str, got {type(response).__name__}")
    got = response.strip()
    if _INTEGER.fullmatch(task.answer):
        return _INTEGER.fullmatch(got) is not None and int(got) == int(task.answer)
    return got == task.answer


def reward(task: Task, response: str) -> float:
    """The verifiable reward: 1.0 when `check` accepts the response, else 0.0."""
    return 1.0 if check(task, response) else 0.0


# ----------------------------------------------------------------------------- drawing tasks and the split


def normalize(text: str) -> str:
    """Lower case, runs of whitespace collapsed to one space, ends stripped: the form contamination compares."""
    return " ".join(text.lower().split())


def _templates_by_family(templates: Iterable[str]) -> dict[str, list[str]]:
    """Group template ids by family (in registry order); an unknown id raises."""
    groups: dict[str, list[str]] = {}
    for t in templates:
        if t not in TEMPLATES:
            raise ValueError(f"unknown task template {t!r}; known: {', '.join(TEMPLATES)}")
        groups.setdefault(TEMPLATES[t].family, []).append(t)
    if not groups:
        raise ValueError("no task templates to draw from")
    return groups


def sample_tasks(
    n: int,
    templates: Sequence[str] = SEEN_TEMPLATES,
    rng: random.Random | int = 0,
    unique: bool = False,
    exclude: Iterable[str] = (),
) -> list[Task]:
    """Draw n tasks: a family uniformly, then one of its `templates` uniformly, then the fields.

    `rng` is a `random.Random` (advanced in place) or a seed. With `unique` no two tasks share a
    normalised prompt; prompts in `exclude` (compared normalised) are never drawn.
    """
    if n < 0:
        raise ValueError(f"cannot draw a negative number of tasks ({n})")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    groups = _templates_by_family(templates)
    families = list(groups)
    banned = {normalize(p) for p in exclude}
    out: list[Task] = []
    tries, max_tries = 0, 100 * n + 1000
    while len(out) < n:
        if tries == max_tries:
            raise ValueError(
                f"could draw only {len(out)} of {n} {'distinct ' if unique else ''}allowed tasks from "
                f"{len(groups)} families in {max_tries} tries: ask for fewer"
            )
        tries += 1
        task = TEMPLATES[rng.choice(groups[rng.choice(families)])](rng)
        key = normalize(task.prompt)
        if key in banned:
            continue
        if unique:
            banned.add(key)
        out.append(task)
    return out


class Split(NamedTuple):
    """The declared split: training tasks, a test in seen wordings, a test in held-out wordings."""

    train: list[Task]
    test_seen: list[Task]
    test_held_out: list[Task]


def _document(item: Task | str) -> str:
    """The text a training item contributes: a Task's prompt, or a document given as a string."""
    if isinstance(item, Task):
        return item.prompt
    if isinstance(item, str):
        return item
    raise TypeError(f"a training or test item is a Task or a str, got {type(item).__name__}")


def documents_containing(documents: Sequence[str], needles: Iterable[str]) -> set[int]:
    """Indices of the (normalised) documents that contain at least one (normalised) needle."""
    starts, pos = [], 0
    for d in documents:
        starts.append(pos)
        pos += len(d) + 1
    joined = "\n".join(documents)  # normalised text has no newline, so no needle spans two documents
    hits: set[int] = set()
    for needle in set(needles):
        at = joined.find(needle)
        while at != -1:
            hits.add(bisect_right(starts, at) - 1)
            at = joined.find(needle, at + 1)
    return hits


def contamination(train: Sequence[Task | str], test: Sequence[Task | str]) -> list[Task | str]:
    """The test items whose normalised prompt is a substring of a normalised training document.

    A Task's document is its prompt; a string is a document as it stands (a rendered chat, a page
    of a pre-training corpus). Equal prompts count, as every string contains itself.
    """
    needles = [normalize(_document(t)) for t in test]
    for i, needle in enumerate(needles):
        if not needle:
            raise ValueError(f"test item {i} has an empty prompt: it would occur in every document")
    joined = "\n".join(normalize(_document(d)) for d in train)
    return [item for item, needle in zip(test, needles) if needle in joined]


def make_split(n_train: int, n_test: int, seed: int = 0) -> Split:
    """Draw the held-out test, the seen-wording test (each of distinct prompts), then a decontaminated train.

    Training tasks are independent draws from SEEN_TEMPLATES (a prompt may repeat, as in real data),
    redrawn whenever a test prompt occurs inside them, so `contamination(train, tests)` is empty.
    """
    rng = random.Random(seed)
    test_held_out = sample_tasks(n_test, HELD_OUT_TEMPLATES, rng, unique=True)
    test_seen = sample_tasks(n_test, SEEN_TEMPLATES, rng, unique=True)
    test_prompts = [normalize(t.prompt) for t in test_seen + test_held_out]
    train: list[Task] = []
    for _ in range(100):
        batch = sample_tasks(n_train - len(train), SEEN_TEMPLATES, rng)
        dirty = documents_containing([normalize(t.prompt) for t in batch], test_prompts)
        train += [t for i, t in enumerate(batch) if i not in dirty]
        if len(train) == n_train:
            return Split(train, test_seen, test_held_out)
    raise ValueError(
        f"could not draw {n_train} training tasks that avoid {len(test_prompts)} test prompts: ask for fewer"
    )
