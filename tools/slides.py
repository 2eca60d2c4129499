"""Slides: every chapter notebook as a reveal.js deck, for `python tools/course.py slides`.

Each notebook becomes `<out>/<stem>.slides.html` through nbconvert's SlidesExporter, with the
slide structure of tools/slide_layout.py (headings start slides, long cells continue on
sub-slides, the exercises' solutions are left out), and `<out>/index.html` links them all.

Outputs. A chapter's outputs take minutes to compute (the teacher's guide times every notebook:
about 8 minutes for all of them on two cores), and the book build has already computed them: it
keeps every executed notebook in its Jupyter cache, `_build/.jupyter_cache`, keyed by the code of
its cells. So a deck takes its outputs from there when the cache holds the chapter's current code;
otherwise the notebook is executed (as the book would, in its own folder) and the result is added
to the cache, so the next book build does not run it again. `--no-execute` skips that step and
makes decks without outputs for the chapters the cache lacks.

Everything the decks load sits beside them in `<out>/_assets/`: reveal.js, MathJax 3 and Mermaid's
classic bundle, vendored from npm by `tools/book.py vendor`. nbconvert's own template loads
require.js, jQuery, MathJax 2 and Mermaid from CDNs: `TEMPLATE` replaces those blocks. The decks
need no server (all scripts are classic scripts), so the folder can be copied anywhere and opened.
"""

from __future__ import annotations

import copy
import html
import importlib.util
import re
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_OUT = ROOT / "_build" / "slides"
DEFAULT_CACHE = ROOT / "_build" / ".jupyter_cache"  # Jupyter Book 1's cache of executed notebooks
ASSETS = "_assets"
# (folder under _vendor/, folder under <out>/_assets/, the file a deck loads, its CDN fallback)
VENDORED = (
    ("slides/reveal.js", "reveal.js", "", "https://cdn.jsdelivr.net/npm/reveal.js@5"),
    ("static/mathjax", "mathjax", "tex-chtml.js", "https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-chtml.js"),
    ("slides/mermaid", "mermaid", "mermaid.min.js", "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.min.js"),
)


