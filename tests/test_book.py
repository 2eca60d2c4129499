"""Build the whole book, both editions, into a temporary folder (warnings as errors) and look at it in a browser.

The build executes every notebook once (the Chinese edition, in zh/, reuses the executions), so this
module is slow (minutes). Every page check runs on both editions; the Chinese pages must also read as
Chinese, and every page of either edition must switch to the same page of the other.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
import yaml
from browser import serve
from test_notebooks import toc_files

from conftest import book_output_dir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.book, pytest.mark.slow]


@pytest.fixture(scope="module")
def built_html(request) -> Path:
    # The session's book folder: nbval, run before this module, has cached the executed
    # notebooks there (see conftest.py), so the build does not execute them again.
    out = book_output_dir(request.config)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "book.py"), "build", "--path-output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"book build failed:\n{log[-6000:]}"
    assert "NOTICE" not in log or os.environ.get("CI") is None, "CI must build with vendored MathJax/Mermaid"
    return out / "_build" / "html"


def page_paths() -> list[str]:
    return [f"{entry}.html" for entry in toc_files()]


# the site's editions (_config.yml): English at the root, Chinese in zh/
EDITIONS = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["sphinx"]["config"]["language_editions"]
EDITION_PATHS = [e["path"] for e in EDITIONS]
assert EDITION_PATHS == ["", "zh"], EDITION_PATHS


@pytest.mark.parametrize("edition", EDITION_PATHS)
def test_every_toc_page_is_built(built_html, edition):
    for page in page_paths():
        assert (built_html / edition / page).is_file(), f"{edition}/{page} was not built"
    assert (built_html / edition / "index.html").is_file()


@pytest.mark.parametrize("edition", EDITION_PATHS)
def test_chapter_pages_have_figures(built_html, edition):
    chapters = [p for p in page_paths() if p.startswith("notebooks/")]
    assert chapters, "no chapter pages"
    for page in chapters:
        html = (built_html / edition / page).read_text(encoding="utf-8")
        assert "<img" in html, f"{edition}/{page} shows no figure (did its notebook execute?)"
        assert "Traceback (most recent call last)" not in html, f"{edition}/{page} shows a traceback"


@pytest.mark.parametrize("edition", EDITION_PATHS)
def test_chapter_pages_have_the_live_code_button(built_html, edition):
    """Every chapter, and only pages with code cells, gets the button of book/_ext/live_code.py."""
    for page in page_paths():
        html = (built_html / edition / page).read_text(encoding="utf-8")
        has_button = '<button class="thebe-launch-button live-code-button"' in html
        assert has_button == page.startswith("notebooks/"), f"{edition}/{page}: live-code button {has_button}"


class _Switches(html.parser.HTMLParser):
    """The page's language (<html lang>) and the targets of its language-switch links."""

    def __init__(self) -> None:
        super().__init__()
        self.switches: list[str] = []
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        if tag == "a" and "language-switch" in (a.get("class") or ""):
            self.switches.append(a["href"])


def test_every_page_switches_to_the_same_page_in_the_other_edition(built_html):
    """Each page of each edition has one relative switch to the same page of the other (language_switcher.py)."""
    (en, zh), langs = EDITION_PATHS, [e["language"].replace("_", "-") for e in EDITIONS]
    chinese = built_html / zh
    pages = [p.relative_to(chinese) for p in chinese.rglob("*.html") if p.relative_to(chinese).parts[0][0] != "_"]
    pages = [p for p in pages if p.name != "index.html"]  # the root redirects to the preface
    assert len(pages) >= len(page_paths())
    for page in pages:
        for edition, other, lang in ((built_html / en, chinese, langs[0]), (chinese, built_html / en, langs[1])):
            parser = _Switches()
            parser.feed((edition / page).read_text(encoding="utf-8"))
            assert parser.lang == lang and len(parser.switches) == 1, f"{edition / page}: no single language switch"
            target = Path(unquote(urljoin((edition / page).as_uri(), parser.switches[0]).removeprefix("file://")))
            assert target == other / page and target.is_file(), f"{edition / page} switches to {target}"


