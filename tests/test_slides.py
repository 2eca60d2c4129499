"""The chapter slides: tools/slide_layout.py's structure, tools/slides.py's decks, and a deck in a browser.

The layout tests use small notebooks made here. The deck of the first chapter is built once, with
its outputs taken from a Jupyter cache made here too (the first code cell given a marked output),
so no notebook runs; one test executes a two-cell notebook to check the path for chapters the cache
lacks. The browser test opens the deck with every host but 127.0.0.1 unresolvable.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
from browser import PAGE_CHECKS_JS, serve

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = sorted((ROOT / "notebooks").glob("*.ipynb"))[0]
MARK = "output-from-the-book-cache"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layout, slides, course = _load("slide_layout"), _load("slides"), _load("course")


def slide_types(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.metadata["slideshow"]["slide_type"] for cell in nb.cells]


def test_markdown_blocks_keep_fences_equations_and_list_items_whole():
    text = (
        "## Heading\nFirst paragraph\nstill first.\n\n```python\nx = 1\n\ny = 2\n```\n\n$$\na = b\n\nc = d\n$$\n\n"
        "1. item one\n\n    continued item one\n2. item two\n\n<details>\n\nhidden\n</details>"
    )
    assert layout.markdown_blocks(text) == [
        "## Heading",
        "First paragraph\nstill first.",
        "```python\nx = 1\n\ny = 2\n```",
        "$$\na = b\n\nc = d\n$$",
        "1. item one\n\n    continued item one\n2. item two",
        "<details>\n\nhidden\n</details>",
    ]
    assert layout.list_items("1. one\n   more\n2. two") == ["1. one\n   more", "2. two"]


def test_size_estimates_grow_with_content():
    paragraph = "word " * 40
    assert layout.markdown_px(paragraph * 4) > 2 * layout.markdown_px(paragraph)
    assert layout.markdown_px("$$\n\\frac{a}{b}\n$$") > layout.markdown_px("$$\na + b\n$$")
    long_cell = "| a | b |\n|---|---|\n| " + "x " * 80 + "| y |"
    assert layout.markdown_px(long_cell) > layout.markdown_px("| a | b |\n|---|---|\n| x | y |")
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 1720, 800)
    image = {"output_type": "display_data", "data": {"image/png": base64.b64encode(png).decode()}}
    assert layout.output_px(image) == pytest.approx(400)  # 1720 px wide, shown 860 px wide


def test_asserts_leave_the_slides_and_long_outputs_are_shortened():
    source = "x = 2\n# the book checks:\nassert x == 2\nassert (\n    x > 1\n)\n\nprint(x)"
    assert layout.drop_asserts(source) == "x = 2\n\nprint(x)"
    assert layout.drop_asserts("%timeit f()\nassert True") == "%timeit f()\nassert True"  # not Python: kept
    streams = [nbformat.v4.new_output("stream", text=f"line {i}\n") for i in range(30)]
    (joined,) = layout.shorten_outputs(streams)
    lines = joined.text.splitlines()
    assert lines[0] == "line 0" and lines[-1] == "line 29" and "[… 18 lines …]" in lines
    assert layout.shorten_outputs(streams[:13])[0].text.count("\n") == 13  # two lines short of a cut: kept


def test_code_is_split_at_top_level_statements_and_the_last_piece_keeps_room_for_outputs():
    block = "\n".join(f"a{i} = {i}" for i in range(12))
    loop = "for i in range(3):\n    print(i)\n\n    print(-i)"  # a blank line inside: not a place to split
    source = "\n\n".join([block, loop, block])
    budget = layout.CODE_LINE_PX * 20
    assert layout.code_chunks(source, budget) == [block, f"{loop}\n\n{block}"]  # the last slide filled first
    assert layout.code_chunks(source, budget, outputs_px=layout.CODE_LINE_PX * 19) == [f"{block}\n\n{loop}", block]
    assert layout.code_chunks(block, budget) == [block]


def test_headings_start_slides_long_cells_continue_and_solutions_go():
    long_text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(12))
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Title\n\nIntro.\n\n## Part A\n\n" + long_text),
            nbformat.v4.new_code_cell("x = 1\nassert x == 1"),
            nbformat.v4.new_code_cell("assert 2 > 1"),
            nbformat.v4.new_markdown_cell(
                "### Detail\n\n**Exercise 1.** Do it.\n\n<details>\n<summary>Solution</summary>\n\nSECRET\n</details>"
            ),
        ]
    )
    nb, _ = layout.SlideStructure().preprocess(nb, {"metadata": {"name": "t.ipynb"}})
    text = "\n".join(cell.source for cell in nb.cells)
    assert "SECRET" not in text and "<details" not in text and "**Exercise 1.** Do it." in text
    assert "assert" not in text and "x = 1" in text  # the all-assert cell is gone
    types = slide_types(nb)
    starts = [cell.source.splitlines()[0] for cell, t in zip(nb.cells, types) if t == "slide"]
    assert starts == ["# Title", "## Part A"]
    assert types[-1] == "subslide" and nb.cells[-1].source.startswith("### Detail")
    continued = [cell for cell, t in zip(nb.cells, types) if t == "subslide" and cell.source.startswith("Paragraph")]
    assert len(continued) >= 2  # twelve long paragraphs do not fit one slide
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert sum(map(layout.markdown_px, layout.markdown_blocks(cell.source))) <= layout.SLIDE_PX


@pytest.fixture(scope="module")
def deck(tmp_path_factory) -> tuple[Path, str]:
    """The first chapter's deck, its outputs from a cache in which its first code cell printed MARK."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    tmp = tmp_path_factory.mktemp("slides")
    executed = nbformat.read(CHAPTER, as_version=4)
    first = next(cell for cell in executed.cells if cell.cell_type == "code")
    first.outputs = [nbformat.v4.new_output("stream", text=f"{MARK}\n")]
    bundle = CacheBundleIn(executed, uri=str(CHAPTER))
    get_cache(str(tmp / "cache")).cache_notebook_bundle(bundle, check_validity=False)
    decks = slides.build(tmp / "out", [CHAPTER], cache=tmp / "cache", execute=False)
    assert decks == [tmp / "out" / f"{CHAPTER.stem}.slides.html"]
    return decks[0], decks[0].read_text(encoding="utf-8")