def _module(name: str) -> ModuleType:
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}
<link rel="icon" href="data:,">
<script>
window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
        processEscapes: true, tags: "ams"},
};
</script>
<script src="{{ resources.mathjax_url }}"></script>
<style>
:root { --jp-code-font-size: 16px; --jp-cell-prompt-width: 0px; }
.reveal .jp-OutputArea-output pre { font-size: 14px; white-space: pre; overflow-x: auto; }
.reveal .jp-Mermaid svg { max-height: 520px; max-width: 100%; }
.reveal .jp-Mermaid { display: flex; justify-content: center; }
.reveal .slides section.deck-scroll { height: 100%; overflow-y: auto; }
</style>
{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script src="{{ resources.reveal.url_prefix }}/dist/reveal.js"></script>
<script src="{{ resources.reveal.url_prefix }}/plugin/notes/notes.js"></script>
<script src="{{ resources.mermaid_js_url }}"></script>
<script>
Reveal.initialize({
  controls: true, progress: true, history: true, center: false,
  transition: "{{ resources.reveal.transition | default('slide', true) }}",
  slideNumber: "c/t", plugins: [RevealNotes], width: 960, height: 700,
});
// A slide taller than the deck (a long code cell, a tall figure) scrolls rather than spill over;
// only the slide on screen can be measured.
const scrollIfTall = () => {
  const slide = Reveal.getCurrentSlide();
  if (slide) slide.classList.toggle("deck-scroll", slide.scrollHeight > 700);
};
Reveal.on("ready", scrollIfTall);
Reveal.on("slidechanged", scrollIfTall);
// Mermaid measures text as it draws, which hidden slides cannot do: draw each diagram in a
// visible, off-screen box, then move the SVG into its slide.
mermaid.initialize({startOnLoad: false, theme: "default"});
(async () => {
  let n = 0;
  for (const pre of document.querySelectorAll("pre.mermaid")) {
    const box = Object.assign(document.createElement("div"), {style: "position:absolute; left:-10000px; top:0"});
    document.body.appendChild(box);
    try {
      const {svg} = await mermaid.render(`deck-mermaid-${n++}`, pre.textContent.trim(), box);
      const figure = Object.assign(document.createElement("div"), {className: "jp-Mermaid mermaid", innerHTML: svg});
      pre.replaceWith(figure);
    } finally {
      box.remove();
    }
  }
  if (Reveal.isReady()) scrollIfTall();
  document.body.dataset.mermaidDone = "true";
})();
</script>
{% endblock footer_js %}
"""


MERMAID = re.compile(r"^```mermaid[ \t]*\n(.*?)\n```[ \t]*$", re.S | re.M)


def escape_mermaid(nb: nbformat.NotebookNode) -> None:
    """Put each ```mermaid block into an HTML <pre>, escaped, in place.

    nbconvert writes the diagram's source into the page unescaped, so the browser parses the
    labels' <b> and <br/> as HTML and Mermaid no longer sees them.
    """
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            escaped = lambda m: f'<pre class="mermaid">{html.escape(m.group(1))}</pre>'  # noqa: E731
            cell.source = MERMAID.sub(escaped, cell.source)


def assets(out: Path) -> dict[str, str]:
    """Copy the vendored scripts into `out`/_assets/ (fetching them first); return the URL of each."""
    vendor = _module("book")
    vendor.vendor(quiet=True)
    urls = {}
    for source, name, entry, cdn in VENDORED:
        folder = vendor.VENDOR / source
        if folder.is_dir():
            shutil.copytree(folder, out / ASSETS / name, dirs_exist_ok=True)
            urls[name] = f"{ASSETS}/{name}/{entry}".rstrip("/")
        else:
            urls[name] = cdn
            print(f"NOTICE: {name} is not vendored (npm missing?): the decks load it from {cdn}", file=sys.stderr)
    return urls


def with_outputs(path: Path, nb: nbformat.NotebookNode, cache: Path | None, execute: bool) -> str:
    """Put outputs into `nb`, in place, from the book's cache or by executing it; say where they came from."""
    from jupyter_cache import get_cache

    if cache is not None and cache.is_dir():
        try:
            _, merged = get_cache(str(cache)).merge_match_into_notebook(nb)
        except KeyError:
            pass
        else:
            nb.cells, nb.metadata = merged.cells, merged.metadata
            return "outputs from the book's cache"
    if not execute:
        return "no outputs (not executed)"
    from jupyter_cache.base import CacheBundleIn
    from nbclient import NotebookClient

    tick = time.perf_counter()
    executed = copy.deepcopy(nb)
    NotebookClient(executed, timeout=900, resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell, done in zip(nb.cells, executed.cells):  # outputs only: the cache keys on the cells' metadata too
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = done.outputs, done.execution_count
    if cache is not None:
        bundle = CacheBundleIn(nb, uri=str(path))
        get_cache(str(cache)).cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
    return f"executed in {time.perf_counter() - tick:.1f} s"


def export(nb: nbformat.NotebookNode, title: str, urls: dict[str, str]) -> str:
    """The reveal.js deck of a notebook whose slide structure is set, as HTML."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(
        extra_loaders=[DictLoader({"book_slides.html.j2": TEMPLATE})],
        template_file="book_slides.html.j2",
        reveal_url_prefix=urls["reveal.js"],
        reveal_theme="white",  # its font is in reveal.js; "simple", nbconvert's default, loads Google Fonts
        mathjax_url=urls["mathjax"],
        mermaid_js_url=urls["mermaid"],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The notebook's first `#` heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^#\s+(.+)$", cell.source, re.M)):
            return m.group(1).strip()
    return fallback


def index_page(decks: list[tuple[Path, str]]) -> str:
    """An HTML page that links every deck."""
    items = "\n".join(f'<li><a href="{p.name}">{html.escape(t)}</a></li>' for p, t in decks)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>LLM Principles: slides</title></head>\n'
        f"<body><h1>LLM Principles: slides</h1>\n<ul>\n{items}\n</ul>\n"
        "<p>Keys: arrows move, <kbd>S</kbd> opens the speaker view, <kbd>F</kbd> full screen, "
        "<kbd>Esc</kbd> the overview.</p></body></html>\n"
    )


def build(
    out: Path, notebooks: list[Path] | None = None, cache: Path | None = DEFAULT_CACHE, execute: bool = True
) -> list[Path]:
    """Write one deck per chapter notebook (all of notebooks/ by default) into `out`; return their paths."""
    notebooks = notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            raise ValueError(f"{path} is not a notebook file")
    out.mkdir(parents=True, exist_ok=True)
    urls = assets(out)
    decks = []
    for path in notebooks:
        tick = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        source = with_outputs(path, nb, cache, execute)
        title = title_of(nb, path.stem)
        nb, _ = _module("slide_layout").SlideStructure().preprocess(nb, {"metadata": {"name": path.name}})
        escape_mermaid(nb)
        deck = out / f"{path.stem}.slides.html"
        deck.write_text(export(nb, title, urls), encoding="utf-8")
        n_slides = sum(c.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide") for c in nb.cells)
        print(f"wrote {deck} ({n_slides} slides, {source}) in {time.perf_counter() - tick:.1f} s", flush=True)
        decks.append((deck, title))
    (out / "index.html").write_text(index_page(decks), encoding="utf-8")
    return [deck for deck, _ in decks]
