"""The quiz bank: load, validate and print the chapters' quizzes (course/quizzes/*.yml).

Usage:
    python tools/quizzes.py validate course/quizzes              # check every file; exit 1 on the first error
    python tools/quizzes.py render course/quizzes --out DIR      # student pages: questions only
    python tools/quizzes.py render course/quizzes --answers --out DIR   # instructor pages
    python tools/quizzes.py render course/quizzes [--answers] --html --out DIR   # the same as printable HTML

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

The HTML pages (render_html, write_html; `make course` writes both editions) are the same Markdown
rendered by markdown-it-py, one <section> per question that does not break across printed pages,
with the math typeset by MathJax from a copy beside the pages (vendored from npm by
`tools/book.py vendor`, so they need no network) and a print style sheet.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import math
import re
import shutil
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


def _summary(quiz: dict, answers: bool) -> str:
    """'Student edition: 12 questions, 6 multiple choice and 6 numeric.' (or the instructor edition's)."""
    questions = quiz["questions"]
    n_choice = sum(q["type"] == "choice" for q in questions)
    edition = "Instructor edition, with answers" if answers else "Student edition"
    return f"{edition}: {len(questions)} questions, {n_choice} multiple choice and {len(questions) - n_choice} numeric."


def _question_markdown(q: dict, number: int, answers: bool) -> tuple[list[str], list[str]]:
    """The Markdown lines of one question: (what every edition shows, the key: answer and explanation)."""
    kind = "multiple choice" if q["type"] == "choice" else "numeric"
    body = [f"## Question {number} ({kind})", ""]
    if answers:
        body += [f"*{q['id']}; objective: {q['objective'].strip()}*", ""]
    body += [q["question"].strip(), ""]
    key = []
    if q["type"] == "choice":
        body += [f"- **{LETTERS[i]}.** {choice.strip()}" for i, choice in enumerate(q["choices"])]
        body.append("")
        if answers:
            key += [f"**Answer:** {LETTERS[q['answer']]}. {q['choices'][q['answer']].strip()}", ""]
    elif answers:
        key += [
            f"**Answer:** {_format_number(q['answer'])} (accept within ± {_format_number(q['tolerance'])}; "
            f"computed as `{q['compute']}`)",
            "",
        ]
    else:
        body += ["Result: ____________________", ""]
    if answers:
        key += [f"**Explanation.** {q['explanation'].strip()}", ""]
    return body, key


def render_markdown(quiz: dict, answers: bool) -> str:
    """A printable quiz page in Markdown; answers and explanations only when answers=True."""
    lines = [f"# {quiz['title']} (quiz)", "", f"*{_summary(quiz, answers)}*", ""]
    for number, q in enumerate(quiz["questions"], start=1):
        body, key = _question_markdown(q, number, answers)
        lines += body + key
    return "\n".join(lines)


MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-chtml.js"
# what tex-chtml.js loads from its own folder: the TeX input's extensions, the CHTML fonts, the menu's
# accessibility parts (a third of the whole package, whose other entry points the pages do not use)
MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml", "a11y", "sre", "ui", "adaptors")
PAGE_CSS = """
body { font: 17px/1.5 Georgia, "Times New Roman", serif; color: #111; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.1rem; margin: 0 0 0.4rem; }
.edition { font-style: italic; margin-top: 0; }
.student-name { margin: 1.2rem 0; }
.question { border-top: 1px solid #999; padding: 0.8rem 0 0.4rem; break-inside: avoid; page-break-inside: avoid; }
.question ul { list-style: none; padding-left: 1.2rem; }
.question li { margin: 0.25rem 0; }
.key { border-left: 4px solid #2a6; background: #eef8f1; padding: 0.1rem 0.8rem; margin: 0.6rem 0; }
code { font-size: 0.9em; }
nav { font-family: sans-serif; font-size: 0.9rem; }
@page { margin: 1.8cm 1.6cm; }
@media print {
  body { font-size: 11pt; max-width: none; margin: 0; padding: 0; }
  nav { display: none; }
  a { color: inherit; text-decoration: none; }
  .key { background: none; border-left: 2px solid #000; }
}
"""
# the pages write math as \( \) and \[ \]: a dollar sign in the text stays a dollar sign
MATHJAX_CONFIG = "window.MathJax = {tex: {inlineMath: [['\\\\(', '\\\\)']], displayMath: [['\\\\[', '\\\\]']]}};"


def _markdown():
    """A CommonMark renderer whose $...$ and $$...$$ come out as MathJax's \\( \\) and \\[ \\], escaped."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    def math(content: str, options: dict) -> str:
        left, right = ("\\[", "\\]") if options["display_mode"] else ("\\(", "\\)")
        return html.escape(f"{left}{content.strip()}{right}", quote=False)

    return MarkdownIt("commonmark").enable("table").use(dollarmath_plugin, renderer=math)


def markdown_html(text: str) -> str:
    """Markdown with math as the quiz pages render it (for the pages, and for tests that look for a part)."""
    return _markdown().render(text)


def _page(title: str, body: str, mathjax_url: str, home: str | None) -> str:
    """A standalone HTML page with the print style sheet and MathJax."""
    nav = f'<nav><a href="{home}">All quizzes</a></nav>\n' if home else ""
    return (
        '<!DOCTYPE html>\n<html lang="en-GB">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{html.escape(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>{PAGE_CSS}</style>\n<script>{MATHJAX_CONFIG}</script>\n"
        f'<script defer src="{html.escape(mathjax_url)}"></script>\n</head>\n<body>\n{nav}{body}</body>\n</html>\n'
    )


def render_html(quiz: dict, answers: bool, mathjax_url: str = MATHJAX_CDN, home: str | None = None) -> str:
    """A printable quiz page in HTML, math typeset by MathJax; answers and explanations only when answers=True."""
    md = _markdown()
    parts = [
        f"<header>\n<h1>{html.escape(quiz['title'])} (quiz)</h1>\n",
        f'<p class="edition">{html.escape(_summary(quiz, answers))}</p>\n',
        "" if answers else '<p class="student-name">Name: ______________________ Date: ____________</p>\n',
        "</header>\n",
    ]
    for number, q in enumerate(quiz["questions"], start=1):
        body, key = _question_markdown(q, number, answers)
        parts.append(f'<section class="question" id="{html.escape(q["id"])}">\n{md.render(chr(10).join(body))}')
        if key:
            parts.append(f'<div class="key">\n{md.render(chr(10).join(key))}</div>\n')
        parts.append("</section>\n")
    return _page(f"{quiz['title']} (quiz)", "".join(parts), mathjax_url, home)


def index_html(pages: list[tuple[str, dict]], answers: bool, mathjax_url: str) -> str:
    """The page that links every quiz page: (file name, quiz) pairs."""
    edition = "instructor edition, with answers" if answers else "student edition"
    items = "\n".join(
        f'<li><a href="{html.escape(name)}">{html.escape(quiz["title"])}</a> ({len(quiz["questions"])} questions)</li>'
        for name, quiz in pages
    )
    body = f'<h1>LLM Principles: quizzes</h1>\n<p class="edition">The {edition}.</p>\n<ul>\n{items}\n</ul>\n'
    return _page(f"LLM Principles: quizzes ({edition})", body, mathjax_url, None)


def mathjax(out: Path) -> str:
    """Copy the vendored MathJax into `out`/_assets/mathjax (vendoring it first); return the pages' URL of it."""
    spec = importlib.util.spec_from_file_location("book", Path(__file__).with_name("book.py"))
    book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(book)
    book.vendor(quiet=True)
    source, target = book.STATIC / "mathjax", out / "_assets" / "mathjax"
    if not (source / "tex-chtml.js").is_file():
        notice = f"NOTICE: MathJax is not vendored (npm missing?): the quiz pages load it from {MATHJAX_CDN}"
        print(notice, file=sys.stderr)
        return MATHJAX_CDN
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)
    return "_assets/mathjax/tex-chtml.js"


