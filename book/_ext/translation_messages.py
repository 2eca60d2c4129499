"""Sphinx extension: which parts of a page become translation messages (tools/i18n.py).

The translated editions are built from the English sources plus one gettext catalogue per page.
Only prose is translated; everything else is single-sourced, the same bytes in every edition:

- code cells and their outputs are literal blocks and raw HTML, which Sphinx never extracts (the
  book sets no `gettext_additional_targets`);
- display maths (`$$ ... $$`, `\\begin{aligned}`) would be extracted by Sphinx but never applied: this
  extension takes it out of the catalogues;
- a text with nothing to translate (no Latin word of two letters or more once maths, code spans,
  roles, links' targets and HTML tags are removed: a formula alone, a `d_model` cell, a variable
  such as *p*, the glossary index's letter heads, Chinese already) is not a message;
- the label of a `<details>` block's `<summary>` (the exercises' "Solution") sits in raw HTML,
  which Sphinx cannot translate: a transform moves it into a node of its own that is a message;
- a Mermaid diagram is code, but its quoted labels (`A["pre-training"] -->|"loss"| B`) are prose:
  each label with words is a message, and its translation replaces it inside the diagram's code;
- the captions of the table of contents' parts are messages of the root page, but sphinx-external-toc
  inserts them after Sphinx has translated that page: a later transform translates them.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.locale import init as init_locale
from sphinx.transforms import SphinxTransform
from sphinx.util.i18n import docname_to_domain
from sphinxcontrib.mermaid import mermaid as MermaidNode

SUMMARY = re.compile(r"(?P<head>.*<summary\b[^>]*>)(?P<label>[^<]*?\S[^<]*?)(?P<tail></summary>.*)", re.S)
# what is not prose in a message's Markdown source
NOT_PROSE = re.compile(
    r"\$\$.*?\$\$|\$[^$]+\$"  # maths
    r"|\{[\w:-]+\}`[^`]*`"  # roles such as {cite:t}`key`
    r"|`+[^`]*`+"  # code spans
    r"|\]\([^)]*\)"  # link targets
    r"|<[^>]+>"  # HTML tags and autolinks
    r"|https?://\S+",
    re.S,
)
LATIN_WORD = re.compile(r"[A-Za-z]{2}")
MERMAID_LABEL = re.compile(r'"([^"\n]*)"')  # the book quotes every label: A["..."], B{"..."}, -->|"..."|


def has_prose(source: str) -> bool:
    """Whether a message's source has words to translate (two Latin letters outside maths, code and markup)."""
    return LATIN_WORD.search(NOT_PROSE.sub(" ", source)) is not None


def mermaid_labels(code: str) -> list[str]:
    """The quoted labels of a Mermaid diagram that have words to translate, in order."""
    return [label for label in MERMAID_LABEL.findall(code) if has_prose(label)]


class mermaid(MermaidNode, addnodes.translatable):  # noqa: N801 - Sphinx's writers dispatch on the class name
    """A Mermaid diagram whose labels are translation messages (sphinxcontrib-mermaid's node otherwise)."""

    def preserve_original_messages(self) -> None:
        """Keep the English code: the messages are extracted from it after translation."""
        self.setdefault("original_code", self["code"])

    def extract_original_messages(self) -> list[str]:
        """The diagram's labels."""
        return mermaid_labels(self.get("original_code", self["code"]))

    def apply_translated_message(self, original_message: str, translated_message: str) -> None:
        """Put a translated label in place of the English one."""
        self["code"] = self["code"].replace(f'"{original_message}"', f'"{translated_message}"')


class SummaryLabels(SphinxTransform):
    """Make Mermaid labels and `<summary>` labels messages (before sphinx.transforms.i18n runs)."""

    default_priority = 5  # before sphinx.transforms.i18n.Locale (20)

    def apply(self, **kwargs) -> None:
        """Replace each raw HTML node with a summary label by raw head, the label as a message, raw tail."""
        for node in self.document.findall(MermaidNode):
            node.__class__ = mermaid  # the same node, now translatable (Sphinx then preserves and translates it)
            node.source = node.source or self.document["source"]
        for raw in list(self.document.findall(nodes.raw)):
            match = SUMMARY.fullmatch(raw.astext())
            if raw.get("format") != "html" or match is None:
                continue
            label = nodes.inline(match["label"], match["label"], translatable=True)
            label.source, label.line = raw.source, raw.line
            head = nodes.raw(match["head"], match["head"], format="html")
            tail = nodes.raw(match["tail"], match["tail"], format="html")
            raw.replace_self([head, label, tail])


class TranslatedCaptions(SphinxTransform):
    """Translate the captions of the toctrees that sphinx-external-toc inserted, from the page's catalogue."""

    default_priority = 101  # after sphinx_external_toc's InsertToctrees (100)

    def apply(self, **kwargs) -> None:
        """Look every caption up in the page's catalogue, as sphinx.transforms.i18n.Locale does for the text."""
        toctrees = [node for node in self.document.findall(addnodes.toctree) if node.get("caption")]
        if not toctrees or not self.config.language or self.config.language == "en":
            return
        domain = docname_to_domain(self.env.docname, self.config.gettext_compact)
        dirs = [str(Path(self.env.srcdir) / d) for d in self.config.locale_dirs]
        catalog, found = init_locale(dirs, self.config.language, domain)
        if not found:
            return
        for node in toctrees:
            node["caption"] = node["rawcaption"] = catalog.gettext(node["caption"])


def _no_messages_outside_prose(app: Sphinx, doctree: nodes.document) -> None:
    """Keep display maths and texts without prose out of the catalogues."""
    for node in doctree.findall(nodes.math_block):
        node["translatable"] = False
    for node in doctree.findall(nodes.TextElement):
        if isinstance(node, (nodes.paragraph, nodes.title, nodes.term, nodes.caption, nodes.rubric)):
            if not has_prose(node.rawsource or node.astext()):
                node["translatable"] = False


def setup(app: Sphinx) -> dict:
    """Register the transform and the filter."""
    app.add_transform(SummaryLabels)
    app.add_transform(TranslatedCaptions)
    app.connect("doctree-read", _no_messages_outside_prose)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
