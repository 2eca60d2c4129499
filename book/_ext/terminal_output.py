"""Sphinx extension: show notebook stream outputs as a terminal would, so progress bars leave one line.

A progress bar (tqdm) redraws itself by writing ``"\\r" + new state`` many times. JupyterLab
interprets the carriage return and shows one live line, but the notebook file keeps every
redraw as a separate stream message, and when MyST-NB merges a cell's stream messages it ends
each with a newline, so a static page would show one line per redraw (a hundred or more for a
training cell). The book therefore turns MyST-NB's merging off (``nb_merge_streams: false``), and
this extension joins a cell's consecutive stream messages itself, without adding newlines, then
applies the terminal's rule to every output block of the book:
a carriage return moves back to the start of the line, so only the text written last remains.
The progress bar's final state (its summary line) is what the reader sees.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx


def terminal_text(text: str) -> str:
    """The text a terminal would display for `text`: each line keeps only what follows its last ``\\r``.

    A newline directly followed by a carriage return (a redraw that a stream merge put on a
    new line) counts as the carriage return alone.
    """
    text = text.replace("\n\r", "\r")
    lines = []
    for line in text.split("\n"):
        parts = line.split("\r")
        kept = [p for p in parts if p.strip()]  # "\r" at the very end erases nothing visible
        lines.append(kept[-1] if kept else parts[-1])
    return "\n".join(lines)


def _stream_kind(node: nodes.Node) -> str | None:
    """ "stdout" or "stderr" for a MyST-NB stream output block, else None."""
    if not isinstance(node, nodes.literal_block) or "output" not in node.get("classes", []):
        return None
    classes = node["classes"]
    return "stderr" if "stderr" in classes else "stdout" if "stream" in classes else None


def _set_text(node: nodes.literal_block, text: str) -> None:
    node.rawsource = text
    node.children = [nodes.Text(text)]


def _collapse(app: Sphinx, doctree: nodes.document) -> None:
    """Join consecutive stream messages of one cell (as the notebook front end does) and apply `terminal_text`."""
    for container in list(doctree.findall(nodes.container)):
        if "cell_output" not in container.get("classes", []):
            continue
        kept: list[nodes.Node] = []
        for child in list(container.children):
            kind = _stream_kind(child)
            if kind is not None and kept and _stream_kind(kept[-1]) == kind:
                _set_text(kept[-1], kept[-1].astext() + child.astext())
                container.remove(child)
            else:
                kept.append(child)
        for child in kept:
            if _stream_kind(child) is not None and "\r" in child.astext():
                _set_text(child, terminal_text(child.astext()))


def setup(app: Sphinx) -> dict:
    app.connect("doctree-read", _collapse)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
