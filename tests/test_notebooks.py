"""Checks of the committed chapter notebooks (their execution is nbval's job: see pyproject.toml)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def toc_files() -> list[str]:
    """Every `file:` entry of _toc.yml, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", []))
    return files


def load(nb: Path) -> dict:
    return json.loads(nb.read_text(encoding="utf-8"))


def markdown(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_name_and_title(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: expected NN_snake_case.ipynb"
    nb = load(path)
    first = "".join(nb["cells"][0]["source"])
    number = int(path.name[:2])
    assert first.startswith(f"# Chapter {number}:"), f"{path.name}: first cell must be '# Chapter {number}: ...'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs_and_standard_kernel(path):
    nb = load(path)
    assert nb["nbformat"] == 4
    spec = nb["metadata"].get("kernelspec", {})
    assert spec.get("name") == "python3", f"{path.name}: kernelspec name is {spec.get('name')!r}, not 'python3'"
    assert spec.get("language") == "python"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_in_table_of_contents(path):
    assert f"notebooks/{path.stem}" in toc_files(), f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_structure(path):
    text = markdown(load(path))
    for heading in ("What you will learn", "Summary", "Exercises", "References"):
        assert re.search(rf"^##\s+{heading}", text, re.M), f"{path.name}: no '## {heading}' section"
    exercises = text.split("## Exercises", 1)[1].split("## References", 1)[0]
    n_exercises = len(re.findall(r"\*\*Exercise \d+", exercises))
    n_solutions = exercises.count("<summary>Solution</summary>")
    assert n_exercises >= 3, f"{path.name}: only {n_exercises} exercises"
    assert n_solutions == n_exercises, f"{path.name}: {n_exercises} exercises but {n_solutions} hidden solutions"
    assert "```mermaid" in text, f"{path.name}: no Mermaid diagram"
    assert "$$" in text, f"{path.name}: no displayed equation"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_network_or_installs(path):
    code = "\n".join("".join(c["source"]) for c in load(path)["cells"] if c["cell_type"] == "code")
    assert not re.search(r"^\s*[!%]\s*pip\b", code, re.M), f"{path.name} installs packages"
    assert "shared/data" not in code, f"{path.name} reads the benchmark-only corpus"


def test_toc_lists_only_existing_files():
    for entry in toc_files():
        candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb")]
        assert any(c.exists() for c in candidates), f"_toc.yml lists {entry}, which does not exist"


PAGES = sorted((ROOT / "book").glob("*.md"))
UNFINISHED = re.compile(r"\b(PLACEHOLDER\w*|TODO|TBD|FIXME|XXX)\b|lorem ipsum|\{[A-Z][A-Z0-9_]*\}")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
MATH = re.compile(r"\$\$.*?\$\$|\$[^$]+?\$", re.S)


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_unfinished_text(path):
    """No placeholder, to-do mark or unfilled template field (such as {CH7}) in the prose."""
    text = markdown(load(path)) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    found = sorted({m.group(0) for m in UNFINISHED.finditer(MATH.sub(" ", CODE.sub(" ", text).replace("\\$", "")))})
    assert not found, f"{path.name} holds unfinished text: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_accidental_block_syntax(path):
    """A line of prose that starts with '>', '+ ' or '- ' in mid-paragraph becomes a quote or a list
    (and breaks any $...$ that spans the line break): wrap the line elsewhere."""
    cells = (
        [("".join(c["source"])) for c in load(path)["cells"] if c["cell_type"] == "markdown"]
        if path.suffix == ".ipynb"
        else [path.read_text(encoding="utf-8")]
    )
    problems = []
    for text in cells:
        lines = CODE.sub(lambda m: "\n" * m.group(0).count("\n"), text).split("\n")
        for prev, line in zip(lines, lines[1:]):
            if not prev.strip() or prev.lstrip().startswith((">", "|", "#", "-", "+", "*")):
                continue  # a new block may start here
            if re.match(r">\s|[+-]\s", line) and prev.count("$") % 2 == 1:
                problems.append(f"{prev[-40:]!r} / {line[:40]!r}")
            elif line.startswith("> "):
                problems.append(f"{prev[-40:]!r} / {line[:40]!r}")
    assert not problems, f"{path.name}: lines that start a block in mid-paragraph: {problems}"


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_control_characters_in_prose(path):
    """A tab or form feed in Markdown is almost always a TeX command eaten by a Python string
    ('\\top' written as '\\t' + 'op'); it renders as broken math."""
    text = markdown(load(path)) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    found = sorted(
        {repr(text[max(0, m.start() - 20) : m.end() + 10]) for m in re.finditer(r"[\t\x07\x08\x0b\x0c\r]", text)}
    )
    assert not found, f"{path.name} holds control characters: {found}"


OBJECTIVE = re.compile(r"- \*\*[a-z][a-z-]*\*\*[ ,]")  # "- **derive** the ...": a bold verb a teacher can test


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_learning_objectives_start_with_a_testable_verb(path):
    """'## What you will learn' says 'After this chapter you can:', then five or more objectives, each a bold verb."""
    cells = [c for c in load(path)["cells"] if c["cell_type"] == "markdown"]
    found = [
        m
        for c in cells
        if (m := re.search(r"^## What you will learn\s*\n(.*?)(?=^#|\Z)", "".join(c["source"]), re.M | re.S))
    ]
    assert len(found) == 1, f"{path.name}: {len(found)} '## What you will learn' sections"
    lines = found[0].group(1).strip().splitlines()
    assert lines and lines[0] == "After this chapter you can:", f"{path.name}: no line 'After this chapter you can:'"
    items = [line for line in lines[1:] if line.startswith("- ")]
    assert len(items) >= 5, f"{path.name}: {len(items)} objectives, at least 5 expected"
    vague = [item[:50] for item in items if not OBJECTIVE.match(item)]
    assert not vague, f"{path.name}: objectives that do not start with '- **verb**': {vague}"


def test_teachers_guide_objectives_are_regenerated():
    """book/_generated/objectives.md is what `python tools/course.py objectives` writes from the notebooks now."""
    spec = importlib.util.spec_from_file_location("objectives", ROOT / "tools" / "objectives.py")
    objectives = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(objectives)
    committed = (ROOT / "book" / "_generated" / "objectives.md").read_text(encoding="utf-8")
    assert committed == objectives.render(NOTEBOOKS), "the objectives changed: run python tools/course.py objectives"
    guide = (ROOT / "book" / "teachers_guide.md").read_text(encoding="utf-8")
    assert "## Learning objectives" in guide and "```{include} _generated/objectives.md" in guide
