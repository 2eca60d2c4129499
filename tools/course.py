"""The course: build its student and instructor editions, and autograde submissions with nbgrader.

Usage:
    python tools/course.py build [--out _build/course] [--source course/source]
    python tools/course.py grade SUBMISSIONS --out scores.csv [--timeout 60] [--source course/source]
    python tools/course.py slides [NOTEBOOK ...] [--out _build/slides] [--no-execute]
    python tools/course.py objectives [NOTEBOOK ...] [--out book/_generated/objectives.md]

One source, two editions. `build` writes
    student/assignments/<id>/<id>.ipynb   nbgrader's release: solutions replaced by stubs, hidden tests removed
    student/chapters/<stem>.ipynb         the chapter notebooks without their <details> "Solution" blocks
    student/quizzes/<stem>.md             the quizzes without answers
    student/quizzes/<stem>.html           the same, rendered for printing (tools/quizzes.py), and index.html
    instructor/source/<id>/<id>.ipynb     the assignments with solutions and hidden tests (an nbgrader course)
    instructor/chapters/<stem>.ipynb      the chapter notebooks unchanged
    instructor/quizzes/<stem>.md          the quizzes with answers and explanations
    instructor/quizzes/<stem>.html        the same, rendered for printing, and index.html
    instructor/nbgrader_config.py, instructor/README.md   how to release, collect and grade
and, if a solution or hidden-test marker reaches the student edition, stops with an error and
removes both editions.

`grade` reads nbgrader's submitted layout, SUBMISSIONS/<student_id>/<assignment_id>/<assignment_id>.ipynb,
autogrades every submission in a temporary nbgrader course made from the source assignments (each
cell gets at most --timeout seconds, so a notebook that raises or loops forever is still scored) and
writes one CSV row per (student, assignment): score, max_score, status, the points of every graded
cell and the errors the notebook raised. A missing or malformed notebook is a row, not a crash.

`slides` writes a reveal.js deck of every chapter notebook, without the exercises' solutions, into
_build/slides/<stem>.slides.html (tools/slides.py explains how, and where the outputs come from).

`objectives` collects every chapter's learning objectives ("After this chapter you can:" and a list
of bold verbs) into book/_generated/objectives.md, which the teacher's guide includes (tools/objectives.py).

`build` and `grade` drive nbgrader 0.9 through its Python API (nbgrader.apps.api.NbGraderAPI:
generate_assignment, autograde), configured by course/nbgrader_config.py, and read the scores from
its Gradebook (nbgrader.api.Gradebook).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import nbformat

if TYPE_CHECKING:
    from nbgrader.apps.api import NbGraderAPI

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_SOURCE = COURSE / "source"
# nbgrader's own delimiters (case-sensitive there); any of these words in a student file is a leak
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SOLUTION_BLOCK = re.compile(r"\n*<details\b[^>]*>\s*<summary\b[^>]*>\s*Solution\b.*?</details>[ \t]*", re.S | re.I)
SOLUTION_SUMMARY = re.compile(r"<summary\b[^>]*>\s*Solution\b", re.I)
ID = re.compile(r"[A-Za-z0-9_.@-]+")  # student and assignment ids: nbgrader uses them as file globs
SKIP = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")


def _module(name: str) -> ModuleType:
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assignment_ids(source: Path) -> list[str]:
    """The assignments of a source folder: every <id>/<id>.ipynb, sorted."""
    if not source.is_dir():
        raise ValueError(f"the source folder {source} does not exist")
    ids = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not ID.fullmatch(folder.name):
            raise ValueError(f"{folder}: an assignment id may use only letters, digits and _ . @ -")
        if not (folder / f"{folder.name}.ipynb").is_file():
            raise ValueError(f"{folder} has no {folder.name}.ipynb")
        ids.append(folder.name)
    return ids


def nbgrader_api(root: Path, timeout: int = 60) -> NbGraderAPI:
    """An nbgrader API on the course folder `root`, configured by course/nbgrader_config.py."""
    # nbgrader's Gradebook runs the `alembic` command, installed beside this Python
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    warnings.filterwarnings("ignore", module="nbgrader")  # SQLAlchemy's session warnings inside nbgrader
    from nbgrader.apps.api import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(COURSE)).load_config()
    config.CourseDirectory.root = str(root)
    config.Execute.timeout = timeout
    config.Execute.extra_arguments = ["--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"]
    config.Exchange.root = str(root / "exchange")  # never the machine's shared exchange
    (root / "exchange").mkdir(parents=True, exist_ok=True)
    config.NbGraderAPI.log_level = "ERROR"
    api = NbGraderAPI(config=config)
    api.log.handlers.clear()  # capture_log keeps nbgrader's messages for our one-line errors
    api.log.propagate = False
    return api


EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)): (.*)$")


def _last_error(result: dict) -> str:
    """The last exception nbgrader logged (not its own wrapper), for a one-line message."""
    text = (result.get("log") or "") + "\n" + (result.get("error") or "")
    lines = [line.strip() for line in text.splitlines()]
    errors = [m.group(1, 2) for m in map(EXCEPTION_LINE.match, lines) if m and m.group(1) != "NbGraderException"]
    if errors:
        return ": ".join(errors[-1])
    logged = [line.removeprefix("[ERROR] ") for line in lines if line.startswith("[ERROR]")]
    return logged[0] if logged else "unknown error"


def release(source: Path, ids: list[str], course: Path) -> Path:
    """Copy the source assignments into a course folder and run generate_assignment; return release/."""
    for aid in ids:
        shutil.copytree(source / aid, course / "source" / aid, ignore=SKIP)
    api = nbgrader_api(course)
    for aid in ids:
        result = api.generate_assignment(aid)
        if not result["success"]:
            raise ValueError(f"nbgrader generate_assignment {aid} failed: {_last_error(result)}")
    return course / "release"


def strip_solutions(nb: nbformat.NotebookNode, name: str) -> int:
    """Remove every <details><summary>Solution</summary>...</details> block in place; return how many."""
    removed = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        cell.source, n = SOLUTION_BLOCK.subn("", cell.source)
        removed += n
        if SOLUTION_SUMMARY.search(cell.source):
            raise ValueError(f"{name}, cell {index}: a Solution block that is not a whole <details>...</details>")
    return removed


def check_student_file(path: Path) -> None:
    """Refuse a student file that still holds a solution or hidden-test marker or a Solution block."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for marker in MARKERS:
        if marker.lower() in text.lower():
            raise ValueError(f"{path}: '{marker}' reached the student edition")
    if SOLUTION_SUMMARY.search(text):
        raise ValueError(f"{path}: a Solution block reached the student edition")


