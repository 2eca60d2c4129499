"""Sphinx extension: a link in every page's header to the same page in the book's other editions.

The editions are one site: the English edition at the site's root (`_build/html/`) and each other
edition in a folder of its own (the Chinese edition in `_build/html/zh/`, built by
`python tools/i18n.py build`). Which editions exist is the configuration value

    language_editions = [{"language": "en", "path": "", "label": "English"},
                         {"language": "zh_CN", "path": "zh", "label": "中文"}]

and the page's own edition is the one whose `language` is Sphinx's `language`. Every link is
relative (`../zh/notebooks/01_language_models.html` from an English chapter,
`../../notebooks/01_language_models.html` back), so the site works from any address and offline.
With fewer than two editions configured (the default) the extension adds nothing.

The link sits in the article header, before the theme's buttons (sphinx-book-theme's
`article_header_end`); the page's <head> also names the other editions (`<link rel="alternate"
hreflang=...>`) for search engines.
"""

from __future__ import annotations

import html
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

TEMPLATE = "language-switcher.html"


def hreflang(language: str) -> str:
    """The BCP 47 tag of a Sphinx language code: zh_CN -> zh-CN."""
    return language.replace("_", "-")


def _editions(config: Config) -> list[dict]:
    """The configured editions, checked: each a dict with language, path and label."""
    editions = list(config.language_editions or [])
    for edition in editions:
        if not isinstance(edition, dict) or not {"language", "path", "label"} <= set(edition):
            raise ValueError(f"language_editions: each edition needs language, path and label, not {edition!r}")
    return editions


def edition_links(editions: list[dict], language: str, target_uri: str) -> list[dict]:
    """Relative links from page `target_uri` of the `language` edition to the same page in every other edition."""
    current = next((e for e in editions if e["language"] == language), None)
    if current is None or len(editions) < 2:
        return []
    # from the page up to its edition's root, then up to the site's root
    depth = target_uri.count("/") + (len(Path(current["path"]).parts) if current["path"] else 0)
    up = "../" * depth
    links = []
    for edition in editions:
        if edition is current:
            continue
        prefix = f"{edition['path'].strip('/')}/" if edition["path"] else ""
        links.append(
            {"url": f"{up}{prefix}{target_uri}", "label": edition["label"], "lang": hreflang(edition["language"])}
        )
    return links


def _configure(app: Sphinx, config: Config) -> None:
    """Put the switcher's template before the theme's header buttons when there are editions to switch to."""
    if len(_editions(config)) < 2:
        return
    config.templates_path = [*config.templates_path, str(Path(__file__).parent / "templates")]
    options = dict(config.html_theme_options or {})
    end = options.get("article_header_end", ["article-header-buttons.html"])
    if isinstance(end, str):
        end = [item.strip() for item in end.split(",") if item.strip()]
    if TEMPLATE not in end:
        options["article_header_end"] = [TEMPLATE, *end]
    config.html_theme_options = options


def _page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Give the page's template its links to the other editions."""
    links = edition_links(_editions(app.config), app.config.language or "en", app.builder.get_target_uri(pagename))
    context["language_switch"] = links
    alternates = "".join(
        f'<link rel="alternate" hreflang="{link["lang"]}" href="{html.escape(link["url"])}" />\n' for link in links
    )
    context["metatags"] = context.get("metatags", "") + alternates


def setup(app: Sphinx) -> dict:
    """Register the configuration value and the hooks."""
    app.add_config_value("language_editions", [], "html", types=[list])
    app.connect("config-inited", _configure, priority=850)
    app.connect("html-page-context", _page_context)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