def write_html(quizzes: list[dict], out: Path, answers: bool, suffix: str = "") -> list[Path]:
    """Write <chapter><suffix>.html for every quiz, index<suffix>.html and MathJax into `out`; return the pages."""
    out.mkdir(parents=True, exist_ok=True)
    url = mathjax(out)
    index = f"index{suffix}.html"
    pages = []
    for quiz in quizzes:
        path = out / f"{quiz['chapter']}{suffix}.html"
        path.write_text(render_html(quiz, answers, url, home=index), encoding="utf-8")
        pages.append(path)
    (out / index).write_text(index_html([(p.name, q) for p, q in zip(pages, quizzes)], answers, url), encoding="utf-8")
    return pages


def quiz_files(folder: str | Path) -> list[Path]:
    """The quiz files of a folder, in chapter order."""
    files = sorted(Path(folder).glob("*.yml"))
    if not files:
        raise ValueError(f"{folder}: no quiz files (*.yml)")
    return files


def main(argv: list[str] | None = None) -> int:
    """Command line: `validate FOLDER` or `render FOLDER [--answers] [--html] --out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check every quiz file of a folder")
    check.add_argument("folder", type=Path)
    render = sub.add_parser("render", help="write one Markdown page per chapter")
    render.add_argument("folder", type=Path)
    render.add_argument("--answers", action="store_true", help="the instructor edition, with answers")
    render.add_argument("--out", type=Path, required=True, help="the folder for the pages")
    render.add_argument("--html", action="store_true", help="HTML pages with MathJax and an index, for printing")
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
    if args.html:
        for path in write_html(quizzes, args.out, answers=args.answers, suffix=suffix):
            print(f"wrote {path}")
        return 0
    for quiz in quizzes:
        target = args.out / f"{quiz['chapter']}{suffix}.md"
        target.write_text(render_markdown(quiz, answers=args.answers), encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
