"""The quiz bank: load, validate and print the chapters' quizzes (course/quizzes/*.yml).

Usage:
    python tools/quizzes.py validate course/quizzes              # check every file; exit 1 on the first error
    python tools/quizzes.py render course/quizzes --out DIR      # student pages: questions only
    python tools/quizzes.py render course/quizzes --answers --out DIR   # instructor pages

One YAML file per chapter, named after the chapter's notebook (01_language_models.yml), holds
`chapter`, `title` and a list of `questions`. A question is either
    type: choice    four `choices` and `answer`, the 0-based index of the correct one, or
    type: numeric   a number `answer`, an absolute `tolerance` accepted in grading, and `compute`,
                    a Python expression that computes the answer from the question's givens.
Every question also has an `id` (<chapter number>-q<two digits>), an `objective`, the `question`
(Markdown, math in $...$) and an `explanation` for the instructor.

A numeric answer cannot drift from its calculation: `compute` is evaluated with only `math` and a
few arithmetic built-ins in scope, and must satisfy |compute - answer| <= tolerance / 10, a tenth of
what a student is allowed. Answers and explanations appear only in the instructor edition
(render_markdown(quiz, answers=True)); the student edition has neither, nor the word "Answer".
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import yaml

TOP_KEYS = {"chapter", "title", "questions"}
COMMON_KEYS = {"id", "type", "objective", "question", "answer", "explanation"}
QUESTION_KEYS = {"choice": COMMON_KEYS | {"choices"}, "numeric": COMMON_KEYS | {"tolerance", "compute"}}
N_CHOICES = 4
LETTERS = "ABCD"
SOURCE = "source"  # set by load_quiz: the file the quiz came from, for error messages
# the built-ins a `compute` expression may use besides `math`
SAFE_BUILTINS = {f.__name__: f for f in (abs, round, min, max, sum, pow, int, float)}


def _where(quiz: dict, qid: str | None = None) -> str:
    """'file' or 'file, question id' for an error message."""
    name = quiz.get(SOURCE, "<quiz>")
    return f"{name}, question {qid}" if qid else str(name)


def load_quiz(path: str | Path) -> dict:
    """Read one quiz file; the returned dict records the file under the key 'source'."""
    path = Path(path)
    try:
        quiz = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(quiz, dict):
        raise ValueError(f"{path}: a quiz file must hold a mapping with chapter, title and questions")
    quiz[SOURCE] = str(path)
    return quiz


def _is_number(x: object) -> bool:
    """True for a finite int or float (a bool is not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_compute(question: dict) -> float:
    """Evaluate a numeric question's `compute` and check it against `answer`; return the computed value."""
    qid = question.get("id", "?")
    expr = question.get("compute")
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"question {qid}: `compute` must be a non-empty Python expression")
    if "__" in expr:
        raise ValueError(f"question {qid}: `compute` may not use dunder names: {expr!r}")
    try:
        value = eval(expr, {"__builtins__": SAFE_BUILTINS, "math": math})  # our own data files, few names
    except Exception as err:  # any failure of the expression is a data error
        raise ValueError(f"question {qid}: `compute` {expr!r} fails: {type(err).__name__}: {err}") from None
    if not _is_number(value):
        raise ValueError(f"question {qid}: `compute` {expr!r} gives {value!r}, not a finite number")
    answer, tolerance = question.get("answer"), question.get("tolerance")
    if not _is_number(answer) or not _is_number(tolerance) or tolerance <= 0:
        raise ValueError(f"question {qid}: needs a numeric `answer` and a positive `tolerance`")
    if abs(value - answer) > tolerance / 10:
        raise ValueError(
            f"question {qid}: `compute` {expr!r} gives {value!r}, but the answer is {answer!r} "
            f"(allowed gap tolerance / 10 = {tolerance / 10:g})"
        )
    return float(value)


def _check_text(quiz: dict, qid: str, question: dict, key: str) -> None:
    """A required field must be a non-empty string."""
    value = question.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{_where(quiz, qid)}: `{key}` must be a non-empty string")


def _validate_question(quiz: dict, question: object, index: int, prefix: str) -> str:
    """Check one question; return its id."""
    if not isinstance(question, dict):
        raise ValueError(f"{_where(quiz)}: question {index + 1} is not a mapping")
    qid = question.get("id")
    if not isinstance(qid, str) or not re.fullmatch(rf"{prefix}-q\d\d", qid):
        raise ValueError(f"{_where(quiz)}: question {index + 1} has id {qid!r}, expected {prefix}-qNN")
    kind = question.get("type")
    if kind not in QUESTION_KEYS:
        raise ValueError(f"{_where(quiz, qid)}: type {kind!r} is not 'choice' or 'numeric'")
    keys = set(question)
    if missing := QUESTION_KEYS[kind] - keys:
        raise ValueError(f"{_where(quiz, qid)}: missing {', '.join(sorted(missing))}")
    if unknown := keys - QUESTION_KEYS[kind]:
        raise ValueError(f"{_where(quiz, qid)}: unknown field(s) {', '.join(sorted(unknown))} for a {kind} question")
    for key in ("objective", "question", "explanation"):
        _check_text(quiz, qid, question, key)
    if kind == "choice":
        choices = question["choices"]
        if not isinstance(choices, list) or len(choices) != N_CHOICES:
            raise ValueError(f"{_where(quiz, qid)}: `choices` must be a list of {N_CHOICES} options")
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"{_where(quiz, qid)}: every choice must be a non-empty string")
        if len({c.strip() for c in choices}) != N_CHOICES:
            raise ValueError(f"{_where(quiz, qid)}: two choices are identical")
        answer = question["answer"]
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < N_CHOICES:
            raise ValueError(f"{_where(quiz, qid)}: answer {answer!r} is not a choice index 0..{N_CHOICES - 1}")
    else:
        try:
            check_compute(question)
        except ValueError as err:
            raise ValueError(f"{_where(quiz)}, {err}") from None
    return qid


