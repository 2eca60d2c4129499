"""Tests of companion.posttraining.tasks: checkable tasks, the verifier, the split and contamination."""

from __future__ import annotations

import random
import string

import pytest

from companion.posttraining.tasks import (
    ALPHABET,
    FAMILIES,
    HELD_OUT_TEMPLATES,
    MAX_ANSWER_CHARS,
    MAX_PROMPT_CHARS,
    SEEN_TEMPLATES,
    TEMPLATES,
    Task,
    check,
    contamination,
    make_split,
    normalize,
    reward,
    sample_tasks,
)

DRAWS = 300  # tasks drawn per template


def draws(template: str, n: int = DRAWS, seed: int = 0) -> list[Task]:
    rng = random.Random(seed)
    return [TEMPLATES[template](rng) for _ in range(n)]


def wrong_answers(task: Task) -> list[str]:
    """Responses that must be rejected: off by one, an extra character, the wrong case, the word unreversed."""
    a = task.answer
    out = [a + "a", a + " 1", "", a[:-1] if len(a) > 1 else "x"]
    if a.lstrip("-").isdigit():
        out += [str(int(a) + 1), str(int(a) - 1), f"+{a}", f"{a}.0"]
    if a.isalpha():
        out.append(a.swapcase())
    if task.family == "reverse":
        out.append(a[::-1])  # the word as given
    if task.family == "fact":
        names = [w.strip(".,?") for w in task.prompt.split() if w[0].isupper() and w not in ("Who", "If")]
        assert a in names and len(names) == 2
        out.append(next(name for name in names if name != a))  # the other person
    if task.family == "sort":
        out += [a.replace(" ", ""), a.replace(" ", ",")]
    return out


def test_alphabet_is_printable_ascii():
    assert ALPHABET == "".join(sorted(set(ALPHABET)))
    assert set(ALPHABET) == set(string.printable) - set("\t\n\r\x0b\x0c")


