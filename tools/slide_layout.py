"""The slide structure of a chapter notebook: where slides start, and how long cells are split.

`SlideStructure`, an nbconvert preprocessor, sets every cell's slide type (nbconvert's
`slideshow.slide_type`) from the notebook's headings and the sizes of its cells, without changing
the notebook file: a `#` or `##` heading starts a slide, a `###` heading a sub-slide below it, and
content that would overflow a slide continues on a sub-slide. Long Markdown cells are split between
blocks (never inside a code fence, a display equation, an HTML block or a list item), long lists
between items, and long code cells at blank lines before top-level statements. Sizes are estimates
in pixels of a 960 x 700 reveal.js slide at the deck's fonts (tools/slides.py's TEMPLATE), measured
on the chapters' decks in headless Chromium; a slide that still overflows scrolls.

What a lecture does not need is left out: the exercises' <details> "Solution" blocks (removed by
the course tool's own `strip_solutions`), the top-level `assert` statements with which the book
checks its own numbers, and the middle of long text outputs (their first and last lines are kept).
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib.util
import math
import re
import struct
from pathlib import Path

import nbformat
from nbconvert.preprocessors import Preprocessor

# A slide is 960 x 700 px (reveal.js's default); the budget is the height of what one may hold.
SLIDE_PX = 600
TEXT_LINE_PX, TEXT_CHARS = 25, 92  # a wrapped line of Markdown text at the deck's 20 px font
LIST_LINE_PX = 30  # list items are set more loosely
CODE_LINE_PX, CODE_CHARS = 21, 86  # a line of code at 16 px
OUTPUT_LINE_PX = 19  # a line of text output at 14 px (never wrapped: a wide one scrolls sideways)
HEADING_PX = {1: 90, 2: 75, 3: 60}
BLOCK_GAP_PX = 16
MERMAID_PX = 520  # diagrams are drawn at most this tall (tools/slides.py's CSS)
IMAGE_WIDTH_PX = 860
MAX_OUTPUT_LINES = 12  # a longer text output keeps its first and last lines

HEADING = re.compile(r"^(#{1,6})\s+\S")
LIST_ITEM = re.compile(r"^\s{0,3}([-*+]|\d+[.)])\s")
INLINE_MATH = re.compile(r"\$[^$\n]+\$")  # about three characters wide once rendered
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # shown as its text
FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})")
HTML_BLOCK = re.compile(r"^\s*<(details|div|table|figure|center|p)\b", re.I)


def _strip_solutions(nb: nbformat.NotebookNode, name: str) -> int:
    """tools/course.py's strip_solutions (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("course", Path(__file__).with_name("course.py"))
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    return course.strip_solutions(nb, name)


def markdown_blocks(text: str) -> list[str]:
    """Split Markdown at blank lines, keeping code fences, $$ equations and HTML blocks whole; headings alone."""
    blocks: list[list[str]] = [[]]
    fence = math_open = html_open = None
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None and not math_open and not html_open and HEADING.match(line):
            blocks += [[line], []]  # a heading is a block of its own
            continue
        if fence is None and (m := FENCE.match(line)):
            fence = m.group(1)
        elif fence is not None and stripped.startswith(fence[0] * len(fence)) and not stripped[len(fence) :].strip():
            fence = None
        elif fence is None and stripped.count("$$") % 2 == 1:
            math_open = not math_open
        elif fence is None and not math_open and not html_open and (m := HTML_BLOCK.match(line)):
            html_open = m.group(1).lower() if f"</{m.group(1).lower()}>" not in line.lower() else None
        elif html_open and f"</{html_open}>" in line.lower():
            html_open = None
        if not stripped and fence is None and not math_open and not html_open:
            blocks.append([])
        else:
            blocks[-1].append(line)
    merged: list[str] = []
    for block in ("\n".join(b).strip("\n") for b in blocks if any(line.strip() for line in b)):
        if merged and block[:1] in (" ", "\t") and not heading_level(merged[-1]):
            merged[-1] += "\n\n" + block  # an indented block continues a list item: never split the two
        else:
            merged.append(block)
    return merged


def heading_level(block: str) -> int:
    """1-6 for a Markdown heading block, else 0."""
    m = HEADING.match(block)
    return len(m.group(1)) if m and "\n" not in block else 0


def _wrapped(lines: list[str], width: int) -> int:
    """How many screen lines `lines` take at `width` characters a line."""
    return sum(max(1, math.ceil(len(line) / width)) for line in lines)


