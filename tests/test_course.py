"""The course tool, tools/course.py: the two editions and autograding with nbgrader.

The build writes a student and an instructor edition; no solution line, hidden-test line or marker
of any source assignment reaches the student edition, the chapter notebooks there lose exactly their
<details> "Solution" blocks, and the instructor edition keeps everything. Grading the two-exercise
fixture assignment (tests/data/course/source/00_warmup) scores the reference solution 3/3, the
untouched release 0, a wrong answer, a raising cell and an endless loop partially, restores test
cells a student emptied, reports a dead kernel, a missing and a malformed notebook on their rows,
and still grades everyone else. The slow test holds every assignment in course/source to the same
standard: its reference solution scores full marks and its released version zero.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "course" / "source"
FIXTURE = ROOT / "tests" / "data" / "course" / "source"
FIXTURE_ID = "00_warmup"
TIMEOUT = 8  # seconds per cell in the grading tests: room for a loaded machine, short for the endless loop

_spec = importlib.util.spec_from_file_location("course", ROOT / "tools" / "course.py")
course = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(course)

COURSE_IDS = course.assignment_ids(SOURCE) if SOURCE.is_dir() else []
ALL_IDS = [*COURSE_IDS, FIXTURE_ID]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUIZ_STEMS = sorted(p.stem for p in (ROOT / "course" / "quizzes").glob("*.yml"))
HIDDEN = {"BEGIN SOLUTION": "END SOLUTION", "BEGIN HIDDEN TESTS": "END HIDDEN TESTS"}
EXERCISE = re.compile(r"\*\*Exercise \d+[^*]*\*\*")

# solutions for the fixture's two exercises, and a plausible wrong one for the second (the k V is missing)
EX1 = "def perplexity(log_probs):\n    return float(np.exp(-np.mean(log_probs)))"
EX2 = (
    "def add_k(counts, k):\n    counts = np.asarray(counts, dtype=float)\n"
    "    return (counts + k) / (counts.sum() + k * len(counts))"
)
EX2_WRONG = (
    "def add_k(counts, k):\n    counts = np.asarray(counts, dtype=float)\n    return (counts + k) / (counts.sum() + k)"
)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """Run tools/course.py with this worktree's package importable by the notebook kernels."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(ROOT / "tools" / "course.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def hidden_and_visible_lines(notebook: Path) -> tuple[set[str], set[str]]:
    """The stripped lines inside nbgrader's solution and hidden-test regions, and the lines outside them."""
    hidden, visible = set(), set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        end = None
        for line in cell.source.splitlines():
            text = line.strip()
            if end is None and any(begin in line for begin in HIDDEN):
                end = next(HIDDEN[begin] for begin in HIDDEN if begin in line)
            elif end is not None and end in line:
                end = None
            elif text:
                (visible if end is None else hidden).add(text)
    return hidden - visible, visible