def test_deck_takes_outputs_from_the_cache_and_loads_nothing_from_a_cdn(deck):
    path, html = deck
    assert MARK in html
    loads = re.findall(
        r"""<(?:script|link|img)\b[^>]*(?:src|href)=["'](https?://[^"']*)|@import url\(["']?(https?://[^)]*)""", html
    )
    assert loads == [], f"the deck loads from other hosts: {loads}"
    assert "Solution" not in re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)
    for asset in ("reveal.js/dist/reveal.js", "mathjax/tex-chtml.js", "mermaid/mermaid.min.js"):
        assert f"_assets/{asset}" in html and (path.parent / "_assets" / asset).is_file()
    assert f'href="{path.name}"' in (path.parent / "index.html").read_text()


def test_a_notebook_missing_from_the_cache_is_executed_and_cached(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Tiny\n\n## Sum"), nbformat.v4.new_code_cell("print('sum', 6 * 7)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    args = ["slides", str(tmp_path / "tiny.ipynb"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]
    (tmp_path / "out").mkdir()
    assert course.main([*args, "--no-execute"]) == 0
    assert "sum 42" not in (tmp_path / "out" / "tiny.slides.html").read_text()
    assert course.main(args) == 0
    assert "sum 42" in (tmp_path / "out" / "tiny.slides.html").read_text()
    source = slides.with_outputs(tmp_path / "tiny.ipynb", nb, tmp_path / "c", execute=False)
    assert source == "outputs from the book's cache" and nb.cells[1].outputs[0]["text"] == "sum 42\n"


def test_bad_notebook_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert course.main(["slides", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {tmp_path / 'missing.ipynb'} is not a notebook file\n"


VISIBLE_TEXT_JS = r"""
(() => {
  const copy = document.querySelector('.reveal .slides').cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, mjx-container').forEach((e) => e.remove());
  return copy.textContent;
})()
"""
MATH_SLIDE_JS = r"""
(() => {
  const slide = [...Reveal.getSlides()].find((s) => s.querySelector('mjx-container[display="true"]'));
  const i = Reveal.getIndices(slide);
  Reveal.slide(i.h, i.v);
  return [i.h, i.v || 0];
})()
"""


def test_deck_renders_offline(deck, browser, tmp_path):
    """reveal.js starts, MathJax and Mermaid render, nothing is requested from another host."""
    path, html = deck
    with serve(path.parent) as base, browser.page(f"{base}/{path.name}") as page:
        page.wait_for("window.Reveal && Reveal.isReady() && document.body.dataset.mermaidDone === 'true'", 60)
        checks = json.loads(page.evaluate(PAGE_CHECKS_JS))
        host = urlparse(base).netloc
        outside = [
            u for u in page.report.requests if urlparse(u).scheme in ("http", "https") and urlparse(u).netloc != host
        ]
        assert outside == [], f"the deck requested resources off this machine: {outside}"
        assert page.report.console_errors == []
        assert page.evaluate("document.querySelectorAll('.reveal .slides section').length") > 5
        assert checks["mathjax"] > 0 and checks["mathjax_errors"] == 0
        text = page.evaluate(VISIBLE_TEXT_JS)
        assert "$$" not in text and "\\(" not in text and not re.search(r"\\(frac|sum|mathcal)\b", text)
        n_mermaid = html.count('<pre class="mermaid">')
        assert n_mermaid == sum(c.source.count("```mermaid") for c in nbformat.read(CHAPTER, 4).cells)
        assert checks["mermaid_svgs"] == checks["mermaid_blocks"] == n_mermaid
        h, v = page.evaluate(MATH_SLIDE_JS)
        time.sleep(1.0)  # the slide transition
        assert page.evaluate("Reveal.getIndices().h") == h
        shot = page.screenshot(tmp_path / "math_slide.png")
        assert shot.stat().st_size > 10_000
    print(f"slide {h}/{v} with math: {shot}", file=sys.stderr)