def _write_editions(student: Path, instructor: Path, source: Path, ids: list[str], quiz_list: list[dict]) -> None:
    """Write both editions: assignments, chapters, quizzes, nbgrader's config and the instructor README."""
    quizzes = _module("quizzes")
    with tempfile.TemporaryDirectory(prefix="course-build-") as tmp:
        released = release(source, ids, Path(tmp))
        for aid in ids:
            shutil.copytree(released / aid, student / "assignments" / aid, ignore=SKIP)
            shutil.copytree(source / aid, instructor / "source" / aid, ignore=SKIP)
    for folder in (student / "chapters", instructor / "chapters", student / "quizzes", instructor / "quizzes"):
        folder.mkdir()
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy2(path, instructor / "chapters" / path.name)
        nb = nbformat.read(path, as_version=4)
        strip_solutions(nb, path.name)
        nbformat.write(nb, student / "chapters" / path.name)
    for edition, answers in ((student, False), (instructor, True)):
        for quiz in quiz_list:
            page = quizzes.render_markdown(quiz, answers=answers)
            (edition / "quizzes" / f"{quiz['chapter']}.md").write_text(page, encoding="utf-8")
        quizzes.write_html(quiz_list, edition / "quizzes", answers=answers)
    shutil.copy2(COURSE / "nbgrader_config.py", instructor / "nbgrader_config.py")
    shutil.copy2(COURSE / "README.md", instructor / "README.md")