def test_registry_families_and_held_out_templates():
    assert set(FAMILIES) == {t.family for t in TEMPLATES.values()}
    for family in FAMILIES:
        wordings = [t for t in TEMPLATES if TEMPLATES[t].family == family]
        assert len(wordings) >= 2, family
        assert any(t in SEEN_TEMPLATES for t in wordings), f"{family} has no wording left for training"
    held_families = {TEMPLATES[t].family for t in HELD_OUT_TEMPLATES}
    assert len(held_families) >= 5 and set(HELD_OUT_TEMPLATES) <= set(TEMPLATES)
    assert set(SEEN_TEMPLATES) | set(HELD_OUT_TEMPLATES) == set(TEMPLATES)
    assert not set(SEEN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    for tid, template in TEMPLATES.items():
        assert tid == template.id and tid.startswith(template.family + "/")


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_every_template_answers_its_own_check_and_rejects_wrong_ones(template):
    for task in draws(template):
        assert task.template == template and task.family == TEMPLATES[template].family
        assert check(task, task.answer) and reward(task, task.answer) == 1.0
        assert check(task, f"  {task.answer}\n")  # surrounding whitespace is ignored
        for wrong in wrong_answers(task):
            assert not check(task, wrong), (task, wrong)
            assert reward(task, wrong) == 0.0
        assert set(task.prompt + task.answer) <= set(ALPHABET)
        assert 0 < len(task.prompt) <= MAX_PROMPT_CHARS and 0 < len(task.answer) <= MAX_ANSWER_CHARS


def test_answers_are_right():
    """The canonical answers, recomputed from the prompts by a second route."""
    rng = random.Random(1)
    for _ in range(200):
        t = TEMPLATES["add/plain"](rng)
        a, b = t.prompt.removeprefix("What is ").removesuffix("?").split("+")
        assert int(t.answer) == int(a) + int(b)
        t = TEMPLATES["sub/words"](rng)
        b, a = t.prompt.removeprefix("Subtract ").removesuffix(".").split(" from ")
        assert int(t.answer) == int(a) - int(b) >= 0
        t = TEMPLATES["sort/plain"](rng)
        assert t.answer.split() == sorted(t.prompt.removeprefix("Sort ").removesuffix(".").split())
        t = TEMPLATES["reverse/plain"](rng)
        assert t.answer == "".join(reversed(t.prompt.removeprefix("Reverse ").removesuffix(".")))
        t = TEMPLATES["count/plain"](rng)
        letter, word = t.prompt.removeprefix("How many ").removesuffix("?").split("'s in ")
        assert int(t.answer) == word.count(letter)
        t = TEMPLATES["unit/convert"](rng)
        n, big, _, small = t.prompt.removeprefix("Convert ").removesuffix(".").split()
        factor = {("m", "cm"): 100, ("km", "m"): 1000, ("kg", "g"): 1000, ("cm", "mm"): 10, ("L", "mL"): 1000}
        assert int(t.answer) == int(n) * factor.get((big, small), 60)
        t = TEMPLATES["fact/who"](rng)  # "A is r than B. Who is q?": A when q is r, else B
        fact, question = t.prompt.split(". Who is ")
        first, relation, _, second = fact.split(" ")[0], fact.split(" ")[2], fact.split(" ")[3], fact.split(" ")[4]
        assert t.answer == (first if question.rstrip("?") == relation else second)
    assert check(Task("fact", "fact/who", "Ann is taller than Bob. Who is shorter?", "Bob"), "Bob")


def test_numbers_compare_as_integers():
    task = Task("add", "add/plain", "What is 3+4?", "7")
    assert check(task, "7") and check(task, "07") and check(task, " 007 ")  # equal as integers
    assert not check(task, "+7") and not check(task, "7.0") and not check(task, "seven") and not check(task, "7 7")
    assert not check(task, "\u0667")  # ARABIC-INDIC DIGIT SEVEN: int() reads it, the verifier does not
    assert check(Task("sub", "sub/plain", "What is 3-3?", "0"), "-0")
    word = Task("first", "first/plain", "First letter of bob?", "b")
    assert check(word, "b") and not check(word, "B") and not check(word, "b.")
    with pytest.raises(TypeError, match="str"):
        check(task, 7)


def test_deterministic_under_a_seed():
    for template in TEMPLATES:
        assert draws(template, 20, seed=5) == draws(template, 20, seed=5)
    assert make_split(200, 30, seed=2) == make_split(200, 30, seed=2)
    assert make_split(200, 30, seed=2) != make_split(200, 30, seed=3)
    assert sample_tasks(50, rng=7) == sample_tasks(50, rng=random.Random(7))


def test_split_holds_out_templates_and_is_decontaminated():
    train, seen, held = make_split(4000, 300, seed=0)
    assert (len(train), len(seen), len(held)) == (4000, 300, 300)
    assert not {t.template for t in train} & set(HELD_OUT_TEMPLATES)
    assert {t.template for t in train} == set(SEEN_TEMPLATES)  # every seen wording is trained on
    assert {t.template for t in seen} <= set(SEEN_TEMPLATES) and {t.template for t in held} == set(HELD_OUT_TEMPLATES)
    tests = seen + held
    assert len({normalize(t.prompt) for t in tests}) == len(tests)  # test items are unique
    assert not {normalize(t.prompt) for t in tests} & {normalize(t.prompt) for t in train}
    assert contamination(train, tests) == []
    assert {t.family for t in seen} == set(FAMILIES)
    # The same draws without the decontamination would leak: the split's filter is doing work.
    raw = sample_tasks(4000, SEEN_TEMPLATES, random.Random(0))
    assert len(contamination(raw, seen)) > 10


def test_contamination_finds_planted_items():
    train, seen, held = make_split(500, 50, seed=1)
    planted = train + [seen[7]]
    assert contamination(planted, seen) == [seen[7]]
    # Normalisation: case and whitespace do not hide a copy; a test prompt inside a longer document counts.
    doc = "Q:  " + held[3].prompt.upper().replace(" ", "   ") + "\nA: " + held[3].answer
    assert contamination(train + [doc], held) == [held[3]]
    assert contamination(["What is 13+4?"], [Task("add", "add/plain", "What is 3+4?", "7")]) == []
    assert contamination(["13 plus 4 = 17"], ["3 plus 4 ="]) == ["3 plus 4 ="]  # a substring is a substring
    with pytest.raises(ValueError, match="empty prompt"):
        contamination(train, ["  "])
    with pytest.raises(TypeError, match="Task or a str"):
        contamination([3], seen)


def test_sample_tasks_errors_and_uniqueness():
    tasks = sample_tasks(500, ["sort/plain"], rng=0, unique=True)
    assert len({t.prompt for t in tasks}) == 500
    excluded = sample_tasks(100, ["sort/plain"], rng=1, exclude=[t.prompt for t in tasks])
    assert not {t.prompt for t in excluded} & {t.prompt for t in tasks}
    with pytest.raises(ValueError, match="could draw only 1000 of 1001 distinct"):
        sample_tasks(1001, ["sort/plain"], rng=0, unique=True)  # 10^3 digit triples exist
    with pytest.raises(ValueError, match="unknown task template 'add/nope'"):
        sample_tasks(3, ["add/nope"])
    with pytest.raises(ValueError, match="no task templates"):
        sample_tasks(3, [])
    with pytest.raises(ValueError, match="negative"):
        sample_tasks(-1)