def validate(quiz: dict) -> None:
    """Check a loaded quiz; raise ValueError naming the file, the question id and the problem."""
    if missing := TOP_KEYS - set(quiz):
        raise ValueError(f"{_where(quiz)}: missing {', '.join(sorted(missing))}")
    if unknown := set(quiz) - TOP_KEYS - {SOURCE}:
        raise ValueError(f"{_where(quiz)}: unknown top-level field(s) {', '.join(sorted(unknown))}")
    chapter, title, questions = quiz["chapter"], quiz["title"], quiz["questions"]
    if not isinstance(chapter, str) or not re.fullmatch(r"\d\d_[a-z0-9_]+", chapter):
        raise ValueError(f"{_where(quiz)}: chapter {chapter!r} is not a notebook stem such as 01_language_models")
    if SOURCE in quiz and Path(quiz[SOURCE]).stem != chapter:
        raise ValueError(f"{_where(quiz)}: the file name does not match chapter {chapter!r}")
    number = int(chapter[:2])
    if not isinstance(title, str) or not title.startswith(f"Chapter {number}: "):
        raise ValueError(f"{_where(quiz)}: title {title!r} must start with 'Chapter {number}: '")
    if not isinstance(questions, list) or not questions:
        raise ValueError(f"{_where(quiz)}: `questions` must be a non-empty list")
    seen = set()
    for index, question in enumerate(questions):
        qid = _validate_question(quiz, question, index, chapter[:2])
        if qid in seen:
            raise ValueError(f"{_where(quiz, qid)}: duplicate id")
        seen.add(qid)


def _format_number(x: float) -> str:
    """A number as a teacher would write it: integers without '.0', others with up to 6 significant digits."""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.6g}"


def render_markdown(quiz: dict, answers: bool) -> str:
    """A printable quiz page in Markdown; answers and explanations only when answers=True."""
    questions = quiz["questions"]
    n_choice = sum(q["type"] == "choice" for q in questions)
    edition = "Instructor edition, with answers" if answers else "Student edition"
    lines = [
        f"# {quiz['title']} (quiz)",
        "",
        f"*{edition}: {len(questions)} questions, {n_choice} multiple choice and {len(questions) - n_choice} numeric.*",
        "",
    ]
    for number, q in enumerate(questions, start=1):
        kind = "multiple choice" if q["type"] == "choice" else "numeric"
        lines += [f"## Question {number} ({kind})", ""]
        if answers:
            lines += [f"*{q['id']}; objective: {q['objective'].strip()}*", ""]
        lines += [q["question"].strip(), ""]
        if q["type"] == "choice":
            lines += [f"- **{LETTERS[i]}.** {choice.strip()}" for i, choice in enumerate(q["choices"])]
            lines.append("")
            if answers:
                lines += [f"**Answer:** {LETTERS[q['answer']]}. {q['choices'][q['answer']].strip()}", ""]
        elif answers:
            lines += [
                f"**Answer:** {_format_number(q['answer'])} (accept within ± {_format_number(q['tolerance'])}; "
                f"computed as `{q['compute']}`)",
                "",
            ]
        else:
            lines += ["Result: ____________________", ""]
        if answers:
            lines += [f"**Explanation.** {q['explanation'].strip()}", ""]
    return "\n".join(lines)


def quiz_files(folder: str | Path) -> list[Path]:
    """The quiz files of a folder, in chapter order."""
    files = sorted(Path(folder).glob("*.yml"))
    if not files:
        raise ValueError(f"{folder}: no quiz files (*.yml)")
    return files


def main(argv: list[str] | None = None) -> int:
    """Command line: `validate FOLDER` or `render FOLDER [--answers] --out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check every quiz file of a folder")
    check.add_argument("folder", type=Path)
    render = sub.add_parser("render", help="write one Markdown page per chapter")
    render.add_argument("folder", type=Path)
    render.add_argument("--answers", action="store_true", help="the instructor edition, with answers")
    render.add_argument("--out", type=Path, required=True, help="the folder for the .md pages")
    args = parser.parse_args(argv)
    try:
        quizzes = [load_quiz(path) for path in quiz_files(args.folder)]
        for quiz in quizzes:
            validate(quiz)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.command == "validate":
        for quiz in quizzes:
            print(f"{quiz[SOURCE]}: {len(quiz['questions'])} questions, valid")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_answers" if args.answers else ""
    for quiz in quizzes:
        target = args.out / f"{quiz['chapter']}{suffix}.md"
        target.write_text(render_markdown(quiz, answers=args.answers), encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