def test_chinese_search_index_is_segmented_with_jieba(built_html):
    """Sphinx's Chinese splitter indexes Chinese words only when jieba is installed to cut them."""
    text = (built_html / EDITION_PATHS[1] / "searchindex.js").read_text(encoding="utf-8")
    terms = json.loads(text[text.index("(") + 1 : text.rindex(")")])["terms"]
    assert {"词元", "注意力", "困惑"} <= set(terms), "the Chinese search index lacks the book's words"


class _LinkParser(html.parser.HTMLParser):
    """Collect the ids of a page and the targets of its links and images."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        target = a.get("href") if tag in ("a", "link") else a.get("src") if tag in ("img", "script") else None
        if target:
            self.links.append(target)


PROGRESS_LINE = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+")  # tqdm: " 12%|█▏   | 120/1000"
MAX_PROGRESS_LINES = 3  # a bar's final line, plus a nested bar or two
MIN_DIAGRAM_SCALE = 0.8  # a diagram's labels at least 80% of the body text size
# Chinese characters among the Chinese pages' letters: over half, less where English is the content
# (the glossary's English column, the resources' English titles); references are English entries
CHINESE_SHARE = {"book/glossary.html": 0.4, "book/resources.html": 0.4, "book/references.html": 0.0}


def progress_lines_per_output(html: str) -> list[int]:
    """Number of progress-bar lines in each output block of a built page."""
    blocks = re.findall(r'<div class="cell_output.*?(?=<div class="cell |</section>|$)', html, re.S)
    return [len(PROGRESS_LINE.findall(block)) for block in blocks]


def test_progress_bars_leave_one_line(built_html):
    """A training cell's progress bar shows its final state, not every redraw (book/_ext/terminal_output.py)."""
    for page in page_paths():
        counts = progress_lines_per_output((built_html / page).read_text(encoding="utf-8"))
        worst = max(counts, default=0)
        assert worst <= MAX_PROGRESS_LINES, f"{page}: a cell output shows {worst} progress-bar lines"


def test_progress_line_counter_counts():
    html = (
        '<div class="cell_output docutils container"><pre>train:  10%|█ | 10/100\ntrain:  20%|██ | 20/100\n'
        '</pre></div><div class="cell docutils container">x</div>'
    )
    assert progress_lines_per_output(html) == [2]


def test_terminal_output_extension_keeps_the_last_redraw():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from terminal_output import terminal_text

    assert terminal_text("\r  0%| | 0/9\n\r 50%| | 4/9\n\r100%| | 9/9 [00:01]\nloss 1.2\n") == (
        "100%| | 9/9 [00:01]\nloss 1.2\n"
    )
    assert terminal_text("abc\rxy\n") == "xy\n" and terminal_text("plain\ntext") == "plain\ntext"


def parse_page(path: Path) -> _LinkParser:
    parser = _LinkParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(html_root: Path, pages: list[str]) -> list[str]:
    """Every internal link of `pages` whose file is missing, or whose #fragment is not an id there."""
    parsed: dict[Path, _LinkParser] = {}

    def page(path: Path) -> _LinkParser:
        if path not in parsed:
            parsed[path] = parse_page(path)
        return parsed[path]

    problems = []
    for name in pages:
        source = html_root / name
        for link in page(source).links:
            url = urlparse(link)
            if url.scheme or url.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue  # external: not checked offline (the browser test blocks such requests)
            target_path, fragment = unquote(url.path), url.fragment  # without ?query and #fragment
            target = (source.parent / target_path).resolve() if target_path else source
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{name}: {link} (no such file)")
            elif fragment and target.suffix == ".html" and unquote(fragment) not in page(target).ids:
                problems.append(f"{name}: {link} (no id {fragment!r} in {target.name})")
    return problems


