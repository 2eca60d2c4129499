"""Learning objectives: every chapter's "What you will learn" list, collected for the teacher's guide.

Each chapter notebook has a section

    ## What you will learn

    After this chapter you can:

    - **derive** the ... ;
    - **implement** ... .

whose items start with a bold verb that a teacher can test. `python tools/course.py objectives`
reads them from the notebooks and writes book/_generated/objectives.md, which the teacher's
guide includes, so the guide cannot drift from the chapters: tests/test_notebooks.py checks that
the committed file equals what `render` gives now. A chapter without such a list is an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_OUT = ROOT / "book" / "_generated" / "objectives.md"
HEADING = re.compile(r"^##\s+What you will learn\s*$", re.M)
NEXT_HEADING = re.compile(r"^#{1,6}\s", re.M)
LEAD = "After this chapter you can:"
ITEM = re.compile(r"- \*\*[a-z][a-z-]*\*\*")  # "- **verb**": a bold, lower-case verb opens every objective
MIN_OBJECTIVES = 5
COMMAND = "python tools/course.py objectives"


def markdown_cells(path: Path) -> list[str]:
    """The sources of a notebook's Markdown cells (read as plain JSON: nbformat warns about cells without ids)."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable notebook ({type(err).__name__})") from None
    return ["".join(c["source"]) for c in cells if c.get("cell_type") == "markdown"]


def section(cells: list[str]) -> str:
    """The text of the "## What you will learn" section of these cells, up to the next heading or the cell's end."""
    for source in cells:
        if m := HEADING.search(source):
            rest = source[m.end() :]
            following = NEXT_HEADING.search(rest)
            return rest[: following.start()] if following else rest
    raise ValueError("no '## What you will learn' section")


def list_items(text: str) -> list[str]:
    """The items of the list that opens `text`: one string per '- ' item, continuation lines kept."""
    items: list[list[str]] = []
    for line in text.strip("\n").splitlines():
        if line.startswith("- "):
            items.append([line])
        elif items and line.startswith("  ") and line.strip():
            items[-1].append(line.strip())
        else:
            break  # a blank line or the first paragraph after the list ends it
    return ["\n".join(lines) for lines in items]


def objectives(path: Path) -> tuple[str, list[str]]:
    """(the chapter's title, its objectives as Markdown list items); ValueError naming the notebook if malformed."""
    cells = markdown_cells(path)
    title = cells[0].strip().splitlines()[0] if cells and cells[0].strip() else ""
    if not title.startswith("# Chapter "):
        raise ValueError(f"{path.name}: the first Markdown cell does not start with '# Chapter N: ...'")
    try:
        text = section(cells)
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from None
    lines = text.strip("\n").splitlines()
    if not lines or lines[0].strip() != LEAD:
        raise ValueError(f"{path.name}: 'What you will learn' does not start with the line '{LEAD}'")
    items = list_items("\n".join(lines[1:]))
    if len(items) < MIN_OBJECTIVES:
        raise ValueError(f"{path.name}: {len(items)} objectives after '{LEAD}', at least {MIN_OBJECTIVES} expected")
    for item in items:
        if not ITEM.match(item):
            raise ValueError(f"{path.name}: an objective that does not start with a bold verb: {item[:60]!r}")
    return title.removeprefix("# ").strip(), items


def render(paths: list[Path]) -> str:
    """The objectives of the chapters `paths` as one Markdown page (headings from level 3)."""
    lines = [f"% Generated from the chapter notebooks by `{COMMAND}`; do not edit.", ""]
    for path in paths:
        title, items = objectives(path)
        lines += [f"### {title}", "", "After this chapter a student can:", ""]
        lines += [item.replace("\n", "\n  ") for item in items]
        lines.append("")
    return "\n".join(lines)


def write(out: Path = DEFAULT_OUT, paths: list[Path] | None = None) -> Path:
    """Write the objectives of `paths` (every chapter notebook by default) to `out`; return it."""
    paths = paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        if not path.is_file() or path.suffix != ".ipynb":
            raise ValueError(f"{path} is not a notebook file")
    text = render(paths)  # before touching `out`: a malformed chapter leaves the old file in place
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