def build(out: Path, source: Path, source_required: bool = True) -> list[Path]:
    """Write the student and instructor editions into `out`; return the files written."""
    if not source_required and not source.is_dir():
        print(f"notice: no assignments to build, {source} does not exist", file=sys.stderr)
        ids = []
    else:
        ids = assignment_ids(source)
    quizzes = _module("quizzes")
    quiz_list = [quizzes.load_quiz(path) for path in quizzes.quiz_files(COURSE / "quizzes")]
    for quiz in quiz_list:
        quizzes.validate(quiz)
    student, instructor = out / "student", out / "instructor"
    for edition in (student, instructor):
        shutil.rmtree(edition, ignore_errors=True)
        edition.mkdir(parents=True)
    try:
        _write_editions(student, instructor, source, ids, quiz_list)
        written = sorted(p for p in student.rglob("*") if p.is_file())
        for path in written:
            check_student_file(path)
    except BaseException:  # never leave half an edition, or a student edition that failed its check
        for edition in (student, instructor):
            shutil.rmtree(edition, ignore_errors=True)
        raise
    return written + sorted(p for p in instructor.rglob("*") if p.is_file())


def grade_cells(notebook: Path) -> list[tuple[str, float]]:
    """(grade_id, points) of the autograded cells of a source notebook, in order."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    return [(m.get("grade_id", "?"), float(m.get("points", 0))) for m in cells if m.get("grade")]


def read_submission(path: Path) -> str | None:
    """None if `path` is a readable, valid notebook, otherwise the reason in a few words."""
    if not path.is_file():
        return f"missing: no {path.name}"
    try:
        nbformat.validate(nbformat.read(path, as_version=4))
    except Exception as err:  # a broken file is a row of the report, whatever the parser says
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"malformed: {type(err).__name__}: {reason[:120]}"
    return None


def cell_errors(notebook: Path) -> str:
    """'grade_id: ErrorName' for every cell of an autograded notebook that raised (or timed out)."""
    nb = nbformat.read(notebook, as_version=4)
    errors = []
    for index, cell in enumerate(nb.cells):
        names = list(
            dict.fromkeys(o.get("ename", "Error") for o in cell.get("outputs", []) if o.output_type == "error")
        )
        if "CellTimeoutError" in names:
            names = ["CellTimeoutError"]  # the KeyboardInterrupt is how the timeout stopped the cell
        if names:
            errors.append(f"{cell.metadata.get('nbgrader', {}).get('grade_id', f'cell {index}')}: {', '.join(names)}")
    return "; ".join(errors)


def _fmt(x: float) -> str:
    """A score without a trailing '.0'."""
    return f"{x:g}"


def _autograde(api: NbGraderAPI, course: Path, path: Path, student: str, aid: str, expected: list[str]) -> dict:
    """Autograde one valid submission in the course folder; return score, per-cell points, status, notes."""
    from nbgrader.api import Gradebook, MissingEntry

    target = course / "submitted" / student / aid
    target.mkdir(parents=True)
    shutil.copy2(path, target / path.name)
    result = api.autograde(aid, student)
    row = {"status": "graded" if result["success"] else f"failed: {_last_error(result)}"}
    with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
        try:
            submission = gb.find_submission(aid, student)
        except MissingEntry:
            return row
        row["score"] = _fmt(submission.score)
        for nb in submission.notebooks:
            row |= {g.name: _fmt(g.score) for g in nb.grades}
    autograded = course / "autograded" / student / aid / path.name
    notes = [cell_errors(autograded)] if autograded.is_file() else []
    present = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nbformat.read(path, as_version=4).cells}
    notes += [f"{gid}: cell missing or its metadata lost, scored 0" for gid in expected if gid not in present]
    row["notes"] = "; ".join(filter(None, notes))
    return row


def _pairs(submissions: Path, known: list[str]) -> list[tuple[str, str]]:
    """Every (student, assignment) to report: all students for an assignment anyone submitted, else as found."""
    students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"{submissions} holds no student folders (expected <student_id>/<assignment_id>/)")
    found = {(s, p.name) for s in students for p in (submissions / s).iterdir() if p.is_dir()}
    graded = {aid for _, aid in found if aid in known}
    return sorted(found | {(s, aid) for s in students for aid in graded})


def grade(submissions: Path, out: Path, timeout: int, source: Path) -> list[dict]:
    """Autograde SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb; write and return the CSV rows."""
    if not submissions.is_dir():
        raise ValueError(f"the submissions folder {submissions} does not exist")
    if timeout < 1:
        raise ValueError(f"--timeout must be at least 1 second, got {timeout}")
    known = assignment_ids(source)
    pairs = _pairs(submissions, known)
    graded_ids = sorted({aid for _, aid in pairs if aid in known})
    cells = {aid: grade_cells(source / aid / f"{aid}.ipynb") for aid in graded_ids}
    columns = list(dict.fromkeys(name for aid in graded_ids for name, _ in cells[aid]))
    rows = []
    fields = ["student", "assignment", "score", "max_score", "status", *columns, "notes"]
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        course = Path(tmp)
        release(source, graded_ids, course)
        api = nbgrader_api(course, timeout)
        from nbgrader.api import Gradebook

        with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
            for student in sorted({s for s, _ in pairs if ID.fullmatch(s)}):
                gb.update_or_create_student(student)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as f:  # row by row: an interrupted run keeps its rows
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            for student, aid in pairs:
                tick = time.perf_counter()
                row = {"student": student, "assignment": aid, "score": "0", "max_score": "", "notes": ""}
                if aid in cells:
                    row["max_score"] = _fmt(sum(points for _, points in cells[aid]))
                    row |= {name: "0" for name, _ in cells[aid]}
                path = submissions / student / aid / f"{aid}.ipynb"
                if aid not in known:
                    row["status"] = f"unknown assignment: not in {source}"
                elif not ID.fullmatch(student):
                    row["status"] = "invalid student id: use only letters, digits and _ . @ -"
                elif problem := read_submission(path):
                    row["status"] = problem
                else:
                    row |= _autograde(api, course, path, student, aid, [name for name, _ in cells[aid]])
                writer.writerow(row)
                f.flush()
                rows.append(row)
                seconds = time.perf_counter() - tick
                line = f"{student}/{aid}: {row['score']}/{row['max_score'] or '?'} ({row['status']}) {seconds:.1f} s"
                print(line, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: `build`, `grade SUBMISSIONS --out CSV`, `slides [NOTEBOOK ...]` or `objectives`; 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="write the student and instructor editions")
    build_cmd.add_argument("--out", type=Path, default=ROOT / "_build" / "course")
    build_cmd.add_argument("--source", type=Path, help="the source assignments (default course/source)")
    grade_cmd = sub.add_parser("grade", help="autograde SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb")
    grade_cmd.add_argument("submissions", type=Path)
    grade_cmd.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    grade_cmd.add_argument("--timeout", type=int, default=60, help="seconds per cell (default 60)")
    grade_cmd.add_argument("--source", type=Path, help="the source assignments (default course/source)")
    slides_cmd = sub.add_parser("slides", help="write a reveal.js deck of every chapter into _build/slides")
    slides_cmd.add_argument("notebooks", type=Path, nargs="*", help="the notebooks (default: all of notebooks/)")
    slides_cmd.add_argument("--out", type=Path, default=ROOT / "_build" / "slides")
    slides_cmd.add_argument(
        "--cache", type=Path, default=ROOT / "_build" / ".jupyter_cache", help="the book build's cache of outputs"
    )
    slides_cmd.add_argument(
        "--no-execute", action="store_true", help="do not run notebooks the cache lacks: decks without their outputs"
    )
    objectives_cmd = sub.add_parser("objectives", help="write every chapter's learning objectives for the guide")
    objectives_cmd.add_argument("notebooks", type=Path, nargs="*", help="the notebooks (default: all of notebooks/)")
    objectives_cmd.add_argument("--out", type=Path, default=ROOT / "book" / "_generated" / "objectives.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "build":
            files = build(args.out, args.source or DEFAULT_SOURCE, source_required=args.source is not None)
            for path in files:
                print(f"wrote {path}")
            print(
                f"built the student and instructor editions in {args.out} ({len(files)} files) "
                f"in {time.perf_counter() - start:.1f} s"
            )
        elif args.command == "objectives":
            path = _module("objectives").write(args.out, args.notebooks)
            print(f"wrote {path}")
        elif args.command == "slides":
            decks = _module("slides").build(args.out, args.notebooks, args.cache, execute=not args.no_execute)
            print(f"wrote {len(decks)} decks into {args.out} in {time.perf_counter() - start:.1f} s")
        else:
            rows = grade(args.submissions, args.out, args.timeout, args.source or DEFAULT_SOURCE)
            print(
                f"graded {len(rows)} (student, assignment) pairs in {time.perf_counter() - start:.1f} s; "
                f"wrote {args.out}"
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
