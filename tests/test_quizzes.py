"""The quiz bank (course/quizzes/*.yml) and its tool, tools/quizzes.py.

Every file validates; every chapter has at least ten questions of both kinds; every numeric answer
equals its `compute` expression; the student page hides answers and explanations while the
instructor page shows them all, in Markdown and in HTML; every notebook has a quiz and every quiz a
notebook. One browser test opens an instructor HTML page in headless Chromium: MathJax, copied
beside the page, typesets every formula and nothing is requested from another host.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser import serve

ROOT = Path(__file__).resolve().parents[1]
QUIZ_DIR = ROOT / "course" / "quizzes"
NOTEBOOKS = ROOT / "notebooks"

_spec = importlib.util.spec_from_file_location("quizzes", ROOT / "tools" / "quizzes.py")
quizzes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quizzes)

QUIZ_FILES = sorted(QUIZ_DIR.glob("*.yml"))
QUIZZES = {path.stem: quizzes.load_quiz(path) for path in QUIZ_FILES}
NUMERIC = [(stem, q) for stem, quiz in QUIZZES.items() for q in quiz["questions"] if q["type"] == "numeric"]


def test_there_are_quiz_files():
    assert QUIZ_FILES, f"no quiz files in {QUIZ_DIR}"


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_quiz_validates(stem):
    quizzes.validate(QUIZZES[stem])


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_at_least_ten_questions_of_both_kinds(stem):
    kinds = [q["type"] for q in QUIZZES[stem]["questions"]]
    assert len(kinds) >= 10, f"{stem}: {len(kinds)} questions"
    assert kinds.count("choice") >= 4 and kinds.count("numeric") >= 4, f"{stem}: {kinds}"


@pytest.mark.parametrize(("stem", "question"), NUMERIC, ids=[q["id"] for _, q in NUMERIC])
def test_numeric_compute_matches_answer(stem, question):
    value = quizzes.check_compute(question)
    assert abs(value - question["answer"]) <= question["tolerance"] / 10


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_correct_choice_positions_vary(stem):
    answers = [q["answer"] for q in QUIZZES[stem]["questions"] if q["type"] == "choice"]
    assert len(set(answers)) >= 3, f"{stem}: correct options at positions {answers}"
    assert max(answers.count(i) for i in set(answers)) <= len(answers) / 2, f"{stem}: {answers}"


def assert_answers_only_for_instructor(quiz: dict, student: str, instructor: str, part, answer: str) -> None:
    """The leak checks of one quiz's two pages; `part` turns a Markdown field into the page's text of it."""
    n = len(quiz["questions"])
    assert "Answer" not in student
    for q in quiz["questions"]:
        assert part(q["question"]) in student and part(q["question"]) in instructor, q["id"]
        for choice in q.get("choices", []):
            assert part(choice) in student, q["id"]
        assert part(q["explanation"]) not in student, q["id"]
        assert part(q["explanation"]) in instructor, q["id"]
        if q["type"] == "numeric":
            compute = part(f"`{q['compute']}`")
            assert compute not in student and compute in instructor, q["id"]
    assert instructor.count(answer) == n
    headings = re.compile(r"Question \d+ \((multiple choice|numeric)\)")
    assert len(headings.findall(student)) == len(headings.findall(instructor)) == n


def html_part(markdown: str) -> str:
    """The HTML of a Markdown field inside a quiz page (without the paragraph around it)."""
    return quizzes.markdown_html(markdown.strip()).strip().removeprefix("<p>").removesuffix("</p>")


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_student_page_hides_answers_instructor_page_shows_them(stem):
    quiz = QUIZZES[stem]
    student = quizzes.render_markdown(quiz, answers=False)
    instructor = quizzes.render_markdown(quiz, answers=True)
    assert_answers_only_for_instructor(quiz, student, instructor, str.strip, "**Answer:**")
    assert student.count("## Question ") == instructor.count("## Question ") == len(quiz["questions"])


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_student_html_hides_answers_instructor_html_shows_them(stem):
    quiz = QUIZZES[stem]
    student = quizzes.render_html(quiz, answers=False)
    instructor = quizzes.render_html(quiz, answers=True)
    assert_answers_only_for_instructor(quiz, student, instructor, html_part, "<strong>Answer:</strong>")
    n = len(quiz["questions"])
    assert student.count('<section class="question"') == instructor.count('<section class="question"') == n
    assert student.count('<div class="key">') == 0 and instructor.count('<div class="key">') == n
    assert "$" not in re.sub(r"<code>.*?</code>", "", instructor, flags=re.S)  # every $...$ became MathJax's \( \)


def test_instructor_page_names_the_right_option():
    quiz = QUIZZES[sorted(QUIZZES)[0]]
    page = quizzes.render_markdown(quiz, answers=True)
    q = next(q for q in quiz["questions"] if q["type"] == "choice")
    letter = "ABCD"[q["answer"]]
    assert f"**Answer:** {letter}. {q['choices'][q['answer']].strip()}" in page


def test_every_notebook_has_a_quiz():
    missing = [nb.stem for nb in sorted(NOTEBOOKS.glob("*.ipynb")) if not (QUIZ_DIR / f"{nb.stem}.yml").is_file()]
    assert not missing, f"notebooks without a quiz in {QUIZ_DIR}: {missing}"


@pytest.mark.parametrize("stem", sorted(QUIZZES))
def test_quiz_belongs_to_a_notebook_and_carries_its_title(stem):
    notebook = NOTEBOOKS / f"{stem}.ipynb"
    assert notebook.is_file(), f"{stem}.yml has no notebook"
    first_line = "".join(json.loads(notebook.read_text(encoding="utf-8"))["cells"][0]["source"]).splitlines()[0]
    assert QUIZZES[stem]["chapter"] == stem
    assert first_line == f"# {QUIZZES[stem]['title']}"


def _broken(mutate) -> dict:
    """A copy of the first quiz with one mutation applied to it."""
    quiz = copy.deepcopy(QUIZZES[sorted(QUIZZES)[0]])
    mutate(quiz)
    return quiz


def _first(quiz: dict, kind: str) -> dict:
    """The first question of a kind."""
    return next(q for q in quiz["questions"] if q["type"] == kind)


def _set_second_choice_to_first(q: dict) -> None:
    q["choices"][1] = q["choices"][0]


BROKEN = {  # case: (the kind of question to break, how, what the error must say)
    "answer index out of range": ("choice", lambda q: q.update(answer=4), "answer 4"),
    "boolean answer index": ("choice", lambda q: q.update(answer=True), "answer True"),
    "three choices": ("choice", lambda q: q["choices"].pop(), "4 options"),
    "identical choices": ("choice", _set_second_choice_to_first, "identical"),
    "empty explanation": ("choice", lambda q: q.update(explanation="  "), "`explanation`"),
    "unknown type": ("choice", lambda q: q.update(type="essay"), "'essay'"),
    "compute disagrees": ("numeric", lambda q: q.update(answer=q["answer"] + 1), "gives"),
    "compute fails": ("numeric", lambda q: q.update(compute="1 / 0"), "ZeroDivisionError"),
    "no tolerance": ("numeric", lambda q: q.pop("tolerance"), "missing tolerance"),
    "zero tolerance": ("numeric", lambda q: q.update(tolerance=0), "positive `tolerance`"),
    "misspelt field": ("numeric", lambda q: q.update(tolerence=0.1), "unknown field(s) tolerence"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_names_file_question_and_problem(case):
    kind, mutate, problem = BROKEN[case]
    quiz = _broken(lambda z: mutate(_first(z, kind)))
    qid = _first(QUIZZES[sorted(QUIZZES)[0]], kind)["id"]
    with pytest.raises(ValueError) as err:
        quizzes.validate(quiz)
    message = str(err.value)
    assert Path(quiz["source"]).name in message and qid in message and problem in message, message


def test_validate_rejects_duplicate_and_misnumbered_ids():
    quiz = _broken(lambda z: z["questions"][1].update(id=z["questions"][0]["id"]))
    with pytest.raises(ValueError, match="duplicate id"):
        quizzes.validate(quiz)
    quiz = _broken(lambda z: z["questions"][0].update(id="99-q01"))
    with pytest.raises(ValueError, match=r"expected \d\d-qNN"):
        quizzes.validate(quiz)


def test_validate_rejects_a_wrong_title_or_chapter():
    with pytest.raises(ValueError, match="must start with 'Chapter"):
        quizzes.validate(_broken(lambda z: z.update(title="Language models")))
    with pytest.raises(ValueError, match="does not match chapter"):
        quizzes.validate(_broken(lambda z: z.update(chapter="09_other_chapter")))


@pytest.mark.parametrize("expr", ["__import__('os').getcwd()", "open('/etc/passwd').read()", "'4' * 2"])
def test_compute_sees_only_math_and_arithmetic(expr):
    question = {"id": "00-q01", "answer": 1.0, "tolerance": 0.1, "compute": expr}
    with pytest.raises(ValueError, match="00-q01"):
        quizzes.check_compute(question)
    assert quizzes.check_compute({**question, "compute": "round(math.exp(0), 3)"}) == 1.0


def test_load_quiz_rejects_bad_files(tmp_path):
    not_yaml = tmp_path / "01_x.yml"
    not_yaml.write_text("questions: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="01_x.yml: not valid YAML"):
        quizzes.load_quiz(not_yaml)
    a_list = tmp_path / "02_y.yml"
    a_list.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="02_y.yml: a quiz file must hold a mapping"):
        quizzes.load_quiz(a_list)


def test_command_line_renders_one_page_per_chapter(tmp_path):
    assert quizzes.main(["validate", str(QUIZ_DIR)]) == 0
    assert quizzes.main(["render", str(QUIZ_DIR), "--out", str(tmp_path / "students")]) == 0
    pages = sorted(p.name for p in (tmp_path / "students").iterdir())
    assert pages == [f"{stem}.md" for stem in sorted(QUIZZES)]
    assert all("Answer" not in (tmp_path / "students" / p).read_text(encoding="utf-8") for p in pages)
    # the script itself, as a teacher runs it
    out = tmp_path / "teachers"
    cmd = [sys.executable, str(ROOT / "tools" / "quizzes.py"), "render", str(QUIZ_DIR), "--answers", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    for stem, quiz in QUIZZES.items():
        assert (out / f"{stem}_answers.md").read_text(encoding="utf-8") == quizzes.render_markdown(quiz, answers=True)


def test_command_line_reports_an_invalid_file(tmp_path, capsys):
    bad = tmp_path / "01_language_models.yml"
    bad.write_text(
        (QUIZ_DIR / "01_language_models.yml").read_text(encoding="utf-8").replace("answer: 2", "answer: 7", 1)
    )
    assert quizzes.main(["validate", str(tmp_path)]) == 1
    assert "01_language_models.yml, question 01-q02" in capsys.readouterr().err


def test_command_line_writes_html_pages_with_mathjax_beside_them(tmp_path):
    out = tmp_path / "teachers"
    assert quizzes.main(["render", str(QUIZ_DIR), "--answers", "--html", "--out", str(out)]) == 0
    pages = sorted(p for p in out.glob("*_answers.html") if p.name != "index_answers.html")
    assert [p.name for p in pages] == [f"{stem}_answers.html" for stem in sorted(QUIZZES)]
    mathjax = out / "_assets" / "mathjax" / "tex-chtml.js"
    assert mathjax.is_file(), "MathJax is not vendored: run python tools/book.py vendor"
    index = (out / "index_answers.html").read_text(encoding="utf-8")
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert f'href="{page.name}"' in index and 'href="index_answers.html"' in text
        assert re.findall(r"""(?:src|href)=["'](https?://[^"']*)""", text) == [], f"{page.name} loads from another host"
        assert "_assets/mathjax/tex-chtml.js" in text and "@media print" in text


# the page's text outside code and typeset math: no TeX may be left in it
TEXT_JS = r"""
(() => {
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, mjx-container').forEach((e) => e.remove());
  return copy.textContent;
})()
"""


def test_instructor_page_renders_its_math_offline(tmp_path, browser):
    """The quiz with the most math, in headless Chromium: MathJax from beside the page, no request off 127.0.0.1."""
    stem = max(QUIZZES, key=lambda s: (QUIZ_DIR / f"{s}.yml").read_text(encoding="utf-8").count("$"))
    (page_path,) = quizzes.write_html([QUIZZES[stem]], tmp_path, answers=True)
    n_math = page_path.read_text(encoding="utf-8").count('class="math ')
    assert n_math > 10
    with serve(tmp_path) as base, browser.page(f"{base}/{page_path.name}", settle_s=0.5, timeout_s=20) as page:
        page.wait_for("!!(window.MathJax && MathJax.startup && MathJax.startup.promise)", 15)
        page.evaluate("MathJax.startup.promise.then(() => true)")
        assert page.evaluate("document.querySelectorAll('mjx-container').length") == n_math
        assert page.evaluate("document.querySelectorAll('mjx-merror').length") == 0
        text = page.evaluate(TEXT_JS)
        assert "Answer:" in text and "Explanation." in text
        assert "$" not in text and not re.search(r"\\[()\[\]]|\\(frac|sqrt|cdot|operatorname|mathrm)\b", text), text
        host = f"127.0.0.1:{base.rsplit(':', 1)[1]}"
        outside = [u for u in page.report.requests if u.startswith("http") and u.split("/")[2] != host]
        assert outside == [], f"the page requested resources off this machine: {outside}"
        missing = [
            u for u in page.report.requests if u.startswith(base) and not (tmp_path / urlparse(u).path[1:]).is_file()
        ]
        assert missing == [], f"the page requested files that are not beside it: {missing}"
        assert any(u.endswith(".woff") for u in page.report.requests)  # MathJax's fonts, from the copy
        assert page.report.console_errors == [] and page.report.failed_requests == []