def _is_solution(cell: nbformat.NotebookNode) -> bool:
    """A code cell nbgrader treats as a solution (its regions become stubs in the release)."""
    return cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution", False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Build both editions from course/source plus the fixture assignment."""
    tmp = tmp_path_factory.mktemp("course")
    source = tmp / "source"
    for sid, folder in [(aid, SOURCE / aid) for aid in COURSE_IDS] + [(FIXTURE_ID, FIXTURE / FIXTURE_ID)]:
        shutil.copytree(folder, source / sid)
    result = run_tool("build", "--out", str(tmp / "out"), "--source", str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out", result


def test_build_writes_both_editions(built):
    out, result = built
    student, instructor = out / "student", out / "instructor"
    for aid in ALL_IDS:
        assert (student / "assignments" / aid / f"{aid}.ipynb").is_file()
        assert (instructor / "source" / aid / f"{aid}.ipynb").is_file()
    for path in CHAPTERS:
        assert (student / "chapters" / path.name).is_file() and (instructor / "chapters" / path.name).is_file()
    for stem in QUIZ_STEMS:
        for edition in (student, instructor):
            assert (edition / "quizzes" / f"{stem}.md").is_file() and (edition / "quizzes" / f"{stem}.html").is_file()
    for edition in (student, instructor):
        index = (edition / "quizzes" / "index.html").read_text(encoding="utf-8")
        assert all(f'href="{stem}.html"' in index for stem in QUIZ_STEMS)
    assert (instructor / "nbgrader_config.py").read_text() == (ROOT / "course" / "nbgrader_config.py").read_text()
    assert "nbgrader autograde" in (instructor / "README.md").read_text()
    assert not (student / "source").exists() and not (student / "nbgrader_config.py").exists()
    assert re.search(r"built the student and instructor editions .* in \d+\.\d s", result.stdout)
    assert f"wrote {student / 'assignments' / FIXTURE_ID / f'{FIXTURE_ID}.ipynb'}" in result.stdout


@pytest.mark.parametrize("aid", ALL_IDS)
def test_no_solution_or_hidden_test_reaches_the_student_edition(built, aid):
    out, _ = built
    source = out / "instructor" / "source" / aid / f"{aid}.ipynb"
    original = (FIXTURE if aid == FIXTURE_ID else SOURCE) / aid / f"{aid}.ipynb"
    assert source.read_bytes() == original.read_bytes()  # the instructor edition has them all
    hidden, _ = hidden_and_visible_lines(original)
    assert hidden, f"{aid}: no solution or hidden-test lines in the source"
    released = out / "student" / "assignments" / aid / f"{aid}.ipynb"
    text = released.read_text(encoding="utf-8")
    for marker in course.MARKERS:
        assert marker.lower() not in text.lower(), f"{aid}: {marker!r} in the student edition"
    student_lines = {
        line.strip() for cell in nbformat.read(released, as_version=4).cells for line in cell.source.splitlines()
    }
    leaked = hidden & student_lines
    assert not leaked, f"{aid}: hidden lines in the student edition: {sorted(leaked)[:5]}"
    solutions = {c.metadata.nbgrader["grade_id"]: c.source for c in nbformat.read(original, 4).cells if _is_solution(c)}
    stubs = {c.metadata.nbgrader["grade_id"]: c.source for c in nbformat.read(released, 4).cells if _is_solution(c)}
    assert solutions.keys() == stubs.keys()
    for grade_id, cell in solutions.items():  # nbgrader put one stub in place of every solution region
        n_regions = max(cell.count("BEGIN SOLUTION"), 1)
        assert stubs[grade_id].count("raise NotImplementedError()") == n_regions, f"{aid}, {grade_id}"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapters_lose_exactly_their_solution_blocks(built, path):
    out, _ = built
    original = nbformat.read(path, as_version=4)
    student = nbformat.read(out / "student" / "chapters" / path.name, as_version=4)
    assert (out / "instructor" / "chapters" / path.name).read_bytes() == path.read_bytes()
    text = "\n".join(cell.source for cell in student.cells)
    assert "<details" not in text and not course.SOLUTION_SUMMARY.search(text)
    headings = EXERCISE.findall("\n".join(cell.source for cell in original.cells))
    assert headings and EXERCISE.findall(text) == headings
    assert [c.cell_type for c in student.cells] == [c.cell_type for c in original.cells]
    for before, after in zip(original.cells, student.cells):
        if before.cell_type == "code" or "<details" not in before.source:
            assert after.source == before.source


def test_quizzes_have_answers_only_in_the_instructor_edition(built):
    out, _ = built
    for stem in QUIZ_STEMS:
        student = (out / "student" / "quizzes" / f"{stem}.md").read_text()
        instructor = (out / "instructor" / "quizzes" / f"{stem}.md").read_text()
        n_questions = instructor.count("## Question ")
        assert n_questions >= 10 and student.count("## Question ") == n_questions
        assert "**Answer:**" not in student and instructor.count("**Answer:**") == n_questions
        student_html = (out / "student" / "quizzes" / f"{stem}.html").read_text()
        instructor_html = (out / "instructor" / "quizzes" / f"{stem}.html").read_text()
        assert "Answer" not in student_html and instructor_html.count("<strong>Answer:</strong>") == n_questions
        assert 'class="key"' not in student_html and instructor_html.count('<div class="key">') == n_questions


def test_objectives_command_writes_the_chapters_objectives(tmp_path, capsys):
    chapters = CHAPTERS[:2]
    out = tmp_path / "objectives.md"
    assert course.main(["objectives", *map(str, chapters), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    for path in chapters:
        title = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0].removeprefix("# ")
        assert f"### {title}\n\nAfter this chapter a student can:\n\n- **" in text
    assert len(re.findall(r"^- \*\*[a-z-]+\*\*", text, re.M)) >= 5 * len(chapters)
    assert capsys.readouterr().out == f"wrote {out}\n"


def test_objectives_command_refuses_a_chapter_without_them(tmp_path, capsys):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Chapter 1: Tiny"),
            nbformat.v4.new_markdown_cell("## What you will learn\n\nMuch."),
        ]
    )
    nbformat.write(nb, tmp_path / "01_tiny.ipynb")
    out = tmp_path / "objectives.md"
    assert course.main(["objectives", str(tmp_path / "01_tiny.ipynb"), "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err
        == "error: 01_tiny.ipynb: 'What you will learn' does not start with the line 'After this chapter you can:'\n"
    )
    assert not out.exists()
    nb.cells[1].source = (
        "## What you will learn\n\nAfter this chapter you can:\n\n" + "- **derive** it;\n" * 4 + "- know it."
    )
    nbformat.write(nb, tmp_path / "01_tiny.ipynb")
    assert course.main(["objectives", str(tmp_path / "01_tiny.ipynb"), "--out", str(out)]) == 2
    assert "01_tiny.ipynb: an objective that does not start with a bold verb: '- know it.'" in capsys.readouterr().err


def test_teachers_guide_names_an_assignment_and_a_quiz_every_week():
    """Each week of the syllabus has an nbgrader assignment and a quiz of a chapter, and each one is given."""
    guide = (ROOT / "book" / "teachers_guide.md").read_text(encoding="utf-8")
    header = "| Week | Autograded assignment (nbgrader id) | Quiz |"
    assert header in guide
    table = guide.split(header, 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)`[^|]* \| `(\w+)`[^|]* \|$", table, re.M)
    assert [int(week) for week, _, _ in rows] == list(range(1, 15)), table
    stems = {path.stem for path in CHAPTERS}
    assert {aid for _, aid, _ in rows} | {quiz for _, _, quiz in rows} <= stems
    assert set(COURSE_IDS) <= {aid for _, aid, _ in rows}, "an assignment the syllabus never gives"
    assert set(QUIZ_STEMS) <= {quiz for _, _, quiz in rows}, "a quiz the syllabus never gives"


def test_strip_solutions_refuses_a_block_it_cannot_remove_whole():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("Task.\n\n<details>\n<summary>Solution</summary>\n42")]
    )
    with pytest.raises(ValueError, match="x.ipynb, cell 0: a Solution block that is not a whole"):
        course.strip_solutions(nb, "x.ipynb")
    nb.cells[0].source += "\n</details>\n\n**Exercise 2.** Next."
    assert course.strip_solutions(nb, "x.ipynb") == 1 and nb.cells[0].source == "Task.\n\n**Exercise 2.** Next."


def test_build_refuses_a_hidden_test_nbgrader_did_not_remove(tmp_path):
    """A misspelt marker ('Begin Hidden Tests') leaves hidden tests in the release: the build stops, writes nothing."""
    nb = nbformat.read(FIXTURE / FIXTURE_ID / f"{FIXTURE_ID}.ipynb", as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("BEGIN HIDDEN TESTS", "Begin Hidden Tests").replace(
            "END HIDDEN", "End Hidden"
        )
    (tmp_path / "source" / FIXTURE_ID).mkdir(parents=True)
    nbformat.write(nb, tmp_path / "source" / FIXTURE_ID / f"{FIXTURE_ID}.ipynb")
    with pytest.raises(ValueError, match=f"{FIXTURE_ID}.ipynb: 'BEGIN HIDDEN TESTS' reached the student edition"):
        course.build(tmp_path / "out", tmp_path / "source")
    assert not (tmp_path / "out" / "student").exists() and not (tmp_path / "out" / "instructor").exists()


def _submission(released: Path, changes: dict[str, str | None]) -> nbformat.NotebookNode:
    """The released notebook with the sources of some cells (by grade_id) replaced, or deleted where None."""
    nb = nbformat.read(released, as_version=4)
    grade_id = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in nb.cells]
    nb.cells = [cell for cell, gid in zip(nb.cells, grade_id) if gid not in changes or changes[gid] is not None]
    for cell in nb.cells:
        cell.source = changes.get(cell.metadata.get("nbgrader", {}).get("grade_id"), cell.source)
    return nb


STUDENTS = {  # student id: (cells changed in the release, expected score, expected status start)
    "ref": (None, "3", "graded"),  # the source notebook itself: the reference solution
    "untouched": ({}, "0", "graded"),
    # a wrong add-k, and its test cell emptied: nbgrader restores the tests from the source
    "wrong": ({"ex1-solution": EX1, "ex2-solution": EX2_WRONG, "ex2-tests": "pass"}, "1", "graded"),
    # ex1 raises, and its test cell is deleted: reported in the notes
    "raises": ({"ex1-solution": "raise RuntimeError('no')", "ex1-tests": None, "ex2-solution": EX2}, "2", "graded"),
    "loops": ({"ex1-solution": "while True:\n    pass", "ex2-solution": EX2}, "2", "graded"),
    "dies": ({"ex1-solution": "import os\nos._exit(1)", "ex2-solution": EX2}, "0", "failed: DeadKernelError"),
    "missing": (None, "0", "missing: no 00_warmup.ipynb"),
    "broken": (None, "0", "malformed: NotJSONError"),
}  # in the run's (alphabetical) order, "ref", "untouched" and "wrong" are graded after the failures


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory) -> tuple[dict, list[str], subprocess.CompletedProcess]:
    """Grade every student of STUDENTS in one run; return the CSV rows by (student, assignment)."""
    out, _ = built
    released = out / "student" / "assignments" / FIXTURE_ID / f"{FIXTURE_ID}.ipynb"
    subs = tmp_path_factory.mktemp("submitted")
    for student, (changes, _, _) in STUDENTS.items():
        folder = subs / student / FIXTURE_ID
        folder.mkdir(parents=True)
        if changes is not None:
            nbformat.write(_submission(released, changes), folder / f"{FIXTURE_ID}.ipynb")
    shutil.copy(FIXTURE / FIXTURE_ID / f"{FIXTURE_ID}.ipynb", subs / "ref" / FIXTURE_ID)
    (subs / "broken" / FIXTURE_ID / f"{FIXTURE_ID}.ipynb").write_text("{not a notebook")
    (subs / "ref" / "99_unknown").mkdir()
    scores = subs.parent / "scores.csv"
    result = run_tool("grade", str(subs), "--out", str(scores), "--timeout", str(TIMEOUT), "--source", str(FIXTURE))
    assert result.returncode == 0, result.stderr[-3000:]
    with scores.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return {(r["student"], r["assignment"]): r for r in rows}, reader.fieldnames, result


def test_grading_csv_has_one_row_per_student_and_assignment(graded):
    rows, fields, _ = graded
    assert fields == ["student", "assignment", "score", "max_score", "status", "ex1-tests", "ex2-tests", "notes"]
    assert sorted(rows) == sorted([(s, FIXTURE_ID) for s in STUDENTS] + [("ref", "99_unknown")])
    assert rows["ref", "99_unknown"]["status"].startswith("unknown assignment")


@pytest.mark.parametrize("student", STUDENTS)
def test_grading_scores_every_student(graded, student):
    rows, _, _ = graded
    row = rows[student, FIXTURE_ID]
    _, score, status = STUDENTS[student]
    assert (row["score"], row["max_score"]) == (score, "3") and row["status"].startswith(status), row
    assert float(row["ex1-tests"]) + float(row["ex2-tests"]) == float(score)


def test_grading_explains_partial_scores(graded):
    rows, _, result = graded
    assert (rows["wrong", FIXTURE_ID]["ex1-tests"], rows["wrong", FIXTURE_ID]["ex2-tests"]) == ("1", "0")
    assert "ex2-tests: AssertionError" in rows["wrong", FIXTURE_ID]["notes"]
    assert "ex1-solution: RuntimeError" in rows["raises", FIXTURE_ID]["notes"]
    assert "ex1-tests: cell missing or its metadata lost" in rows["raises", FIXTURE_ID]["notes"]
    assert "ex1-solution: CellTimeoutError" in rows["loops", FIXTURE_ID]["notes"]
    assert (
        rows["ref", FIXTURE_ID]["notes"] == ""
        and rows["untouched", FIXTURE_ID]["notes"].count("NotImplementedError") == 2
    )
    seconds = float(re.search(rf"loops/{FIXTURE_ID}: .* (\d+\.\d) s\n", result.stdout).group(1))
    assert TIMEOUT <= seconds < TIMEOUT + 30  # interrupted after the timeout, not left running


def test_missing_submissions_folder_is_one_line_and_exit_status_2(tmp_path):
    result = run_tool("grade", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "s.csv"))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == f"error: the submissions folder {tmp_path / 'no-such-folder'} does not exist\n"
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("grade", "{tmp}", "--out", "{tmp}/s.csv", "--timeout", "0"), "--timeout must be at least 1 second"),
        (("grade", "{tmp}", "--out", "{tmp}/s.csv", "--source", "{tmp}/nowhere"), "source folder .* does not exist"),
        (("grade", "{tmp}/empty", "--out", "{tmp}/s.csv", "--source", str(FIXTURE)), "holds no student folders"),
        (("build", "--out", "{tmp}/out", "--source", "{tmp}/nowhere"), "source folder .* does not exist"),
        (("build", "--out", "{tmp}/out", "--source", "{tmp}"), "empty has no empty.ipynb"),
    ],
    ids=["zero-timeout", "missing-source", "no-students", "build-missing-source", "build-bad-assignment"],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    assert course.main([a.format(tmp=tmp_path) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("aid", COURSE_IDS)
def test_course_assignment_reference_scores_full_marks_and_release_zero(built, tmp_path, aid):
    released = built[0] / "student" / "assignments" / aid / f"{aid}.ipynb"
    for student, notebook in (("reference", SOURCE / aid / f"{aid}.ipynb"), ("release", released)):
        (tmp_path / "subs" / student / aid).mkdir(parents=True)
        shutil.copy(notebook, tmp_path / "subs" / student / aid)
    scores = tmp_path / "scores.csv"
    result = run_tool("grade", str(tmp_path / "subs"), "--out", str(scores), "--source", str(SOURCE))
    assert result.returncode == 0, result.stderr[-3000:]
    with scores.open(newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    reference, release = rows["reference"], rows["release"]
    assert reference["status"] == "graded" and reference["notes"] == "", reference
    assert float(reference["score"]) == float(reference["max_score"]) >= 3, reference
    assert release["status"] == "graded" and float(release["score"]) == 0, release