@pytest.mark.parametrize("edition", EDITION_PATHS)
def test_internal_links_resolve(built_html, edition):
    """Every link between pages, to a section anchor, to an image or a stylesheet exists."""
    problems = broken_links(built_html / edition, [*page_paths(), "index.html"])
    assert problems == [], f"broken internal links in edition {edition!r}:\n" + "\n".join(problems)


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "a.html").write_text(
        '<h1 id="top">A</h1><a href="b.html#there">ok</a>'
        '<link href="b.html?v=3"><a href="#top">self</a>'
        '<a href="b.html#gone">bad</a><a href="c.html">bad</a>'
        '<img src="img/x.png"><a href="https://example.org">ext</a>'
    )
    (tmp_path / "b.html").write_text('<section id="there"><a href="a.html#top">back</a></section>')
    assert broken_links(tmp_path, ["a.html", "b.html"]) == [
        "a.html: b.html#gone (no id 'gone' in b.html)",
        "a.html: c.html (no such file)",
        "a.html: img/x.png (no such file)",
    ]


def test_no_third_party_javascript_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    vendored = [f for f in tracked if f.endswith((".js", ".mjs")) and not f.startswith("tests/")]
    assert vendored == [], f"third-party JavaScript is committed: {vendored}"


@pytest.mark.parametrize("edition", EDITION_PATHS)
def test_pages_render_offline(built_html, browser, edition, tmp_path):
    """Math and diagrams render in a real browser, and no request leaves 127.0.0.1; Chinese pages read as Chinese."""
    with serve(built_html) as base:
        host = urlparse(base).netloc
        saw_math = saw_mermaid = False
        diagrams = 0
        for page in page_paths():
            url = f"{base}/{edition}/{page}" if edition else f"{base}/{page}"
            if edition and page.startswith(
                "notebooks/"
            ):  # BOOK_SCREENSHOTS=DIR keeps the Chinese chapters' screenshots
                with browser.page(url) as tab:
                    tab.wait_for("document.querySelectorAll('mjx-container').length > 0", 60)
                    tab.screenshot(Path(os.environ.get("BOOK_SCREENSHOTS", tmp_path)) / f"{Path(page).stem}.zh.png")
            report = browser.visit(url)
            outside = [
                u
                for u in report.requests
                if urlparse(u).scheme in ("http", "https", "ws", "wss") and urlparse(u).netloc != host
            ]
            assert outside == [], f"{page} requested resources off this machine: {outside}"
            assert report.console_errors == [], f"{page}: console errors {report.console_errors}"
            checks = report.checks
            assert checks["mathjax_errors"] == 0, f"{page}: MathJax reported errors"
            assert checks["raw_display_math"] == 0, f"{page}: unrendered $$ in the text"
            assert checks["raw_tex_commands"] == 0, f"{page}: unrendered TeX commands in the text"
            assert checks["mermaid_svgs"] == checks["mermaid_blocks"], (
                f"{page}: {checks['mermaid_blocks']} Mermaid blocks but {checks['mermaid_svgs']} rendered SVGs"
            )
            assert checks["broken_images"] == [], f"{page}: broken images {checks['broken_images']}"
            small = [d for d in checks["diagrams"] if d["scale"] < MIN_DIAGRAM_SCALE]
            assert not small, (
                f"{page}: diagrams drawn below {MIN_DIAGRAM_SCALE:.0%} of the text size in a "
                f"{checks['column_px']} px column (lay them out top to bottom or split them): "
                + "; ".join(
                    f"{d['natural']} px -> {d['rendered']} px ({d['scale']:.0%}): {d['label']!r}" for d in small
                )
            )
            diagrams += len(checks["diagrams"])
            if edition:  # a Chinese character carries about a word, a Latin letter a fifth of one
                share = checks["cjk"] / max(1, checks["cjk"] + checks["latin"])
                least = CHINESE_SHARE.get(page, 0.5)
                assert share > least, f"{edition}/{page}: the prose is not Chinese enough ({share:.0%} Chinese)"
            if page.startswith("notebooks/"):
                assert checks["mathjax"] > 0, f"{page}: no MathJax output (mjx-container)"
                assert checks["mermaid_svgs"] > 0, f"{page}: no rendered Mermaid diagram"
                assert "<mjx-container" in report.html
            saw_math |= checks["mathjax"] > 0
            saw_mermaid |= checks["mermaid_svgs"] > 0
        assert saw_math and saw_mermaid and diagrams >= 20