def text_lines(block: str) -> list[str]:
    """The lines of a Markdown text block as the browser flows them: a paragraph or a list item is one line."""
    shown = LINK.sub(r"\1", INLINE_MATH.sub("xxx", block))
    lines: list[str] = []
    for line in shown.splitlines():
        if lines and line.strip() and not LIST_ITEM.match(line) and not line.lstrip().startswith("|"):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    return lines


def math_px(tex_line: str) -> float:
    """The height of one line of a display equation: fractions and big operators stand taller."""
    tall = any(command in tex_line for command in ("\\frac", "\\sum", "\\prod", "\\int", "\\begin"))
    return TEXT_LINE_PX * (2.6 if tall else 1.3) if tex_line.strip() else 0.0


def table_px(rows: list[str]) -> float:
    """The height of a Markdown table: each row as tall as its longest cell wrapped in its column."""
    px = BLOCK_GAP_PX
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if all(set(cell) <= set("-: ") for cell in cells):
            continue  # the header's underline
        width = max(4, TEXT_CHARS // len(cells) - 3)
        px += TEXT_LINE_PX * max(math.ceil(len(cell) / width) for cell in cells) + 8
    return px


def markdown_px(block: str) -> float:
    """The height a Markdown block takes on a slide, roughly."""
    level = heading_level(block)
    if level:
        return HEADING_PX.get(level, TEXT_LINE_PX)
    lines = block.splitlines()
    if "```mermaid" in block:
        return MERMAID_PX
    if FENCE.match(lines[0]):
        return CODE_LINE_PX * (len(lines) - 2) + BLOCK_GAP_PX
    if lines[0].lstrip().startswith("|"):
        return table_px(lines)
    line_px = LIST_LINE_PX if LIST_ITEM.match(block) else TEXT_LINE_PX
    px, text, in_math = BLOCK_GAP_PX, [], False
    for line in lines:  # text flows; each line of a display equation ($$ ... $$) stands alone
        delimiters = line.count("$$")
        if delimiters % 2 == 1 or in_math or (delimiters == 2 and line.strip().startswith("$$")):
            px += math_px(line.replace("$$", "")) + (BLOCK_GAP_PX if delimiters else 0)
            in_math ^= delimiters % 2 == 1
        else:
            text.append(line)
    return px + line_px * _wrapped(text_lines("\n".join(text)), TEXT_CHARS) if text else px


def list_items(block: str) -> list[str]:
    """The items of a Markdown list block (a block that is not a list is one item)."""
    items: list[list[str]] = []
    for line in block.splitlines():
        if LIST_ITEM.match(line) or not items:
            items.append([line])
        else:
            items[-1].append(line)
    return ["\n".join(item) for item in items] if LIST_ITEM.match(block) else [block]


def _png_height(data: str, width: int) -> float:
    """The height of a base64 PNG shown at most `width` px wide."""
    raw = base64.b64decode(data[:64])
    w, h = struct.unpack(">II", raw[16:24])  # the IHDR chunk
    return h * min(1.0, width / w)


def output_px(output: nbformat.NotebookNode) -> float:
    """The height of one code-cell output, roughly."""
    data = output.get("data", {})
    if "image/png" in data:
        return _png_height(data["image/png"], IMAGE_WIDTH_PX)
    if "text/html" in data:
        return CODE_LINE_PX * (1 + "".join(data["text/html"]).count("<tr"))
    text = output.get("text") or "".join(data.get("text/plain", "")) or "\n".join(output.get("traceback", []))
    return OUTPUT_LINE_PX * max(1, len(text.splitlines())) + BLOCK_GAP_PX


def code_px(source: str, outputs: list) -> float:
    """The height of a code cell with its outputs, roughly."""
    return (
        CODE_LINE_PX * _wrapped(source.splitlines() or [""], CODE_CHARS) + BLOCK_GAP_PX + sum(map(output_px, outputs))
    )


def shorten_outputs(outputs: list, keep: int = MAX_OUTPUT_LINES) -> list:
    """Join consecutive stream outputs as a terminal shows them, and keep the first and last lines of a long one."""
    joined: list = []
    for output in outputs:
        if output.get("output_type") == "stream" and joined and joined[-1].get("name") == output.get("name"):
            joined[-1].text += output.text
        else:
            joined.append(copy.deepcopy(output))
    for output in joined:
        lines = output.text.splitlines() if output.get("output_type") == "stream" else []
        if len(lines) > keep + 2:  # leave out three lines or more, never fewer
            half = keep // 2
            output.text = "\n".join([*lines[:half], f"[… {len(lines) - 2 * half} lines …]", *lines[-half:]]) + "\n"
    return joined


def drop_asserts(source: str) -> str:
    """The code without its top-level `assert` statements (the book's checks of its own numbers).

    A comment block directly above a run of asserts goes with them; code that does not parse (an
    IPython magic) is left as it is.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.splitlines()
    drop = set()
    for node in tree.body:
        if isinstance(node, ast.Assert):
            drop.update(range(node.lineno - 1, node.end_lineno))
            above = node.lineno - 2  # the comments above it, up to a blank line or other code
            while above >= 0 and (lines[above].lstrip().startswith("#") or above in drop):
                drop.add(above)
                above -= 1
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")


def code_chunks(source: str, budget: float, outputs_px: float = 0.0) -> list[str]:
    """Split code at blank lines before top-level statements into pieces that fit `budget`.

    The last piece shares its slide with the cell's outputs (`outputs_px` tall), so it is filled
    first, from the end; the rest is packed from the start.
    """
    segments: list[list[str]] = [[]]
    for line in source.splitlines():
        top_level = line[:1] not in ("", " ", "\t", ")", "]", "}", "#")
        if segments[-1] and top_level and not segments[-1][-1].strip():
            segments.append([])
        segments[-1].append(line)

    def fits(lines: list[str], room: float) -> bool:
        return CODE_LINE_PX * _wrapped(lines, CODE_CHARS) <= room

    last = segments.pop()
    while segments and fits(segments[-1] + last, budget - outputs_px):
        last = segments.pop() + last
    pieces: list[list[str]] = []
    for segment in segments:
        if pieces and fits(pieces[-1] + segment, budget):
            pieces[-1] += segment
        else:
            pieces.append(segment)
    return [text for piece in [*pieces, last] if (text := "\n".join(piece).strip("\n"))]


class SlideStructure(Preprocessor):
    """Set every cell's slide type from the headings and sizes above (the notebook file is not changed)."""

    def preprocess(self, nb: nbformat.NotebookNode, resources: dict) -> tuple[nbformat.NotebookNode, dict]:
        """Strip exercise solutions, split long cells, and mark slides, sub-slides and continuations."""
        _strip_solutions(nb, resources.get("metadata", {}).get("name", "notebook"))
        cells, used = [], 0.0

        def place(cell: nbformat.NotebookNode, px: float, level: int = 0, joiner: str = "\n\n") -> None:
            nonlocal used
            start = "slide" if level in (1, 2) else "subslide" if level == 3 else None
            if start is None and used > 0 and used + px > SLIDE_PX:
                start = "subslide"  # continues the slide below it
            previous = cells[-1] if cells else None
            if start is None and cell.cell_type == "markdown" and previous and previous.cell_type == "markdown":
                previous.source += joiner + cell.source  # one cell per run of text on a slide
            else:
                cell.metadata["slideshow"] = {"slide_type": start or "-"}
                cells.append(cell)
            used = (0.0 if start else used) + px

        for cell in nb.cells:
            if cell.cell_type == "markdown":
                for block in markdown_blocks(cell.source):
                    items = list_items(block) if markdown_px(block) > SLIDE_PX / 2 else [block]
                    for i, item in enumerate(items):  # a long list may continue on the next slide
                        px = markdown_px(item) - (BLOCK_GAP_PX if i else 0)
                        place(nbformat.v4.new_markdown_cell(item), px, heading_level(item), "\n" if i else "\n\n")
            elif cell.cell_type == "code":
                cell.outputs = shorten_outputs(cell.get("outputs", []))
                cell.source = drop_asserts(cell.source)
                if not cell.source and not cell.outputs:
                    continue  # a cell that only checked numbers
                pieces = code_chunks(cell.source, SLIDE_PX, sum(map(output_px, cell.outputs)))
                for piece in pieces[:-1]:
                    place(nbformat.v4.new_code_cell(piece), code_px(piece, []))
                cell.source = pieces[-1] if pieces else cell.source
                place(cell, code_px(cell.source, cell.get("outputs", [])))
        nb.cells = cells
        return nb, resources


# nbconvert's reveal template without its CDN scripts (require.js, jQuery, MathJax 2, Mermaid as an
# ES module), with MathJax 3, reveal.js and Mermaid loaded as classic scripts from _assets/.
